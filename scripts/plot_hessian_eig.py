#!/usr/bin/env python3
"""Curvature of the loss around a checkpoint: the extreme Hessian eigenvalues over a grid
(`max_eig`, `min_eig`, plotted as |λmin/λmax| as in Li et al. 2018, Fig. 7), the spectrum at
the center (top eigenvalues, trace, density), and Hessian eigenvector directions.

With no arguments it runs the embedded default: the bundled digits ResNet-20, 128 training
samples, a 5x5 map over [-0.5, 0.5]², the spectrum, and the figures. Re-running the same
command resumes the map: only points not yet computed are evaluated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.sources.data import DATASETS, NORMALIZATIONS, check_normalization  # noqa: E402
from landscape.directions import DIR_TYPES, IGNORES, NORMS, DirectionSpec  # noqa: E402
from landscape.errors import LandscapeError, exit_on_error  # noqa: E402
from landscape.engine.evaluate import LOSSES  # noqa: E402
from landscape.grid import Axis  # noqa: E402
from landscape.hessian.operator import AXIS_KINDS, HVP_METHODS, SCALES  # noqa: E402

EXAMPLE = """examples:
  python scripts/plot_hessian_eig.py                 # embedded default (digits ResNet-20), ~1.5 min on 2 cores
  python scripts/plot_hessian_eig.py --ckpt checkpoints/digits_resnet56.pt --hessian-samples 256 \\
      --x=-0.5:0.5:7 --y=-0.5:0.5:7 --threads 1 --plot          # the ratio map on plot_surface's plane (seed 0)
  python scripts/plot_hessian_eig.py --ckpt checkpoints/digits_resnet56.pt --hessian-samples 256 \\
      --spectrum --no-map --plot                                 # top-5 eigenvalues, trace, density at the center
  python scripts/plot_hessian_eig.py --ckpt checkpoints/digits_resnet56.pt --hessian-samples 256 \\
      --xdir hessian --ydir hessian_min --x=-0.2:0.2:9 --y=-0.2:0.2:9   # the plane of the top and bottom eigenvectors
  python scripts/plot_surface.py --ckpt checkpoints/digits_resnet56.pt --x=-0.2:0.2:21 --y=-0.2:0.2:21 \\
      --dir_file results/digits_resnet56_hessian_x-0.2_0.2_9_y-0.2_0.2_9_dirs.h5 --plot   # the loss on that plane
  python scripts/plot_hessian_eig.py --compare results/a_hessian_x-1_1_11_y-1_1_11.h5 results/b_hessian_....h5 \\
      --titles A B --out docs --name ratio   # docs/ratio.png/.pdf: side-by-side ratio maps from stored files
"""

DEFAULT_GRID = "-1:1:11"  # when --x and --y are omitted
EMBEDDED = ["--hessian-samples", "128", "--x=-0.5:0.5:5", "--y=-0.5:0.5:5", "--spectrum", "--plot"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--ckpt", "--model_file", dest="ckpt", default=None,
                   help="checkpoint (.pt/.pth/.th/.t7); default: the bundled digits ResNet-20")
    m.add_argument("--model", default=None, help="registered architecture; default: from the checkpoint")
    m.add_argument("--allow-pickle", action="store_true",
                   help="load checkpoints that hold arbitrary Python objects (only for files you trust)")

    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=None, choices=DATASETS, help="default: the checkpoint's metadata")
    d.add_argument("--data-root", "--datapath", dest="data_root", default=None, help="folder with the data set files")
    d.add_argument("--normalization", default="checkpoint",
                   help=f"input mean/std: {', '.join(NORMALIZATIONS)} or m1,m2,m3/s1,s2,s3 (default: the checkpoint's)")
    d.add_argument("--split", default="train", choices=("train", "test"), help="the loss whose Hessian is taken")
    d.add_argument("--hessian-samples", "--n-samples", dest="hessian_samples", type=int, default=None,
                   help="a seeded random subset of N samples for the curvature (default: the whole split); "
                        "the cost is proportional to N")
    d.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                   help="samples per Hessian-vector product pass (default 256 on CPU, 2048 on CUDA)")
    d.add_argument("--loss_name", "--loss", dest="loss", default="cross_entropy", choices=sorted(LOSSES))

    g = p.add_argument_group("directions and grid")
    g.add_argument("--x", default=None, help=f"x axis min:max:num (default {DEFAULT_GRID})")
    g.add_argument("--y", default=None, help="y axis min:max:num; omit (with --x given) for a 1-D map")
    g.add_argument("--no-map", action="store_true", help="no map (e.g. only --spectrum)")
    g.add_argument("--xdir", default="random", choices=AXIS_KINDS,
                   help="random (filter-normalized, as plot_surface), hessian (top eigenvector) or hessian_min "
                        "(most negative eigenvector)")
    g.add_argument("--ydir", default="random", choices=AXIS_KINDS,
                   help="as --xdir; --xdir hessian --ydir hessian gives the top two eigenvectors")
    g.add_argument("--dir_type", default="weights", choices=DIR_TYPES, help="weights only (accepted for compatibility)")
    g.add_argument("--xnorm", default="filter", choices=NORMS)
    g.add_argument("--xignore", default="biasbn", choices=IGNORES,
                   help="biasbn: biases and BN parameters stay fixed and the Hessian excludes them")
    g.add_argument("--ynorm", default="filter", choices=NORMS)
    g.add_argument("--yignore", default="biasbn", choices=IGNORES)
    g.add_argument("--hessian-scale", default="weights", choices=SCALES,
                   help="length of eigenvector directions: weights (||theta||, as a filter-normalized random "
                        "direction) or unit")
    g.add_argument("--direction-tol", type=float, default=1e-4, help="Lanczos tolerance of eigenvector directions")
    g.add_argument("--direction-max-iter", type=int, default=300)
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the directions, of --hessian-samples and of the Lanczos start vectors")
    g.add_argument("--dir_file", default=None, help="reuse (or write) directions in this HDF5 file")

    e = p.add_argument_group("eigenvalues")
    e.add_argument("--tol", type=float, default=1e-3,
                   help="Lanczos tolerance per point, relative to |lambda|max: each extreme Ritz pair's residual and "
                        "its change over the last 5 steps must be below tol*|lambda|max, so |min/max| is accurate "
                        "to about tol (default 1e-3)")
    e.add_argument("--max-iter", type=int, default=100, help="Hessian-vector products per point, at most")
    e.add_argument("--hvp", default="auto", choices=HVP_METHODS,
                   help="func (torch.func forward-over-reverse), backprop (double backward), or auto: both checked "
                        "equal once, then backprop on CPU and func on GPUs")
    e.add_argument("--spectrum", action="store_true",
                   help="also the spectrum at the center: top-k eigenvalues, Hutchinson trace, SLQ density")
    e.add_argument("--top-k", type=int, default=5)
    e.add_argument("--trace-samples", type=int, default=50)
    e.add_argument("--spectrum-iter", type=int, default=80, help="Lanczos steps per density run")
    e.add_argument("--spectrum-runs", type=int, default=1, help="density runs (random start vectors) averaged")

    o = p.add_argument_group("output")
    o.add_argument("--out", default=None, metavar="FOLDER",
                   help="folder for the map, directions, spectrum and figures (default: results; with --compare/"
                        "--compare-spectra: the first stored file's folder)")
    o.add_argument("--name", default=None, metavar="STEM",
                   help="with --compare/--compare-spectra: the figures' file name stem, <name>.png/.pdf (and "
                        "<name>_spectrum.png/.pdf for --compare-spectra beside --compare; default: the first "
                        "stored file's name + _compare)")
    o.add_argument("--surf_file", default=None, help="map file path (default: derived from --ckpt and the grid)")
    o.add_argument("--overwrite", action="store_true", help="replace files made with other settings")
    o.add_argument("--max-points", type=int, default=None,
                   help="compute at most N points in this run (rerun the same command to continue)")
    o.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    o.add_argument("--cuda", action="store_true", help="same as --device cuda (reference code flag)")
    o.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default on the CPU: the idle cores this process may use)")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")

    f = p.add_argument_group("plots")
    f.add_argument("--plot", action="store_true", help="draw figures (always on for the embedded default)")
    f.add_argument("--vmin", type=float, default=0.0, help="ratio colour scale bottom (default 0, as the paper)")
    f.add_argument("--vmax", type=float, default=0.5, help="ratio colour scale top (default 0.5, as the paper)")
    f.add_argument("--ymax", type=float, default=1.0, help="1-D maps: top of the ratio axis")
    f.add_argument("--compare", nargs="+", default=None, metavar="MAP",
                   help="only plot: stored maps side by side (no model); with --titles, --out and --name")
    f.add_argument("--titles", nargs="+", default=None, help="panel titles for --compare / --compare-spectra")
    f.add_argument("--loss-surf", nargs="+", default=None, metavar="SURF",
                   help="with --compare: loss surfaces along the same directions, one per map, drawn as "
                        "contour lines at --levels")
    f.add_argument("--levels", nargs="+", type=float, default=[1.0, 10.0])
    f.add_argument("--compare-spectra", nargs="+", default=None, metavar="SPECTRUM",
                   help="only plot: stored spectra side by side; with --titles, --out and --name")
    return p.parse_args(argv)


def build_job(args: argparse.Namespace):
    from landscape.config import RunOptions
    from landscape.hessian.job import CurvatureSpec, HessianJob
    from landscape.sources import SourceSpec

    if args.no_map:
        x = y = None
    elif args.x is None and args.y is None:
        x, y = Axis.parse(DEFAULT_GRID, "x"), Axis.parse(DEFAULT_GRID, "y")
    elif args.x is None:
        raise LandscapeError("--y needs --x too (min:max:num like --x=-1:1:11)")
    else:
        x = Axis.parse(args.x, "x")
        y = Axis.parse(args.y, "y") if args.y is not None else None
    if args.dir_type != "weights":
        raise LandscapeError(f"--dir_type {args.dir_type}: curvature maps move parameters only; use weights")
    normalization = check_normalization(args.normalization.strip())
    sources = SourceSpec(ckpt=args.ckpt, arch=args.model, allow_pickle=args.allow_pickle, dataset=args.dataset,
                         data_root=args.data_root, normalization=None if normalization == "checkpoint" else normalization,
                         splits=(args.split,), n_samples=args.hessian_samples, seed=args.seed, loss=args.loss)
    curvature = CurvatureSpec(tol=args.tol, max_iter=args.max_iter, hvp=args.hvp, batch_size=args.batch_size,
                              spectrum=args.spectrum, top_k=args.top_k, trace_samples=args.trace_samples,
                              spectrum_iter=args.spectrum_iter, spectrum_runs=args.spectrum_runs,
                              hessian_scale=args.hessian_scale, dir_tol=args.direction_tol,
                              dir_max_iter=args.direction_max_iter)
    run = RunOptions(overwrite=args.overwrite, max_points=args.max_points, progress=not args.no_progress)
    return HessianJob(sources=sources, x=x, y=y, xdir=args.xdir, ydir=args.ydir,
                      xspec=DirectionSpec("weights", args.xnorm, args.xignore),
                      yspec=DirectionSpec("weights", args.ynorm, args.yignore), seed=args.seed, curvature=curvature,
                      run=run, out="results" if args.out is None else args.out, surf_file=args.surf_file,
                      dir_file=args.dir_file, device="cuda" if args.cuda else args.device, threads=args.threads)


def _titles(args: argparse.Namespace, paths: list[str]) -> list[str]:
    if args.titles is None:
        return [Path(p).stem for p in paths]
    if len(args.titles) != len(paths):
        raise LandscapeError(f"--titles needs one title per file ({len(paths)}), got {len(args.titles)}")
    return args.titles


def compare_stem(args: argparse.Namespace) -> Path:
    """`<out>/<name>` of the --compare/--compare-spectra figures: --out (default: the first stored file's
    folder), --name (default: the first stored file's name + _compare)."""
    from landscape.cli import out_stem

    first = Path((args.compare or args.compare_spectra)[0])
    return out_stem(args.out, args.name, first.parent, f"{first.stem}_compare", "the figures' folder")


def compare(args: argparse.Namespace) -> int:
    """Figures from stored files only."""
    from landscape.hessian.job import load_spectrum, ratio_stats
    from landscape.plot.curvature import ratio_comparison, spectrum_figure
    from landscape.plot.surface import save_figure
    from landscape.storage import read_surface

    stem = compare_stem(args)
    if args.compare:
        maps = [read_surface(p) for p in args.compare]
        losses = None
        if args.loss_surf is not None:
            if len(args.loss_surf) != len(maps):
                raise LandscapeError(f"--loss-surf needs one surface per map ({len(maps)}), got {len(args.loss_surf)}")
            losses = [read_surface(p) for p in args.loss_surf]
            for path, loss, surf in zip(args.loss_surf, losses, maps):
                a, b = (loss.settings or {}).get("directions_sha256"), (surf.settings or {}).get("directions_sha256")
                if a is not None and b is not None and a != b:
                    raise LandscapeError(f"{path} was computed along other directions than its map; pass the "
                                         "loss surface made with the same --seed and direction settings")
        titles = _titles(args, args.compare)
        for t, s in zip(titles, maps):
            print(f"{t}: |min/max| {ratio_stats(s).line()}")
        fig = ratio_comparison(maps, titles, args.vmin, args.vmax, losses, args.levels)
        for p in save_figure(fig, stem):
            print(p)
    if args.compare_spectra:
        spectra = [load_spectrum(p)[0] for p in args.compare_spectra]
        fig = spectrum_figure(spectra, _titles(args, args.compare_spectra))
        for p in save_figure(fig, f"{stem}_spectrum" if args.compare else stem):
            print(p)
    return 0


@exit_on_error(flags={"method": "--hvp", "scale": "--hessian-scale", "axes": "--xdir/--ydir"})
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv if argv else EMBEDDED)
    if args.compare or args.compare_spectra:
        return compare(args)
    if args.name is not None:
        raise LandscapeError("--name names the --compare/--compare-spectra figures; name the map file with "
                             "--surf_file")
    from landscape.hessian.job import ratio_stats, run_hessian_job
    from landscape.sweep import Interrupted

    job = build_job(args)
    try:
        result = run_hessian_job(job)
    except Interrupted as e:  # SIGTERM / Ctrl-C: every computed point is saved
        print(f"interrupted: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    for note in result.notes:
        print(f"note: {note}")
    sp = result.spectrum
    if sp is not None:
        top = ", ".join(f"{v:.5g}" for v in sp.top)
        print(f"spectrum:   {result.spectrum_file}")
        print(f"            top eigenvalues {top}; most negative {sp.bottom[0]:.5g}; "
              f"trace {sp.trace.mean:.5g} ± {sp.trace.stderr:.2g} ({sp.trace.samples} samples); "
              f"{sp.dim} parameters; {sp.products} products in {sp.seconds:.1f} s")
    surf = result.surface
    if surf is not None:
        print(f"map:        {result.surf_file}  ({int(surf.done.sum())}/{surf.done.size} points done)")
        print(f"directions: {result.dir_file}")
        if result.points:
            print(f"timing:     {result.seconds_per_point:.2f} s per point, {result.products_per_point:.1f} "
                  f"Hessian-vector products per point, {result.seconds_per_product:.3f} s per product "
                  f"({result.points} points this run)")
        if surf.done.any():
            print(f"|min/max|:  {ratio_stats(surf).line()}")
    if args.plot:
        from landscape.plot.curvature import map_figure, spectrum_figure
        from landscape.plot.surface import save_figure

        paths = []
        if surf is not None and surf.done.any():
            stem = result.surf_file.with_suffix("")
            fig = map_figure(surf, args.vmin, args.vmax, args.ymax)
            paths += save_figure(fig, f"{stem}_eig_ratio_{'2dheat' if surf.ndim == 2 else '1d'}")
        if sp is not None:
            fig = spectrum_figure([sp], [result.arch])
            paths += save_figure(fig, result.spectrum_file.with_suffix(""))
        if paths:
            print("figures:    " + "\n            ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    main()
