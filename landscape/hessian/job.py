"""The curvature job: checkpoint -> model -> curvature data -> directions -> eigenvalue map and spectrum.

What `scripts/plot_hessian_eig.py` runs. The map is a surface file of its own
(`<stem>_hessian_x..._y....h5`) holding the reference code's `max_eig` and `min_eig`,
written by `compute_surface` with its own settings, so it resumes like a loss surface. The
spectrum at the center (top eigenvalues, trace, density) goes to `<stem>_hessian_spectrum.h5`.
Random directions are drawn and named exactly as `scripts/plot_surface.py` draws and names
them, so a map and a loss surface with the same seed share one plane.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm.auto import tqdm

from landscape.sources.checkpoint import build_model, load_checkpoint
from landscape.engine.threads import set_threads
from landscape.sources.data import check_normalization, load_dataset, resolve_normalization
from landscape.directions import DirectionSpec, Directions, load_directions, make_directions, save_directions, target_tensors
from landscape.errors import LandscapeError
from landscape.engine.evaluate import PointSetter, get_loss
from landscape.grid import Axis, Grid
from landscape.hessian.operator import (AXIS_KINDS, CurvatureMeasure, HessianOperator, SpectralDensity, Spectrum,
                               TraceEstimate, compute_spectrum, curvature_directions, eig_ratio)
from landscape.storage import Surface
from landscape.surface import compute_surface, default_checkpoint, resolve_device

SPECTRUM_FORMAT = 1


@dataclass(frozen=True)
class HessianJob:
    """Everything `scripts/plot_hessian_eig.py` needs."""

    ckpt: str | None = None  # None: the bundled embedded default
    arch: str | None = None
    dataset: str | None = None
    data_root: str | None = None
    normalization: str | None = None  # None: the checkpoint's
    split: str = "train"
    hessian_samples: int | None = None  # a seeded subset of the split; None: all of it
    batch_size: int | None = None
    device: str = "auto"
    seed: int = 0  # directions, the sample subset, Lanczos start vectors
    x: Axis | None = Axis(-1.0, 1.0, 11)  # None: no map
    y: Axis | None = Axis(-1.0, 1.0, 11)
    xdir: str = "random"  # random | hessian | hessian_min
    ydir: str = "random"
    xspec: DirectionSpec = DirectionSpec()
    yspec: DirectionSpec = DirectionSpec()
    hessian_scale: str = "weights"  # length of eigenvector directions: ||theta|| or 1
    dir_tol: float = 1e-4  # Lanczos tolerance of eigenvector directions
    dir_max_iter: int = 300
    dir_file: str | None = None
    surf_file: str | None = None
    out: str = "results"
    loss: str = "cross_entropy"
    tol: float = 1e-3  # Lanczos tolerance per map point (relative to |lambda|max; ~ the ratio's accuracy)
    max_iter: int = 100  # Hessian-vector products per map point, at most
    hvp: str = "auto"
    spectrum: bool = False
    top_k: int = 5
    trace_samples: int = 50
    spectrum_iter: int = 80
    spectrum_runs: int = 1
    overwrite: bool = False
    allow_pickle: bool = False
    max_points: int | None = None
    progress: bool = True
    threads: int | None = None


@dataclass
class HessianResult:
    surface: Surface | None
    surf_file: Path | None
    dir_file: Path | None
    spectrum: Spectrum | None
    spectrum_file: Path | None
    arch: str
    notes: list[str] = field(default_factory=list)
    points: int = 0  # map points computed in this run
    seconds_per_point: float | None = None
    products_per_point: float | None = None
    seconds_per_product: float | None = None


def run_hessian_job(job: HessianJob) -> HessianResult:
    """Compute (or resume) the curvature map and/or the spectrum a job describes."""
    notes: list[str] = []
    check_normalization(job.normalization)
    for flag, a in (("--xdir", job.xdir), ("--ydir", job.ydir)):
        if a not in AXIS_KINDS:
            raise LandscapeError(f"{flag} must be one of {', '.join(AXIS_KINDS)}, got {a!r}")
    if job.xspec.dir_type != "weights":
        raise LandscapeError(f"curvature maps move parameters only: --dir_type must be weights, got {job.xspec.dir_type!r}")
    if job.xspec.ignore != job.yspec.ignore and job.y is not None:
        raise LandscapeError(f"--xignore ({job.xspec.ignore}) and --yignore ({job.yspec.ignore}) must agree: "
                             "the Hessian is taken over the parameters the directions move")
    if job.x is None and not job.spectrum:
        raise LandscapeError("nothing to do: give --x (a map) or --spectrum")
    for name, v in (("--tol", job.tol), ("--direction-tol", job.dir_tol)):
        if not v > 0:
            raise LandscapeError(f"{name} must be positive, got {v}")
    for name, v in (("--max-iter", job.max_iter), ("--direction-max-iter", job.dir_max_iter),
                    ("--top-k", job.top_k), ("--trace-samples", job.trace_samples),
                    ("--spectrum-iter", job.spectrum_iter), ("--spectrum-runs", job.spectrum_runs)):
        if v < 1:
            raise LandscapeError(f"{name} must be >= 1, got {v}")

    ckpt_path = Path(job.ckpt) if job.ckpt is not None else default_checkpoint()
    ckpt = load_checkpoint(ckpt_path, allow_pickle=job.allow_pickle)
    model, arch, more = build_model(ckpt, job.arch)
    notes += more
    dataset = job.dataset or ckpt.meta.get("dataset")
    if dataset is None:
        raise LandscapeError(f"{ckpt_path} does not say which data it was trained on; pass --dataset")
    normalization, _ = resolve_normalization(job.normalization, dataset, ckpt.meta.get("normalization"))
    device = resolve_device(job.device)
    threads_note = set_threads(job.threads, device)
    if threads_note is not None:
        notes.append(threads_note)
    model.to(device)  # before any tensor is taken from it: .to() may replace storage
    data = load_dataset(dataset, job.split, job.data_root, job.hessian_samples, job.seed)
    if data.note is not None:
        notes.append(data.note)
    x = data.x.to(device)
    if normalization is not None:
        x = normalization.apply(x)
    loss_fn = get_loss(job.loss)
    ignore = job.xspec.ignore
    op = HessianOperator(model, x, data.y.to(device), loss_fn, ignore, job.batch_size, job.hvp)
    out = Path(job.out)
    stem = ckpt_path.stem
    common = {
        "arch": arch, "checkpoint_sha256": ckpt.sha256, "dataset": dataset, "split": job.split,
        "hessian_samples": len(op), "sample_seed": job.seed,
        "normalization": normalization.to_dict() if normalization else None, "loss": job.loss, "ignore": ignore,
    }
    result = HessianResult(None, None, None, None, None, arch, notes)

    if job.spectrum:  # at theta0, before any point moves the model
        result.spectrum_file = out / f"{stem}_hessian_spectrum.h5"
        settings = {**common, "top_k": job.top_k, "tol": job.tol, "max_iter": job.max_iter,
                    "trace_samples": job.trace_samples, "spectrum_iter": job.spectrum_iter,
                    "spectrum_runs": job.spectrum_runs, "seed": job.seed}
        result.spectrum = _spectrum(op, result.spectrum_file, settings, job, notes)

    if job.x is not None:
        grid = Grid(job.x, job.y)
        axes = [job.xdir] + ([job.ydir] if job.y is not None else [])
        tensors = target_tensors(model, "weights")
        dirs, result.dir_file = _directions(job, grid, axes, model, tensors, op, stem, ckpt, arch, common, notes)
        dirs.check_against(tensors, where=f"direction file {result.dir_file}")
        ys = [dirs.y] if grid.ndim == 2 else []
        setter = PointSetter([t for _, t in tensors], [dirs.x, *ys])  # the model itself: no BN folding
        measure = CurvatureMeasure(op, job.tol, job.max_iter, job.seed)
        tag = f"x{job.x.spec()}" + (f"_y{job.y.spec()}" if job.y is not None else "")
        result.surf_file = Path(job.surf_file) if job.surf_file else out / f"{stem}_hessian_{tag.replace(':', '_')}.h5"
        settings = {**common, "measure": "hessian_extreme_eigs", "solver": "lanczos", "tol": job.tol,
                    "max_iter": job.max_iter, "eig_seed": job.seed, "directions_sha256": dirs.fingerprint(),
                    "dir_type": "weights", "x": job.x.spec(), "y": job.y.spec() if job.y is not None else None}
        attrs = {"model": arch, "checkpoint": str(ckpt_path), "checkpoint_sha256": ckpt.sha256, "dataset": dataset,
                 "splits": job.split, "n_samples": {job.split: len(op)}, "seed": job.seed, "loss_name": job.loss,
                 "dir_type": "weights", "directions": dirs.attrs, "device": str(device),
                 "batch_size": op.batch_size, "hvp": job.hvp, "hessian_params": op.dim}
        before, start = op.count, time.perf_counter()
        result.surface = compute_surface(setter, {"": measure}, grid, result.surf_file, settings, attrs,
                                         str(result.dir_file), overwrite=job.overwrite,
                                         max_points=job.max_points, progress=job.progress)
        result.points = len(measure.products)
        if result.points:
            result.seconds_per_point = (time.perf_counter() - start) / result.points
            result.products_per_point = (op.count - before) / result.points
        if measure.unconverged:
            notes.append(f"{measure.unconverged} of {result.points} points reached --max-iter {job.max_iter} "
                         f"before tolerance {job.tol:g}; their eigenvalues are the last Lanczos estimates")
    if op.count:
        result.seconds_per_product = op.seconds / op.count
    if op.check is not None:
        c = op.check
        notes.append(f"Hessian-vector products by {c['method']}"
                     + (f" (torch.func and double backprop agree to {c['rel_diff']:.1e})" if "rel_diff" in c
                        else f" (torch.func failed: {c['func_error']})"))
    return result


def _directions(job: HessianJob, grid: Grid, axes: list[str], model, tensors, op: HessianOperator, stem: str,
                ckpt, arch: str, common: dict[str, Any], notes: list[str]) -> tuple[Directions, Path]:
    """Load the direction file if it exists (checking it fits the request), else make and save one."""
    out = Path(job.out)
    random_only = set(axes) == {"random"}
    if random_only:  # plot_surface's name and settings: the two scripts share the plane
        want: dict[str, Any] = {"kind": "random", "dir_type": "weights", "seed": job.seed,
                                "xnorm": job.xspec.norm, "xignore": job.xspec.ignore}
        if grid.ndim == 2:
            want.update(same_dir=False, ynorm=job.yspec.norm, yignore=job.yspec.ignore)
        name = f"{stem}_dirs_weights_{grid.ndim}d_seed{job.seed}.h5"
    else:
        want = {"kind": "hessian", "dir_type": "weights", "seed": job.seed, "xdir": axes[0],
                "checkpoint_sha256": common["checkpoint_sha256"], "hessian_samples": common["hessian_samples"],
                "split": job.split, "loss": job.loss, "eig_tol": job.dir_tol, "scale": job.hessian_scale,
                "xignore": job.xspec.ignore}
        if axes[0] == "random":
            want["xnorm"] = job.xspec.norm
        if grid.ndim == 2:
            want["ydir"] = axes[1]
            if axes[1] == "random":
                want["ynorm"] = job.yspec.norm
        name = f"{stem}_dirs_{'_'.join(axes)}_n{common['hessian_samples']}_seed{job.seed}.h5"
    dir_file = Path(job.dir_file) if job.dir_file else out / name
    if dir_file.exists() and not (job.overwrite and job.dir_file is None):
        dirs = load_directions(dir_file)
        if job.dir_file is None:
            diffs = [f"{k}: {dirs.attrs.get(k)!r} vs {v!r}" for k, v in want.items() if dirs.attrs.get(k) != v]
            if diffs:
                raise LandscapeError(f"direction file {dir_file} was made with other settings "
                                     f"({'; '.join(diffs[:3])}); pass --overwrite or --dir_file")
        if grid.ndim == 2 and dirs.y is None:
            raise LandscapeError(f"direction file {dir_file} has only an x direction; a 2-D map needs both")
        notes.append(f"reusing directions from {dir_file}")
        return dirs, dir_file
    if random_only:
        dirs = make_directions(tensors, job.xspec, job.seed, grid.ndim, False, job.yspec)
    else:
        bar = tqdm(desc="Hessian directions", unit="hvp", disable=not job.progress, dynamic_ncols=True)
        count = op.count
        try:
            dirs = curvature_directions(model, axes, op, (job.xspec.norm, job.yspec.norm), job.xspec.ignore,
                                        job.seed, job.dir_tol, job.dir_max_iter, job.hessian_scale)
        finally:
            bar.update(op.count - count)
            bar.close()
        dirs.attrs.update(checkpoint_sha256=common["checkpoint_sha256"], split=job.split, loss=job.loss)
        eig = ", ".join(f"{v:.4g}" for v in dirs.attrs["eigenvalues"])
        notes.append(f"Hessian directions along eigenvalues {eig} ({dirs.attrs['hessian_products']} products)")
    dirs.attrs.update(arch=arch, checkpoint=Path(ckpt.path).name if ckpt.path else "checkpoint")
    save_directions(dir_file, dirs)
    return dirs, dir_file


def _spectrum(op: HessianOperator, path: Path, settings: dict[str, Any], job: HessianJob,
              notes: list[str]) -> Spectrum:
    if path.exists() and not job.overwrite:
        sp, old = load_spectrum(path)
        if old == json.loads(json.dumps(settings)):
            notes.append(f"reusing the spectrum in {path}")
            return sp
        diffs = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        raise LandscapeError(f"{path} was computed with other settings ({', '.join(diffs[:3])}); "
                             "pass --overwrite to replace it")
    total = None  # unknown in advance: Lanczos may stop early
    bar = tqdm(total=total, desc="spectrum", unit="hvp", disable=not job.progress, dynamic_ncols=True)
    try:
        sp = compute_spectrum(op, job.top_k, job.tol, job.max_iter, job.trace_samples, job.spectrum_iter,
                              job.spectrum_runs, job.seed, on_step=bar.update)
    finally:
        bar.close()
    save_spectrum(path, sp, settings)
    return sp


def save_spectrum(path: str | os.PathLike, sp: Spectrum, settings: dict[str, Any]) -> None:
    """Write a spectrum atomically: nodes and weights (runs, m), top and bottom eigenvalues, the trace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w", locking=False) as f:
        f["nodes"] = sp.density.nodes
        f["weights"] = sp.density.weights
        f["top_eigs"] = np.asarray(sp.top, dtype=np.float64)
        f["bottom_eigs"] = np.asarray(sp.bottom, dtype=np.float64)
        f.attrs.update(format_version=SPECTRUM_FORMAT, settings=json.dumps(settings, sort_keys=True),
                       trace=sp.trace.mean, trace_stderr=sp.trace.stderr, trace_samples=sp.trace.samples,
                       dim=sp.dim, products=sp.products, seconds=sp.seconds)
    os.replace(tmp, path)


def load_spectrum(path: str | os.PathLike) -> tuple[Spectrum, dict[str, Any]]:
    """(spectrum, settings) from a file written by `save_spectrum`."""
    path = Path(path)
    if not path.is_file():
        raise LandscapeError(f"spectrum file {str(path)!r} does not exist; compute it with "
                             "scripts/plot_hessian_eig.py --spectrum")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as e:
        raise LandscapeError(f"{str(path)!r} is not a readable HDF5 spectrum file ({e})") from None
    with f:
        if "nodes" not in f:
            raise LandscapeError(f"{str(path)!r} has no 'nodes': not a spectrum file")
        a = dict(f.attrs)
        sp = Spectrum(SpectralDensity(f["nodes"][:], f["weights"][:]), f["top_eigs"][:], f["bottom_eigs"][:],
                      TraceEstimate(float(a["trace"]), float(a["trace_stderr"]), int(a["trace_samples"])),
                      int(a["dim"]), int(a["products"]), float(a["seconds"]))
        settings = json.loads(a["settings"])
    return sp, settings


@dataclass(frozen=True)
class RatioStats:
    """|λmin/λmax| over a map's computed points."""

    center: float  # at the grid point nearest the origin (NaN until it is computed)
    mean: float
    median: float
    max: float
    inner_mean: float  # points within half the grid's reach of the center
    outer_mean: float  # points beyond it
    points: int

    def line(self) -> str:
        return (f"center {self.center:.4f}, mean {self.mean:.4f}, median {self.median:.4f}, max {self.max:.4f}, "
                f"inner mean {self.inner_mean:.4f}, outer mean {self.outer_mean:.4f} ({self.points} points)")


def ratio_stats(surf: Surface) -> RatioStats:
    """Summary of |λmin/λmax| on a map (the radius splitting inner and outer: half the largest |coordinate|)."""
    r = eig_ratio(surf.metrics["min_eig"], surf.metrics["max_eig"])
    if surf.ndim == 2:
        X, Y = np.meshgrid(surf.x, surf.y)  # (ny, nx)
        dist = np.hypot(X, Y)
        reach = max(np.abs(surf.x).max(), np.abs(surf.y).max())
    else:
        dist = np.abs(surf.x)
        reach = np.abs(surf.x).max()
    ok = surf.done & np.isfinite(r)
    if not ok.any():
        raise LandscapeError("the map has no computed point with a finite ratio yet")
    at = np.unravel_index(np.argmin(dist), r.shape)  # the grid point nearest the origin
    center = r[at] if ok[at] else math.nan
    inner, outer = ok & (dist <= reach / 2), ok & (dist > reach / 2)
    mean = lambda m: float(r[m].mean()) if m.any() else math.nan  # noqa: E731
    return RatioStats(float(center), float(r[ok].mean()), float(np.median(r[ok])), float(r[ok].max()),
                      mean(inner), mean(outer), int(ok.sum()))
