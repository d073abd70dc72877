"""What a tenant's window close keeps of its series from one window to the next.

:class:`SeriesMemo` holds, per index slot, what depends on a series' labels alone (its
metric and the ids of its label pairs, from which its labels are made again when asked
for), so that :class:`~phoenixcp.core.policy.snapshot.SnapshotBuilder` reads a series' labels
in Python only in the first window that sees it; also the last window's grouping by metric
and each metric's distinct label pairs. The engine keeps one per tenant and hands it to the
builder of each window: long-lived state with its own memory cost, apart from one window's
work. Once the memo holds a series, the engine lets go of its label tuple (ADR 0012).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from phoenixcp.core.batch import LabelSet
from phoenixcp.core.checkpoints import checkpoint

__all__ = ["SeriesMemo"]

_Labels = Sequence[LabelSet | None] | npt.NDArray[np.object_]
"""Label sets aligned with keys: a list, or an object array taken from the index."""

_LEARN_CHUNK = 2048

_Grouping = tuple[npt.NDArray[np.int64], list[str], npt.NDArray[np.intp], list[int]]
_Pairs = frozenset[tuple[str, str]]


class SeriesMemo:
    """What a tenant's window close keeps of its series from one window to the next.

    Per index slot (the engine's series index gives each live series a slot and reuses the
    slots of forgotten ones): the key held there, its metric and the ids of its label pairs
    (in the order of its labels), so a series seen before costs a numpy gather, not a Python
    dict lookup; its labels are made again from the pairs (:meth:`labels`). A
    slot whose key changed is learned again from the labels given; a key is the hash of its
    labels, so what is kept for a key never goes stale. Also kept: the last window's
    grouping by metric (reused while the window holds the same keys) and each metric's keys
    and distinct label pairs (reused while the metric's keys do not change).

    Memory: about ``13 + 4 * labels`` bytes per slot, plus each distinct label pair once
    (pairs no slot holds are forgotten when they outnumber the live ones). One thread at a
    time builds windows with it (:meth:`rows`, :meth:`grouping`, :meth:`label_pairs`);
    :meth:`labels`, :meth:`label_sets` and :meth:`holds` may be called from another thread
    meanwhile (the engine's event loop): a lock, never held across a checkpoint, keeps what
    they read consistent.
    """

    def __init__(self) -> None:
        self._keys = np.zeros(0, dtype=np.uint64)
        self._held = np.zeros(0, dtype=bool)
        self._metric = np.zeros(0, dtype=np.int32)
        self._pairs = np.full((0, 1), -1, dtype=np.int32)
        self._names: list[str] = []
        self._name_ids: dict[str, int] = {}
        self._pair_list: list[tuple[str, str]] = []
        self._pair_ids: dict[tuple[str, str], int] = {}
        self._prune_at = 4096
        self._window: tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_], _Grouping] | None
        self._window = None
        self._last: dict[str, tuple[npt.NDArray[np.uint64], _Pairs]] = {}
        self._next: dict[str, tuple[npt.NDArray[np.uint64], _Pairs]] = {}
        self._lock = threading.Lock()

    @property
    def pair_count(self) -> int:
        """Distinct label pairs held (those of forgotten series included, until pruned)."""
        return len(self._pair_list)

    def rows(self, keys: npt.NDArray[np.uint64], slots: npt.NDArray[np.intp],
             labels: _Labels) -> npt.NDArray[np.intp]:
        """Start a window: the memo row (the slot) of each of ``keys``, learning those not
        held from ``labels`` (aligned with ``keys``); -1 for a key in neither."""
        self._last, self._next = self._next, {}
        slots = np.asarray(slots, dtype=np.intp)
        if len(slots) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(slots)} slots")
        if len(slots) and int(slots.max()) >= len(self._keys):
            self._reserve(int(slots.max()) + 1)
        hit = self._held[slots] & (self._keys[slots] == keys)
        if not hit.all():
            miss = np.flatnonzero(~hit)
            self._learn(slots[miss], keys[miss],
                        labels[miss] if isinstance(labels, np.ndarray)
                        else [labels[i] for i in miss.tolist()])
            hit = self._held[slots] & (self._keys[slots] == keys)
        return np.where(hit, slots, -1)

    def grouping(self, keys: npt.NDArray[np.uint64], rows: npt.NDArray[np.intp]) -> _Grouping:
        """The window's series by metric: each series' metric number, the metric names (in
        the order of their smallest key), and the series positions grouped by metric,
        ascending by key within one, with the bounds of each metric's run. Series not known
        (row -1) are in the metric named ``""``, as series with no labels."""
        known = rows >= 0
        last = self._window
        if (last is not None and np.array_equal(last[0], keys)
                and np.array_equal(last[1], known)):
            return last[2]
        metric_ids = self._metric[rows]
        if not known.all():
            metric_ids[~known] = self._name_id("")
        grouping = _group(keys, metric_ids, self._names)
        self._window = (keys, known, grouping)
        return grouping

    def labels(self, rows: npt.NDArray[np.intp]) -> list[LabelSet | None]:
        """The labels of each row (None for -1), made from its pair ids: equal to the label
        set it was learned from, pairs shared."""
        rows = np.asarray(rows, dtype=np.intp)
        with self._lock:
            pairs, pair_list = self._pairs[rows], self._pair_list
        return _label_sets(pairs, rows >= 0, pair_list)

    def label_sets(self, slots: npt.NDArray[np.intp], keys: npt.NDArray[np.uint64]
                   ) -> list[LabelSet | None]:
        """The labels of ``keys`` at ``slots`` as :meth:`labels` makes them; None where the
        memo does not hold that key at that slot."""
        slots = np.asarray(slots, dtype=np.intp)
        with self._lock:
            held = self._holds(slots, keys)
            if not held.any():
                return [None] * len(slots)
            pairs, pair_list = self._pairs[np.where(held, slots, 0)], self._pair_list
        return _label_sets(pairs, held, pair_list)

    def holds(self, slots: npt.NDArray[np.intp], keys: npt.NDArray[np.uint64]
              ) -> npt.NDArray[np.bool_]:
        """Whether the memo holds each of ``keys`` at its slot (so can give its labels)."""
        with self._lock:
            return self._holds(np.asarray(slots, dtype=np.intp), keys)

    def _holds(self, slots: npt.NDArray[np.intp], keys: npt.NDArray[np.uint64]
               ) -> npt.NDArray[np.bool_]:
        inside = slots < len(self._keys)
        if not inside.any():
            return np.zeros(len(slots), dtype=bool)
        at = np.where(inside, slots, 0)
        held: npt.NDArray[np.bool_] = inside & self._held[at] & (self._keys[at] == keys)
        return held

    def label_pairs(self, metric: str, keys: npt.NDArray[np.uint64],
                    rows: npt.NDArray[np.intp]) -> _Pairs:
        """The distinct label pairs of the series ``keys`` (ascending) of ``metric``, at
        ``rows``; the last window's set again when the metric had the same keys."""
        last = self._last.get(metric)
        if last is not None and np.array_equal(last[0], keys):
            pairs = last[1]
        else:
            pairs = frozenset(map(self._pair_list.__getitem__,
                                  self._pair_ids_in(self._pairs[rows]).tolist()))
        self._next[metric] = (keys, pairs)
        return pairs

    def _name_id(self, name: str) -> int:
        found = self._name_ids.get(name)
        if found is None:
            found = self._name_ids[name] = len(self._names)
            self._names.append(name)
        return found

    def _pair_id(self, pair: tuple[str, str]) -> int:
        found = self._pair_ids.get(pair)
        if found is None:
            found = self._pair_ids[pair] = len(self._pair_list)
            self._pair_list.append(pair)
        return found

    def _reserve(self, size: int) -> None:
        grown = max(size, 2 * len(self._keys), 1024)
        extra = grown - len(self._keys)
        with self._lock:
            self._keys = np.concatenate([self._keys, np.zeros(extra, dtype=np.uint64)])
            self._held = np.concatenate([self._held, np.zeros(extra, dtype=bool)])
            self._metric = np.concatenate([self._metric, np.zeros(extra, dtype=np.int32)])
            self._pairs = np.concatenate(
                [self._pairs, np.full((extra, self._pairs.shape[1]), -1, dtype=np.int32)])

    def _learn(self, slots: npt.NDArray[np.intp], keys: npt.NDArray[np.uint64],
               labels: _Labels) -> None:
        """Hold at ``slots`` the ``keys`` with their ``labels`` (and nothing at the slots of
        those whose labels are None). In chunks: the Python lists one chunk takes are what
        the first window after a start (every series new) would otherwise hold all at once,
        ~300 bytes per series."""
        with self._lock:
            self._held[slots] = False
        for start in range(0, len(slots), _LEARN_CHUNK):
            end = start + _LEARN_CHUNK
            self._learn_chunk(slots[start:end], keys[start:end], labels[start:end])
        if len(self._pair_list) > self._prune_at:
            self._prune_pairs()

    def _learn_chunk(self, slots: npt.NDArray[np.intp], keys: npt.NDArray[np.uint64],
                     labels: _Labels) -> None:
        have: list[bool] = []
        lengths: list[int] = []
        metrics: list[int] = []
        flat: list[int] = []
        name_ids, pair_ids = self._name_ids, self._pair_ids
        for n, lb in enumerate(labels):
            if not n % 128:
                checkpoint()  # ~3 us per new series
            have.append(lb is not None)
            if lb is None:
                continue
            lengths.append(len(lb))
            name = lb[0][1] if lb else ""
            metric = name_ids.get(name)
            metrics.append(self._name_id(name) if metric is None else metric)
            for pair in lb:
                pid = pair_ids.get(pair)
                flat.append(self._pair_id(pair) if pid is None else pid)
        if not lengths:
            return
        held = np.asarray(have, dtype=bool)
        where = slots[held]
        width = max(lengths)
        rows = np.full((len(lengths), max(width, self._pairs.shape[1])), -1, dtype=np.int32)
        fill = np.arange(rows.shape[1]) < np.asarray(lengths)[:, None]
        rows[fill] = np.asarray(flat, dtype=np.int32)  # row-major: each row's pairs in turn
        with self._lock:
            if width > self._pairs.shape[1]:
                self._pairs = np.pad(self._pairs, ((0, 0), (0, width - self._pairs.shape[1])),
                                     constant_values=-1)
            self._pairs[where] = rows
            self._keys[where] = keys[held]
            self._metric[where] = metrics
            self._held[where] = True

    def _pair_ids_in(self, pairs: npt.NDArray[np.int32]) -> npt.NDArray[np.intp]:
        """The distinct pair ids in ``pairs`` (-1 is no pair), ascending: a scatter into
        one flag per known pair, cheaper than a sort or hash of the ids."""
        present = np.zeros(len(self._pair_list) + 1, dtype=bool)
        present[pairs] = True  # -1 lands on the extra last flag
        return np.flatnonzero(present[:-1])

    def _prune_pairs(self) -> None:
        """Forget label pairs no held series has (after a bomb of label values)."""
        live = self._pair_ids_in(self._pairs[self._held])
        remap = np.full(len(self._pair_list) + 1, -1, dtype=np.int32)  # remap[-1] stays -1
        remap[live] = np.arange(len(live), dtype=np.int32)
        pair_list = [self._pair_list[i] for i in live.tolist()]
        with self._lock:
            self._pairs = remap[self._pairs]
            self._pair_list = pair_list
        self._pair_ids = {pair: i for i, pair in enumerate(pair_list)}
        self._prune_at = max(4096, 2 * len(pair_list))


def _label_sets(pairs: npt.NDArray[np.int32], valid: npt.NDArray[np.bool_],
                pair_list: list[tuple[str, str]]) -> list[LabelSet | None]:
    """Each row of pair ids (-1 after the last) as a label set; None where not ``valid``."""
    get = pair_list.__getitem__
    lengths = np.count_nonzero(pairs >= 0, axis=1).tolist()
    return [tuple(map(get, row[:n])) if ok else None
            for ok, n, row in zip(valid.tolist(), lengths, pairs.tolist(), strict=True)]


def _group(keys: npt.NDArray[np.uint64], metric_ids: npt.NDArray[np.int32],
           names: list[str]) -> _Grouping:
    """See :meth:`SeriesMemo.grouping`."""
    n = len(keys)
    if not n:
        return np.empty(0, dtype=np.int64), [], np.empty(0, dtype=np.intp), [0]
    by_key = np.argsort(keys)
    # A stable sort of small integers is a radix sort: O(n), and keeps keys ascending.
    narrow = metric_ids[by_key]
    within = np.argsort(narrow.astype(np.uint16) if len(names) <= 2**16 else narrow,
                        kind="stable")
    order = by_key[within]
    grouped = metric_ids[order]
    starts = np.flatnonzero(np.concatenate(([True], grouped[1:] != grouped[:-1])))
    ends = np.append(starts[1:], n)
    seq = np.argsort(keys[order[starts]])  # metrics by smallest key
    number = np.empty(len(starts), dtype=np.int64)
    number[seq] = np.arange(len(starts))
    mids = np.empty(n, dtype=np.int64)
    mids[order] = np.repeat(number, ends - starts)
    runs = [order[starts[g]:ends[g]] for g in seq.tolist()]
    metric_names = [names[int(grouped[starts[g]])] for g in seq.tolist()]
    bounds = np.cumsum([0] + [len(r) for r in runs]).tolist()
    return mids, metric_names, np.concatenate(runs), bounds
