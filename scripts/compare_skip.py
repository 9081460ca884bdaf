#!/usr/bin/env python3
"""ResNets with and without skip connections side by side (Li et al. 2018, Fig. 5).

Computes (or resumes) one surface per checkpoint on the same grid with the same seed, then
draws them on identical contour levels and 3-D z-range, and writes a table of centre loss
and accuracy, negative-curvature fraction, local minima and basin radius (JSON and Markdown).
With no arguments it compares the bundled digits ResNet-20/56 with and without shortcuts.
Rerunning resumes: surfaces already computed are not computed again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from landscape.analysis import THRESHOLD, stats_table_markdown, surface_stats  # noqa: E402
from landscape.sources.data import DATASETS  # noqa: E402
from landscape.errors import LandscapeError, exit_on_error  # noqa: E402
from landscape.grid import Axis  # noqa: E402
from landscape.config import RunOptions  # noqa: E402
from landscape.sources import SourceSpec  # noqa: E402
from landscape.surface import DirectionRequest, SurfaceJob, run_job  # noqa: E402

DEFAULT_CKPTS = ("digits_resnet20.pt", "digits_resnet20_noshort.pt", "digits_resnet56.pt", "digits_resnet56_noshort.pt")
DEFAULT_GRID = "-1:1:21"  # CPU-friendly; the paper uses -1:1:51
METRIC = "train_loss"

EXAMPLE = """examples:
  python scripts/compare_skip.py                    # bundled digits ResNet-20/56 with and without shortcuts
  python scripts/compare_skip.py --x=-0.4:0.4:41    # a zoom (y follows x); files named by grid, nothing overwritten
  python scripts/compare_skip.py --ckpts a.pt b.pt c.pt d.pt --x=-1:1:51 --y=-1:1:51 --dataset cifar10 --data-root data/
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpts", nargs="+", default=None,
                   help="checkpoints to compare, in panel order (default: the bundled "
                        f"{', '.join(DEFAULT_CKPTS)} that exist)")
    p.add_argument("--x", default=DEFAULT_GRID, help=f"x axis min:max:num (default {DEFAULT_GRID})")
    p.add_argument("--y", default=None, help="y axis min:max:num (default: the same as --x)")
    p.add_argument("--seed", type=int, default=0, help="seed of the directions and of --n-samples (same for all)")
    p.add_argument("--n-samples", type=int, default=None, help="a seeded random subset of N training samples")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="default: each checkpoint's metadata")
    p.add_argument("--data-root", default=None, help="folder with the data set files")
    p.add_argument("--out", default="results/compare_skip", help="folder for surfaces, figure and tables")
    p.add_argument("--vmin", type=float, default=0.1, help="lowest contour level (default 0.1)")
    p.add_argument("--vmax", type=float, default=10.0, help="contour levels stop below it (default 10)")
    p.add_argument("--vlevel", type=float, default=0.5, help="step between contour levels (default 0.5)")
    p.add_argument("--zlim", type=float, default=None, help="top of every 3-D panel (default: --vmax)")
    p.add_argument("--threshold", type=float, default=THRESHOLD,
                   help=f"curvature is counted where the loss is below this (default {THRESHOLD:g})")
    p.add_argument("--overwrite", action="store_true", help="recompute surfaces made with other settings")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p.parse_args(argv)


def resolve_checkpoints(given: list[str] | None) -> list[Path]:
    """The checkpoints asked for (all must exist), or the bundled defaults that exist."""
    if given is not None:
        paths = [Path(c) for c in given]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise LandscapeError(f"--ckpts: no such file: {', '.join(missing)}")
    else:
        paths = [ROOT / "checkpoints" / name for name in DEFAULT_CKPTS]
        for p in paths:
            if not p.is_file():
                print(f"note: skipping {p} (not found; train it with scripts/train.py)")
        paths = [p for p in paths if p.is_file()]
        if not paths:
            raise LandscapeError(f"none of the bundled checkpoints {', '.join(DEFAULT_CKPTS)} exists; pass --ckpts")
    stems = [p.stem for p in paths]
    dups = sorted({s for s in stems if stems.count(s) > 1})
    if dups:
        raise LandscapeError(f"--ckpts: file names must differ (surfaces are named after them), repeated: {', '.join(dups)}")
    return paths


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ckpts = resolve_checkpoints(args.ckpts)
    x = Axis.parse(args.x, "x")
    y = Axis.parse(args.y if args.y is not None else args.x, "y")
    out = Path(args.out)

    rows, surfaces = [], []
    for ckpt in ckpts:
        t0 = time.perf_counter()
        result = run_job(SurfaceJob(
            sources=SourceSpec(ckpt=str(ckpt), dataset=args.dataset, data_root=args.data_root,
                               n_samples=args.n_samples, seed=args.seed),
            directions=DirectionRequest(seed=args.seed), device=args.device, x=x, y=y, out=str(out),
            run=RunOptions(overwrite=args.overwrite, progress=not args.no_progress),
        ))
        surf = result.surface
        for note in result.notes:
            print(f"note: {note}")
        print(f"{result.arch}: {result.surf_file} ({int(surf.done.sum())}/{surf.done.size} points done, "
              f"{time.perf_counter() - t0:.1f} s)")
        stats = surface_stats(surf, METRIC, threshold=args.threshold)
        rows.append({"model": result.arch, "checkpoint": str(ckpt), "surface": str(result.surf_file), **stats})
        surfaces.append(surf)
    archs = [r["model"] for r in rows]
    for r in rows:
        if archs.count(r["model"]) > 1:  # the same architecture twice: tell the rows apart
            r["model"] = f"{r['model']} ({Path(r['checkpoint']).stem})"

    from landscape.plot.surface import comparison_figure, save_figure  # matplotlib only when drawing

    titles = [r["model"] if r["center_acc"] is None else f"{r['model']} (train acc {100 * r['center_acc']:.1f} %)"
              for r in rows]
    fig = comparison_figure(surfaces, titles, METRIC, vmin=args.vmin, vmax=args.vmax, vlevel=args.vlevel,
                            zlim=args.zlim)
    stem = out / f"compare_skip_x{x.spec()}_y{y.spec()}".replace(":", "_")
    figures = save_figure(fig, stem)
    report = {"metric": METRIC, "x": x.spec(), "y": y.spec(), "seed": args.seed, "n_samples": args.n_samples,
              "threshold": args.threshold, "rows": rows}
    json_path, md_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".md")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    table = stats_table_markdown(rows)
    md_path.write_text(f"Train loss around each checkpoint, grid x={x.spec()} y={y.spec()}, seed {args.seed}.\n\n"
                       + table)
    print(table, end="")
    print(f"figure: {figures[0]} (and .pdf)")
    print(f"table:  {md_path}")
    print(f"json:   {json_path}")
    return 0


if __name__ == "__main__":
    main()
