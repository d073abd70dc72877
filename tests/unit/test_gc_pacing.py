"""GcPacer: frozen objects leave the collector's passes; the periodic full pass still frees
cycles that became garbage after they were frozen."""

from __future__ import annotations

import gc
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
