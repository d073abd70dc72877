"""Turn one tenant's closed window into per-metric snapshots, active and shadow profiles.

The work is per distinct series of the window, on arrays: series are grouped by metric with
one sort, counts come from ``bincount`` over route codes, each profile's output keys from its
routes. What depends on a series' labels alone (its metric, its labels, the ids of its label
pairs) is kept across windows in a :class:`SeriesMemo` aligned with the index slots, so a
series costs Python work (reading its labels) only in the first window it is seen; objects are
built only for the sample (the ``sample_k`` smallest keys per metric) and for the distinct
label pairs of a metric whose series changed.

Shadow routes (what every other profile would have done) are kept per series in the index
(a ``uint64`` column per profile: 8 bytes per series); at most ``shadow_budget`` new series
per profile, and at most ``shadow_seconds`` of CPU for all profiles together (50 ms, shared
equally), are routed per window, so neither a start nor a series bomb can turn the window
close into seconds of work — the shadow figures then cover the series routed so far, the
rest fill in over the next windows, and :attr:`SnapshotBuilder.unrouted` says how many were
left out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import repeat
from typing import cast

import numpy as np
import numpy.typing as npt

from phoenixcp.core.batch import LabelSet
from phoenixcp.core.policy.model import MetricKind, PriorityClass
from phoenixcp.core.policy.plan import Code, Plan, Route
from phoenixcp.core.policy.window import MetricSnapshot, PointTally, PolicyTally, SeriesColumns

__all__ = ["SeriesMemo", "SnapshotBuilder"]

_Labels = Sequence[LabelSet | None] | npt.NDArray[np.object_]
_Outputs = tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]
"""Label sets aligned with keys: a list, or an object array taken from the index."""

_DROPPED = np.uint64(1)
_SAME = np.uint64(0)
_UNKNOWN = np.uint64(2**64 - 1)
_FLUSH_MS = 15_000
_LEARN_CHUNK = 8192


class SnapshotBuilder:
    """Builds the :class:`MetricSnapshot` values of one tenant's window.

    ``memo`` is the tenant's :class:`SeriesMemo`, kept by the engine from window to window,
    so a series' labels are read only in the first window it is seen. ``positions``
    are the series' index slots; keys come in slot order (the builder sorts per metric).
    """

    def __init__(self, *, active: str,
                 shadows: Mapping[str, tuple[Plan, npt.NDArray[np.uint64]]],
                 positions: npt.NDArray[np.intp], kind: Callable[[str], MetricKind],
                 last_value: Callable[[int, float], float], now_ms: int,
                 shadow_budget: int,
                 memo: SeriesMemo, sample_k: int = 256,
                 shadow_seconds: float = 0.05) -> None:
        self._active = active
        self._shadows = shadows
        self._positions = positions
        self._kind = kind
        self._last = last_value
        self._now_ms = now_ms
        self._budget = shadow_budget
        self._share = shadow_seconds / max(1, len(shadows))
        self._k = sample_k
        self._memo = memo
        self.unrouted = 0
        """Series left out of shadow accounting in this window (over the budget)."""

    def build(self, keys: npt.NDArray[np.uint64], points: npt.NDArray[np.int64],
              route_ids: npt.NDArray[np.int32], routes: Sequence[Route],
              labels: _Labels, window_ms: int) -> tuple[MetricSnapshot, ...]:
        """``keys`` (in index slot order, ``positions`` their slots) with their window
        ``points``, ``route_ids`` into ``routes`` (every id valid) and ``labels`` (read only
        for the series the memo does not know yet; a series with None there and unknown to
        the memo is left out). Metrics come in the order of their smallest key, each one's
        series (and sample) ascending by key."""
        memo = self._memo
        rows = memo.rows(keys, self._positions, labels)
        known = rows >= 0
        mids, names, order, bounds = memo.grouping(keys, rows)
        code = np.fromiter((r.code for r in routes), dtype=np.int8, count=len(routes))
        over = np.fromiter((r.overflow for r in routes), dtype=bool, count=len(routes))
        group = np.fromiter((r.group_key for r in routes), dtype=np.uint64, count=len(routes))
        c = code[route_ids] if len(routes) else np.zeros(len(keys), dtype=np.int8)
        merged = (c == Code.MERGE) & known
        dropped = (c == Code.DROP) & known
        n_metrics = len(names)

        def per_metric(mask: npt.NDArray[np.bool_]) -> list[int]:
            counts = np.bincount(mids[mask], weights=points[mask], minlength=n_metrics)
            return [int(x) for x in counts]

        received = per_metric(known)
        dropped_n = per_metric(dropped)
        overflow_mask = merged & over[route_ids] if len(routes) else merged
        overflowed_n = per_metric(overflow_mask)
        merged_n = per_metric(merged & ~overflow_mask)

        active = (np.where(merged, group[route_ids] if len(routes) else keys, keys),
                  known & ~dropped, known & ~merged & ~dropped)
        tallies = self._tallies(mids, route_ids, points, routes, known)
        flushes = max(1, window_ms // _FLUSH_MS)
        if not known.all():  # series with no labels are left out (metric runs in order)
            order = order[known[order]]
            bounds = [0, *np.cumsum(np.bincount(mids[known], minlength=n_metrics)).tolist()]
        # Every per-series array in metric order once: each metric is then a slice.
        keys_m, points_m, rows_m = keys[order], points[order], rows[order]
        if len(routes):
            priority_of = np.fromiter((r.priority for r in routes), dtype=np.int8,
                                      count=len(routes))
            priority_m = priority_of[route_ids[order]]
        else:
            priority_m = np.full(len(order), PriorityClass.MEDIUM, dtype=np.int8)
        runs = [(m, bounds[m], bounds[m + 1]) for m in range(n_metrics)
                if bounds[m] < bounds[m + 1]]
        profile_keys: list[dict[str, npt.NDArray[np.uint64]]] = [{} for _ in runs]
        profile_points: list[dict[str, int]] = [{} for _ in runs]
        # One profile at a time: its arrays are freed before the next one's are made.
        for profile, outputs, live, passing in self._profiles(active, keys, rows, known):
            keys_out, lives, passes = outputs[order], live[order], passing[order]
            for j, (_, lo, hi) in enumerate(runs):
                live_out, pass_out = lives[lo:hi], passes[lo:hi]
                # Series that pass keep their own key: ascending and distinct already; when
                # all pass, the metric's keys are shared (a view), not copied per profile.
                if pass_out.all():
                    distinct = keys_m[lo:hi]
                elif (pass_out | ~live_out).all():
                    distinct = keys_m[lo:hi][live_out]
                else:
                    distinct = np.unique(keys_out[lo:hi][live_out])
                profile_keys[j][profile] = distinct
                n_through = int(np.count_nonzero(pass_out))
                n_groups = len(distinct) - n_through
                profile_points[j][profile] = (int(points_m[lo:hi][pass_out].sum())
                                              + flushes * max(0, n_groups))
        out = []
        for j, (m, lo, hi) in enumerate(runs):
            name = names[m]
            metric_keys = keys_m[lo:hi]
            top = slice(lo, min(hi, lo + self._k))
            out.append(MetricSnapshot(
                name=name, kind=self._kind(name),
                series=self._sample(metric_keys[: self._k], points_m[top], priority_m[top],
                                    memo.labels(rows_m[top])),
                outputs=profile_keys[j],
                counts=PointTally(received=received[m], accepted=received[m],
                                  dropped=dropped_n[m], merged=merged_n[m],
                                  overflowed=overflowed_n[m]),
                policies=tuple(tallies.get(m, ())), output_points=profile_points[j],
                input_keys=metric_keys,
                label_pairs=memo.label_pairs(name, metric_keys, rows_m[lo:hi])))
        return tuple(out)

    def _profiles(self, active: _Outputs, keys: npt.NDArray[np.uint64],
                  rows: npt.NDArray[np.intp], known: npt.NDArray[np.bool_]
                  ) -> Iterator[tuple[str, npt.NDArray[np.uint64], npt.NDArray[np.bool_],
                                      npt.NDArray[np.bool_]]]:
        """Per profile, the active one first: each series' output key, whether it is live
        (not dropped, routed) and whether it passes unchanged, made when asked for."""
        yield self._active, *active
        for profile, (plan, column) in self._shadows.items():
            codes = self._shadow_codes(plan, column, keys, rows, self._memo)
            yield (profile, np.where(codes == _SAME, keys, codes),
                   known & (codes != _DROPPED) & (codes != _UNKNOWN), known & (codes == _SAME))

    def _sample(self, keys: npt.NDArray[np.uint64], points: npt.NDArray[np.int64],
                priorities: npt.NDArray[np.int8],
                labels: list[LabelSet | None]) -> SeriesColumns:
        """The sampled series (all with labels) as columns."""
        values = np.fromiter(map(self._last, keys.tolist(), repeat(math.nan)),
                             dtype=np.float64, count=len(keys))
        return SeriesColumns(keys, cast(list[LabelSet], labels), points, values, priorities)

    def _shadow_codes(self, plan: Plan, column: npt.NDArray[np.uint64],
                      keys: npt.NDArray[np.uint64], rows: npt.NDArray[np.intp],
                      memo: SeriesMemo) -> npt.NDArray[np.uint64]:
        """The shadow output code of every window series, routing (up to the budget) those
        not routed yet and remembering them in the index column."""
        pos = self._positions
        deadline = time.process_time() + self._share
        codes = column[pos]
        todo = np.flatnonzero(codes == _UNKNOWN)
        if len(todo) > self._budget:
            self.unrouted += len(todo) - self._budget
            todo = todo[: self._budget]
        todo_keys = keys[todo].tolist()
        todo_labels = memo.labels(rows[todo])
        for n, i in enumerate(todo.tolist()):
            if n % 64 == 0 and time.process_time() > deadline:
                self.unrouted += len(todo) - n
                break
            lb = todo_labels[n]
            if lb is None:
                continue
            r = plan.route(lb, self._kind(lb[0][1]), self._now_ms, todo_keys[n])
            value = (np.uint64(r.group_key) if r.code is Code.MERGE else
                     _DROPPED if r.code is Code.DROP else _SAME)
            codes[i] = value
            column[pos[i]] = value
        return codes

    @staticmethod
    def _tallies(mids: npt.NDArray[np.int64], route_ids: npt.NDArray[np.int32],
                 points: npt.NDArray[np.int64], routes: Sequence[Route],
                 known: npt.NDArray[np.bool_]) -> dict[int, list[PolicyTally]]:
        """Per metric, each policy's effect, from the (metric, route) pairs of the window."""
        if not len(routes):
            return {}
        with_tallies = np.fromiter((bool(r.tallies) for r in routes), dtype=bool,
                                   count=len(routes))
        sel = known & with_tallies[route_ids]
        if not sel.any():
            return {}
        pair = mids[sel] * len(routes) + route_ids[sel]
        uniq, inverse, series_n = np.unique(pair, return_inverse=True, return_counts=True)
        points_n = np.bincount(inverse, weights=points[sel]).astype(np.int64)
        out: dict[int, dict[str, PolicyTally]] = {}
        for p, s_n, pt_n in zip(uniq.tolist(), series_n.tolist(), points_n.tolist(),
                                strict=True):
            m, rid = divmod(p, len(routes))
            per = out.setdefault(m, {})
            for policy_id, dry_run, changes in routes[rid].tallies:
                t = per.get(policy_id)
                if t is None:
                    t = per[policy_id] = PolicyTally(policy_id, dry_run)
                t.matched_points += pt_n
                t.matched_series += s_n
                if changes:
                    t.changed_points += pt_n
        return {m: [per[k] for k in sorted(per)] for m, per in out.items()}


_Grouping = tuple[npt.NDArray[np.int64], list[str], npt.NDArray[np.intp], list[int]]
_Pairs = frozenset[tuple[str, str]]


class SeriesMemo:
    """What a tenant's window close keeps of its series from one window to the next.

    Per index slot (the engine's series index gives each live series a slot and reuses the
    slots of forgotten ones): the key held there, its metric, its labels and the ids of its
    label pairs, so a series seen before costs a numpy gather, not a Python dict lookup. A
    slot whose key changed is learned again from the labels given; a key is the hash of its
    labels, so what is kept for a key never goes stale. Also kept: the last window's
    grouping by metric (reused while the window holds the same keys) and each metric's keys
    and distinct label pairs (reused while the metric's keys do not change).

    Memory: about ``21 + 4 * labels`` bytes per slot, plus each distinct label pair once
    (pairs no slot holds are forgotten when they outnumber the live ones). Not thread-safe:
    the engine's event loop is the one caller.
    """

    def __init__(self) -> None:
        self._keys = np.zeros(0, dtype=np.uint64)
        self._held = np.zeros(0, dtype=bool)
        self._metric = np.zeros(0, dtype=np.int32)
        self._labels: npt.NDArray[np.object_] = np.empty(0, dtype=object)
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
        """The labels of each row (None for -1)."""
        found: list[LabelSet | None] = self._labels[rows].tolist()
        if len(rows) and int(rows.min()) < 0:
            for i in np.flatnonzero(rows < 0).tolist():
                found[i] = None
        return found

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
        self._keys = np.concatenate([self._keys, np.zeros(extra, dtype=np.uint64)])
        self._held = np.concatenate([self._held, np.zeros(extra, dtype=bool)])
        self._metric = np.concatenate([self._metric, np.zeros(extra, dtype=np.int32)])
        self._labels = np.concatenate([self._labels, np.full(extra, None, dtype=object)])
        self._pairs = np.concatenate(
            [self._pairs, np.full((extra, self._pairs.shape[1]), -1, dtype=np.int32)])

    def _learn(self, slots: npt.NDArray[np.intp], keys: npt.NDArray[np.uint64],
               labels: _Labels) -> None:
        """Hold at ``slots`` the ``keys`` with their ``labels`` (and nothing at the slots of
        those whose labels are None). In chunks: the Python lists one chunk takes are what
        the first window after a start (every series new) would otherwise hold all at once,
        ~300 bytes per series."""
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
        for lb in labels:
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
        if width > self._pairs.shape[1]:
            self._pairs = np.pad(self._pairs, ((0, 0), (0, width - self._pairs.shape[1])),
                                 constant_values=-1)
        rows = np.full((len(lengths), self._pairs.shape[1]), -1, dtype=np.int32)
        fill = np.arange(rows.shape[1]) < np.asarray(lengths)[:, None]
        rows[fill] = np.asarray(flat, dtype=np.int32)  # row-major: each row's pairs in turn
        self._pairs[where] = rows
        self._keys[where] = keys[held]
        self._metric[where] = metrics
        self._labels[where] = (labels[held] if isinstance(labels, np.ndarray)
                               else np.fromiter((lb for lb in labels if lb is not None),
                                                dtype=object, count=len(lengths)))
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
        self._pairs = remap[self._pairs]
        self._pair_list = [self._pair_list[i] for i in live.tolist()]
        self._pair_ids = {pair: i for i, pair in enumerate(self._pair_list)}
        self._prune_at = max(4096, 2 * len(self._pair_list))


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
