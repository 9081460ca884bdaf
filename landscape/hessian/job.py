"""The curvature job: sources -> curvature data -> directions -> eigenvalue map (the sweep) and spectrum.

What `scripts/plot_hessian_eig.py` runs. The model and data come from `landscape.sources` as for a
loss surface; the map is a surface file of its own (`<stem>_hessian_x..._y....h5`) holding the
reference code's `max_eig` and `min_eig`, computed by `landscape.sweep.sweep` with its own settings,
so it resumes like a loss surface. The spectrum at the center (top eigenvalues, trace, density)
goes to `<stem>_hessian_spectrum_n<samples>_seed<seed>.h5`. Random directions are drawn as
`compute_surface` draws them (`directions.make_directions`), so a map and a loss surface with the
same seed share one plane.
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
import torch
from tqdm.auto import tqdm

from landscape.config import RunOptions
from landscape.directions import (DirectionSpec, Directions, directions_path, load_directions, make_directions,
                                  save_directions, target_tensors)
from landscape.engine.evaluate import PointSetter
from landscape.engine.threads import set_threads
from landscape.errors import LandscapeError
from landscape.grid import Axis, Grid
from landscape.hessian.operator import (AXIS_KINDS, CurvatureMeasure, HessianOperator, SpectralDensity, Spectrum,
                                        TraceEstimate, compute_spectrum, curvature_directions, eig_ratio)
from landscape.sources import SourceSpec, resolve
from landscape.sources.prepare import Digest
from landscape.storage import Surface
from landscape.surface import SETTINGS_FORMAT, loss_name, resolve_device, weights_sha256
from landscape.sweep import sweep

SPECTRUM_FORMAT = 2


@dataclass(frozen=True)
class CurvatureSpec:
    """What is computed at each point, and how the eigenvector directions are found."""

    tol: float = 1e-3  # Lanczos tolerance per map point (relative to |lambda|max; ~ the ratio's accuracy)
    max_iter: int = 100  # Hessian-vector products per map point, at most
    hvp: str = "auto"  # auto | func | backprop
    batch_size: int | None = None
    spectrum: bool = False  # also the spectrum at the center
    top_k: int = 5
    trace_samples: int = 50
    spectrum_iter: int = 80
    spectrum_runs: int = 1
    hessian_scale: str = "weights"  # length of eigenvector directions: ||theta|| or 1
    dir_tol: float = 1e-4  # Lanczos tolerance of eigenvector directions
    dir_max_iter: int = 300

    def __post_init__(self) -> None:
        for name in ("tol", "dir_tol"):
            if not getattr(self, name) > 0:
                raise LandscapeError(f"{name} must be positive, got {getattr(self, name)}", name)
        for name in ("max_iter", "dir_max_iter", "top_k", "trace_samples", "spectrum_iter", "spectrum_runs"):
            if getattr(self, name) < 1:
                raise LandscapeError(f"{name} must be >= 1, got {getattr(self, name)}", name)


@dataclass(frozen=True)
class HessianJob:
    """Everything `scripts/plot_hessian_eig.py` needs."""

    sources: SourceSpec = SourceSpec()  # one split; n_samples: the curvature's seeded subset (--hessian-samples)
    x: Axis | None = Axis(-1.0, 1.0, 11)  # None: no map
    y: Axis | None = Axis(-1.0, 1.0, 11)
    xdir: str = "random"  # random | hessian | hessian_min
    ydir: str = "random"
    xspec: DirectionSpec = DirectionSpec()
    yspec: DirectionSpec = DirectionSpec()
    seed: int = 0  # directions and Lanczos start vectors
    curvature: CurvatureSpec = CurvatureSpec()
    run: RunOptions = RunOptions()
    out: str = "results"
    surf_file: str | None = None
    dir_file: str | None = None
    device: str = "auto"
    threads: int | None = None

    @property
    def split(self) -> str:
        return self.sources.splits[0]


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


def _check(job: HessianJob) -> None:
    for name, a in (("xdir", job.xdir), ("ydir", job.ydir)):
        if a not in AXIS_KINDS:
            raise LandscapeError(f"{name} must be one of {', '.join(AXIS_KINDS)}, got {a!r}", name)
    if job.xspec.dir_type != "weights":
        raise LandscapeError(f"curvature maps move parameters only: dir_type must be weights, got "
                             f"{job.xspec.dir_type!r}", "dir_type")
    if job.xspec.ignore != job.yspec.ignore and job.y is not None:
        raise LandscapeError(f"xignore ({job.xspec.ignore}) and yignore ({job.yspec.ignore}) must agree: the Hessian "
                             "is taken over the parameters the directions move", ("xignore", "yignore"))
    if job.x is None and not job.curvature.spectrum:
        raise LandscapeError("nothing to do: give x (a map) or spectrum", ("x", "spectrum"))
    if len(job.sources.splits) != 1:
        raise LandscapeError(f"the curvature is taken on one split, got {','.join(job.sources.splits)}", "split")


def run_hessian_job(job: HessianJob) -> HessianResult:
    """Compute (or resume) the curvature map and/or the spectrum a job describes."""
    _check(job)
    cs = job.curvature
    notes: list[str] = []
    device = resolve_device(job.device)
    threads_note = set_threads(job.threads, device)
    if threads_note is not None:
        notes.append(threads_note)
    sources = resolve(job.sources, device)
    notes += sources.notes
    model, split = sources.model, job.split
    data = sources.data[split]
    if not (isinstance(data, tuple) and all(isinstance(t, torch.Tensor) for t in data)):
        raise LandscapeError(f"the curvature needs its {split} data as tensors (x, y): a built-in data set, or a "
                             "data definition returning them", "data_def")
    x, y = data
    ignore = job.xspec.ignore
    op = HessianOperator(model, x.to(device), y.to(device), sources.loss, ignore, cs.batch_size, cs.hvp)
    out = Path(job.out)
    stem = sources.name
    digest = Digest()
    digest.add(x, y)
    common = {
        "format": SETTINGS_FORMAT, "weights_sha256": weights_sha256(model),
        "data": {split: {"samples": digest.rows, "sha256": digest.hexdigest()}}, "loss": loss_name(sources.loss),
        "ignore": ignore,
    }
    provenance = {**sources.provenance, "split": split}
    result = HessianResult(None, None, None, None, None, sources.arch or stem, notes)

    if cs.spectrum:  # at theta0, before any point moves the model
        result.spectrum_file = out / f"{stem}_hessian_spectrum_n{len(op)}_seed{job.seed}.h5"
        settings = {**common, "top_k": cs.top_k, "tol": cs.tol, "max_iter": cs.max_iter,
                    "trace_samples": cs.trace_samples, "spectrum_iter": cs.spectrum_iter,
                    "spectrum_runs": cs.spectrum_runs, "seed": job.seed}
        result.spectrum = _spectrum(op, result.spectrum_file, settings, job, notes)

    if job.x is not None:
        grid = Grid(job.x, job.y)
        axes = [job.xdir] + ([job.ydir] if job.y is not None else [])
        tensors = target_tensors(model, "weights")
        tag = f"x{job.x.spec()}" + (f"_y{job.y.spec()}" if job.y is not None else "")
        result.surf_file = Path(job.surf_file) if job.surf_file else out / f"{stem}_hessian_{tag.replace(':', '_')}.h5"
        dirs, result.dir_file = _directions(job, grid, axes, model, tensors, op, result.surf_file, common, notes)
        dirs.check_against(tensors, where=f"direction file {result.dir_file}")
        ys = [dirs.y] if grid.ndim == 2 else []
        setter = PointSetter([t for _, t in tensors], [dirs.x, *ys])  # the model itself: no BN folding
        measure = CurvatureMeasure(op, cs.tol, cs.max_iter, job.seed)
        settings = {**common, "measure": "hessian_extreme_eigs", "solver": "lanczos", "tol": cs.tol,
                    "max_iter": cs.max_iter, "eig_seed": job.seed, "directions_sha256": dirs.fingerprint(),
                    "dir_type": "weights", "x": job.x.spec(), "y": job.y.spec() if job.y is not None else None}
        attrs = {**provenance, "loss_name": loss_name(sources.loss), "splits": split, "n_samples": {split: len(op)},
                 "seed": job.seed, "dir_type": "weights", "directions": dirs.attrs, "device": str(device),
                 "batch_size": op.batch_size, "hvp": cs.hvp, "hessian_params": op.dim}
        before, start = op.count, time.perf_counter()
        result.surface = sweep(setter, {"": measure}, grid, result.surf_file, settings, attrs, str(result.dir_file),
                               job.run)
        result.points = len(measure.products)
        if result.points:
            result.seconds_per_point = (time.perf_counter() - start) / result.points
            result.products_per_point = (op.count - before) / result.points
        if measure.unconverged:
            notes.append(f"{measure.unconverged} of {result.points} points reached max_iter {cs.max_iter} "
                         f"before tolerance {cs.tol:g}; their eigenvalues are the last Lanczos estimates")
    if op.count:
        result.seconds_per_product = op.seconds / op.count
    if op.check is not None:
        c = op.check
        notes.append(f"Hessian-vector products by {c['method']}"
                     + (f" (torch.func and double backprop agree to {c['rel_diff']:.1e})" if "rel_diff" in c
                        else f" (torch.func failed: {c['func_error']})"))
    return result


def _directions(job: HessianJob, grid: Grid, axes: list[str], model, tensors, op: HessianOperator, surf_file: Path,
                common: dict[str, Any], notes: list[str]) -> tuple[Directions, Path]:
    """Random directions are drawn (cheap, and the same as a loss surface's for the seed); Hessian
    eigenvector directions are read from the direction file when it holds them for these settings,
    else found with Lanczos and saved."""
    cs = job.curvature
    dir_file = Path(job.dir_file) if job.dir_file else directions_path(surf_file)
    if set(axes) == {"random"} and not (job.dir_file and dir_file.exists()):
        dirs = make_directions(tensors, job.xspec, job.seed, grid.ndim, False, job.yspec)
        save_directions(dir_file, dirs)
        return dirs, dir_file
    want = {"kind": "hessian", "dir_type": "weights", "seed": job.seed, "xdir": axes[0],
            "weights_sha256": common["weights_sha256"], "data": json.dumps(common["data"], sort_keys=True),
            "loss": common["loss"], "eig_tol": cs.dir_tol, "scale": cs.hessian_scale, "xignore": job.xspec.ignore}
    if axes[0] == "random":
        want["xnorm"] = job.xspec.norm
    if grid.ndim == 2:
        want["ydir"] = axes[1]
        if axes[1] == "random":
            want["ynorm"] = job.yspec.norm
    if dir_file.exists() and not (job.run.overwrite and job.dir_file is None):
        dirs = load_directions(dir_file)
        if job.dir_file is None:
            diffs = [f"{k}: {dirs.attrs.get(k)!r} vs {v!r}" for k, v in want.items() if dirs.attrs.get(k) != v]
            if diffs:
                raise LandscapeError(f"direction file {dir_file} was made with other settings "
                                     f"({'; '.join(diffs[:3])}); pass overwrite or dir_file", ("overwrite", "dir_file"))
        if grid.ndim == 2 and dirs.y is None:
            raise LandscapeError(f"direction file {dir_file} has only an x direction; a 2-D map needs both", "dir_file")
        notes.append(f"reusing directions from {dir_file}")
        return dirs, dir_file
    bar = tqdm(desc="Hessian directions", unit="hvp", disable=not job.run.progress, dynamic_ncols=True)
    count = op.count
    try:
        dirs = curvature_directions(model, axes, op, (job.xspec.norm, job.yspec.norm), job.xspec.ignore,
                                    job.seed, cs.dir_tol, cs.dir_max_iter, cs.hessian_scale)
    finally:
        bar.update(op.count - count)
        bar.close()
    dirs.attrs.update({k: v for k, v in want.items() if k in ("weights_sha256", "data", "loss")})
    eig = ", ".join(f"{v:.4g}" for v in dirs.attrs["eigenvalues"])
    notes.append(f"Hessian directions along eigenvalues {eig} ({dirs.attrs['hessian_products']} products)")
    save_directions(dir_file, dirs)
    return dirs, dir_file


def _spectrum(op: HessianOperator, path: Path, settings: dict[str, Any], job: HessianJob,
              notes: list[str]) -> Spectrum:
    cs = job.curvature
    if path.exists() and not job.run.overwrite:
        sp, old = load_spectrum(path)
        if old == json.loads(json.dumps(settings)):
            notes.append(f"reusing the spectrum in {path}")
            return sp
        diffs = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        raise LandscapeError(f"{path} was computed with other settings ({', '.join(diffs[:3])}); "
                             "pass overwrite to replace it", "overwrite")
    total = None  # unknown in advance: Lanczos may stop early
    bar = tqdm(total=total, desc="spectrum", unit="hvp", disable=not job.run.progress, dynamic_ncols=True)
    try:
        sp = compute_spectrum(op, cs.top_k, cs.tol, cs.max_iter, cs.trace_samples, cs.spectrum_iter,
                              cs.spectrum_runs, job.seed, on_step=bar.update)
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
