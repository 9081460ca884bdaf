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

With `--stopping-bias N` the point check also measures, per point and pooled, the stopping rule's
bias over N random orders: the mean of (estimate - full) / SE, and of estimate - full over the
RMS SE (`landscape.sampling.validate.stopping_bias`).

The statistics are `landscape.sampling.validate`; this script parses, prints and draws.

Prints a summary and writes every number to `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from landscape.errors import LandscapeError, exit_on_error  # noqa: E402
from landscape.sampling import validate  # noqa: E402
from landscape.sampling.adaptive import SamplingPlan  # noqa: E402

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
    p.add_argument("--stopping-bias", type=int, default=0, metavar="N",
                   help="points/values: also the stopping rule's bias over N random orders per point, and pooled "
                        "(the mean of (estimate - full) / SE, of estimate - full over the RMS SE, and the coverage)")
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
    return validate.plan_of(args.tolerance, args.vlevel, n0=args.n0, z=args.z, vmax=args.vmax, z_vmax=args.z_vmax,
                            low_loss=args.low_loss, n_low=args.n_low, seed=args.seed, strata=args.stratify)


def rule_of(args: argparse.Namespace) -> validate.RuleCheck:
    try:
        fixed = tuple(int(n) for n in args.fixed_n.split(",") if n.strip()) if args.fixed_n else ()
    except ValueError:
        raise LandscapeError(f"--fixed-n takes sample counts separated by commas, got {args.fixed_n!r}") from None
    return validate.RuleCheck(plan_of(args), args.batch_size, args.reps, fixed, args.stopping_bias, args.point_seed)


def print_bias(b: dict, indent: str = "  ") -> None:
    print(f"{indent}stopping bias over {b['orders']} orders: mean (estimate - full) / SE {b['bias']:+.3f} "
          f"+- {b['bias_se']:.3f}; mean (estimate - full) / RMS SE {b['err_bias']:+.3f} +- {b['err_bias_se']:.3f}; "
          f"+-{b['z']:g} SE covers {b['coverage']:.1%}", flush=True)


def check_points(args: argparse.Namespace) -> dict:
    """The point check (`validate.check_points`), printed point by point; --save-values keeps the losses."""
    if args.threads:
        torch.set_num_threads(args.threads)
    source = validate.PointSource(args.ckpt, args.dataset, args.data_root, args.n_samples, args.precision,
                                  args.dir_file, args.x, args.y, args.seed, args.points, args.radius)
    rule, rows, saved = rule_of(args), [], {}
    for p in validate.check_points(source, rule):
        row, sim = p.row, p.row["rule"]
        saved[f"loss_{row['x']:g}_{row['y']:g}"], saved[f"hits_{row['x']:g}_{row['y']:g}"] = p.values, p.hits
        rows.append(row)
        print(f"[{p.k + 1}/{p.count}] ({row['x']:+.2f},{row['y']:+.2f}) full {row['full']:.4g}  adaptive "
              f"{row['adaptive']:.4g} +- {2 * row['se']:.3g} (n={row['n']})  |err| {row['err']:.3g}  rule coverage "
              f"{sim['coverage_2se']:.3f} (mean n {sim['mean_n']:.0f}); plain normal at n=" +
              ", ".join(f"{n}: {c:.2f}" for n, c in sim["fixed_n"].items()), flush=True)
        if "stopping_bias" in row:
            print_bias(row["stopping_bias"])
    if args.save_values:
        np.savez(args.save_values, **saved)
    return summarize(rows, rule.plan, args)


def check_values(args: argparse.Namespace) -> dict:
    """The rule's coverage at points whose per-sample values were saved before (no model needed)."""
    rule, rows = rule_of(args), []
    for row in validate.check_values(args.values, rule):
        sim = row["rule"]
        rows.append(row)
        print(f"({row['x']:+.2f},{row['y']:+.2f}) N={row['N']} full {row['full']:.4g}  rule coverage "
              f"{sim['coverage_2se']:.3f} (mean n {sim['mean_n']:.0f}, max |err| {sim['max_err']:.3g}); plain normal "
              "at n=" + ", ".join(f"{n}: {c:.2f}" for n, c in sim["fixed_n"].items()), flush=True)
        if "stopping_bias" in row:
            print_bias(row["stopping_bias"])
    return summarize(rows, rule.plan, args)


def summarize(rows: list[dict], plan: SamplingPlan, args: argparse.Namespace) -> dict:
    summary = validate.summarize(rows, plan, args.ckpt, args.values, args.precision)
    print(f"points: max |adaptive - full| where loss < vmax: {summary['max_err_below_vmax']:.4g} (T = {plan.tolerance:g}); "
          f"+-2 SE covers {summary['coverage_2se_points']:.1%} of the points; the rule's coverage over "
          f"{args.reps} orders: min {summary['rule_coverage_min']:.1%} (loss < 1: "
          f"{summary['rule_coverage_min_low_loss']:.1%}); forwards saved {summary['forwards_ratio']:.1f}x")
    if "stopping_bias" in summary:
        b = summary["stopping_bias"]
        print(f"stopping bias pooled over {b['points']} points ({b['whole_set_points']} always on the whole set, "
              "bias 0):")
        print_bias(b)
    return summary


def print_surface(out: dict) -> None:
    """One `validate.check_surface` result."""
    vmax, tol, used, full = out["vmax"], out["tolerance"], out["forwards_used"], out["forwards_full"]
    print(f"{out['surface']} (sample order seed {out['sample_seed']}):")
    print(f"surfaces: {out['points_below_vmax']} of {out['points']} points below vmax={vmax:g}: max |adaptive - full| "
          f"{out['max_err_below_vmax']:.4g} (T = {tol}); +-2 SE covers {out['coverage_2se_below_vmax']:.1%} there, "
          f"{out['coverage_2se_all']:.1%} of all points; forwards {used:,} vs {full:,} ({out['forwards_ratio']:.1f}x)")
    if out["whole_set_points"]:
        print(f"  {out['whole_set_points']} points evaluated on the whole set differ from the reference by "
              f"{out['whole_set_rel_diff_mean']:.1e} relative on average, at most {out['whole_set_rel_diff_max']:.1e} "
              "(arithmetic, not sampling)")
    print(f"  allowing {out['precision_allowance']:.1e} x |full loss| for the reference's arithmetic: +-2 SE covers "
          f"{out['coverage_2se_allowed_below_vmax']:.1%} below vmax")
    for k, b in out["bands"].items():
        print(f"  loss {k}: {b['points']} points, max |err| {b['max_err']:.4g}, coverage {b['coverage_2se']:.1%} "
              f"({b['coverage_2se_allowed']:.1%} with the allowance)")
    if "directions" in out:
        print(f"  directions: {out['directions']}")


def print_orders(out: dict) -> None:
    """A `validate.across_orders` result."""
    print(f"orders: {out['runs']} runs (seeds {', '.join(map(str, out['seeds']))}), {out['points_below_vmax']} points "
          f"below vmax: +-2 SE covers {out['coverage_2se_pooled_below_vmax']:.1%} pooled "
          f"({out['coverage_2se_allowed_pooled_below_vmax']:.1%} with the precision allowance), |err| <= T at "
          f"{out['within_T_pooled_below_vmax']:.1%}")
    for k, b in out["bands"].items():
        print(f"  loss {k}: {b['points']} points, coverage pooled {b['coverage_2se_pooled']:.1%} "
              f"(one run: {b['coverage_2se_min_run']:.1%} to {b['coverage_2se_max_run']:.1%}; "
              f"{b['coverage_2se_allowed_pooled']:.1%} with the precision allowance), "
              f"the least covered point {b['point_coverage_min']:.0%} of the runs")


def check_surfaces(args: argparse.Namespace) -> dict:
    """`--surface` against `--reference`: one file as `validate.check_surface`; several, each of them
    and the coverage across their sample orders (`validate.across_orders`)."""
    from landscape.storage import read_surface

    reference = read_surface(args.reference)
    runs = []
    for path in args.surface:
        runs.append(validate.check_surface(path, reference, args.reference, args.vmax, args.precision_allowance))
        print_surface(runs[-1][0])
    if len(runs) == 1:
        out, arr = runs[0]
        if args.figure:
            out["figure"] = [str(p) for p in comparison(arr["ad"], arr["ref"], args, out["tolerance"], out)]
            print("figure: " + ", ".join(out["figure"]))
        return out
    out = {"runs": [o for o, _ in runs], "orders": validate.across_orders(runs, args.vmax)}
    print_orders(out["orders"])
    if args.figure:
        out["figure"] = [str(p) for p in orders_figure(runs, out["orders"], args)]
        print("figure: " + ", ".join(out["figure"]))
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
