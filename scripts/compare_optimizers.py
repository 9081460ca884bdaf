#!/usr/bin/env python3
"""Optimizers compared on one loss surface: the same network from the same initial weights, trained
with SGD, SGD+momentum, AdaGrad, RMSprop, Adam, RAdam and CalibratedAdam (snapshots every epoch);
one PCA plane for all the paths (relative to the best end point), the loss surface of that plane with
every path on it, and a table (final loss and accuracy, path length, variance the plane captures).
With --animate, also the paths moving together epoch by epoch over that surface (GIF, and MP4
where ffmpeg exists).

With no arguments: a ResNet-20 on the embedded digits, 8 epochs per optimizer, a 17x17 surface
over 512 training images. Rerunning reuses the trained runs and the computed surface points.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import landscape  # noqa: E402
from landscape.engine.threads import set_threads  # noqa: E402
from landscape.sources.checkpoint import build_model, load_checkpoint  # noqa: E402
from landscape.sources.data import DATASETS, DEFAULT_NORMALIZATION, load_dataset  # noqa: E402
from landscape.directions import save_directions  # noqa: E402
from landscape.errors import LandscapeError, exit_on_error  # noqa: E402
from landscape.models import get_model  # noqa: E402
from landscape.plot.animate import check_animation_options, write_animation  # noqa: E402
from landscape.plot.surface import save_figure  # noqa: E402
from landscape.sources import SourceSpec  # noqa: E402
from landscape.surface import DirectionRequest, SurfaceJob, resolve_device, run_job  # noqa: E402
from landscape.train import TrainConfig  # noqa: E402
from landscape.trajectory import (DEFAULT_RUNS, Path2D, covering_axes, run_statistics, train_runs,  # noqa: E402
                                  trajectory_animation, trajectory_figure, trajectory_pca, write_projection)

EXAMPLE = """examples:
  python scripts/compare_optimizers.py                       # the embedded default
  python scripts/compare_optimizers.py --optimizers SGD Adam CalibratedAdam --epochs 12 --num 31
  python scripts/compare_optimizers.py --animate --fps 2       # + compare_optimizers_paths.gif (.mp4)"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-root", default=None)
    p.add_argument("--optimizers", nargs="+", default=None, metavar="LABEL",
                   help=f"a subset of {', '.join(r.label for r in DEFAULT_RUNS)} (default: all)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--n-train", type=int, default=None, help="train on a seeded subset of N samples (default: all)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0, help="initial weights and batch order, shared by every optimizer")
    p.add_argument("--num", type=int, default=17, help="surface points per axis")
    p.add_argument("--margin", type=float, default=0.15, help="surface range: this fraction of the paths' span each side")
    p.add_argument("--n-samples", type=int, default=512,
                   help="training samples (seeded subset) for the surface; the table's losses use all of them")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default on the CPU: the idle cores this process may use)")
    p.add_argument("--device", default="auto")
    p.add_argument("--retrain", action="store_true", help="train every optimizer again even if its run exists")
    p.add_argument("--out", default="results/compare_optimizers")
    p.add_argument("--animate", action="store_true",
                   help="also write <out>/compare_optimizers_paths.gif (and .mp4 where ffmpeg exists): the optimizers "
                        "moving together epoch by epoch over the surface, each one's loss on the plane (the surface "
                        "interpolated at its projected point) in the title")
    p.add_argument("--fps", type=float, default=2.0, help="with --animate: frames per second (default: 2)")
    p.add_argument("--frames", type=int, default=None,
                   help="with --animate: at most N frames, epochs subsampled evenly (default: one frame per epoch)")
    return p.parse_args(argv)


def select_runs(names: list[str] | None):
    if names is None:
        return list(DEFAULT_RUNS)
    by_label = {r.label.lower(): r for r in DEFAULT_RUNS}
    unknown = [n for n in names if n.lower() not in by_label]
    if unknown:
        raise LandscapeError(f"unknown optimizer {unknown[0]!r}; choose from {', '.join(r.label for r in DEFAULT_RUNS)}")
    return [by_label[n.lower()] for n in names]


def markdown_table(rows: list[dict], ratio: np.ndarray) -> str:
    lines = [f"Common plane: PC1 {100 * ratio[0]:.1f} %, PC2 {100 * ratio[1]:.1f} % of the joint variance.", "",
             "| optimizer | lr | final train loss | train acc | test acc | path length | path length in plane "
             "| variance captured by the plane | train time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['optimizer']} | {r['lr']:g} | {r['train_loss']:.4g} | {100 * r['train_acc']:.1f} % | "
                     f"{100 * r['test_acc']:.1f} % | {r['path_length']:.2f} | {r['plane_path_length']:.2f} | "
                     f"{100 * r['variance_captured']:.1f} % | {r['wall_s']:.0f} s |")
    return "\n".join(lines) + "\n"


@exit_on_error(flags={"runs": "--optimizers"})
def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    runs = select_runs(args.optimizers)
    if args.threads is not None and args.threads < 1:
        raise LandscapeError(f"--threads must be >= 1, got {args.threads}")
    if args.animate:
        check_animation_options(args.fps, args.frames)
    note = set_threads(args.threads, resolve_device(args.device))
    if note is not None:
        print(f"note: {note}")
    out = Path(args.out)
    base = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, weight_decay=args.weight_decay, seed=args.seed)
    tr = load_dataset(args.dataset, "train", args.data_root, args.n_train, args.seed)
    te = load_dataset(args.dataset, "test", args.data_root)
    norm = DEFAULT_NORMALIZATION.get(args.dataset)
    if norm is None:
        raise LandscapeError(f"--dataset {args.dataset} has no known normalization statistics; use digits, cifar10, "
                             "cifar100 or mnist")
    torch.manual_seed(args.seed)
    init = get_model(args.model, num_classes=tr.num_classes, in_channels=tr.in_channels)
    meta = {"arch": args.model, "num_classes": tr.num_classes, "in_channels": tr.in_channels, "dataset": args.dataset,
            "normalization": norm.to_dict(), "seed": args.seed, "landscape_version": landscape.__version__}
    results = train_runs(runs, init, meta, tr, te, norm, base, out, resolve_device(args.device))
    t_train = time.time() - t0

    best = min(results, key=lambda r: r.metrics["train_loss"])
    model, arch, _ = build_model(load_checkpoint(best.final))
    snapshots = [p for r in results for p in r.snapshots]
    slices, a = {}, 0
    for r in results:
        slices[r.run.label] = slice(a, a + len(r.snapshots))
        a += len(r.snapshots)
    pca = trajectory_pca(snapshots, best.final, model)
    ratio = pca.explained_variance_ratio
    pca.directions.attrs.update(arch=arch, checkpoint=best.final.name, optimizers=[r.run.label for r in results],
                                best=best.run.label)
    dir_file = out / "joint_pca_dirs.h5"
    save_directions(dir_file, pca.directions)
    for r in results:
        write_projection(out / f"{r.run.slug()}_proj.h5", pca.coords[slices[r.run.label]], r.epochs,
                         {"dir_file": str(dir_file), "optimizer": r.run.label})
    print(f"joint PCA of {len(snapshots)} snapshots around {best.run.label}'s end point: "
          f"PC1 {100 * ratio[0]:.1f} %, PC2 {100 * ratio[1]:.1f} %")

    x, y = covering_axes(pca.coords, args.num, args.margin)
    t1 = time.time()
    res = run_job(SurfaceJob(sources=SourceSpec(ckpt=str(best.final), n_samples=args.n_samples), x=x, y=y,
                             directions=DirectionRequest(dir_file=str(dir_file)), device=args.device, out=str(out),
                             threads=args.threads,
                             surf_file=str(out / f"joint_pca_surface_{pca.directions.fingerprint()[:8]}.h5")))
    surf = res.surface
    t_surface = time.time() - t1

    stats = run_statistics(pca, slices)
    rows = []
    for r in results:
        m = r.metrics
        rows.append({"optimizer": r.run.label, "lr": r.run.lr, "momentum": r.run.momentum, **m,
                     **stats[r.run.label]})
    paths = [Path2D(pca.coords[slices[r.run.label]], f"{r.run.label}: loss {r.metrics['train_loss']:.3g}, "
                    f"acc {100 * r.metrics['train_acc']:.1f} %", np.array(r.epochs)) for r in results]
    fig = trajectory_figure(surf.x, surf.y, surf.masked("train_loss"), paths, ratio,
                            title=f"{arch} on {args.dataset}: {len(results)} optimizers, {args.epochs} epochs, "
                                  f"one PCA plane")
    figs = save_figure(fig, out / "compare_optimizers")
    anim = None
    if args.animate:
        moving = [Path2D(p.coords, f"{r.run.label}, lr {r.run.lr:g}: final train loss {r.metrics['train_loss']:.3g}",
                         p.epochs, name=r.run.label) for r, p in zip(results, paths)]
        anim = write_animation(trajectory_animation(surf.x, surf.y, surf.masked("train_loss"), moving, ratio,
                                                    title=f"{arch} on {args.dataset}: {len(results)} optimizers on "
                                                          "one PCA plane", frames=args.frames),
                               out / "compare_optimizers_paths", args.fps)
    table = markdown_table(rows, ratio)
    (out / "compare_optimizers.md").write_text(table)
    (out / "compare_optimizers.json").write_text(json.dumps({"explained_variance_ratio": ratio.tolist(),
                                                             "best": best.run.label, "runs": rows}, indent=2) + "\n")
    print(table)
    print(f"surface:    {res.surf_file}  ({int(surf.done.sum())}/{surf.done.size} points)")
    print(f"figure:     {figs[0]} (and .pdf)\ntable:      {out / 'compare_optimizers.md'}")
    if anim is not None:
        print(f"animation:  {anim.gif}" + (f" and {anim.mp4}" if anim.mp4 else f"  (note: {anim.note})"))
    print(f"time: training {t_train:.0f} s, surface {t_surface:.0f} s, total {time.time() - t0:.0f} s")
    return {"rows": rows, "ratio": ratio, "figure": figs[0], "surf_file": res.surf_file, "dir_file": dir_file,
            "animation": anim}


if __name__ == "__main__":
    main()
