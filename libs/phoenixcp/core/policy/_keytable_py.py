"""The pure-Python twin of the ``_keytable`` C extension (used where it is not built; the
tests run both): uint64 series keys → dense int64 slots, freed slots reused."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["KeyTable", "count_points", "split_codes"]

_OBSERVE, _DROP, _MERGE, _WATCH = 1, 2, 3, 4  # plan.Code, as _keytable.c has them


class KeyTable:
    """uint64 series keys → dense int64 slots; see ``_keytable.c``."""

    def __init__(self) -> None:
        self._slots: dict[int, int] = {}
        self._free: list[int] = []
        self.high = 0

    def __len__(self) -> int:
        return len(self._slots)

    def find(self, keys: npt.NDArray[np.uint64], out: npt.NDArray[np.int64]) -> int:
        get = self._slots.get
        found = [get(k, -1) for k in np.asarray(keys, dtype=np.uint64).tolist()]
        out[:] = found
        return sum(1 for s in found if s < 0)

    def insert(self, keys: npt.NDArray[np.uint64], out: npt.NDArray[np.int64]) -> int:
        added = 0
        for i, key in enumerate(np.asarray(keys, dtype=np.uint64).tolist()):
            slot = self._slots.get(key)
            if slot is None:
                if self._free:
                    slot = self._free.pop()
                else:
                    slot, self.high = self.high, self.high + 1
                self._slots[key] = slot
                added += 1
            out[i] = slot
        return added

    def remove(self, keys: npt.NDArray[np.uint64]) -> int:
        removed = 0
        for key in np.asarray(keys, dtype=np.uint64).tolist():
            slot = self._slots.pop(key, None)
            if slot is not None:
                self._free.append(slot)
                removed += 1
        return removed

    def clear(self) -> None:
        self._slots.clear()
        self._free.clear()
        self.high = 0


def count_points(slots: npt.NDArray[np.int64], spans: npt.NDArray[np.uint32],
                 points: npt.NDArray[np.int64], route: npt.NDArray[np.int32],
                 ids: npt.NDArray[np.int32]) -> int:
    """``points[slots[i]] += spans[i, 2]``, ``ids[i] = route[slots[i]]``; how many are -1."""
    spans = spans.reshape(-1, 4)
    if len(spans) != len(slots) or len(ids) != len(slots):
        raise ValueError("count_points: spans must have 4 uint32 and ids one int32 per slot")
    if len(slots) and (slots.min() < 0 or slots.max() >= len(points)):
        raise IndexError("count_points: a slot is outside the points held")
    np.add.at(points, slots, spans[:, 2].astype(np.int64))
    ids[:] = route[slots]
    return int(np.count_nonzero(ids < 0))


def split_codes(ids: npt.NDArray[np.int32], spans: npt.NDArray[np.uint32],
                codes: npt.NDArray[np.int8], passing: npt.NDArray[np.int64],
                merging: npt.NDArray[np.int64]) -> tuple[int, int, int, int]:
    """See ``_keytable.c``: (n_pass, n_merge, dropped_points, changed)."""
    spans = spans.reshape(-1, 4)
    if len(spans) != len(ids) or len(passing) != len(ids) or len(merging) != len(ids):
        raise ValueError("split_codes: spans must have 4 uint32, passing and merging one "
                         "int64 per id")
    if len(ids) and (ids.min() < 0 or ids.max() >= len(codes)):
        raise IndexError("split_codes: a route id is outside the routes")
    code = codes[ids].astype(np.int8)
    code[(code >= _MERGE) & (spans[:, 3] > 0)] = _OBSERVE  # native histograms pass (ADR 0007)
    passes = np.flatnonzero((code <= _OBSERVE) | (code == _WATCH))
    merges = np.flatnonzero(code >= _MERGE)
    passing[:len(passes)] = passes
    merging[:len(merges)] = merges
    return (len(passes), len(merges), int(spans[code == _DROP, 2].sum(dtype=np.int64)),
            int(np.count_nonzero(code)))
