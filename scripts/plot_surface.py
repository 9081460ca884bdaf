#!/usr/bin/env python3
"""Compute a loss surface around a checkpoint along two (or one) directions, store it as
HDF5, and plot it. With no arguments it runs the embedded default: the bundled digits
ResNet-20 on a 2-D filter-normalized grid over the digits training split.

Re-running the same command resumes: only points not yet computed are evaluated.
Figures: drawn with --plot; the embedded default (no --ckpt, --model-def, --model_file2, --x
or --y) draws them without it, unless --no-plot.
Under torchrun or srun the ranks share the points and rank 0 writes the file; with
--shard i/N (a Slurm job array) each task computes its share into a shard file of its own
(merge them with scripts/merge_surfaces.py).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.config import DataOptions, RunOptions  # noqa: E402
from landscape.directions import DIR_TYPES, IGNORES, NORMS, DirectionSpec  # noqa: E402
from landscape.distributed import PeerError, Shard, dist_info  # noqa: E402
from landscape.engine import EngineOptions  # noqa: E402
from landscape.engine.evaluate import LOSSES, keep_freed_memory  # noqa: E402
from landscape.engine.hardware import PRECISION_CHOICES  # noqa: E402
from landscape.cli import OneLineParser  # noqa: E402
from landscape.errors import LandscapeError, exit_on_error  # noqa: E402
from landscape.grid import Axis  # noqa: E402
from landscape.sampling import SamplingPlan  # noqa: E402
from landscape.sources import SourceSpec  # noqa: E402
from landscape.sources.data import DATASETS, NORMALIZATIONS, check_normalization  # noqa: E402
from landscape.sources.plugins import parse_kwargs  # noqa: E402
from landscape.surface import DirectionRequest, Interrupted, SurfaceJob, run_job  # noqa: E402

EXAMPLE = """examples:
  python scripts/plot_surface.py                      # embedded default (digits ResNet-20) + figures, ~1 min on 2 cores
  python scripts/plot_surface.py --ckpt checkpoints/digits_resnet20.pt --x=-1:1:21 --y=-1:1:21 --plot
  python scripts/plot_surface.py --model resnet56 --model_file ckpt.t7 --dataset cifar10 --data-root data/ \\
      --x=-1:1:51 --y=-1:1:51 --dir_type weights --xnorm filter --xignore biasbn \\
      --ynorm filter --yignore biasbn --plot
  python scripts/plot_surface.py --ckpt resnet56-4bfd9763.th --dataset cifar10 --data-root data/ \\
      --x=-1:1:51 --y=-1:1:51 --n-samples 1000      # akamaster's file: architecture and normalization known
  python scripts/plot_surface.py --ckpt a.pt --model_file2 b.pt --x=-0.5:1.5:41   # 1-D interpolation a -> b
  python scripts/plot_surface.py --model-def my.py:make_model --model-kwargs '{"width": 2}' --ckpt my.pt \\
      --data-def my.py:make_data --loss-def my.py:loss --x=-1:1:21 --y=-1:1:21   # your own model, data, loss
  torchrun --nproc_per_node=4 scripts/plot_surface.py --x=-1:1:51 --y=-1:1:51   # 4 ranks share the points
  python scripts/plot_surface.py --x=-1:1:51 --y=-1:1:51 --shard 0/8   # job array task 0 of 8 (see scripts/slurm/)
"""

# The embedded default's grid: small enough for under a minute on 2 CPU cores.
DEFAULT_GRID = "-1:1:25"
# Adaptive sampling's stopping rule and --tolerance alone use these when --vmax, --vlevel are not given
# (the plots then choose theirs from the data); a sampled run's settings do not depend on the plots.
SAMPLING_VMAX, SAMPLING_VLEVEL = 10.0, 0.5


_NEGATIVE = re.compile(r"^-\.?\d")


def _check_negative_values(argv: list[str]) -> None:
    """`--x -1:1:51` reads -1:1:51 as a flag (argparse); say to write --x=-1:1:51."""
    for flag, value in zip(argv, argv[1:]):
        if flag in ("--x", "--y") and _NEGATIVE.match(value):
            raise LandscapeError(f"{flag} {value}: a value starting with '-' is taken for a flag; "
                                 f"write {flag}={value}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    _check_negative_values(argv)
    p = OneLineParser(description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model")
    m.add_argument("--ckpt", "--model_file", dest="ckpt", default=None,
                   help="checkpoint (.pt/.pth/.th/.t7); default: the bundled digits ResNet-20")
    m.add_argument("--model", default=None, help="registered architecture; default: from the checkpoint")
    m.add_argument("--model_file2", "--ckpt2", dest="ckpt2", default=None,
                   help="second checkpoint: x direction = theta2 - theta1 (1-D interpolation)")
    m.add_argument("--model_file3", "--ckpt3", dest="ckpt3", default=None,
                   help="third checkpoint: y direction = theta3 - theta1 (plane through three models)")
    m.add_argument("--allow-pickle", action="store_true",
                   help="load checkpoints that hold arbitrary Python objects (only for files you trust)")

    d = p.add_argument_group("data")
    d.add_argument("--dataset", default=None, choices=DATASETS, help="default: the checkpoint's metadata")
    d.add_argument("--data-root", "--datapath", dest="data_root", default=None, help="folder with the data set files")
    d.add_argument("--normalization", default="checkpoint",
                   help=f"input mean/std: {', '.join(NORMALIZATIONS)} or per-channel m1,m2,m3/s1,s2,s3 "
                        "(default checkpoint: the checkpoint's statistics, else the dataset's)")
    d.add_argument("--split", "--splits", dest="splits", default="train",
                   help="comma-separated splits to evaluate: train, test or train,test (default train)")
    d.add_argument("--n-samples", type=int, default=None, help="a seeded random subset of N samples per split")
    d.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=None,
                   help="samples per forward pass (default on the CPU: sized to the cache, e.g. 64 for CIFAR ResNets and "
                        "256 for the digits; on CUDA 8192, halved on out-of-memory)")
    d.add_argument("--loss_name", "--loss", dest="loss", default="cross_entropy", choices=sorted(LOSSES))

    g = p.add_argument_group("directions and grid")
    g.add_argument("--x", default=None, help=f"x axis min:max:num (default {DEFAULT_GRID})")
    g.add_argument("--y", default=None, help=f"y axis min:max:num; omit for a 1-D plot (default {DEFAULT_GRID} "
                   "when --x is also omitted)")
    g.add_argument("--dir_type", default=None, choices=DIR_TYPES,
                   help="weights (parameters) or states (state_dict, BN statistics included); "
                        "default weights, states with --model_file2")
    g.add_argument("--xnorm", default="filter", choices=NORMS)
    g.add_argument("--xignore", default="biasbn", choices=IGNORES)
    g.add_argument("--ynorm", default="filter", choices=NORMS)
    g.add_argument("--yignore", default="biasbn", choices=IGNORES)
    g.add_argument("--same_dir", action="store_true", help="use the x direction for y too")
    g.add_argument("--seed", type=int, default=0, help="seed of the directions and of --n-samples")
    g.add_argument("--bn-recompute", action="store_true",
                   help="re-estimate BatchNorm statistics at every point from training samples (interpolations "
                        "of BN nets otherwise look worse than they are); disables BN folding")
    g.add_argument("--bn-samples", type=int, default=None, help="training samples for --bn-recompute")
    g.add_argument("--dir_file", default=None, help="reuse (or write) directions in this HDF5 file")

    o = p.add_argument_group("output")
    o.add_argument("--out", default="results", help="folder for the surface, directions and figures")
    o.add_argument("--surf_file", default=None, help="surface file path (default: derived from --ckpt and the grid)")
    o.add_argument("--overwrite", action="store_true", help="replace a surface file made with other settings")
    o.add_argument("--max-points", type=int, default=None,
                   help="compute at most N points in this run (rerun the same command to continue)")
    o.add_argument("--shard", default=None, metavar="I/N",
                   help="compute share I of N (points whose index is I modulo N) into <surf>.shard-I-of-N.h5, "
                        "e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; merge with merge_surfaces.py")
    o.add_argument("--flush-seconds", type=float, default=5.0,
                   help="rewrite the surface file (atomically) at most this often; also at the end and on "
                        "SIGTERM/Ctrl-C (default 5)")
    o.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    o.add_argument("--cuda", action="store_true", help="same as --device cuda (reference code flag)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")

    u = p.add_argument_group("your own model, data and loss (landscape/sources/plugins.py; docs/api.md)")
    u.add_argument("--model-def", default=None, metavar="FILE.py:FN",
                   help="a function returning your torch.nn.Module (or package.module:FN); --ckpt, if given, is "
                        "loaded into it, else the surface is around its initial weights (torch seed --seed)")
    u.add_argument("--model-kwargs", default=None, metavar="JSON", help="""keyword arguments for it, e.g. '{"width": 2}'""")
    u.add_argument("--data-def", default=None, metavar="FILE.py:FN",
                   help="a function (taking the split name, or nothing) returning (x, y) tensors, a Dataset or "
                        "a DataLoader (not shuffling) of (inputs, targets) batches")
    u.add_argument("--loss-def", default=None, metavar="FILE.py:FN",
                   help="a callable (output, targets) -> per-sample losses (N,) or (N, ...), or a batch mean")
    u.add_argument("--metric-def", action="append", default=None, metavar="NAME=FILE.py:FN",
                   help="a metric with the loss's signature, stored as <split>_NAME (repeatable)")
    u.add_argument("--stream", action="store_true",
                   help="read the data in batches once per block of --points-per-pass points instead of keeping it "
                        "on the device (automatic above --memory-budget, and for a DataLoader)")
    u.add_argument("--points-per-pass", type=int, default=8, metavar="K",
                   help="grid points evaluated per pass over streamed data (default 8)")
    u.add_argument("--num-workers", type=int, default=0, help="DataLoader workers for streamed data (default 0)")
    u.add_argument("--memory-budget", type=float, default=None, metavar="MB",
                   help="data larger than this many MiB is streamed (default 1024)")

    e = p.add_argument_group("speed")
    e.add_argument("--precision", default="fp32", choices=list(PRECISION_CHOICES),
                   help="fp32 (exact, default); tf32 (CUDA); bf16 or fp16: faster where the hardware runs them "
                        "natively (a CPU with avx512_bf16/amx_bf16, a GPU of compute capability 8.0+), the error at "
                        "the center measured and stored; where they would be emulated (e.g. an AVX2-only CPU, "
                        "6-15x slower than fp32) they are refused; auto: bf16 where native, else fp32")
    e.add_argument("--no-fold-bn", action="store_true",
                   help="do not fold BatchNorm into the preceding layers (on by default where proven exact: a BN "
                        "with running statistics, called once, right after a conv/linear layer whose output "
                        "features it normalizes; the engine is also checked against plain evaluation at the grid's "
                        "corners before the run)")
    e.add_argument("--compile", action="store_true", help="torch.compile the model (pays off above ~100 points)")
    e.add_argument("--compile-mode", default=None, metavar="MODE",
                   help="torch.compile's mode, e.g. max-autotune-no-cudagraphs (implies --compile)")
    e.add_argument("--cuda-fuse", action="store_true",
                   help="CUDA, eager: each convolution with the ReLU (and residual addition) after it as one "
                        "cuDNN call (on the CPU the oneDNN equivalent is always on)")
    e.add_argument("--cudnn-benchmark", action="store_true",
                   help="CUDA: cuDNN times its convolution algorithms once per batch shape and keeps the fastest "
                        "(values may differ in the last bits between runs)")
    e.add_argument("--points-per-launch", type=int, default=1, metavar="K",
                   help="evaluate K grid points in each forward pass (vmap over their stacked weights), for data "
                        "that do not fill a GPU (slower on the CPU: BENCHMARKS.md); not with --tolerance, --compile, "
                        "--cuda-fuse or --bn-recompute")
    e.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default on the CPU: the idle cores this process may use, "
                        "shared among the ranks of a node)")
    e.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's allocator as it is (by default the process keeps freed memory for reuse "
                        "instead of faulting each batch's activations in again: up to 20 %% faster on small CPU models)")

    f = p.add_argument_group("plots")
    f.add_argument("--plot", action=argparse.BooleanOptionalAction, default=None,
                   help="draw the figures of every split's loss (png + pdf beside the surface file) and the interactive "
                        "report (<surface>_report.html, docs/report.md). Rule: a run draws with --plot; the embedded "
                        "default (no --ckpt, --model-def, --model_file2, --x or --y) draws without it too, unless "
                        "--no-plot")
    f.add_argument("--vmin", type=float, default=None,
                   help="lowest contour level and colour (default: chosen from the data)")
    f.add_argument("--vmax", type=float, default=None,
                   help="contour levels and colours stop below it (default: chosen from the data); with --tolerance "
                        f"also where a point may stop early (default there {SAMPLING_VMAX:g})")
    f.add_argument("--vlevel", type=float, default=None,
                   help="step between contour levels: with --vmin and --vmax the reference's arange(vmin, vmax, "
                        "vlevel) (default: about 12 round levels chosen from the data, log-spaced where the values "
                        "span decades)")
    f.add_argument("--zlim", type=float, default=None,
                   help="the 3-D surface leaves out values above it (default: the colour range's top)")
    f.add_argument("--log", action="store_true",
                   help="log scale: 2-D figures get log-spaced contour levels, log colours and a log z axis in 3-D; "
                        "1-D figures get a plot with the loss on a log scale too (_1d_log)")

    a = p.add_argument_group("error bars and adaptive sampling (landscape/adaptive.py)")
    a.add_argument("--tolerance", nargs="?", const="auto", default=None, metavar="T",
                   help="adaptive sampling: each point adds samples (one seeded order shared by all points) until "
                        "z*SE <= T, or its loss is above --vmax with confidence, or the set is used up; "
                        f"--tolerance alone: T = vlevel/4 (vlevel {SAMPLING_VLEVEL:g} when not given). "
                        "Stores <split>_loss_se, _acc_se, _n beside the values. "
                        "(--n-samples alone: a fixed subset, with the same error bars)")
    a.add_argument("--n0", type=int, default=256, help="samples of a point's first chunk (default 256)")
    a.add_argument("--z", type=float, default=2.0, help="the bound is z standard errors (default 2)")
    a.add_argument("--z-vmax", type=float, default=3.5,
                   help="a point stops above --vmax once its loss minus this many SE is above it (default 3.5: "
                        "such a stop leaves an error far beyond the tolerance, so it asks for more confidence)")
    a.add_argument("--n-low", type=int, default=2048,
                   help="points whose mean loss is below --low-loss use at least this many samples: their "
                        "per-sample losses are too skewed for the normal SE at small n (default 2048)")
    a.add_argument("--low-loss", type=float, default=0.1, help="see --n-low (default 0.1)")
    a.add_argument("--multilevel", action="store_true",
                   help="with --tolerance: coarse to fine, each finer point uses the interpolation of its coarser "
                        "neighbours as a control variate (one process; landscape/multilevel.py)")
    a.add_argument("--stratify", nargs="?", type=int, const=256, default=0, metavar="K",
                   help="with --tolerance: order the samples so that every prefix holds each of K strata of the "
                        "center's per-sample loss in proportion (one extra pass over the set; --stratify alone: "
                        "K = 256). Points near the minimum then cannot all read too many or too few of the few "
                        "images that carry their mean; the reported SE stays the plain, conservative one")
    return p.parse_args(argv)


def sampling_plan(args: argparse.Namespace) -> SamplingPlan | None:
    """The error-bar / adaptive-sampling settings the flags ask for (None: exact means)."""
    if args.multilevel and args.tolerance is None:
        raise LandscapeError("--multilevel needs --tolerance: it refines points until their bound is below it")
    if args.stratify and args.tolerance is None:
        raise LandscapeError("--stratify needs --tolerance: it orders the samples points read a prefix of")
    if args.tolerance is None and args.n_samples is None:
        return None
    tol = None
    if args.tolerance == "auto":
        tol = (args.vlevel if args.vlevel is not None else SAMPLING_VLEVEL) / 4
    elif args.tolerance is not None:
        try:
            tol = float(args.tolerance)
        except ValueError:
            raise LandscapeError(f"--tolerance must be a number (or given alone for vlevel/4), "
                                 f"got {args.tolerance!r}") from None
    vmax = args.vmax if args.vmax is not None else SAMPLING_VMAX
    return SamplingPlan(tolerance=tol, n0=args.n0, z=args.z, vmax=vmax if tol is not None else None,
                        z_vmax=args.z_vmax,
                        low_loss=args.low_loss, n_low=args.n_low, seed=args.seed, multilevel=args.multilevel,
                        strata=args.stratify)


def draws(args: argparse.Namespace) -> bool:
    """The rule for figures: --plot draws, --no-plot does not; without either, only the embedded
    default (no checkpoint, model definition, second checkpoint or grid given) draws."""
    if args.plot is not None:
        return args.plot
    return all(v is None for v in (args.ckpt, args.model_def, args.ckpt2, args.x, args.y))


def check_plot_flags(args: argparse.Namespace) -> None:
    """The figures' flags, checked before any point is computed."""
    if args.vlevel is not None and not args.vlevel > 0:
        raise LandscapeError(f"--vlevel must be positive, got {args.vlevel}")
    if args.vmin is not None and args.vmax is not None and not args.vmin < args.vmax:
        raise LandscapeError(f"--vmin must be below --vmax, got --vmin {args.vmin} and --vmax {args.vmax}")
    if args.log and any(v is not None and not v > 0 for v in (args.vmin, args.zlim)):
        raise LandscapeError("--log needs a positive --vmin and --zlim (log scale); pass positive ones or drop --log")


def build_job(args: argparse.Namespace) -> SurfaceJob:
    """The flags as the library's configs (each one checks its own values)."""
    if args.x is None and args.y is None and args.ckpt2 is None:
        args.x = args.y = DEFAULT_GRID
    elif args.x is None:
        raise LandscapeError("--y needs --x too (min:max:num like --x=-1:1:51)")
    dir_type = args.dir_type or ("states" if args.ckpt2 else "weights")
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    if args.ckpt3 and not args.ckpt2:
        raise LandscapeError("--model_file3 needs --model_file2 (the plane through three checkpoints)")
    if args.ckpt3 and args.y is None:
        raise LandscapeError("--model_file3 spans the y direction; give --y min:max:num too")
    normalization = check_normalization(args.normalization.strip())
    sources = SourceSpec(
        ckpt=args.ckpt, arch=args.model, model_def=args.model_def, model_kwargs=parse_kwargs(args.model_kwargs),
        allow_pickle=args.allow_pickle, dataset=args.dataset, data_root=args.data_root, data_def=args.data_def,
        normalization=None if normalization == "checkpoint" else normalization, splits=splits,
        n_samples=args.n_samples, seed=args.seed, loss=args.loss, loss_def=args.loss_def,
        metric_defs=tuple(args.metric_def) if args.metric_def else None)
    directions = DirectionRequest(DirectionSpec(dir_type, args.xnorm, args.xignore),
                                  DirectionSpec(dir_type, args.ynorm, args.yignore), args.same_dir, args.seed,
                                  args.ckpt2, args.ckpt3, args.dir_file)
    engine = EngineOptions(args.precision, not args.no_fold_bn and not args.bn_recompute,
                           args.compile or args.compile_mode is not None, args.batch_size,
                           points_per_launch=args.points_per_launch, cuda_fuse=args.cuda_fuse,
                           cudnn_benchmark=args.cudnn_benchmark, compile_mode=args.compile_mode)
    data = DataOptions(stream=True if args.stream else None, points_per_pass=args.points_per_pass,
                       memory_budget=int(args.memory_budget * 2**20) if args.memory_budget is not None else None,
                       num_workers=args.num_workers)
    run = RunOptions(overwrite=args.overwrite, max_points=args.max_points, progress=not args.no_progress,
                     shard=Shard.parse(args.shard) if args.shard is not None else None,
                     flush_seconds=args.flush_seconds)
    if args.threads is not None and args.threads < 1:
        raise LandscapeError(f"--threads must be >= 1, got {args.threads}")
    return SurfaceJob(sources=sources, x=Axis.parse(args.x, "x"), y=Axis.parse(args.y, "y") if args.y is not None else None,
                      directions=directions, engine=engine, sampling=sampling_plan(args), data=data, run=run,
                      out=args.out, surf_file=args.surf_file, device="cuda" if args.cuda else args.device,
                      threads=args.threads, bn_recompute=args.bn_recompute, bn_samples=args.bn_samples)


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        rank = dist_info().rank
    except LandscapeError:
        rank = 0  # run_job reports the bad environment
    try:
        args = parse_args(argv)
        plot = draws(args)  # before build_job fills in the embedded default's grid
        if plot:
            check_plot_flags(args)
        if not args.default_malloc:
            keep_freed_memory()
        job = build_job(args)
        result = run_job(job)
    except PeerError:
        raise SystemExit(2) from None  # another rank failed; rank 0 says why
    except LandscapeError:
        if rank != 0:
            raise SystemExit(2) from None  # every rank hit the same error; rank 0 prints it
        raise
    except Interrupted as e:
        if rank == 0:
            print(f"interrupted: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
    if rank != 0:
        return 0
    for note in result.notes:
        print(f"note: {note}")
    surf = result.surface
    status = f"{int(surf.done.sum())}/{surf.done.size} points done"
    if job.run.shard is not None:
        mine = job.run.shard.owns(np.arange(surf.done.size))
        ours = int(surf.done.reshape(-1)[mine].sum())
        status += f"; shard {job.run.shard.spec()}: {ours}/{int(mine.sum())} of its points"
    print(f"surface:    {result.surf_file}  ({status})")
    print(f"directions: {result.dir_file}")
    if plot:
        from landscape.plot.surface import save_figures

        stem = result.surf_file.with_suffix("")
        metrics = [f"{s}_loss" for s in job.sources.splits if f"{s}_loss" in surf.metrics]  # every split's loss
        paths = save_figures(surf, stem.parent, stem.name, metrics or None, vmin=args.vmin, vmax=args.vmax,
                             vlevel=args.vlevel, zlim=args.zlim, log=args.log)
        print("figures:    " + "\n            ".join(str(p) for p in paths))
        from landscape.plot.report import report_path, write_report

        report = write_report(result.surf_file, report_path(result.surf_file), vmax=args.vmax, log=args.log)
        print(f"report:     {report}")
    return 0


if __name__ == "__main__":
    main()
