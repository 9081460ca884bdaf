"""The statistics that check adaptive sampling (`landscape.sampling.adaptive`) against full evaluation.

- One point, from its per-sample values: the estimate the stopping rule reaches in the run's own
  order, the coverage of +-2 SE over other random orders (`rule_coverage`), that of a plain mean of
  n samples (`fixed_n_coverage`), and the rule's bias (`stopping_bias`). `point_row` gathers them.
- The point check: a checkpoint's per-sample losses at random grid points (`check_points`), or
  values saved before (`check_values`), summarized by `summarize`.
- Surfaces: an adaptive surface file against a full one (`check_surface`), and several sample
  orders of one surface pooled per loss band and per point (`across_orders`).

Nothing here prints: scripts/validate_adaptive.py prints, writes the JSON and draws the figures.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from landscape.errors import LandscapeError
from landscape.sampling.adaptive import (SamplingPlan, SumsFn, estimate, forwards_used, sample_order, set_size,
                                         stratified_order)

if TYPE_CHECKING:
    from landscape.storage import Surface

BANDS = ((0, 1), (1, 2), (2, 5), (5, None))  # loss bands of the surface check; None: vmax


@dataclass(frozen=True)
class RuleCheck:
    """How each point's per-sample values are checked (field names as the script's flags)."""

    plan: SamplingPlan
    batch_size: int = 256  # the estimate's batch (n grows in whole batches)
    reps: int = 300  # random orders for the rule's coverage and a plain mean's
    fixed_n: tuple[int, ...] = ()  # also the coverage of a plain mean of these many samples
    stopping_bias: int = 0  # random orders for the rule's bias (`stopping_bias`); 0: not measured
    point_seed: int = 1  # of the random orders (the point check draws its points from them first)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise LandscapeError(f"batch_size must be >= 1, got {self.batch_size}", "batch_size")
        if self.reps < 1:
            raise LandscapeError(f"reps must be >= 1, got {self.reps}", "reps")
        if any(n < 2 for n in self.fixed_n):
            raise LandscapeError(f"fixed_n must be sample counts >= 2, got {list(self.fixed_n)}", "fixed_n")
        if self.stopping_bias < 0 or self.stopping_bias == 1:
            raise LandscapeError(f"stopping_bias must be 0 (off) or at least 2 orders, got {self.stopping_bias}",
                                 "stopping_bias")


@dataclass(frozen=True)
class PointSource:
    """Where the point check evaluates: a checkpoint on its training set, along two directions, at
    the center and random points of a grid."""

    ckpt: str
    dataset: str | None = None  # default: the checkpoint's metadata
    data_root: str | None = None
    n_samples: int | None = None  # a seeded subset taken as the full set
    precision: str = "fp32"
    dir_file: str | None = None  # default: directions drawn from `seed`, as plot_surface.py draws them
    x: str = "-1:1:51"
    y: str = "-1:1:51"
    seed: int = 0  # directions, subset and the common sample order
    points: int = 0  # random grid points besides the center
    radius: float | None = None  # draw them among those with |x|, |y| <= radius (None: the whole grid)


@dataclass(frozen=True)
class CheckedPoint:
    """One point of the point check: its numbers (`point_row`), per-sample losses and hits, and
    its place (k of count, the center first)."""

    row: dict
    values: np.ndarray
    hits: np.ndarray
    k: int
    count: int


def plan_of(tolerance: float | None, vlevel: float, **fields: Any) -> SamplingPlan:
    """The plan checked: `tolerance` by default vlevel / 4, as plot_surface.py --tolerance alone."""
    return SamplingPlan(tolerance=vlevel / 4 if tolerance is None else tolerance, **fields)


def orders(n: int, plan: SamplingPlan, key: np.ndarray | None,
           rng: np.random.Generator) -> Callable[[], np.ndarray]:
    """A new random order of n samples for each call: plain, or stratified by `key` (the center's
    per-sample losses in the same indexing) when the plan asks for strata."""
    if not plan.strata:
        return lambda: rng.permutation(n)
    if key is None:
        raise LandscapeError("strata needs key: the center's per-sample values the orders are stratified by",
                             "strata")
    key_t = torch.from_numpy(np.asarray(key, dtype=np.float64))
    return lambda: stratified_order(key_t, plan.strata, int(rng.integers(2 ** 62))).numpy()


def run_order(n: int, plan: SamplingPlan, key: np.ndarray | None) -> np.ndarray:
    """The order the adaptive run itself reads (saved values are in its common random order)."""
    if not plan.strata:
        return np.arange(n)
    return stratified_order(torch.from_numpy(np.asarray(key, dtype=np.float64)), plan.strata, plan.seed).numpy()


def inside(err: np.ndarray | float, se: np.ndarray | float, full: np.ndarray | float, rel: float = 0.0,
           z: float = 2.0) -> np.ndarray | np.bool_:
    """|error| <= z SE + rel |full|, up to float rounding (a point that used the whole set has SE 0
    and may differ from a full pass in another order by a few ulps). `rel` allows for a reference
    computed in other arithmetic (`check_surface`'s precision_allowance)."""
    return err <= z * se + (rel + 1e-9) * np.maximum(1.0, np.abs(full))


def array_sums(values: np.ndarray, hits: np.ndarray) -> SumsFn:
    """A `sums(start, stop)` over per-sample values already in the sampling order."""
    def sums(i: int, j: int) -> torch.Tensor:
        v, h = values[i:j], hits[i:j]
        return torch.tensor([[v.sum(), np.square(v).sum()], [h.sum(), h.sum()]], dtype=torch.float64)
    return sums


def rule_coverage(values: np.ndarray, hits: np.ndarray, plan: SamplingPlan, batch: int, reps: int,
                  rng: np.random.Generator, key: np.ndarray | None = None) -> dict:
    """The stopping rule over `reps` random orders (stratified by `key` when the plan has strata):
    coverage of +-2 SE, errors and samples used."""
    full = float(values.mean())
    covered, errs, ns, ratios = [], [], [], []
    draw = orders(len(values), plan, key, rng)
    for _ in range(reps):
        o = draw()
        est = estimate(array_sums(values[o], hits[o]), len(values), batch, plan)
        err = abs(est.loss - full)
        covered.append(inside(err, est.loss_se, full))
        errs.append(err)
        ns.append(est.n)
        ratios.append(err / est.loss_se if est.loss_se > 0 else 0.0)
    return {"coverage_2se": float(np.mean(covered)), "max_err": float(np.max(errs)),
            "rms_err": float(np.sqrt(np.mean(np.square(errs)))), "mean_n": float(np.mean(ns)),
            "rms_err_over_se": float(np.sqrt(np.mean(np.square(ratios))))}


def fixed_n_coverage(values: np.ndarray, n: int, reps: int, rng: np.random.Generator,
                     plan: SamplingPlan | None = None, key: np.ndarray | None = None) -> float:
    """Coverage of the plain normal mean +- 2 SE (finite-population corrected) from n random samples
    (the first n of a stratified order when `plan` has strata)."""
    full = values.mean()
    hits = 0
    draw = orders(len(values), plan, key, rng) if plan is not None and plan.strata else None
    for _ in range(reps):
        s = values[draw()[:n]] if draw is not None else values[rng.choice(len(values), n, replace=False)]
        se = s.std(ddof=1) / math.sqrt(n) * math.sqrt(1 - n / len(values))
        hits += inside(abs(s.mean() - full), se, full)
    return hits / reps


def stopping_bias(values: np.ndarray, plan: SamplingPlan, batch: int, reps: int,
                  rng: np.random.Generator | int = 0, key: np.ndarray | None = None) -> dict:
    """The stopping rule's bias over `reps` random orders of `values` (1-D; stratified by `key` when
    the plan has strata).

    bias: the mean of t = (estimate - full mean) / SE, with its SE (bias_se) and the coverage of
    +-plan.z SE. A point that stops once its SE is small stops more often where its prefix holds
    few of the rare large values: it reads low and its SE is small, so t is negative on average.
    Part of that is not the rule: for skewed values the mean and the SE of a fixed prefix are
    correlated, so even its t has a negative mean. err_bias (mean of estimate - full mean, over
    the RMS SE, with err_bias_se) is 0 in expectation for a fixed prefix and measures the rule
    alone. An estimate with SE 0 (the whole set) counts t = 0.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) < 1:
        raise LandscapeError(f"values must be a non-empty 1-D array, got shape {values.shape}", "values")
    if reps < 2:
        raise LandscapeError(f"reps must be >= 2 (the bias's SE needs two orders), got {reps}", "reps")
    rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
    full = float(values.mean())
    zeros = np.zeros_like(values)
    draw = orders(len(values), plan, key, rng)
    t, err, se, ns = (np.empty(reps) for _ in range(4))
    for i in range(reps):
        o = draw()
        est = estimate(array_sums(values[o], zeros), len(values), batch, plan)
        err[i], se[i], ns[i] = est.loss - full, est.loss_se, est.n
        if est.loss_se > 0:
            t[i] = err[i] / est.loss_se
        else:  # the whole set (the full mean, up to rounding) or a constant prefix
            t[i] = 0.0 if inside(abs(err[i]), 0.0, full) else math.copysign(math.inf, err[i])
    rms_se = float(np.sqrt(np.mean(np.square(se))))
    scale = rms_se if rms_se > 0 else 1.0
    return {"orders": reps, "z": plan.z, "bias": float(t.mean()), "bias_se": float(t.std(ddof=1) / math.sqrt(reps)),
            "coverage": float(np.mean(inside(np.abs(err), se, full, z=plan.z))),
            "err_bias": float(err.mean() / scale), "err_bias_se": float(err.std(ddof=1) / math.sqrt(reps) / scale),
            "rms_se": rms_se, "mean_n": float(ns.mean())}


def pool_bias(points: list[dict]) -> dict:
    """`stopping_bias` of several points pooled: the mean over the points of bias and err_bias
    (each point weighs the same), with SE sqrt(sum SE^2) / points, and the coverage over all orders."""
    k = len(points)
    if k == 0:
        raise LandscapeError("pool_bias needs at least one point's stopping_bias")

    def pooled(name: str) -> tuple[float, float]:
        return (float(np.mean([p[name] for p in points])),
                float(math.sqrt(sum(p[name + "_se"] ** 2 for p in points)) / k))

    (bias, bias_se), (err_bias, err_bias_se) = pooled("bias"), pooled("err_bias")
    return {"points": k, "orders": sum(p["orders"] for p in points), "z": points[0]["z"], "bias": bias,
            "bias_se": bias_se,
            "coverage": float(np.mean([p["coverage"] for p in points])),
            "err_bias": err_bias, "err_bias_se": err_bias_se,
            "whole_set_points": sum(p["rms_se"] == 0 for p in points)}


def point_row(values: np.ndarray, hits: np.ndarray, key: np.ndarray | None, rule: RuleCheck,
              rng: np.random.Generator, bias_rng: np.random.Generator) -> dict:
    """One point's numbers: full mean; the rule's estimate in the run's order (SE, n, |error|,
    covered by +-2 SE); the rule over `rule.reps` random orders ("rule", with the plain mean's
    coverage per fixed n); and with `rule.stopping_bias` orders, the rule's bias."""
    full, size = float(values.mean()), len(values)
    o = run_order(size, rule.plan, key)
    est = estimate(array_sums(values[o], hits[o]), size, rule.batch_size, rule.plan)
    sim = rule_coverage(values, hits, rule.plan, rule.batch_size, rule.reps, rng, key)
    sim["fixed_n"] = {n: fixed_n_coverage(values, n, rule.reps, rng, rule.plan, key) for n in rule.fixed_n if n < size}
    row = {"full": full, "adaptive": est.loss, "se": est.loss_se, "n": est.n, "N": size, "err": abs(est.loss - full),
           "covered": inside(abs(est.loss - full), est.loss_se, full), "rule": sim}
    if rule.stopping_bias:
        row["stopping_bias"] = stopping_bias(values, rule.plan, rule.batch_size, rule.stopping_bias, bias_rng, key)
    return row


def _bias_rng(rule: RuleCheck) -> np.random.Generator:
    """The stopping bias's own generator: the other numbers are the same with and without it."""
    return np.random.default_rng([rule.point_seed, 1])


def per_sample(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: int, precision: str,
               device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample losses (float64) and hits (0/1) of the whole set at the model's current weights."""
    from landscape.engine.evaluate import eval_mode

    vals, hits = [], []
    with eval_mode(device, precision):
        for i in range(0, len(y), batch):
            out = model(x[i:i + batch])
            vals.append(loss_fn(out, y[i:i + batch]).double().cpu())
            hits.append((out.argmax(dim=1) == y[i:i + batch]).double().cpu())
    return torch.cat(vals).numpy(), torch.cat(hits).numpy()


def check_points(source: PointSource, rule: RuleCheck) -> Iterator[CheckedPoint]:
    """The center and `source.points` random grid points, each evaluated on the whole set sample by
    sample in the adaptive mode's common order, one `CheckedPoint` at a time (row: `point_row`, with
    the point's x, y first and its seconds last). The model's weights are restored at the end."""
    from landscape.directions import DirectionSpec, load_directions, make_directions, target_tensors
    from landscape.engine import EngineOptions, prepare_engine
    from landscape.engine.evaluate import cross_entropy
    from landscape.grid import Axis, Grid
    from landscape.sources.checkpoint import build_model, load_checkpoint
    from landscape.sources.data import load_dataset, resolve_normalization

    device = torch.device("cpu")
    ckpt = load_checkpoint(source.ckpt)
    model, _, _ = build_model(ckpt)
    dataset = source.dataset or ckpt.meta.get("dataset")
    norm, _ = resolve_normalization(None, dataset, ckpt.meta.get("normalization"))
    data = load_dataset(dataset, "train", source.data_root, source.n_samples, source.seed)
    x = data.x if norm is None else norm.apply(data.x)
    order = sample_order(len(data.y), source.seed)  # the adaptive mode's common order
    x, y = x[order], data.y[order]
    tensors = target_tensors(model, "weights")
    dirs = load_directions(source.dir_file) if source.dir_file else make_directions(tensors, DirectionSpec(),
                                                                                    source.seed, 2)
    grid = Grid(Axis.parse(source.x, "x"), Axis.parse(source.y, "y"))
    engine = prepare_engine(model, "weights", [dirs.x, dirs.y], EngineOptions(source.precision),
                            example=x[:rule.batch_size], check_points=grid.corners())
    setter = engine.setter
    x = engine.inputs(x)
    pts = grid.points()
    rng = np.random.default_rng(rule.point_seed)
    center = int(np.argmin(np.abs(pts).sum(axis=1)))
    pool = np.arange(grid.size)
    if source.radius is not None:
        pool = pool[np.abs(pts).max(axis=1) <= source.radius]
    picks = [center] + [int(i) for i in rng.choice(pool, size=min(source.points, len(pool)), replace=False)
                        if i != center]
    key, bias_rng = None, _bias_rng(rule)
    try:
        for k, idx in enumerate(picks):
            t0 = time.perf_counter()
            setter.set(pts[idx])
            vals, hits = per_sample(engine.model, x, y, cross_entropy, rule.batch_size, source.precision, device)
            key = vals if key is None else key  # the center comes first
            row = {"x": float(pts[idx][0]), "y": float(pts[idx][1]), **point_row(vals, hits, key, rule, rng, bias_rng)}
            row["seconds"] = time.perf_counter() - t0
            yield CheckedPoint(row, vals, hits, k, len(picks))
    finally:
        setter.restore()


def check_values(path: str, rule: RuleCheck) -> Iterator[dict]:
    """`point_row` (with x, y first) at each point whose per-sample values were saved to the .npz
    `path` (keys loss_<x>_<y>, hits_<x>_<y>; no model needed)."""
    data = np.load(path)
    plan, rng, bias_rng = rule.plan, np.random.default_rng(rule.point_seed), _bias_rng(rule)
    center = data["loss_0_0"].astype(np.float64) if "loss_0_0" in data.files else None
    if plan.strata and center is None:
        raise LandscapeError(f"{path} has no center (loss_0_0): strata orders the samples by its losses", "strata")
    for name in sorted(k for k in data.files if k.startswith("loss_")):
        vals = data[name].astype(np.float64)
        hits = data["hits_" + name[5:]] if "hits_" + name[5:] in data.files else np.ones_like(vals)
        # a point saved for a prefix of the common order (fewer values than the center) is
        # stratified by the center's losses on that prefix
        if center is not None and plan.strata and len(vals) > len(center):
            raise LandscapeError(f"{path}: {name} has {len(vals)} values, the center {len(center)}; "
                                 "strata needs the center's losses for every sample of a point", "strata")
        key = center[:len(vals)] if center is not None else None
        x, y = (float(c) for c in name[5:].split("_"))
        row = {"x": x, "y": y, **point_row(vals, hits, key, rule, rng, bias_rng)}
        row["covered"] = bool(row["covered"])
        yield row


def summarize(rows: list[dict], plan: SamplingPlan, ckpt: str | None = None, values: str | None = None,
              precision: str | None = None) -> dict:
    """The point check's rows summed up: the largest error below vmax, the points +-2 SE covers,
    the rule's least coverage (all points, loss < 1), the forwards saved, the pooled stopping bias."""
    below = [r for r in rows if r["full"] < plan.vmax]
    low = [r for r in rows if r["full"] < 1.0]
    summary = {
        "ckpt": ckpt, "values": values, "precision": precision, "plan": plan.settings(),
        "points": len(rows), "points_below_vmax": len(below),
        "covered": int(sum(bool(r["covered"]) for r in rows)),
        "max_err_below_vmax": max((r["err"] for r in below), default=float("nan")),
        "coverage_2se_points": float(np.mean([r["covered"] for r in rows])),
        "rule_coverage_min": min(r["rule"]["coverage_2se"] for r in rows),
        "rule_coverage_min_low_loss": min((r["rule"]["coverage_2se"] for r in low), default=float("nan")),
        "forwards_ratio": sum(r["N"] for r in rows) / sum(r["n"] for r in rows),
    }
    if any("stopping_bias" in r for r in rows):
        summary["stopping_bias"] = pool_bias([r["stopping_bias"] for r in rows if "stopping_bias" in r])
    summary["rows"] = rows
    return summary


def _direction_difference(a: str, b: str) -> dict:
    """Whether two direction files hold the same directions (largest difference relative to a tensor's scale)."""
    from landscape.directions import load_directions

    da, db = load_directions(a), load_directions(b)
    worst = 0.0
    for xa, xb in ((da.x, db.x), (da.y, db.y)):
        if xa is None or xb is None or len(xa) != len(xb):
            return {"same": False, "why": "different tensors"}
        for ta, tb in zip(xa, xb):
            if ta.shape != tb.shape:
                return {"same": False, "why": f"shapes {tuple(ta.shape)} vs {tuple(tb.shape)}"}
            scale = float(ta.double().abs().max()) or 1.0
            worst = max(worst, float((ta.double() - tb.double()).abs().max()) / scale)
    return {"same": worst < 1e-5, "max_rel_diff": worst}


def _beside(dir_file: str | None, surf_path: str) -> str | None:
    """A surface's direction file: as recorded, else the file of that name beside the surface
    (a file computed on another machine records that machine's path)."""
    if not dir_file:
        return None
    for p in (Path(dir_file), Path(surf_path).parent / Path(dir_file).name):
        if p.is_file():
            return str(p)
    return None


def _restrict(ref: Surface, ad: Surface, ad_path: str, ref_path: str) -> Surface:
    """The reference on the adaptive surface's grid, when that grid is part of the reference's (a
    shallow copy; `ref` is left as it is)."""
    def at(sub, full, axis):
        if sub is None and full is None:
            return None
        idx = [np.flatnonzero(np.isclose(full, c, atol=1e-9)) for c in (sub if sub is not None else [])]
        if full is None or sub is None or any(len(i) != 1 for i in idx):
            raise LandscapeError(f"{ad_path} is not on the grid of {ref_path} (its {axis} coordinates are not "
                                 "among the reference's)")
        return np.array([int(i[0]) for i in idx])
    ix, iy = at(ad.x, ref.x, "x"), at(ad.y, ref.y, "y")
    pick = (lambda a: a[np.ix_(iy, ix)]) if iy is not None else (lambda a: a[ix])
    ref = copy.copy(ref)  # the caller's reference serves other surfaces too; every field below is replaced
    ref.metrics = {k: pick(v) for k, v in ref.metrics.items()}
    ref.done = pick(ref.done)
    ref.x, ref.y = ad.x, ad.y
    return ref


def _bands(vmax: float) -> list[tuple[float, float]]:
    return [(lo, vmax if hi is None else hi) for lo, hi in BANDS]


def _allowance(precision_allowance: float | str, rel_diff: np.ndarray) -> float:
    """The relative allowance for the reference's arithmetic: 'auto' (the largest relative difference
    at the points evaluated on the whole set, 0 where there are none) or a number."""
    if precision_allowance == "auto":
        return float(rel_diff.max()) if rel_diff.size else 0.0
    try:
        return float(precision_allowance)
    except ValueError:
        raise LandscapeError(f"precision_allowance must be 'auto' or a number, got {precision_allowance!r}",
                             "precision_allowance") from None


def check_surface(path: str, reference: Surface, reference_path: str, vmax: float = 10.0,
                  precision_allowance: float | str = "auto") -> tuple[dict, dict]:
    """One adaptive surface file against the reference (a full Surface read from `reference_path`, of
    the same grid or one that contains it): (numbers, arrays for `across_orders` and figures)."""
    from landscape.storage import read_surface

    ad, ref = read_surface(path), reference
    if ad.shape != ref.shape or not np.allclose(ad.x, ref.x) or (ad.y is not None and not np.allclose(ad.y, ref.y)):
        ref = _restrict(ref, ad, path, reference_path)
    if "train_loss_se" not in ad.metrics:
        raise LandscapeError(f"{path} has no train_loss_se: compute it with tolerance", "tolerance")
    sampling = (ad.settings or {}).get("sampling") or {}
    tol = sampling.get("tolerance")
    both = ad.done & ref.done
    a, r, se = ad.metrics["train_loss"], ref.metrics["train_loss"], ad.metrics["train_loss_se"]
    err = np.abs(a - r)
    below = both & (r < vmax)
    covered = inside(err, se, r)
    used, full = forwards_used(ad, "train")
    size = full // max(int(ad.done.sum()), 1)
    # points evaluated on the whole set, when that set is the reference's (an n_samples subset is not)
    whole = both & (ad.metrics["train_n"] >= size) if set_size(ref) == size else np.zeros_like(both)
    rel_diff = err[whole] / np.maximum(np.abs(r[whole]), 1e-12)
    allowance = _allowance(precision_allowance, rel_diff)
    allowed = inside(err, se, r, allowance)
    bands = {}
    for lo, hi in _bands(vmax):
        m = both & (r >= lo) & (r < hi)
        if m.any():
            bands[f"{lo}-{hi}"] = {"points": int(m.sum()), "max_err": float(err[m].max()),
                                   "coverage_2se": float(covered[m].mean()),
                                   "coverage_2se_allowed": float(allowed[m].mean())}
    out = {
        "surface": path, "reference": reference_path, "tolerance": tol, "vmax": vmax,
        "sample_seed": sampling.get("seed"),
        "points": int(both.sum()), "points_below_vmax": int(below.sum()),
        "max_err_below_vmax": float(err[below].max()) if below.any() else float("nan"),
        "err_over_T_p99": float(np.quantile(err[below], 0.99) / tol) if below.any() and tol else None,
        "coverage_2se_below_vmax": float(covered[below].mean()) if below.any() else float("nan"),
        "coverage_2se_all": float(covered[both].mean()),
        "whole_set_points": int(whole.sum()),
        "whole_set_rel_diff_max": float(rel_diff.max()) if rel_diff.size else None,
        "whole_set_rel_diff_mean": float(rel_diff.mean()) if rel_diff.size else None,
        "precision_allowance": allowance,
        "coverage_2se_allowed_below_vmax": float(allowed[below].mean()) if below.any() else float("nan"),
        "bands": bands, "forwards_used": used, "forwards_full": full, "forwards_ratio": full / max(used, 1),
        "reference_precision": (ref.settings or {}).get("precision"), "precision": (ad.settings or {}).get("precision"),
    }
    dirs = [_beside(f.dir_file, p) for f, p in ((ad, path), (ref, reference_path))]
    if all(d is not None for d in dirs):
        out["directions"] = _direction_difference(*dirs)
    arrays = {"both": both, "full": r, "covered": covered, "allowed": allowed, "err": err, "x": ad.x, "y": ad.y,
              "tol": tol}
    return out, {**arrays, "ad": ad, "ref": ref}


def across_orders(runs: list[tuple[dict, dict]], vmax: float = 10.0) -> dict:
    """Coverage of +-2 SE over several sample orders of one surface (`check_surface` of each): per
    band, pooled over the runs and its least and largest value in one run; per point, the fraction
    of runs that cover it."""
    seeds = [o["sample_seed"] for o, _ in runs]
    if len(set(seeds)) != len(seeds):
        raise LandscapeError(f"the surfaces share sample orders (seeds {seeds}); compute each with its own seed",
                             "seed")
    first = runs[0][1]
    for (o, a) in runs[1:]:
        if a["covered"].shape != first["covered"].shape or not np.allclose(a["x"], first["x"]) or (
                a["y"] is not None and not np.allclose(a["y"], first["y"])):
            raise LandscapeError(f"{o['surface']} is not on the grid of {runs[0][0]['surface']}; "
                                 "compare runs of the same grid")
        if o.get("directions", {}).get("same") is False:
            raise LandscapeError(f"{o['surface']} was computed along other directions than the reference")
    both = np.all([a["both"] for _, a in runs], axis=0)
    full = first["full"]
    hits = np.sum([a["covered"] & both for _, a in runs], axis=0)
    hits_allowed = np.sum([a["allowed"] & both for _, a in runs], axis=0)
    within = np.sum([(a["err"] <= (a["tol"] or np.inf)) & both for _, a in runs], axis=0)
    frac = np.where(both, hits / len(runs), np.nan)
    bands = {}
    for lo, hi in _bands(vmax):
        m = both & (full >= lo) & (full < hi)
        if not m.any():
            continue
        per_run = [float(a["covered"][m].mean()) for _, a in runs]
        bands[f"{lo}-{hi}"] = {"points": int(m.sum()), "coverage_2se_pooled": float(hits[m].sum() / (m.sum() * len(runs))),
                               "coverage_2se_per_run": per_run, "coverage_2se_min_run": min(per_run),
                               "coverage_2se_max_run": max(per_run),
                               "coverage_2se_allowed_pooled": float(hits_allowed[m].sum() / (m.sum() * len(runs))),
                               "within_T_pooled": float(within[m].sum() / (m.sum() * len(runs))),
                               "point_coverage_min": float(frac[m].min())}
    below = both & (full < vmax)
    return {"runs": len(runs), "seeds": seeds, "points": int(both.sum()), "points_below_vmax": int(below.sum()),
            "coverage_2se_pooled_below_vmax": float(hits[below].sum() / (below.sum() * len(runs))) if below.any() else None,
            "max_err_below_vmax_per_run": [o["max_err_below_vmax"] for o, _ in runs],
            "coverage_2se_allowed_pooled_below_vmax":
                float(hits_allowed[below].sum() / (below.sum() * len(runs))) if below.any() else None,
            "precision_allowance_per_run": [o["precision_allowance"] for o, _ in runs],
            "within_T_pooled_below_vmax": float(within[below].sum() / (below.sum() * len(runs))) if below.any() else None,
            "bands": bands, "point_coverage": frac.tolist()}
