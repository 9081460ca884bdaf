#!/usr/bin/env python3
"""Validate adaptive sampling (plot_surface.py --tolerance) against full evaluation.

Two checks, each optional:

1. Points (`--points K`): K seeded random grid points (and the center) are evaluated on the
   whole set, sample by sample, in the common random order of the adaptive mode. From those
   per-sample values the script gives, per point: the full mean; the adaptive estimate the
   stopping rule reaches in that order (what `--tolerance` computes there) with its SE and
   sample count; and the coverage of +-2 SE for the same rule over `--reps` other random
   orders (how honest the bound is at that point, the low-loss region included).
2. Surfaces (`--surface A --reference B`): an adaptive surface file against a full one of the
   same grid (or of a grid that contains it), at every point: max |difference| where the full
   loss is below vmax, coverage of +-2 SE per loss band, the forwards used against a full
   evaluation, and whether the two direction files hold the same directions.
3. Orders (`--surface A1 A2 ... --reference B`): the same surface computed in several common
   random orders (`plot_surface.py --seed K --dir_file D`, the same directions). All points of
   one run read the same first samples, so one run's errors are correlated across a region and
   its coverage per band is a few draws; over the runs, the coverage per band pooled, its spread
   between runs, and per point the fraction of runs whose +-2 SE covers the full value.

Prints a summary and writes every number to `--json`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from landscape.sampling.adaptive import (SamplingPlan, estimate, forwards_used, sample_order, set_size,  # noqa: E402
                                stratified_order)
from landscape.errors import LandscapeError, exit_on_error  # noqa: E402
from landscape.grid import Axis, Grid  # noqa: E402

EXAMPLE = """examples:
  # digits ResNet-56, 20 random points of the 51x51 grid plus the center, T = 0.125
  python scripts/validate_adaptive.py --ckpt checkpoints/digits_resnet56.pt --points 20 --json results/validate_digits.json
  # the akamaster ResNet-20 on the CIFAR-10 JPEG train set (10,000-image subset as the full set)
  python scripts/validate_adaptive.py --ckpt /work/shared/checkpoints/akamaster/resnet20-12fca82f.th \\
      --dataset cifar10 --data-root /work/shared/data/cifar10 --n-samples 10000 --precision bf16 --points 12
  # an adaptive surface against a full one of the same grid
  python scripts/validate_adaptive.py --surface results/adaptive.h5 --reference results/full.h5
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default=None, help="checkpoint for the point check")
    p.add_argument("--dataset", default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--n-samples", type=int, default=None, help="a seeded subset taken as the full set")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dir_file", default=None, help="directions to use (default: drawn from --seed as plot_surface)")
    p.add_argument("--x", default="-1:1:51")
    p.add_argument("--y", default="-1:1:51")
    p.add_argument("--seed", type=int, default=0, help="directions, subset and the common sample order")
    p.add_argument("--points", type=int, default=0, help="random grid points to check on the whole set")
    p.add_argument("--point-seed", type=int, default=1)
    p.add_argument("--radius", type=float, default=None,
                   help="draw the points among those with |x|, |y| <= radius (default: the whole grid)")
    p.add_argument("--fixed-n", default="64,256,1024",
                   help="also the coverage of the plain normal +-2 SE at these fixed sample counts")
    p.add_argument("--reps", type=int, default=300, help="random orders for the coverage of the rule")
    p.add_argument("--tolerance", type=float, default=None, help="default vlevel/4")
    p.add_argument("--vlevel", type=float, default=0.5)
    p.add_argument("--vmax", type=float, default=10.0)
    p.add_argument("--n0", type=int, default=256)
    p.add_argument("--z", type=float, default=2.0)
    p.add_argument("--z-vmax", type=float, default=3.5)
    p.add_argument("--n-low", type=int, default=2048)
    p.add_argument("--low-loss", type=float, default=0.1)
    p.add_argument("--stratify", nargs="?", type=int, const=256, default=0, metavar="K",
                   help="points/values: the orders stratified into K strata of the center's per-sample loss, as "
                        "plot_surface.py --stratify makes them (--stratify alone: K = 256)")
    p.add_argument("--values", default=None,
                   help="an .npz of per-sample losses saved by --save-values (keys loss_<x>_<y>, hits_<x>_<y>): "
                        "the rule's coverage from them, with no forward pass")
    p.add_argument("--save-values", default=None, help="save the points' per-sample losses and hits to this .npz")
    p.add_argument("--surface", default=None, nargs="+",
                   help="an adaptive surface file; several: the same surface in other sample orders")
    p.add_argument("--reference", default=None, help="a full surface file of the same grid")
    p.add_argument("--figure", default=None,
                   help="with --surface/--reference: write STEM.png/.pdf, the full and the adaptive contours "
                        "beside |difference| / T (several surfaces: the per-point coverage over the orders "
                        "beside the coverage per band)")
    p.add_argument("--precision-allowance", default="auto",
                   help="with --surface: also the coverage of +-(2 SE + REL |full loss|), for a reference computed "
                        "in other arithmetic (e.g. bf16 on a GPU); 'auto': the largest relative difference at the "
                        "points the adaptive run evaluated on the whole set, when that set is the reference's (there "
                        "the SE is 0 and any difference is arithmetic), 0 where there are none")
    p.add_argument("--vmin", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write every number here")
    return p.parse_args(argv)


def plan_of(args: argparse.Namespace) -> SamplingPlan:
    tol = args.tolerance if args.tolerance is not None else args.vlevel / 4
    return SamplingPlan(tolerance=tol, n0=args.n0, z=args.z, vmax=args.vmax, z_vmax=args.z_vmax,
                        low_loss=args.low_loss, n_low=args.n_low, seed=args.seed, strata=args.stratify)


def orders(n: int, plan: SamplingPlan, key: np.ndarray | None, rng: np.random.Generator):
    """A new random order of n samples for each call: plain, or stratified by `key` (the center's
    per-sample losses in the same indexing) when the plan asks for strata."""
    if not plan.strata:
        return lambda: rng.permutation(n)
    key_t = torch.from_numpy(np.asarray(key, dtype=np.float64))
    return lambda: stratified_order(key_t, plan.strata, int(rng.integers(2 ** 62))).numpy()


def run_order(n: int, plan: SamplingPlan, key: np.ndarray | None) -> np.ndarray:
    """The order the adaptive run itself reads (the saved values are in its common random order)."""
    if not plan.strata:
        return np.arange(n)
    return stratified_order(torch.from_numpy(np.asarray(key, dtype=np.float64)), plan.strata, plan.seed).numpy()


def inside(err, se, full, rel: float = 0.0):
    """|error| <= 2 SE + rel |full|, up to float rounding (a point that used the whole set has SE 0
    and may differ from a full pass in another order by a few ulps). `rel` allows for a reference
    computed in other arithmetic (see `--precision-allowance`)."""
    return err <= 2 * se + (rel + 1e-9) * np.maximum(1.0, np.abs(full))


def array_sums(values: np.ndarray, hits: np.ndarray):
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


def per_sample(model, x, y, loss_fn, batch: int, precision: str, device) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample losses (float64) and hits (0/1) of the whole set at the model's current weights."""
    from landscape.engine.evaluate import eval_mode

    vals, hits = [], []
    with eval_mode(device, precision):
        for i in range(0, len(y), batch):
            out = model(x[i:i + batch])
            vals.append(loss_fn(out, y[i:i + batch]).double().cpu())
            hits.append((out.argmax(dim=1) == y[i:i + batch]).double().cpu())
    return torch.cat(vals).numpy(), torch.cat(hits).numpy()


def check_points(args: argparse.Namespace) -> dict:
    from landscape.sources.checkpoint import build_model, load_checkpoint
    from landscape.sources.data import load_dataset, resolve_normalization
    from landscape.directions import DirectionSpec, load_directions, make_directions, target_tensors
    from landscape.engine import EngineOptions, prepare_engine
    from landscape.engine.evaluate import cross_entropy

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    ckpt = load_checkpoint(args.ckpt)
    model, arch, _ = build_model(ckpt)
    dataset = args.dataset or ckpt.meta.get("dataset")
    norm, _ = resolve_normalization(None, dataset, ckpt.meta.get("normalization"))
    data = load_dataset(dataset, "train", args.data_root, args.n_samples, args.seed)
    x = data.x if norm is None else norm.apply(data.x)
    order = sample_order(len(data.y), args.seed)  # the adaptive mode's common order
    x, y = x[order], data.y[order]
    tensors = target_tensors(model, "weights")
    dirs = load_directions(args.dir_file) if args.dir_file else make_directions(tensors, DirectionSpec(), args.seed, 2)
    grid = Grid(Axis.parse(args.x, "x"), Axis.parse(args.y, "y"))
    engine = prepare_engine(model, "weights", [dirs.x, dirs.y], EngineOptions(args.precision),
                            example=x[:args.batch_size or 256], check_points=grid.corners())
    eval_model, setter = engine.model, engine.setter
    x = engine.inputs(x)
    pts = grid.points()
    rng = np.random.default_rng(args.point_seed)
    center = int(np.argmin(np.abs(pts).sum(axis=1)))
    pool = np.arange(grid.size)
    if args.radius is not None:
        pool = pool[np.abs(pts).max(axis=1) <= args.radius]
    picks = [center] + [int(i) for i in rng.choice(pool, size=min(args.points, len(pool)), replace=False)
                        if i != center]
    fixed = [int(n) for n in args.fixed_n.split(",") if n.strip()] if args.fixed_n else []
    plan = plan_of(args)
    rows, saved, key = [], {}, None
    for k, idx in enumerate(picks):
        t0 = time.perf_counter()
        setter.set(pts[idx])
        vals, hits = per_sample(eval_model, x, y, cross_entropy, args.batch_size, args.precision, device)
        full = float(vals.mean())
        saved[f"loss_{pts[idx][0]:g}_{pts[idx][1]:g}"], saved[f"hits_{pts[idx][0]:g}_{pts[idx][1]:g}"] = vals, hits
        key = vals if key is None else key  # the center comes first
        o = run_order(len(vals), plan, key)
        est = estimate(array_sums(vals[o], hits[o]), len(vals), args.batch_size, plan)
        sim = rule_coverage(vals, hits, plan, args.batch_size, args.reps, rng, key)
        sim["fixed_n"] = {n: fixed_n_coverage(vals, n, args.reps, rng, plan, key) for n in fixed if n < len(vals)}
        row = {"x": float(pts[idx][0]), "y": float(pts[idx][1]), "full": full, "adaptive": est.loss,
               "se": est.loss_se, "n": est.n, "N": len(vals), "err": abs(est.loss - full),
               "covered": inside(abs(est.loss - full), est.loss_se, full), "rule": sim,
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"[{k + 1}/{len(picks)}] ({row['x']:+.2f},{row['y']:+.2f}) full {full:.4g}  adaptive {est.loss:.4g} "
              f"+- {2 * est.loss_se:.3g} (n={est.n})  |err| {row['err']:.3g}  rule coverage {sim['coverage_2se']:.3f} "
              f"(mean n {sim['mean_n']:.0f}); plain normal at n=" +
              ", ".join(f"{n}: {c:.2f}" for n, c in sim["fixed_n"].items()), flush=True)
    setter.restore()
    if args.save_values:
        np.savez(args.save_values, **saved)
    return summarize(rows, plan, args)


def check_values(args: argparse.Namespace) -> dict:
    """The rule's coverage at points whose per-sample values were saved before (no model needed)."""
    data = np.load(args.values)
    plan, rng, rows = plan_of(args), np.random.default_rng(args.point_seed), []
    fixed = [int(n) for n in args.fixed_n.split(",") if n.strip()] if args.fixed_n else []
    center = data["loss_0_0"].astype(np.float64) if "loss_0_0" in data.files else None
    if plan.strata and center is None:
        raise LandscapeError(f"{args.values} has no center (loss_0_0): --stratify orders the samples by its losses")
    for key in sorted(k for k in data.files if k.startswith("loss_")):
        vals = data[key].astype(np.float64)
        hits = data["hits_" + key[5:]] if "hits_" + key[5:] in data.files else np.ones_like(vals)
        full = float(vals.mean())
        # a point saved for a prefix of the common order (fewer values than the center) is
        # stratified by the center's losses on that prefix
        if center is not None and plan.strata and len(vals) > len(center):
            raise LandscapeError(f"{args.values}: {key} has {len(vals)} values, the center {len(center)}; "
                                 "--stratify needs the center's losses for every sample of a point")
        ckey = center[:len(vals)] if center is not None else None
        o = run_order(len(vals), plan, ckey)
        est = estimate(array_sums(vals[o], hits[o]), len(vals), args.batch_size, plan)
        sim = rule_coverage(vals, hits, plan, args.batch_size, args.reps, rng, ckey)
        sim["fixed_n"] = {n: fixed_n_coverage(vals, n, args.reps, rng, plan, ckey) for n in fixed
                          if n < len(vals)}
        x, y = (float(c) for c in key[5:].split("_"))
        rows.append({"x": x, "y": y, "full": full, "adaptive": est.loss, "se": est.loss_se, "n": est.n,
                     "N": len(vals), "err": abs(est.loss - full),
                     "covered": bool(inside(abs(est.loss - full), est.loss_se, full)), "rule": sim})
        print(f"({x:+.2f},{y:+.2f}) N={len(vals)} full {full:.4g}  rule coverage {sim['coverage_2se']:.3f} "
              f"(mean n {sim['mean_n']:.0f}, max |err| {sim['max_err']:.3g}); plain normal at n=" +
              ", ".join(f"{n}: {c:.2f}" for n, c in sim["fixed_n"].items()), flush=True)
    return summarize(rows, plan, args)


def summarize(rows: list[dict], plan: SamplingPlan, args: argparse.Namespace) -> dict:
    below = [r for r in rows if r["full"] < plan.vmax]
    low = [r for r in rows if r["full"] < 1.0]
    summary = {
        "ckpt": args.ckpt, "values": args.values, "precision": args.precision, "plan": plan.settings(),
        "points": len(rows), "points_below_vmax": len(below),
        "covered": int(sum(bool(r["covered"]) for r in rows)),
        "max_err_below_vmax": max((r["err"] for r in below), default=float("nan")),
        "coverage_2se_points": float(np.mean([r["covered"] for r in rows])),
        "rule_coverage_min": min(r["rule"]["coverage_2se"] for r in rows),
        "rule_coverage_min_low_loss": min((r["rule"]["coverage_2se"] for r in low), default=float("nan")),
        "forwards_ratio": sum(r["N"] for r in rows) / sum(r["n"] for r in rows),
        "rows": rows,
    }
    print(f"points: max |adaptive - full| where loss < vmax: {summary['max_err_below_vmax']:.4g} (T = {plan.tolerance:g}); "
          f"+-2 SE covers {summary['coverage_2se_points']:.1%} of the points; the rule's coverage over "
          f"{args.reps} orders: min {summary['rule_coverage_min']:.1%} (loss < 1: "
          f"{summary['rule_coverage_min_low_loss']:.1%}); forwards saved {summary['forwards_ratio']:.1f}x")
    return summary


def _direction_difference(a: str, b: str) -> dict:
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


def _restrict(ref, ad, ad_path: str, ref_path: str):
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


BANDS = ((0, 1), (1, 2), (2, 5), (5, None))  # None: vmax


def _bands(vmax: float):
    return [(lo, vmax if hi is None else hi) for lo, hi in BANDS]


def check_surface(path: str, reference, args: argparse.Namespace) -> tuple[dict, dict]:
    """One adaptive surface against the reference (a Surface read from `args.reference`):
    (numbers, arrays for pooling across orders)."""
    from landscape.storage import read_surface

    ad, ref = read_surface(path), reference
    if ad.shape != ref.shape or not np.allclose(ad.x, ref.x) or (ad.y is not None and not np.allclose(ad.y, ref.y)):
        ref = _restrict(ref, ad, path, args.reference)
    if "train_loss_se" not in ad.metrics:
        raise LandscapeError(f"{path} has no train_loss_se: compute it with --tolerance")
    vmax = args.vmax
    tol = ((ad.settings or {}).get("sampling") or {}).get("tolerance")
    both = ad.done & ref.done
    a, r, se = ad.metrics["train_loss"], ref.metrics["train_loss"], ad.metrics["train_loss_se"]
    err = np.abs(a - r)
    below = both & (r < vmax)
    covered = inside(err, se, r)
    used, full = forwards_used(ad, "train")
    size = full // max(int(ad.done.sum()), 1)
    # points evaluated on the whole set, when that set is the reference's (a --n-samples subset is not)
    whole = both & (ad.metrics["train_n"] >= size) if set_size(ref) == size else np.zeros_like(both)
    rel_diff = err[whole] / np.maximum(np.abs(r[whole]), 1e-12)
    if args.precision_allowance == "auto":
        allowance = float(rel_diff.max()) if rel_diff.size else 0.0
    else:
        try:
            allowance = float(args.precision_allowance)
        except ValueError:
            raise LandscapeError(f"--precision-allowance must be 'auto' or a number, got {args.precision_allowance!r}") from None
    allowed = inside(err, se, r, allowance)
    bands = {}
    for lo, hi in _bands(vmax):
        m = both & (r >= lo) & (r < hi)
        if m.any():
            bands[f"{lo}-{hi}"] = {"points": int(m.sum()), "max_err": float(err[m].max()),
                                   "coverage_2se": float(covered[m].mean()),
                                   "coverage_2se_allowed": float(allowed[m].mean())}
    out = {
        "surface": path, "reference": args.reference, "tolerance": tol, "vmax": vmax,
        "sample_seed": ((ad.settings or {}).get("sampling") or {}).get("seed"),
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
    dirs = [_beside(f.dir_file, p) for f, p in ((ad, path), (ref, args.reference))]
    if all(d is not None for d in dirs):
        out["directions"] = _direction_difference(*dirs)
    print(f"{path} (sample order seed {out['sample_seed']}):")
    print(f"surfaces: {out['points_below_vmax']} of {out['points']} points below vmax={vmax:g}: max |adaptive - full| "
          f"{out['max_err_below_vmax']:.4g} (T = {tol}); +-2 SE covers {out['coverage_2se_below_vmax']:.1%} there, "
          f"{out['coverage_2se_all']:.1%} of all points; forwards {used:,} vs {full:,} ({out['forwards_ratio']:.1f}x)")
    if whole.any():
        print(f"  {out['whole_set_points']} points evaluated on the whole set differ from the reference by "
              f"{rel_diff.mean():.1e} relative on average, at most {rel_diff.max():.1e} (arithmetic, not sampling)")
    print(f"  allowing {allowance:.1e} x |full loss| for the reference's arithmetic: +-2 SE covers "
          f"{out['coverage_2se_allowed_below_vmax']:.1%} below vmax")
    for k, b in bands.items():
        print(f"  loss {k}: {b['points']} points, max |err| {b['max_err']:.4g}, coverage {b['coverage_2se']:.1%} "
              f"({b['coverage_2se_allowed']:.1%} with the allowance)")
    if "directions" in out:
        print(f"  directions: {out['directions']}")
    arrays = {"both": both, "full": r, "covered": covered, "allowed": allowed, "err": err, "x": ad.x, "y": ad.y,
              "tol": tol}
    return out, {**arrays, "ad": ad, "ref": ref}


def check_surfaces(args: argparse.Namespace) -> dict:
    """`--surface` against `--reference`: one file as `check_surface`; several, each of them and
    the coverage across their sample orders (`across_orders`)."""
    from landscape.storage import read_surface

    reference = read_surface(args.reference)
    runs = [check_surface(p, reference, args) for p in args.surface]
    if len(runs) == 1:
        out, arr = runs[0]
        if args.figure:
            out["figure"] = [str(p) for p in comparison(arr["ad"], arr["ref"], args, out["tolerance"], out)]
            print("figure: " + ", ".join(out["figure"]))
        return out
    out = {"runs": [o for o, _ in runs], "orders": across_orders(runs, args)}
    if args.figure:
        out["figure"] = [str(p) for p in orders_figure(runs, out["orders"], args)]
        print("figure: " + ", ".join(out["figure"]))
    return out


def across_orders(runs: list[tuple[dict, dict]], args: argparse.Namespace) -> dict:
    """Coverage of +-2 SE over several sample orders of one surface: per band, pooled over the runs
    and its least and largest value in one run; per point, the fraction of runs that cover it."""
    seeds = [o["sample_seed"] for o, _ in runs]
    if len(set(seeds)) != len(seeds):
        raise LandscapeError(f"the surfaces share sample orders (seeds {seeds}); compute each with its own --seed")
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
    for lo, hi in _bands(args.vmax):
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
    below = both & (full < args.vmax)
    out = {"runs": len(runs), "seeds": seeds, "points": int(both.sum()), "points_below_vmax": int(below.sum()),
           "coverage_2se_pooled_below_vmax": float(hits[below].sum() / (below.sum() * len(runs))) if below.any() else None,
           "max_err_below_vmax_per_run": [o["max_err_below_vmax"] for o, _ in runs],
           "coverage_2se_allowed_pooled_below_vmax":
               float(hits_allowed[below].sum() / (below.sum() * len(runs))) if below.any() else None,
           "precision_allowance_per_run": [o["precision_allowance"] for o, _ in runs],
           "within_T_pooled_below_vmax": float(within[below].sum() / (below.sum() * len(runs))) if below.any() else None,
           "bands": bands, "point_coverage": frac.tolist()}
    print(f"orders: {len(runs)} runs (seeds {', '.join(map(str, seeds))}), {out['points_below_vmax']} points below "
          f"vmax: +-2 SE covers {out['coverage_2se_pooled_below_vmax']:.1%} pooled "
          f"({out['coverage_2se_allowed_pooled_below_vmax']:.1%} with the precision allowance), |err| <= T at "
          f"{out['within_T_pooled_below_vmax']:.1%}")
    for k, b in bands.items():
        print(f"  loss {k}: {b['points']} points, coverage pooled {b['coverage_2se_pooled']:.1%} "
              f"(one run: {b['coverage_2se_min_run']:.1%} to {b['coverage_2se_max_run']:.1%}; "
              f"{b['coverage_2se_allowed_pooled']:.1%} with the precision allowance), "
              f"the least covered point {b['point_coverage_min']:.0%} of the runs")
    return out


def orders_figure(runs: list[tuple[dict, dict]], orders: dict, args: argparse.Namespace) -> list[Path]:
    """The fraction of runs whose +-2 SE covers each point (full-loss contours on top), beside the
    coverage per band: each run's, pooled, and pooled with the precision allowance."""
    from matplotlib.figure import Figure

    from landscape.plot.surface import save_figure

    a = runs[0][1]
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax = fig.add_subplot(1, 2, 1)
    frac = np.array(orders["point_coverage"], dtype=float)
    mesh = ax.pcolormesh(a["x"], a["y"], frac, shading="nearest", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(mesh, ax=ax, label=f"fraction of the {len(runs)} orders whose ±2 SE covers the full value")
    levels = [lv for lv in (1, 2, 5) if lv < args.vmax]
    ax.contour(a["x"], a["y"], a["full"], levels=levels, colors="white", linewidths=0.8)
    ax.set_xlabel("x (direction 1)")
    ax.set_ylabel("y (direction 2)")
    ax.set_title("per point (white: full loss 1, 2, 5)")
    ax = fig.add_subplot(1, 2, 2)
    names = list(orders["bands"])
    for i, k in enumerate(names):
        b = orders["bands"][k]
        ax.scatter([i] * len(b["coverage_2se_per_run"]), b["coverage_2se_per_run"], color="0.6", s=14,
                   label="one order" if i == 0 else None)
        ax.scatter([i], [b["coverage_2se_pooled"]], color="C3", s=50, marker="D",
                   label="pooled" if i == 0 else None)
        ax.scatter([i + 0.12], [b["coverage_2se_allowed_pooled"]], facecolors="none", edgecolors="C0", s=50,
                   marker="D", label="pooled, allowing the reference's arithmetic" if i == 0 else None)
    ax.axhline(0.95, color="0.3", linestyle="--", linewidth=0.8)
    ax.axhline(0.90, color="0.3", linestyle=":", linewidth=0.8)
    ax.set_xticks(range(len(names)), [f"loss {k}\n({orders['bands'][k]['points']} pts)" for k in names])
    ax.set_ylim(min(0.5, min(min(b["coverage_2se_per_run"]) for b in orders["bands"].values()) - 0.05), 1.01)
    ax.set_ylabel("±2 SE coverage")
    ax.legend(loc="lower right")
    ax.set_title(f"per band over {len(runs)} sample orders")
    return save_figure(fig, args.figure)


def comparison(ad, ref, args: argparse.Namespace, tol: float | None, out: dict) -> list[Path]:
    """Full contour | adaptive contour | |difference| in units of T, where the full loss < vmax."""
    from matplotlib.figure import Figure

    from landscape.plot.surface import contour, sampling_summary, save_figure

    fig = Figure(figsize=(15, 4.6), layout="constrained")
    contour(ref, "train_loss", args.vmin, args.vmax, args.vlevel, ax=fig.add_subplot(1, 3, 1))
    fig.axes[0].set_title(f"full: {out['forwards_full']:,} forwards")
    contour(ad, "train_loss", args.vmin, args.vmax, args.vlevel, ax=fig.add_subplot(1, 3, 2))
    fig.axes[1].set_title(f"adaptive: {out['forwards_used']:,} forwards")
    ax = fig.add_subplot(1, 3, 3)
    r = ref.metrics["train_loss"]
    diff = np.abs(ad.metrics["train_loss"] - r) / (tol or 1.0)
    shown = np.ma.masked_where(~(ad.done & ref.done) | ~(r < args.vmax), diff)  # (ny, nx)
    mesh = ax.pcolormesh(ad.x, ad.y, shown, shading="nearest", cmap="magma", vmin=0, vmax=max(1.0, float(shown.max())))
    fig.colorbar(mesh, ax=ax, label="|adaptive - full| / T" if tol else "|adaptive - full|")
    ax.set_xlabel("x (direction 1)")
    ax.set_ylabel("y (direction 2)")
    ax.set_title(f"max {out['max_err_below_vmax']:.3g}, ±2 SE covers {out['coverage_2se_below_vmax']:.0%} (loss < {args.vmax:g})")
    fig.suptitle(sampling_summary(ad), fontsize=10)
    return save_figure(fig, args.figure)


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = {}
    if args.points:
        if args.ckpt is None:
            raise LandscapeError("--points needs --ckpt (and --dataset/--data-root for files without metadata)")
        result["points"] = check_points(args)
    if args.values:
        result["values"] = check_values(args)
    if args.surface or args.reference:
        if not (args.surface and args.reference):
            raise LandscapeError("--surface and --reference go together")
        result["surfaces"] = check_surfaces(args)
    if not result:
        raise LandscapeError("nothing to check: pass --points K, --values FILE and/or --surface A --reference B")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
        print(f"numbers: {args.json}")


if __name__ == "__main__":
    main()
