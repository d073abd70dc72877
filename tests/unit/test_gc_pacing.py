"""GcPacer: frozen objects leave the collector's passes; the periodic full pass still frees
cycles that became garbage after they were frozen."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from phoenixcp.platform.gc_pacing import GcPacer

pytestmark = pytest.mark.unit


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_a_cycle_frozen_while_alive_is_freed_by_the_next_full_pass() -> None:
    pacer = GcPacer(freeze_every=1, full_every=60)
    try:
        alive = cycle()
        pacer.tick(full=False)  # the cycle is in the permanent generation now
        assert gc.get_freeze_count() > 0
        gc.collect()
        assert alive() is not None, "a frozen cycle is left alone by ordinary passes"
        pacer.tick(full=True)
        assert alive() is None, "the full pass unfreezes and frees it"
        assert gc.get_freeze_count() > 0  # and freezes what is alive again
    finally:
        gc.unfreeze()


def test_objects_freed_by_reference_counting_are_not_delayed() -> None:
    pacer = GcPacer(freeze_every=1, full_every=60)
    try:
        node = Node()
        ref = weakref.ref(node)
        pacer.tick(full=False)
        del node
        assert ref() is None
    finally:
        gc.unfreeze()


def test_bad_intervals_are_refused() -> None:
    with pytest.raises(ValueError, match="freeze_every"):
        GcPacer(freeze_every=10, full_every=5)


async def test_the_first_freeze_comes_early_then_the_waits_double() -> None:
    pacer = GcPacer(freeze_every=2.0, full_every=60, first_freeze=0.05)
    ticks: list[float] = []
    third = asyncio.Event()

    def tick(*, full: bool) -> None:
        ticks.append(time.monotonic())
        if len(ticks) == 3:
            third.set()

    pacer.tick = tick  # type: ignore[method-assign]
    start = time.monotonic()
    pacer.start()
    try:
        await asyncio.wait_for(third.wait(), 5)
    finally:
        await pacer.stop()
    waits = [b - a for a, b in zip([start, *ticks], ticks, strict=False)]
    assert len(waits) == 3, waits
    # 0.05 s, then 0.1, 0.2 ... up to freeze_every: long before the 2 s period.
    assert 0.05 <= waits[0] < 1.0 and waits[1] >= 0.1 and waits[2] >= 0.2, waits
    assert ticks[2] - start < 2.0, waits


def test_a_first_freeze_later_than_the_period_is_refused() -> None:
    with pytest.raises(ValueError, match="first_freeze"):
        GcPacer(freeze_every=1, full_every=60, first_freeze=2)
