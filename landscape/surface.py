"""Orchestration: which points remain, evaluation, progress, periodic atomic flushes, resume.

The only module that ties the evaluator (models, data) to storage (files).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

import landscape
from landscape.checkpoint import build_model, load_checkpoint
from landscape.data import check_normalization, load_dataset, resolve_normalization
from landscape.directions import (DirectionSpec, Directions, interpolation_direction, load_directions,
                                  make_directions, random_direction, save_directions, target_tensors)
from landscape.errors import LandscapeError
from landscape.evaluate import EngineOptions, Evaluator, PointSetter, get_loss, prepare_engine
from landscape.grid import Axis, Grid
from landscape.storage import Surface, read_surface, write_surface


def open_surface(path: str | Path, grid: Grid, settings: Mapping[str, Any], metrics: list[str],
                 overwrite: bool = False) -> Surface:
    """The surface at `path` to continue, or a new empty one.

    An existing file made with other settings is an error unless `overwrite`.
    """
    path = Path(path)
    settings = json.loads(json.dumps(settings))  # normalize (tuples -> lists) for comparison
    if path.exists() and not overwrite:
        surf = read_surface(path)
        old = surf.settings
        if old is None:
            raise LandscapeError(
                f"{path} was not written by landscape (no settings); pass --overwrite to replace it "
                "or --surf_file to write elsewhere"
            )
        if old != settings:
            diffs = [f"{k}: {old.get(k)!r} -> {settings.get(k)!r}"
                     for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
            raise LandscapeError(
                f"{path} was computed with other settings ({'; '.join(diffs[:3])}); "
                "pass --overwrite to replace it, or --surf_file to write a new file"
            )
        for m in metrics:
            surf.add_metric(m)
        return surf
    xs = grid.x.coords()
    ys = grid.y.coords() if grid.y is not None else None
    surf = Surface(x=xs, y=ys)
    for m in metrics:
        surf.add_metric(m)
    surf.attrs["settings"] = json.dumps(settings, sort_keys=True)
    return surf


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM (what Slurm sends before a kill) into KeyboardInterrupt, so `finally` flushes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def compute_surface(
    setter: PointSetter,
    evaluators: Mapping[str, Evaluator],
    grid: Grid,
    path: str | Path,
    settings: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
    dir_file: str | None = None,
    overwrite: bool = False,
    flush_seconds: float = 5.0,
    max_points: int | None = None,
    progress: bool = True,
) -> Surface:
    """Evaluate every point of `grid` not yet done in the file at `path`, and write it.

    `evaluators` maps a prefix (a split name: "train", "test") to a measure: a callable
    returning one value per name in its `metric_names` at the current weights. The file gets
    `<prefix>_<name>` for each (`train_loss`, `train_acc` from an Evaluator), or `<name>` for
    the prefix "" (e.g. the reference's `max_eig`). The file is rewritten atomically at most every
    `flush_seconds`, at the end, and on interruption (Ctrl-C, SIGTERM), so a rerun of
    the same call continues where this one stopped. The model holds theta0 afterwards.
    """
    if len(setter.dirs) != grid.ndim:
        raise ValueError(f"a {grid.ndim}-D grid needs {grid.ndim} directions, the setter has {len(setter.dirs)} directions")
    names = {k: [f"{k}_{m}" if k else m for m in ev.metric_names] for k, ev in evaluators.items()}
    metrics = [m for ms in names.values() for m in ms]
    surf = open_surface(path, grid, settings, metrics, overwrite)
    surf.dir_file = dir_file
    surf.attrs.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    surf.attrs["landscape_version"] = landscape.__version__
    for k, v in (attrs or {}).items():
        surf.attrs[k] = v
    points = grid.points()  # (size, ndim)
    flat_done = surf.done.reshape(-1)  # a view: writes land in surf.done
    todo = np.flatnonzero(~flat_done)
    if max_points is not None:
        todo = todo[:max_points]
    flat = {m: surf.metrics[m].reshape(-1) for m in metrics}
    last_flush = time.monotonic()
    bar = tqdm(total=grid.size, initial=grid.size - int((~flat_done).sum()), desc="surface",
               unit="pt", disable=not progress, dynamic_ncols=True)
    try:
        with _sigterm_raises():
            for idx in todo:
                setter.set(points[idx])
                for key, ev in evaluators.items():
                    for m, v in zip(names[key], ev()):
                        flat[m][idx] = v
                flat_done[idx] = True
                bar.update(1)
                if time.monotonic() - last_flush >= flush_seconds:
                    write_surface(path, surf)
                    last_flush = time.monotonic()
    finally:
        setter.restore()
        bar.close()
        write_surface(path, surf)
    return surf


# ---------------------------------------------------------------------------------------
# The whole job: checkpoint -> model -> data -> directions -> surface file.


@dataclass(frozen=True)
class SurfaceJob:
    """Everything `scripts/plot_surface.py` needs to compute one surface."""

    ckpt: str | None = None  # None: the bundled embedded default
    arch: str | None = None
    dataset: str | None = None  # None: the checkpoint's metadata
    data_root: str | None = None
    normalization: str | None = None  # checkpoint (None), dataset, imagenet, none or "m1,m2,m3/s1,s2,s3"
    splits: tuple[str, ...] = ("train",)
    n_samples: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    seed: int = 0
    x: Axis = Axis(-1.0, 1.0, 51)
    y: Axis | None = Axis(-1.0, 1.0, 51)
    xspec: DirectionSpec = DirectionSpec()
    yspec: DirectionSpec = DirectionSpec()
    same_dir: bool = False
    ckpt2: str | None = None  # x direction = theta2 - theta1
    ckpt3: str | None = None  # y direction = theta3 - theta1
    dir_file: str | None = None
    surf_file: str | None = None
    out: str = "results"
    loss: str = "cross_entropy"
    overwrite: bool = False
    allow_pickle: bool = False
    max_points: int | None = None
    progress: bool = True
    precision: str = "fp32"  # fp32 | tf32 | bf16 | fp16
    fold_bn: bool = True  # fold BatchNorm where exact
    compile: bool = False
    threads: int | None = None  # torch CPU threads; None: torch's default


@dataclass
class JobResult:
    surface: Surface
    surf_file: Path
    dir_file: Path
    arch: str
    notes: list[str]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise LandscapeError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LandscapeError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return dev


def run_job(job: SurfaceJob) -> JobResult:
    """Compute (or resume) the surface a job describes; returns the surface and where it went."""
    notes: list[str] = []
    check_normalization(job.normalization)
    ckpt_path = Path(job.ckpt) if job.ckpt is not None else default_checkpoint()
    ckpt = load_checkpoint(ckpt_path, allow_pickle=job.allow_pickle)
    if ckpt.known is not None:
        notes.append(ckpt.describe_known())
    model, arch, more = build_model(ckpt, job.arch)
    notes += more
    dataset = job.dataset or ckpt.meta.get("dataset")
    if dataset is None:
        raise LandscapeError(f"{ckpt_path} does not say which data it was trained on; pass --dataset")
    normalization, norm_source = resolve_normalization(job.normalization, dataset, ckpt.meta.get("normalization"))
    if job.normalization not in (None, "checkpoint") or not ckpt.meta.get("normalization"):
        notes.append(f"input normalization mean {normalization.mean}, std {normalization.std} from {norm_source}"
                     if normalization is not None else f"no input normalization ({norm_source})")
    device = resolve_device(job.device)
    if job.threads is not None:
        torch.set_num_threads(job.threads)
    # channels_last before the direction tensors are taken: .to() replaces parameter storage.
    model.to(device, memory_format=torch.channels_last if device.type == "cuda" else torch.preserve_format)

    splits = {}
    for split in job.splits:
        data = load_dataset(dataset, split, job.data_root, job.n_samples, job.seed)
        if data.note is not None:
            notes.append(data.note)
        x = data.x.to(device)
        if normalization is not None:
            x = normalization.apply(x)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        splits[split] = (x, data.y.to(device))

    grid = Grid(job.x, job.y)
    out = Path(job.out)
    stem = ckpt_path.stem
    dir_type = job.xspec.dir_type
    ends = "".join(f"_to_{Path(c).stem}" for c in (job.ckpt2, job.ckpt3) if c)
    dir_file = Path(job.dir_file) if job.dir_file else out / f"{stem}{ends}_dirs_{dir_type}_{grid.ndim}d_seed{job.seed}.h5"
    tensors = target_tensors(model, dir_type)
    dirs = _directions(job, grid, tensors, ckpt_path.name, dir_file, arch, notes)
    dirs.check_against(tensors, where=f"direction file {dir_file}")
    ys = [dirs.y] if grid.ndim == 2 else []
    engine = EngineOptions(job.precision, job.fold_bn, job.compile, job.batch_size)
    eval_model, setter, more = prepare_engine(model, [n for n, _ in tensors], [t for _, t in tensors],
                                              [dirs.x, *ys], engine)
    notes += more
    loss_fn = get_loss(job.loss)
    evaluators = {s: Evaluator(eval_model, x, y, loss_fn, engine.batch_size, engine.precision)
                  for s, (x, y) in splits.items()}
    engine_attrs = {"precision": engine.precision, "fold_bn": any(n.startswith("folded") for n in more),
                    "compile": engine.compile, "threads": torch.get_num_threads()}
    if engine.precision != "fp32":
        # the error of the reduced precision at the center, against exact fp32 on the original model
        first = next(iter(splits))
        exact = Evaluator(model, *splits[first], loss_fn, engine.batch_size)()[0]
        setter.set([0.0] * len(setter.dirs))
        low = evaluators[first]()[0]
        setter.restore()
        engine_attrs["center_rel_err"] = abs(low - exact) / max(abs(exact), 1e-12)
        notes.append(f"{engine.precision}: relative loss error at the center {engine_attrs['center_rel_err']:.1e} "
                     f"({first} loss {low:.6g} vs fp32 {exact:.6g})")

    tag = f"x{job.x.spec()}" + (f"_y{job.y.spec()}" if job.y is not None else "")
    surf_file = Path(job.surf_file) if job.surf_file else out / f"{stem}_{tag.replace(':', '_')}.h5"
    settings = {
        "arch": arch, "checkpoint_sha256": ckpt.sha256, "dataset": dataset, "splits": list(job.splits),
        "n_samples": job.n_samples, "sample_seed": job.seed,
        "normalization": normalization.to_dict() if normalization else None,
        "directions_sha256": dirs.fingerprint(), "dir_type": dir_type,
        "x": job.x.spec(), "y": job.y.spec() if job.y is not None else None, "loss": job.loss,
        "precision": engine.precision,
    }
    attrs = {
        "model": arch, "checkpoint": str(ckpt_path), "checkpoint_sha256": ckpt.sha256, "dataset": dataset,
        "splits": ",".join(job.splits), "n_samples": {s: len(e) for s, e in evaluators.items()},
        "seed": job.seed, "loss_name": job.loss, "dir_type": dir_type, "directions": dirs.attrs,
        "device": str(device), "batch_size": next(iter(evaluators.values())).batch_size, "engine": engine_attrs,
    }
    surf = compute_surface(setter, evaluators, grid, surf_file, settings, attrs, str(dir_file),
                           overwrite=job.overwrite, max_points=job.max_points, progress=job.progress)
    return JobResult(surf, surf_file, dir_file, arch, notes)


def _directions(job: SurfaceJob, grid: Grid, tensors, ckpt_name: str, dir_file: Path, arch: str,
                notes: list[str]) -> Directions:
    """Load the direction file if it exists (checking it fits the request), else make and save one."""
    want = {"dir_type": job.xspec.dir_type, "kind": "random" if job.ckpt2 is None else "interpolation"}
    if job.ckpt2 is None:
        want.update(kind="random", seed=job.seed, xnorm=job.xspec.norm, xignore=job.xspec.ignore)
        if grid.ndim == 2 and job.ckpt3 is None:
            want.update(same_dir=job.same_dir, ynorm=job.yspec.norm, yignore=job.yspec.ignore)
    if dir_file.exists() and not (job.overwrite and job.dir_file is None):
        dirs = load_directions(dir_file)
        if job.dir_file is None:  # a default name: its settings must be the ones asked for
            diffs = [f"{k}: {dirs.attrs.get(k)!r} vs {v!r}" for k, v in want.items() if dirs.attrs.get(k) != v]
            if diffs:
                raise LandscapeError(
                    f"direction file {dir_file} was made with other settings ({'; '.join(diffs[:3])}); "
                    "pass --overwrite or --dir_file"
                )
        if grid.ndim == 2 and dirs.y is None:
            raise LandscapeError(f"direction file {dir_file} has only an x direction; a 2-D surface needs both")
        notes.append(f"reusing directions from {dir_file}")
        return dirs
    ws = [w for _, w in tensors]
    if job.ckpt2 is not None:
        x = interpolation_direction(ws, _other_weights(job, job.ckpt2, arch, job.xspec.dir_type))
        dirs = Directions(x, None, [n for n, _ in tensors], {"kind": "interpolation", "model_file2": job.ckpt2,
                                                              "dir_type": job.xspec.dir_type})
        if grid.ndim == 2:
            if job.ckpt3 is not None:
                dirs.y = interpolation_direction(ws, _other_weights(job, job.ckpt3, arch, job.xspec.dir_type))
                dirs.attrs["model_file3"] = job.ckpt3
            else:
                g = torch.Generator().manual_seed(job.seed)
                dirs.y = random_direction(ws, job.yspec.norm, job.yspec.ignore, generator=g)
                dirs.attrs.update(seed=job.seed, ynorm=job.yspec.norm, yignore=job.yspec.ignore)
    else:
        dirs = make_directions(tensors, job.xspec, job.seed, grid.ndim, job.same_dir, job.yspec)
    dirs.attrs.update(arch=arch, checkpoint=ckpt_name)
    save_directions(dir_file, dirs)
    return dirs


def _other_weights(job: SurfaceJob, path: str, arch: str, dir_type: str) -> list[torch.Tensor]:
    other, _, _ = build_model(load_checkpoint(path, allow_pickle=job.allow_pickle), arch)
    return [t for _, t in target_tensors(other, dir_type)]


def default_checkpoint() -> Path:
    """The bundled checkpoint of the embedded default (a ResNet-20 trained on digits)."""
    path = Path(__file__).resolve().parents[1] / "checkpoints" / "digits_resnet20.pt"
    if not path.is_file():
        raise LandscapeError(f"the bundled checkpoint {path} is missing; reinstall from a full checkout or pass --ckpt")
    return path
