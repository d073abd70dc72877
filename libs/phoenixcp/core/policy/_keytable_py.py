"""The pure-Python twin of the ``_keytable`` C extension (used where it is not built; the
tests run both): uint64 series keys → dense int64 slots, freed slots reused."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["KeyTable"]


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
