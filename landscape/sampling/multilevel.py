"""Coarse-to-fine adaptive sampling: a point's coarser neighbours serve as its control variate.

With common random numbers (every point reads the data in one seeded order), the per-sample
losses of neighbouring grid points are almost the same, and ell_p - (ell_a + ell_b) / 2, for the
neighbours a, b on either side, has a small fraction of the variance of ell_p (measured on the
CIFAR-10 ResNet-56 surface: BENCHMARKS.md). So a point p whose coarser neighbours q_i are known
precisely is estimated as

    L(p) ~ sum_i w_i L(q_i) + mean over the first n samples of (ell_p - sum_i w_i ell_{q_i})

(w: the cubic's weights -1/16, 9/16, 9/16, -1/16 through four equally spaced coarser points
where they exist, else linear interpolation between the two bracketing ones), which needs far
fewer samples than mean(ell_p) for the same standard error. The grid is split into levels as in a multigrid: level 0 holds the indices that
are multiples of a coarsest stride S (and the last index) along each axis, level k those that
are multiples of S / 2^k. Level-0 points are estimated directly; a finer point is interpolated
along an axis whose index is new at its level from the nearest coarser points on that axis (a
point new along both axes uses the points of its own level new along y only, done first).

Every estimate is a linear combination of prefix means, sum_t c_t mean_{[0, n_t)}(ell_{u_t}),
of per-sample values read in the one common order. For nested prefixes of one random order,
Cov(mean_{n} X, mean_{m} Y) = Cov(X, Y) / max(n, m), so the estimate's variance is
sum_{s,t} c_s c_t Cov(ell_{u_s}, ell_{u_t}) / max(n_s, n_t), each covariance taken over the
common prefix (no finite-population factor, as in `landscape.sampling.adaptive`). In a stratified order
(`--stratify`) the same formula is an upper bound: each covariance then counts the part the
strata remove, and that part adds a positive semidefinite term (the min(1/n_s, 1/n_t) kernel
times a covariance matrix) to the variance. Level k of levels 0..L
aims at a bound z * SE <= T * sqrt((k + 1) / (L + 1)) (an equal share of the variance budget per
level), so the finest points reach T with their ancestors' error included.
After its first chunk a point takes, of the direct mean and its stencils (the cubic, and where
the cubic reaches past the bracketing points the linear interpolation between them), the one
whose bound needs the fewest samples (the parents' part of the variance does not shrink as n
grows, so a stencil with an imprecise parent, e.g. one stopped above vmax, loses to the direct
mean or to the linear stencil that leaves that parent out); a point that uses the whole set is
its direct mean (exact, SE 0). The stopping rules of `landscape.sampling.adaptive.estimate` apply (tolerance,
vmax, low-loss, effective sample size) with one change: a point that has children stops on the
vmax rule only once its lower bound is above PARENT_VMAX x vmax, if it is a level-0 point or uses
a control, since children between it and a neighbour below vmax may fall below vmax and need it
precise (why these parents and not others: BENCHMARKS.md, "refining parents near vmax"). The file
records per point which estimate was used
(`<split>_control`: 0 the direct mean, 1 the cubic or linear parents, 2 the linear fallback).

Points are evaluated level by level in one process; per-sample values are kept for points that
have children, in memory and in a file beside the surface (`SampleStore`, `<stem>_samples.h5`,
appended as points finish), so a resumed run reads its ancestors' values instead of computing
them again; without that file (or with one from another run) they are recomputed in the same
batches. Either way a resumed run's estimates equal an uninterrupted run's bit for bit (with
the file, its forwards too; without, the recomputation is charged to the points that need it).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np

from landscape.sampling.adaptive import MULTILEVEL_SCHEME, Estimate, SamplingPlan, _round_up, mean_se
from landscape.errors import LandscapeError

# a point with children stops on the vmax rule only once its lower bound is above this many vmax
PARENT_VMAX = MULTILEVEL_SCHEME["parents_stop_above_vmax_times"]


def coarsest_stride(m: int, min_points: int = 5) -> int:
    """The largest power of 2, S, that leaves at least `min_points` level-0 indices on an axis of m."""
    s = 1
    while (m - 1) // (2 * s) >= min_points - 1:
        s *= 2
    return s


def axis_levels(m: int, stride: int) -> np.ndarray:
    """Per index of an axis of m: 0 for multiples of `stride` and the last index, else k for
    multiples of stride / 2^k."""
    levels = np.zeros(m, dtype=np.int64)
    for i in range(m):
        if i % stride == 0 or i == m - 1:
            continue
        s, k = stride, 0
        while i % s:
            s //= 2
            k += 1
        levels[i] = k
    return levels


def level_share(level: int, depth: int) -> float:
    """The fraction of the squared tolerance a point of `level` (of 0..depth) may use, its
    ancestors' error included: equal shares per level, (level + 1) / (depth + 1). Level k costs
    K_k / (its share), K_k = (its points) x (its residual's per-sample variance) / T^2; the total
    is least with shares proportional to sqrt(K_k), which on the CIFAR-10 ResNet-56 surface came
    out close to equal shares (BENCHMARKS.md)."""
    return (level + 1) / (depth + 1)


class Hierarchy:
    """Levels and interpolation parents of every point of a grid of `shape` ((nx,) or (ny, nx),
    flat index iy * nx + ix)."""

    def __init__(self, shape: tuple[int, ...], cubic: bool = True):
        self.shape = tuple(int(m) for m in shape)
        if len(self.shape) not in (1, 2):
            raise ValueError(f"a 1-D or 2-D grid is needed, got shape {shape}")
        sizes = self.shape[::-1]  # (nx,) or (nx, ny)
        self.stride = min(coarsest_stride(m) for m in sizes)
        self.depth = int(round(math.log2(self.stride)))  # levels 0..depth
        lv = [axis_levels(m, self.stride) for m in sizes]
        size = int(np.prod(self.shape))
        nx = sizes[0]
        self.level = np.zeros(size, dtype=np.int64)
        self.stage = np.zeros(size, dtype=np.int64)
        self.parents: list[list[tuple[int, float]]] = [[] for _ in range(size)]
        self.fallback: list[list[tuple[int, float]]] = [[] for _ in range(size)]  # linear, where parents is cubic
        for p in range(size):
            idx = (p % nx,) if len(sizes) == 1 else (p % nx, p // nx)  # (ix, iy)
            pl = [int(lv[a][i]) for a, i in enumerate(idx)]
            lev = max(pl)
            self.level[p] = lev
            if lev == 0:
                continue
            new = [a for a in range(len(idx)) if pl[a] == lev]
            self.stage[p] = len(new) - 1  # a point new along both axes comes after those new along one
            axis = new[0]  # along x when both are new: its x-neighbours are new along y only
            i = idx[axis]
            below = np.flatnonzero(lv[axis] < lev)
            lo, hi = int(below[below < i].max()), int(below[below > i].min())

            def flat(j: int) -> int:
                q = list(idx)
                q[axis] = j
                return q[0] if len(q) == 1 else q[1] * nx + q[0]

            linear = [(flat(lo), (hi - i) / (hi - lo)), (flat(hi), (i - lo) / (hi - lo))]
            self.parents[p] = linear
            d = i - lo
            if cubic and hi - i == d and i - 3 * d in set(below) and i + 3 * d in set(below):
                # the cubic through 4 equally spaced coarser points (exact for cubic polynomials), and
                # the two bracketing points alone for when an outer one is imprecise
                self.parents[p] = [(flat(i - 3 * d), -1 / 16), (flat(lo), 9 / 16), (flat(hi), 9 / 16),
                                   (flat(i + 3 * d), -1 / 16)]
                self.fallback[p] = linear
        self.children = np.zeros(size, dtype=np.int64)
        for ps in self.parents:
            for q, _ in ps:
                self.children[q] += 1

    def stencil(self, p: int, kind: int) -> list[tuple[int, float]]:
        """The (point, weight) pairs p is interpolated from: kind 1 its parents (the cubic where
        there is room, else linear), kind 2 the linear fallback (empty where parents is linear),
        kind 0 none (the direct mean)."""
        return self.parents[p] if kind == 1 else self.fallback[p] if kind == 2 else []

    def order(self, indices: np.ndarray) -> np.ndarray:
        """`indices` sorted coarse to fine: by level, then stage, then flat index."""
        indices = np.asarray(indices, dtype=np.int64)
        return indices[np.lexsort((indices, self.stage[indices], self.level[indices]))]


def samples_path(surface_path: str | os.PathLike) -> Path:
    """Where the per-sample values of a coarse-to-fine surface are kept: `<stem>_samples.h5`."""
    path = Path(surface_path)
    return path.with_name(f"{path.stem}_samples.h5")


class SampleStore:
    """Per-sample values of the points that have children, in an HDF5 file beside the surface:
    one resizable (metrics, samples) float64 dataset per point under a group per split, appended
    as points finish. A cache, not the record: the surface file is; entries are trusted only when
    the file's `fingerprint` (the surface's settings and creation time) matches and only for
    points the surface has done, and an unreadable file is started afresh."""

    def __init__(self, path: str | os.PathLike, group: str, fingerprint: str):
        self.path, self.group, self.fingerprint = Path(path), group or "main", fingerprint
        self.lengths: dict[int, int] = {}  # point -> samples stored

    def _open(self) -> h5py.File:
        try:
            f = h5py.File(self.path, "a")
        except OSError:  # torn by a kill mid-write, or not HDF5: a cache, so start again
            self.path.unlink(missing_ok=True)
            f = h5py.File(self.path, "a")
        if f.attrs.get("fingerprint") != self.fingerprint:
            for name in list(f):
                del f[name]
            f.attrs["fingerprint"] = self.fingerprint
        return f

    def load(self, wanted: Mapping[int, int]) -> dict[int, np.ndarray]:
        """The stored values of the points in `wanted` ({point: samples needed}), cut to that
        length; every other entry is dropped (points not done in the surface are recomputed)."""
        out: dict[int, np.ndarray] = {}
        try:
            with self._open() as f:
                g = f.require_group(self.group)
                for name in list(g):
                    p = int(name)
                    ds = g[name]
                    need = wanted.get(p, 0)
                    if need == 0:
                        del g[name]
                        continue
                    have = min(need, ds.shape[1])
                    ds.resize(have, axis=1)
                    out[p] = ds[...]
                    self.lengths[p] = have
        except (OSError, KeyError, ValueError, TypeError):  # damaged inside: recompute what it held
            self.path.unlink(missing_ok=True)
            self.lengths.clear()
            return {}
        return out

    def append(self, entries: Mapping[int, np.ndarray]) -> None:
        """Write the samples of each entry beyond what is stored (the values only ever grow)."""
        entries = {p: v for p, v in entries.items() if v.shape[1] > self.lengths.get(p, 0)}
        if not entries:
            return
        with self._open() as f:
            g = f.require_group(self.group)
            for p, v in entries.items():
                name = str(p)
                if name not in g:
                    g.create_dataset(name, shape=(v.shape[0], 0), maxshape=(v.shape[0], None), dtype="f8",
                                     chunks=(v.shape[0], 4096))
                    self.lengths[p] = 0
                ds, old = g[name], self.lengths[p]
                ds.resize(v.shape[1], axis=1)
                ds[:, old:] = v[:, old:]
                self.lengths[p] = v.shape[1]


class MultilevelMeasure:
    """A measure for `compute_surface` like `adaptive.SampledMeasure`, with the coarse-to-fine
    control variate of this module. It moves the model itself (`block`), orders the points
    (`point_order`), and reads the points already in the file on a resumed run (`resume`)."""

    points_per_pass = 1

    def __init__(self, evaluator, plan: SamplingPlan, grid, population: int | None = None):
        if evaluator.metric_names[0] != "loss":
            raise ValueError(f"the evaluator's first metric must be the loss, got {evaluator.metric_names}")
        if plan.tolerance is None:
            raise LandscapeError("coarse-to-fine sampling needs a tolerance (--tolerance)")
        self.evaluator = evaluator
        self.plan = plan
        self.population = population
        self.size = len(evaluator)
        self.batch = evaluator.batch_size
        self.points = grid.points()
        self.lookup = {tuple(float(c) for c in pt): i for i, pt in enumerate(self.points)}
        self.h = Hierarchy(grid.shape, cubic=MULTILEVEL_SCHEME["interpolation"] == "cubic")
        # n: the point's own samples; forwards: what evaluating it cost (its samples and the
        # samples its parents had to add to serve as its control); control: 1 if its estimate
        # uses the parents' interpolation, 0 if it is the direct mean
        self.metric_names = (tuple(x for m in evaluator.metric_names for x in (m, f"{m}_se"))
                             + ("n", "forwards", "control"))
        self.forwards = 0
        self.cache: dict[int, np.ndarray] = {}  # point -> (n_metrics, length) per-sample values
        self.terms: dict[int, dict[tuple[int, int], float]] = {}  # point -> {(point, n): coefficient}
        self.at: int | None = None  # the point the model is at
        self.last: Estimate | None = None
        self.store: SampleStore | None = None  # set by `resume`

    def __len__(self) -> int:
        return self.size

    # -- compute_surface hooks
    def point_order(self, indices: np.ndarray) -> np.ndarray:
        return self.h.order(indices)

    def resume(self, values: Mapping[str, np.ndarray], done: np.ndarray, store: SampleStore | None = None) -> None:
        """Take the points done in the file (their n and whether they used a control) as parents,
        with their per-sample values from `store` (kept up to date from here on) where it has them.

        A parent's values are cut to the samples the done points used, so the points still to do
        extend them exactly as an uninterrupted run would (and count the same forwards)."""
        for p in self.h.order(np.flatnonzero(done)):
            p = int(p)
            n = int(values["n"][p])
            self.terms[p] = self._terms(p, n, int(round(values["control"][p])) if n < self.size else 0)
        self.store = store
        if store is not None:
            need: dict[int, int] = {}
            for p, terms in self.terms.items():
                for u, n in terms:
                    if self.h.children[u] > 0:
                        need[u] = max(need.get(u, 0), n)
            self.cache.update(store.load(need))

    def block(self, setter, coords: np.ndarray) -> list[tuple[float, ...]]:
        try:
            return [self._point(setter, self.lookup[tuple(float(c) for c in pt)]) for pt in coords]
        finally:
            self.at = None  # compute_surface may move the model between blocks

    # -- one point
    def _tolerance(self, p: int) -> float:
        return self.plan.tolerance * math.sqrt(level_share(int(self.h.level[p]), self.h.depth))

    def _vmax(self, p: int, kind: int) -> float:
        """Where p stops on the vmax rule. A point others interpolate from stops only well above
        vmax (PARENT_VMAX x) when it is cheap to make precise there, at level 0 (the roots of
        every stencil) or with a control of its own: its children may fall below vmax and need
        it precise to use it. A direct point above vmax at a finer level stops as any point does:
        making it precise costs a direct estimate's samples (30-50 k near vmax on CIFAR-10), more
        than its children save."""
        vmax = self.plan.vmax
        if self.h.children[p] and (self.h.level[p] == 0 or kind > 0):
            vmax += (PARENT_VMAX - 1) * abs(vmax)
        return vmax

    def _terms(self, p: int, n: int, kind: int, own: bool = True) -> dict[tuple[int, int], float]:
        """The estimate of p at n samples as {(point, n): coefficient}, interpolated from stencil
        `kind` (`Hierarchy.stencil`; 0: the direct mean); `own=False`: the interpolation alone."""
        terms = {(p, n): 1.0} if own else {}
        for q, w in self.h.stencil(p, kind):
            for key, c in self.terms[q].items():
                terms[key] = terms.get(key, 0.0) + w * c
            if own:
                terms[(q, n)] = terms.get((q, n), 0.0) - w
        return {k: c for k, c in terms.items() if c != 0.0}

    def _values(self, setter, u: int, length: int) -> np.ndarray:
        """The per-sample values of point u over [0, length), computed in whole aligned batches."""
        have = self.cache.get(u)
        done = 0 if have is None else have.shape[1]
        if done < length:
            if self.at != u:
                setter.set(self.points[u])
                self.at = u
            new = self.evaluator.values(done, length).cpu().numpy()
            self.forwards += length - done
            have = new if have is None else np.concatenate([have, new], axis=1)
            self.cache[u] = have
        return have

    def _stats(self, setter, terms: dict[tuple[int, int], float], exact: bool):
        """Per metric (mean, SE) of the linear combination `terms`."""
        keys = list(terms)
        c = np.array([terms[k] for k in keys])
        ns = np.array([n for _, n in keys])
        vals = {u: self._values(setter, u, max(n for v, n in keys if v == u)) for u in {u for u, _ in keys}}
        n_metrics = next(iter(vals.values())).shape[0]
        means = [float(sum(ci * vals[u][k, :n].sum() / n for ci, (u, n) in zip(c, keys))) for k in range(n_metrics)]
        if exact:
            return means, [0.0] * n_metrics
        var = np.zeros(n_metrics)
        lo, hi = np.minimum.outer(ns, ns), np.maximum.outer(ns, ns)
        cc = np.outer(c, c) / hi
        for m in np.unique(ns):
            if m < 2:
                return means, [math.nan] * n_metrics
            pairs = lo == m
            rows = [i for i in range(len(keys)) if ns[i] >= m]
            units = sorted({keys[i][0] for i in rows})
            pos = {u: j for j, u in enumerate(units)}
            for k in range(n_metrics):
                x = np.stack([vals[u][k, :m] for u in units])
                cov = np.atleast_2d(np.cov(x, ddof=1))
                sel = np.ix_(rows, rows)
                ui = np.array([pos[keys[i][0]] for i in rows])
                var[k] += float((cc[sel] * cov[np.ix_(ui, ui)] * pairs[sel]).sum())
        return means, [math.sqrt(max(v, 0.0)) for v in var]

    def _point(self, setter, p: int) -> tuple[float, ...]:
        plan, size = self.plan, self.size
        tol = self._tolerance(p)
        target = (tol / plan.z) ** 2  # the variance the bound allows
        start = self.forwards
        n = min(size, _round_up(plan.n0, self.batch))
        # the stencils whose interpolation alone is precise enough, with its variance (fixed while n grows)
        v_anc: dict[int, float] = {0: 0.0}
        for kind in (1, 2):
            st = self.h.stencil(p, kind)
            if st and n < size and all(q in self.terms for q, _ in st):
                v = self._stats(setter, self._terms(p, n, kind, own=False), False)[1][0] ** 2
                if v < target:
                    v_anc[kind] = v
        kind, decided = 0, len(v_anc) == 1  # settled after the first chunk
        steps = []
        while True:
            exact = n >= size and self.population in (None, size)
            if n >= size:
                kind = 0  # the whole set: the direct mean (exact when the set is the population)
            if decided:
                terms = self._terms(p, n, kind)
                means, ses = self._stats(setter, terms, exact)
            else:  # the stencil (or none) whose bound needs the fewest samples, then the smallest SE
                best = None
                for k, v in v_anc.items():
                    k_terms = self._terms(p, n, k)
                    k_means, k_ses = self._stats(setter, k_terms, exact)
                    key = (max(_predicted(k_ses[0] ** 2, v, n, target), n), k_ses[0])
                    if best is None or key < best[0]:
                        best = (key, k, k_terms, k_means, k_ses)
                _, kind, terms, means, ses = best
                decided = True
            if n >= size and not exact:  # the whole subset of a larger set: direct s / sqrt(n)
                own = self.cache[p][:, :n]
                ses = [mean_se([row.sum(), np.square(row).sum()], n)[1] for row in own]
            loss, loss_se = means[0], ses[0]
            steps.append((n, loss, loss_se))
            if n >= size:
                break
            bound = plan.z * loss_se
            own = self.cache[p][0, :n]
            s, q = float(own.sum()), float(np.square(own).sum())
            if loss < plan.low_loss and n < plan.n_low:
                want = plan.n_low
            elif q > 0 and s * s / q < plan.ess_min:
                want = 2 * n
            elif bound <= tol:
                break
            elif plan.vmax is not None and loss - plan.z_vmax * loss_se > self._vmax(p, kind):
                break
            else:
                want = min(_predicted(loss_se ** 2, v_anc[kind], n, target), plan.max_growth * n)
            n = min(size, _round_up(max(want, n + 1), self.batch))
        self.terms[p] = terms
        if self.h.children[p] == 0:
            self.cache.pop(p, None)  # nobody interpolates from it
        if self.store is not None:  # p and the parents it extended
            self.store.append({u: self.cache[u] for u in {p, *(q for q, _ in self.h.parents[p])} if u in self.cache})
        self.last = Estimate(means, ses, n, steps)
        return (tuple(x for m, e in zip(means, ses) for x in (m, e))
                + (float(n), float(self.forwards - start), float(kind)))


def _predicted(v_all: float, v_fixed: float, n: int, target: float) -> float:
    """Samples for the variance to reach `target` if the part above `v_fixed` shrinks as 1/n
    (+10 %); inf when it cannot."""
    if not (math.isfinite(v_all) and math.isfinite(v_fixed)) or v_fixed >= target:
        return math.inf
    if v_all <= v_fixed:
        return float(n)
    return 1.1 * (v_all - v_fixed) * n / (target - v_fixed)
