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
   same grid, at every point: max |difference| where the full loss is below vmax, coverage of
   +-2 SE, the forwards used against a full evaluation, and whether the two direction files
   hold the same directions.

Prints a summary and writes every number to `--json`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from landscape.adaptive import SamplingPlan, estimate, forwards_used, sample_order  # noqa: E402
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
    p.add_argument("--n-low", type=int, default=2048)
    p.add_argument("--low-loss", type=float, default=0.1)
    p.add_argument("--values", default=None,
                   help="an .npz of per-sample losses saved by --save-values (keys loss_<x>_<y>, hits_<x>_<y>): "
                        "the rule's coverage from them, with no forward pass")
    p.add_argument("--save-values", default=None, help="save the points' per-sample losses and hits to this .npz")
    p.add_argument("--surface", default=None, help="an adaptive surface file")
    p.add_argument("--reference", default=None, help="a full surface file of the same grid")
    p.add_argument("--figure", default=None,
                   help="with --surface/--reference: write STEM.png/.pdf, the full and the adaptive contours "
                        "beside |difference| / T")
    p.add_argument("--vmin", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write every number here")
    return p.parse_args(argv)


def plan_of(args: argparse.Namespace) -> SamplingPlan:
    tol = args.tolerance if args.tolerance is not None else args.vlevel / 4
    return SamplingPlan(tolerance=tol, n0=args.n0, z=args.z, vmax=args.vmax, low_loss=args.low_loss,
                        n_low=args.n_low, seed=args.seed)


def inside(err, se, full):
    """|error| <= 2 SE, up to float rounding (a point that used the whole set has SE 0 and may
    differ from a full pass in another order by a few ulps)."""
    return err <= 2 * se + 1e-9 * np.maximum(1.0, np.abs(full))


def array_sums(values: np.ndarray, hits: np.ndarray):
    """A `sums(start, stop)` over per-sample values already in the sampling order."""
    def sums(i: int, j: int) -> torch.Tensor:
        v, h = values[i:j], hits[i:j]
        return torch.tensor([[v.sum(), np.square(v).sum()], [h.sum(), h.sum()]], dtype=torch.float64)
    return sums


def rule_coverage(values: np.ndarray, hits: np.ndarray, plan: SamplingPlan, batch: int, reps: int,
                  rng: np.random.Generator) -> dict:
    """The stopping rule over `reps` random orders: coverage of +-2 SE, errors and samples used."""
    full = float(values.mean())
    covered, errs, ns, ratios = [], [], [], []
    for _ in range(reps):
        o = rng.permutation(len(values))
        est = estimate(array_sums(values[o], hits[o]), len(values), batch, plan)
        err = abs(est.loss - full)
        covered.append(inside(err, est.loss_se, full))
        errs.append(err)
        ns.append(est.n)
        ratios.append(err / est.loss_se if est.loss_se > 0 else 0.0)
    return {"coverage_2se": float(np.mean(covered)), "max_err": float(np.max(errs)),
            "rms_err": float(np.sqrt(np.mean(np.square(errs)))), "mean_n": float(np.mean(ns)),
            "rms_err_over_se": float(np.sqrt(np.mean(np.square(ratios))))}


def fixed_n_coverage(values: np.ndarray, n: int, reps: int, rng: np.random.Generator) -> float:
    """Coverage of the plain normal mean +- 2 SE (finite-population corrected) from n random samples."""
    full = values.mean()
    hits = 0
    for _ in range(reps):
        s = values[rng.choice(len(values), n, replace=False)]
        se = s.std(ddof=1) / math.sqrt(n) * math.sqrt(1 - n / len(values))
        hits += inside(abs(s.mean() - full), se, full)
    return hits / reps


def per_sample(model, x, y, loss_fn, batch: int, precision: str, device) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample losses (float64) and hits (0/1) of the whole set at the model's current weights."""
    from landscape.evaluate import eval_mode

    vals, hits = [], []
    with eval_mode(device, precision):
        for i in range(0, len(y), batch):
            out = model(x[i:i + batch])
            vals.append(loss_fn(out, y[i:i + batch]).double().cpu())
            hits.append((out.argmax(dim=1) == y[i:i + batch]).double().cpu())
    return torch.cat(vals).numpy(), torch.cat(hits).numpy()


def check_points(args: argparse.Namespace) -> dict:
    from landscape.checkpoint import build_model, load_checkpoint
    from landscape.data import load_dataset, resolve_normalization
    from landscape.directions import DirectionSpec, load_directions, make_directions, target_tensors
    from landscape.evaluate import EngineOptions, cross_entropy, prepare_engine

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
    eval_model, setter, _ = prepare_engine(model, [n for n, _ in tensors], [t for _, t in tensors],
                                           [dirs.x, dirs.y], EngineOptions(args.precision))
    grid = Grid(Axis.parse(args.x, "x"), Axis.parse(args.y, "y"))
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
    rows, saved = [], {}
    for k, idx in enumerate(picks):
        t0 = time.perf_counter()
        setter.set(pts[idx])
        vals, hits = per_sample(eval_model, x, y, cross_entropy, args.batch_size, args.precision, device)
        full = float(vals.mean())
        saved[f"loss_{pts[idx][0]:g}_{pts[idx][1]:g}"], saved[f"hits_{pts[idx][0]:g}_{pts[idx][1]:g}"] = vals, hits
        est = estimate(array_sums(vals, hits), len(vals), args.batch_size, plan)
        sim = rule_coverage(vals, hits, plan, args.batch_size, args.reps, rng)
        sim["fixed_n"] = {n: fixed_n_coverage(vals, n, args.reps, rng) for n in fixed if n < len(vals)}
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
    for key in sorted(k for k in data.files if k.startswith("loss_")):
        vals = data[key].astype(np.float64)
        hits = data["hits_" + key[5:]] if "hits_" + key[5:] in data.files else np.ones_like(vals)
        full = float(vals.mean())
        est = estimate(array_sums(vals, hits), len(vals), args.batch_size, plan)
        sim = rule_coverage(vals, hits, plan, args.batch_size, args.reps, rng)
        sim["fixed_n"] = {n: fixed_n_coverage(vals, n, args.reps, rng) for n in fixed if n < len(vals)}
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
    """The reference on the adaptive surface's grid, when that grid is part of the reference's."""
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
    ref.metrics = {k: pick(v) for k, v in ref.metrics.items()}
    ref.done = pick(ref.done)
    ref.x, ref.y = ad.x, ad.y
    return ref


def check_surfaces(args: argparse.Namespace) -> dict:
    from landscape.storage import read_surface

    ad, ref = read_surface(args.surface), read_surface(args.reference)
    if ad.shape != ref.shape or not np.allclose(ad.x, ref.x) or (ad.y is not None and not np.allclose(ad.y, ref.y)):
        ref = _restrict(ref, ad, args.surface, args.reference)
    if "train_loss_se" not in ad.metrics:
        raise LandscapeError(f"{args.surface} has no train_loss_se: compute it with --tolerance")
    vmax = args.vmax
    tol = ((ad.settings or {}).get("sampling") or {}).get("tolerance")
    both = ad.done & ref.done
    a, r, se = ad.metrics["train_loss"], ref.metrics["train_loss"], ad.metrics["train_loss_se"]
    err = np.abs(a - r)
    below = both & (r < vmax)
    covered = inside(err, se, r)
    bands = {}
    for lo, hi in ((0, 1), (1, 2), (2, 5), (5, vmax)):
        m = both & (r >= lo) & (r < hi)
        if m.any():
            bands[f"{lo}-{hi}"] = {"points": int(m.sum()), "max_err": float(err[m].max()),
                                   "coverage_2se": float(covered[m].mean())}
    used, full = forwards_used(ad, "train")
    out = {
        "surface": args.surface, "reference": args.reference, "tolerance": tol, "vmax": vmax,
        "points": int(both.sum()), "points_below_vmax": int(below.sum()),
        "max_err_below_vmax": float(err[below].max()) if below.any() else float("nan"),
        "err_over_T_p99": float(np.quantile(err[below], 0.99) / tol) if below.any() and tol else None,
        "coverage_2se_below_vmax": float(covered[below].mean()) if below.any() else float("nan"),
        "coverage_2se_all": float(covered[both].mean()),
        "bands": bands, "forwards_used": used, "forwards_full": full, "forwards_ratio": full / max(used, 1),
        "reference_precision": (ref.settings or {}).get("precision"), "precision": (ad.settings or {}).get("precision"),
    }
    dirs = [_beside(f.dir_file, path) for f, path in ((ad, args.surface), (ref, args.reference))]
    if all(d is not None for d in dirs):
        out["directions"] = _direction_difference(*dirs)
    print(f"surfaces: {out['points_below_vmax']} of {out['points']} points below vmax={vmax:g}: max |adaptive - full| "
          f"{out['max_err_below_vmax']:.4g} (T = {tol}); +-2 SE covers {out['coverage_2se_below_vmax']:.1%} there, "
          f"{out['coverage_2se_all']:.1%} of all points; forwards {used:,} vs {full:,} ({out['forwards_ratio']:.1f}x)")
    for k, b in bands.items():
        print(f"  loss {k}: {b['points']} points, max |err| {b['max_err']:.4g}, coverage {b['coverage_2se']:.1%}")
    if "directions" in out:
        print(f"  directions: {out['directions']}")
    if args.figure:
        out["figure"] = [str(p) for p in comparison(ad, ref, args, tol, out)]
        print("figure: " + ", ".join(out["figure"]))
    return out


def comparison(ad, ref, args: argparse.Namespace, tol: float | None, out: dict) -> list[Path]:
    """Full contour | adaptive contour | |difference| in units of T, where the full loss < vmax."""
    from matplotlib.figure import Figure

    from landscape.plot import contour, sampling_summary, save_figure

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
