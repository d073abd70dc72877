"""A tenant's distinct routes, numbered, with their codes as an array for per-batch lookups."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from phoenixcp.core.policy.plan import Route

__all__ = ["RouteTable"]


class RouteTable:
    """Route ids → routes. Shared routes (no per-series state) get one id each; per-series
    ones (caps, top-K) one id per series, recovered by :meth:`compact`."""

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self._ids: dict[int, int] = {}
        self._codes: list[int] = []
        self._array: npt.NDArray[np.int8] = np.empty(0, dtype=np.int8)

    def __len__(self) -> int:
        return len(self.routes)

    def id(self, route: Route) -> int:
        """The id of ``route`` (the same object always gets the same id)."""
        found = self._ids.get(id(route))
        if found is not None and self.routes[found] is route:
            return found
        found = len(self.routes)
        self.routes.append(route)
        self._codes.append(int(route.code))
        self._ids[id(route)] = found
        return found

    def codes(self, ids: npt.NDArray[np.int32]) -> npt.NDArray[np.int8]:
        """The code of each route id."""
        return self.code_array[ids]

    @property
    def code_array(self) -> npt.NDArray[np.int8]:
        """The code of every route, indexed by route id."""
        if len(self._array) != len(self._codes):
            self._array = np.asarray(self._codes, dtype=np.int8)
        return self._array

    def compact(self, live: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
        """Keep only the routes whose ids are in ``live``; returns a map old id → new id
        (-1 for dropped ones) to rewrite the index with."""
        keep = np.unique(live[live >= 0])
        remap = np.full(len(self.routes) + 1, -1, dtype=np.int32)
        remap[keep] = np.arange(len(keep), dtype=np.int32)
        self.routes = [self.routes[i] for i in keep.tolist()]
        self._codes = [int(r.code) for r in self.routes]
        self._ids = {id(r): i for i, r in enumerate(self.routes)}
        self._array = np.asarray(self._codes, dtype=np.int8)
        return remap

    def clear(self) -> None:
        self.routes, self._ids, self._codes = [], {}, []
        self._array = np.empty(0, dtype=np.int8)
