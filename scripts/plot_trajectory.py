#!/usr/bin/env python3
"""Optimizer trajectory on its PCA plane (Li et al. 2018, Sec. 7): PCA directions of the snapshots
relative to the final weights, the path projected onto them, and the loss contours of that plane.

Writes the direction file (reference layout, explained variance in its attributes), the projected
path (<dir_file>_proj.h5 with proj_xcoord, proj_ycoord), the surface file and the figure; with
--animate, also the path drawn snapshot by snapshot (GIF, and MP4 where ffmpeg exists).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.sources.checkpoint import build_model, load_checkpoint  # noqa: E402
from landscape.sources.data import DATASETS  # noqa: E402
from landscape.directions import DIR_TYPES, IGNORES, save_directions  # noqa: E402
from landscape.errors import exit_on_error  # noqa: E402
from landscape.grid import Axis  # noqa: E402
from landscape.plot.animate import check_animation_options, write_animation  # noqa: E402
from landscape.plot.surface import save_figure  # noqa: E402
from landscape.config import RunOptions  # noqa: E402
from landscape.directions import DirectionSpec  # noqa: E402
from landscape.engine import EngineOptions  # noqa: E402
from landscape.sources import SourceSpec  # noqa: E402
from landscape.surface import DirectionRequest, SurfaceJob, run_job  # noqa: E402
from landscape.trajectory import (Path2D, covering_axes, project_trajectory, snapshot_paths,  # noqa: E402
                                  trajectory_animation, trajectory_figure, trajectory_pca, write_projection)

EXAMPLE = """example:
  python scripts/train.py --model resnet20 --dataset digits --epochs 20 --lr 0.02 --save-every 1 \\
      --out results/traj_r20 --name final
  python scripts/plot_trajectory.py --model_folder results/traj_r20 --prefix model_ --suffix .pt \\
      --start_epoch 0 --max_epoch 19 --save_epoch 1 --final results/traj_r20/final.pt --animate"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_folder", required=True, help="folder holding the snapshots")
    p.add_argument("--prefix", default="model_")
    p.add_argument("--suffix", default=".pt")
    p.add_argument("--start_epoch", type=int, default=0)
    p.add_argument("--max_epoch", type=int, default=None, help="default: the largest epoch in the folder")
    p.add_argument("--save_epoch", type=int, default=1, help="use every K-th epoch")
    p.add_argument("--final", default=None, help="the final checkpoint, origin of the plane (default: the last snapshot)")
    p.add_argument("--model", default=None, help="architecture (default: from the checkpoint)")
    p.add_argument("--dir_type", default="weights", choices=DIR_TYPES)
    p.add_argument("--ignore", default="biasbn", choices=IGNORES)
    p.add_argument("--no-center", action="store_true", help="PCA of the uncentered differences (the paper's M)")
    p.add_argument("--dir_file", default=None, help="where to write the PCA directions (default: <out>/<final>_pca_<dir_type>_dirs.h5)")
    p.add_argument("--x", default=None, help="surface axis min:max:num (default: the path's extent plus --margin)")
    p.add_argument("--y", default=None)
    p.add_argument("--num", type=int, default=21, help="points per axis of the automatic range")
    p.add_argument("--margin", type=float, default=0.2, help="automatic range: this fraction of the path's span each side")
    p.add_argument("--no-surface", action="store_true", help="only the directions, the projection and the path")
    p.add_argument("--dataset", default=None, choices=DATASETS)
    p.add_argument("--data-root", default=None)
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--vmax", type=float, default=None, help="highest contour level (default: the surface's maximum)")
    p.add_argument("--out", default="results/trajectory")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--animate", action="store_true",
                   help="also write <out>/<final>_paths.gif (and .mp4 where ffmpeg exists): the path drawn snapshot "
                        "by snapshot over the contours, its loss on the plane (the surface interpolated at the "
                        "projected point; none with --no-surface) in the title")
    p.add_argument("--fps", type=float, default=4.0, help="with --animate: frames per second (default: 4)")
    p.add_argument("--frames", type=int, default=None,
                   help="with --animate: at most N frames, snapshots subsampled evenly (default: one per snapshot)")
    return p.parse_args(argv)


@exit_on_error(flags={"folder": "--model_folder", "start_epoch": "--start_epoch", "max_epoch": "--max_epoch",
                      "save_epoch": "--save_epoch"})
def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    if args.animate:
        check_animation_options(args.fps, args.frames)
    snaps = snapshot_paths(args.model_folder, args.prefix, args.suffix, args.start_epoch, args.max_epoch,
                           args.save_epoch)
    final = Path(args.final) if args.final else snaps[-1][1]
    ckpt = load_checkpoint(final)
    model, arch, notes = build_model(ckpt, args.model)
    for n in notes:
        print(f"note: {n}")
    paths = [p for _, p in snaps]
    epochs = [e for e, _ in snaps]
    if final.resolve() not in [p.resolve() for p in paths]:  # the path ends at the final weights (the origin)
        paths.append(final)
        epochs.append(int(ckpt.meta.get("epoch", epochs[-1] + args.save_epoch)))
    pca = trajectory_pca(paths, final, model, args.dir_type, args.ignore, center=not args.no_center)
    pca.directions.attrs.update(arch=arch, checkpoint=final.name, checkpoint_sha256=ckpt.sha256, epochs=epochs)
    out = Path(args.out)
    dir_file = Path(args.dir_file) if args.dir_file else out / f"{final.stem}_pca_{args.dir_type}_dirs.h5"
    save_directions(dir_file, pca.directions)
    coords = project_trajectory(paths, model, pca.directions, args.dir_type)  # (n, 2)
    proj_file = write_projection(dir_file.with_name(dir_file.stem + "_proj.h5"), coords, epochs,
                                 {"dir_file": str(dir_file), "final": str(final)})
    ratio = pca.explained_variance_ratio
    print(f"PCA of {len(paths)} snapshots: PC1 {100 * ratio[0]:.1f} %, PC2 {100 * ratio[1]:.1f} % of the variance")
    print(f"directions: {dir_file}\nprojection: {proj_file}")
    result = {"dir_file": dir_file, "proj_file": proj_file, "coords": coords, "ratio": ratio}
    surf = None
    if not args.no_surface:
        auto_x, auto_y = covering_axes(coords, args.num, args.margin)
        x = Axis.parse(args.x, "x") if args.x else auto_x
        y = Axis.parse(args.y, "y") if args.y else auto_y
        job = SurfaceJob(sources=SourceSpec(ckpt=str(final), arch=args.model, dataset=args.dataset,
                                            data_root=args.data_root, n_samples=args.n_samples),
                         engine=EngineOptions(batch_size=args.batch_size), device=args.device, x=x, y=y,
                         directions=DirectionRequest(DirectionSpec(args.dir_type), DirectionSpec(args.dir_type),
                                                     dir_file=str(dir_file)),
                         out=str(out), run=RunOptions(overwrite=args.overwrite),
                         surf_file=str(out / f"{final.stem}_pca_{args.dir_type}_surface_"
                                            f"{pca.directions.fingerprint()[:8]}.h5"))
        res = run_job(job)
        surf = res.surface
        print(f"surface:    {res.surf_file}  ({int(surf.done.sum())}/{surf.done.size} points done)")
        result["surf_file"] = res.surf_file
    label = f"{arch}, epochs {epochs[0]}-{epochs[-1]}"
    sx, sy, sz = (surf.x, surf.y, surf.masked("train_loss")) if surf else (None, None, None)
    path = Path2D(coords, label, epochs=epochs, name=arch)
    fig = trajectory_figure(sx, sy, sz, [path], ratio, title=f"{arch}: trajectory on its PCA plane", vmax=args.vmax)
    figs = save_figure(fig, out / f"{final.stem}_trajectory")
    print(f"figure:     {figs[0]} (and .pdf)")
    result["figure"] = figs[0]
    if args.animate:
        anim = write_animation(trajectory_animation(sx, sy, sz, [path], ratio, f"{arch}: trajectory on its PCA plane",
                                                    args.frames, args.vmax), out / f"{final.stem}_paths", args.fps)
        print(f"animation:  {anim.gif}" + (f" and {anim.mp4}" if anim.mp4 else f"  (note: {anim.note})"))
        result["animation"] = anim
    print(f"[{time.time() - t0:.0f} s]")
    return result


if __name__ == "__main__":
    main()
