"""Orchestration: which points remain, evaluation, progress, periodic atomic flushes, resume.

The only module that ties the evaluator (models, data) to storage (files).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

import landscape
from landscape.sampling.adaptive import (SampledBlockMeasure, SampledMeasure, SamplingPlan, order_path, sample_order,
                                stratify_sets)
from landscape.sampling.multilevel import MultilevelMeasure, SampleStore, samples_path
from landscape.sources.checkpoint import build_model, load_checkpoint
from landscape.engine.threads import set_threads
from landscape.sources.data import check_normalization, load_dataset, resolve_normalization
from landscape.directions import (DirectionSpec, Directions, interpolation_direction, load_directions,
                                  make_directions, random_direction, save_directions, target_tensors)
from landscape.errors import LandscapeError
from landscape.engine import EngineOptions, prepare_engine
from landscape.engine.evaluate import Evaluator, PointSetter, default_batch_size, get_loss, input_layout
from landscape.engine.hardware import auto_note, resolve_precision
from landscape.distributed import Group, PeerError, Shard, dist_info, local_device
from landscape.grid import Axis, Grid
from landscape.storage import Surface, SurfaceLock, read_surface, write_surface


def open_surface(path: str | Path, grid: Grid, settings: Mapping[str, Any], metrics: list[str],
                 overwrite: bool = False, shard: Shard | None = None) -> Surface:
    """The surface at `path` to continue, or a new empty one.

    An existing file made with other settings (or for another shard) is an error unless `overwrite`.
    """
    path = Path(path)
    settings = json.loads(json.dumps(settings))  # normalize (tuples -> lists) for comparison
    if path.is_dir():
        raise LandscapeError(f"{path} is a folder; give --surf_file a file name such as {path / 'surface.h5'}")
    if path.exists() and not overwrite:
        try:
            surf = read_surface(path)
        except LandscapeError as e:
            raise LandscapeError(f"{e}; pass --overwrite to replace it, or --surf_file to write elsewhere") from None
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
        have = (surf.attrs.get("shard_index"), surf.attrs.get("shard_count"))
        want = (shard.index, shard.count) if shard is not None else (None, None)
        if have != want:
            what = f"shard {have[0]}/{have[1]}" if have[1] is not None else "the whole surface"
            raise LandscapeError(
                f"{path} holds {what}, not {'shard ' + shard.spec() if shard else 'the whole surface'}; "
                f"pass {'--shard ' + str(have[0]) + '/' + str(have[1]) if have[1] is not None else 'no --shard'} "
                "to continue it, or merge shards with scripts/merge_surfaces.py"
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
    if shard is not None:
        surf.attrs.update(shard_index=shard.index, shard_count=shard.count)
    return surf


class Interrupted(KeyboardInterrupt):
    """The run stopped on SIGTERM or SIGINT after saving every computed point."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


class _StopOnSignal:
    """SIGTERM (what Slurm and torchrun send before a kill) and Ctrl-C ask the loop to stop.

    The point being evaluated finishes, the results are gathered and flushed, then the run ends
    with `Interrupted`. The same signal a second time raises KeyboardInterrupt at once (the file
    still gets every gathered point). Handlers are installed from the main thread only.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.signum == signum:
            raise KeyboardInterrupt(f"signal {signum} twice")
        self.signum = signum

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


@dataclass
class _Block:
    """What one rank sends to the others after each round of points."""

    idx: list[int]  # flat grid indices computed, in order
    values: list[list[float]]  # one row per point: every metric, in `metrics` order
    seconds: float
    left: int = 0  # points of this rank's share still to do
    error: str | None = None  # "Type: message" of a failure at point `failed_at`
    failed_at: int | None = None
    signum: int | None = None  # a stop was asked for by this signal


Pass = tuple[np.ndarray, np.ndarray]  # (flat indices evaluated together, those of them to store)


def _passes(share: np.ndarray, per_pass: int, units: np.ndarray | None = None) -> list[Pass]:
    """The passes that evaluate the points `share` (in order): `per_pass` of them at a time, each
    stored; or, for measures whose values depend on the points evaluated with them (K points in
    one vmapped launch), whole `units` (the owned points in fixed groups of K, from `_units`), so a
    point is always computed with the same companions and a resumed or distributed run is bit for bit
    an uninterrupted one; points of a unit not in `share` are evaluated again but not stored."""
    if units is None:
        return [(share[i:i + per_pass], share[i:i + per_pass]) for i in range(0, len(share), per_pass)]
    out, members = [], {}
    for i in share:
        members.setdefault(int(units[1][i]), []).append(int(i))
    for u, keep in members.items():
        out.append((units[0][u * per_pass:(u + 1) * per_pass], np.asarray(keep)))
    return out


def _units(owned: np.ndarray, per_pass: int) -> tuple[np.ndarray, np.ndarray]:
    """(the owned flat indices in order, each grid point's unit: its position among them // per_pass)."""
    idx = np.flatnonzero(owned)
    unit = np.full(len(owned), -1, dtype=np.int64)
    unit[idx] = np.arange(len(idx)) // per_pass
    return idx, unit


def _run_block(passes: list[Pass], points: np.ndarray, setter: PointSetter, evaluators: Mapping[str, Any],
               stop: _StopOnSignal, bar: tqdm) -> tuple[_Block, int, BaseException | None]:
    """Evaluate the passes in turn (until a stop or a failure); returns the block of stored values,
    the number of passes done, and the exception for its rank (a failure is reported at the first
    point of its pass)."""
    t0 = time.perf_counter()
    block = _Block([], [], 0.0)
    error = None
    done = 0
    for evaluated, keep in passes:
        if stop.signum is not None:
            break
        chunk = [int(i) for i in evaluated]
        try:
            rows = _evaluate_points(points[chunk], setter, evaluators)
        except BaseException as e:  # noqa: BLE001 - any failure ends the run; it is re-raised by its rank
            error, block.failed_at = e, int(keep[0])
            block.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            break
        row_of = dict(zip(chunk, rows))
        block.idx += [int(i) for i in keep]
        block.values += [row_of[int(i)] for i in keep]
        bar.update(len(keep))
        done += 1
    block.signum = stop.signum
    block.seconds = time.perf_counter() - t0
    return block, done, error


def _evaluate_points(coords: np.ndarray, setter: PointSetter, evaluators: Mapping[str, Any]) -> list[list[float]]:
    """One row per point: every measure's values in `evaluators` order. A measure with a `block`
    method (a streaming evaluator) takes all the points in one pass over its data; the others are
    called once per point after the setter has moved the model there."""
    cols: dict[str, list] = {}
    plain = [k for k, ev in evaluators.items() if not hasattr(ev, "block")]
    if plain:
        per_point = []
        for c in coords:
            setter.set(c)
            per_point.append([[float(v) for v in evaluators[k]()] for k in plain])
        cols = {k: [p[j] for p in per_point] for j, k in enumerate(plain)}
    for k, ev in evaluators.items():
        if k not in cols:
            cols[k] = [[float(v) for v in row] for row in ev.block(setter, coords)]
    return [[v for k in evaluators for v in cols[k][i]] for i in range(len(coords))]


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
    *,
    shard: Shard | None = None,
    group: Group | None = None,
    notes: list[str] | None = None,
) -> Surface | None:
    """Evaluate every point of `grid` not yet done in the file at `path`, and write it.

    `evaluators` maps a prefix (a split name: "train", "test") to a measure: a callable
    returning one value per name in its `metric_names` at the current weights. The file gets
    `<prefix>_<name>` for each (`train_loss`, `train_acc` from an Evaluator), or `<name>` for
    the prefix "" (e.g. the reference's `max_eig`). The file is rewritten atomically at most every
    `flush_seconds`, at the end, and on interruption (Ctrl-C, SIGTERM), so a rerun of
    the same call continues where this one stopped. The model holds theta0 afterwards. Each run
    that computes points appends {points, seconds, ranks, finished} to the JSON list in the
    attribute `runs`: the wall seconds spent evaluating them (start-up not included), the cost
    per point a run showed.

    With a `group` of several ranks, rank 0 alone locks, reads and writes the file; every rank
    takes an interleaved share of the points left and the results reach rank 0 in blocks sized
    to arrive every `flush_seconds`. A point's values depend on its coordinates only, so any
    number of ranks gives the same file bit for bit. Returns the surface on rank 0, else None.
    A `shard` restricts the points to those whose flat index is `shard.index` modulo `shard.count`.
    """
    if len(setter.dirs) != grid.ndim:
        raise ValueError(f"a {grid.ndim}-D grid needs {grid.ndim} directions, the setter has {len(setter.dirs)} directions")
    if flush_seconds < 0:
        raise LandscapeError(f"--flush-seconds must be >= 0, got {flush_seconds:g}")
    if max_points is not None and max_points < 0:
        raise LandscapeError(f"--max-points must be >= 0, got {max_points}")
    group = group or Group()
    path = Path(path)
    names = {k: [f"{k}_{m}" if k else m for m in ev.metric_names] for k, ev in evaluators.items()}
    metrics = [m for ms in names.values() for m in ms]
    points = grid.points()  # (size, ndim)
    owned = shard.owns(np.arange(grid.size)) if shard is not None else np.ones(grid.size, dtype=bool)

    surf, lock, todo, error = None, None, None, None
    stores: list[SampleStore] = []  # per-sample values of coarse-to-fine measures, for a resume
    if group.is_main:
        try:
            lock = SurfaceLock(path).acquire()
            if notes is not None:
                notes += lock.notes
            surf = open_surface(path, grid, settings, metrics, overwrite, shard)
            surf.dir_file = dir_file
            surf.attrs.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            surf.attrs["landscape_version"] = landscape.__version__
            for k, v in (attrs or {}).items():
                surf.attrs[k] = v
            todo = np.flatnonzero(~surf.done.reshape(-1) & owned)
            for k, ev in evaluators.items():  # a coarse-to-fine measure: its order, the points already done
                if hasattr(ev, "point_order"):
                    if group.world_size > 1 or shard is not None:
                        raise LandscapeError(f"the {k or 'main'} measure (--multilevel) evaluates points in "
                                             "dependency order: it runs in one process; drop torchrun/--shard")
                    done = surf.done.reshape(-1)
                    store = SampleStore(samples_path(path), k, _fingerprint(surf))
                    ev.resume({m: surf.metrics[f"{k}_{m}" if k else m].reshape(-1) for m in ev.metric_names}, done,
                              store)
                    stores.append(store)
                    todo = ev.point_order(todo)
            if max_points is not None:
                todo = todo[:max_points]
        except BaseException as e:
            error = e
            if lock is not None:
                lock.release()
    group.agree(error)
    todo = group.broadcast(todo)
    # a streaming measure evaluates `points_per_pass` points per pass over its data; a vmapped one
    # (`aligned`) always the same groups of them
    per_pass = max([getattr(ev, "points_per_pass", 1) for ev in evaluators.values()] + [1])
    aligned = any(getattr(ev, "aligned", False) for ev in evaluators.values())
    if aligned:
        units = _units(owned, per_pass)
        mine = units[1][todo] % group.world_size == group.rank  # interleaved units
        passes = _passes(todo[mine], per_pass, units)
    else:
        passes = _passes(todo[group.rank::group.world_size], per_pass)  # neighbouring points to different ranks

    flat = {m: surf.metrics[m].reshape(-1) for m in metrics} if surf is not None else {}
    flat_done = surf.done.reshape(-1) if surf is not None else None  # views: writes land in surf
    total, initial = (int(owned.sum()), int((flat_done & owned).sum())) if surf is not None else (0, 0)
    bar = tqdm(total=total, initial=initial, desc="surface", unit="pt", dynamic_ncols=True,
               disable=not (progress and group.is_main))
    last_flush = time.monotonic()
    run_points, run_seconds = 0, 0.0  # this run's points and the wall seconds spent evaluating them
    blocks: list[_Block] = []
    own_error: BaseException | None = None
    lost: BaseException | None = None
    try:
        with _StopOnSignal() as stop:
            pos, k = 0, 1  # passes done, passes in the next block
            while True:
                block, done, own_error = _run_block(passes[pos:pos + k], points, setter, evaluators, stop, bar)
                pos += done
                block.left = sum(len(keep) for _, keep in passes[pos:])
                try:
                    blocks = group.all_gather(block)
                except RuntimeError as e:  # a rank died: keep what was gathered
                    lost = e
                    break
                run_points += sum(len(b.idx) for b in blocks)
                run_seconds += max(b.seconds for b in blocks)  # the ranks work side by side
                if surf is not None:
                    for r, b in enumerate(blocks):
                        for idx, row in zip(b.idx, b.values):
                            for m, v in zip(metrics, row):
                                flat[m][idx] = v
                            flat_done[idx] = True
                        if r != group.rank:
                            bar.update(len(b.idx))
                    if time.monotonic() - last_flush >= flush_seconds:
                        write_surface(path, surf)
                        last_flush = time.monotonic()
                if any(b.error is not None or b.signum is not None for b in blocks):
                    break
                if all(b.left == 0 for b in blocks):
                    break
                if group.world_size > 1:  # next block: about flush_seconds of work on the slowest rank
                    per_point = max(b.seconds / max(1, len(b.idx)) for b in blocks)
                    fits = int(flush_seconds / per_point) if per_point > 0 else grid.size
                    k = max(1, min(fits, max(b.left for b in blocks)) // per_pass)
    finally:
        setter.restore()
        bar.close()
        if surf is not None:
            try:
                if run_points:
                    runs = json.loads(surf.attrs.get("runs", "[]"))
                    runs.append({"points": run_points, "seconds": round(run_seconds, 3), "ranks": group.world_size,
                                 "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
                    surf.attrs["runs"] = json.dumps(runs)
                    if notes is not None:
                        notes.append(f"this run computed {run_points} points in {run_seconds:.1f} s "
                                     f"({run_seconds / run_points:.3g} s a point, start-up not included)")
                write_surface(path, surf)
                if stores and surf.done.all():  # nothing left to resume
                    for store in stores:
                        store.path.unlink(missing_ok=True)
            finally:
                lock.release()

    saved = f"{int(surf.done.sum())}/{surf.done.size} points are saved in {path}" if surf is not None else ""
    if lost is not None:
        raise LandscapeError(f"rank {group.rank} lost contact with the other ranks ({_first_line(lost)})"
                             + (f"; {saved}; rerun the same command to continue" if saved else ""))
    failures = [(r, b) for r, b in enumerate(blocks) if b.error is not None]
    if failures:
        if group.world_size == 1:
            raise own_error
        r, b = failures[0]
        if group.is_main:
            if own_error is not None and not isinstance(own_error, LandscapeError):
                traceback.print_exception(own_error)
            raise LandscapeError(f"rank {r} of {group.world_size} failed at point {b.failed_at} "
                                 f"({_coords(points[b.failed_at])}): {b.error}; {saved}; rerun the same command "
                                 "to continue")
        if own_error is not None and not isinstance(own_error, LandscapeError):
            raise own_error  # this rank's traceback goes to its log
        raise PeerError(b.error)
    signums = [b.signum for b in blocks if b.signum is not None]
    if signums:
        name = signal.Signals(signums[0]).name
        raise Interrupted(signums[0], f"stopped by {name}: {saved}; rerun the same command to continue"
                          if saved else f"stopped by {name}")
    return surf


def _coords(point: np.ndarray) -> str:
    return ", ".join(f"{n}={c:g}" for n, c in zip("xy", point))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


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
    bn_recompute: bool = False  # re-estimate BN running statistics at every point (train split)
    bn_samples: int | None = None  # samples for that; None: --n-samples, else the whole split
    precision: str = "fp32"  # fp32 | tf32 | bf16 | fp16 | auto (landscape.engine.hardware)
    fold_bn: bool = True  # fold BatchNorm where exact
    compile: bool = False
    compile_mode: str | None = None  # torch.compile's mode (with compile)
    cuda_fuse: bool = False  # CUDA: conv + ReLU (+ residual) as one cuDNN call (EngineOptions.cuda_fuse)
    cudnn_benchmark: bool = False  # CUDA: cuDNN picks its fastest algorithms per batch shape
    points_per_launch: int = 1  # K > 1: K points in each forward pass (landscape.engine.multipoint)
    threads: int | None = None  # torch CPU threads; None: on the CPU the idle cores this process may use (landscape.engine.threads)
    shard: Shard | None = None  # a job array's share: its own file, <surf>.shard-i-of-N.h5
    flush_seconds: float = 5.0  # rewrite the surface file at most this often (and at the end, and on SIGTERM)
    # error bars and adaptive sampling (landscape.sampling.adaptive): None = exact means over the whole set
    sampling: SamplingPlan | None = None


@dataclass
class JobResult:
    surface: Surface | None  # None on ranks other than 0 (only rank 0 holds the file)
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
    """Compute (or resume) the surface a job describes; returns the surface and where it went.

    Under torchrun or srun (several ranks, `distributed.dist_info`) every rank loads the model and
    data, rank 0 makes the directions and alone writes files, and the points are shared out.
    """
    info = dist_info()
    device = resolve_device(job.device)
    with Group(info, device) as group:
        return _run_job(job, group, device)


def _check_job(job: SurfaceJob) -> None:
    if job.threads is not None and job.threads < 1:
        raise LandscapeError(f"--threads must be >= 1, got {job.threads}")
    if job.max_points is not None and job.max_points < 0:
        raise LandscapeError(f"--max-points must be >= 0, got {job.max_points}")
    if job.batch_size is not None and job.batch_size < 1:
        raise LandscapeError(f"--batch-size must be >= 1, got {job.batch_size}")
    EngineOptions(job.precision, compile=job.compile, compile_mode=job.compile_mode)  # its errors before any work
    if job.points_per_launch < 1:
        raise LandscapeError(f"--points-per-launch must be >= 1, got {job.points_per_launch}")
    if job.points_per_launch > 1:
        clash = [flag for flag, on in (("--tolerance", job.sampling is not None and job.sampling.tolerance is not None),
                                       ("--compile", job.compile), ("--bn-recompute", job.bn_recompute),
                                       ("--cuda-fuse", job.cuda_fuse)) if on]
        if clash:
            raise LandscapeError(f"--points-per-launch does not combine with {clash[0]}; drop one of them")
    if not job.flush_seconds >= 0:
        raise LandscapeError(f"--flush-seconds must be >= 0, got {job.flush_seconds:g}")


def _check_writable(folder: Path, flag: str) -> None:
    """Fail before any work when `folder` cannot hold our files (read-only, a path through a file).

    Creates nothing: an existing folder gets a test file (removed at once), a missing one is
    checked at its nearest existing parent.
    """
    def refuse(why: str):
        return LandscapeError(f"cannot write to the folder {str(folder)!r} ({why}); pass {flag} with a writable folder")

    if folder.is_dir():
        try:
            fd, tmp = tempfile.mkstemp(prefix=".landscape-write-test.", dir=folder)
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise refuse(e.strerror or type(e).__name__) from None
        return
    parent = folder
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise refuse(f"{parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise refuse(f"{parent} is not writable")


def _fingerprint(surf: Surface) -> str:
    """Names one surface file's run: its stored settings and creation time (a rerun with
    --overwrite is another run)."""
    return hashlib.sha256((str(surf.attrs["settings"]) + str(surf.attrs["created"])).encode()).hexdigest()


def _check_fits(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """The model takes these images and has an output for every label (one forward pass on 2 samples)."""
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise LandscapeError(f"{what} has label {lo}; labels must be class indices 0..C-1: fix the data file")
    try:
        with torch.inference_mode():
            out = model(x[:2])
    except RuntimeError as e:
        raise LandscapeError(f"the model does not take the {what} images, shape {tuple(x.shape[1:])} "
                             f"({_first_line(e)[:160]}); the checkpoint was trained on other data: pass its --dataset"
                             ) from None
    if out.dim() == 2 and hi >= out.shape[1]:
        raise LandscapeError(f"{what} has labels up to {hi} but the model has {out.shape[1]} outputs; the checkpoint "
                             "was trained for other classes: pass its --dataset (or fix the labels)")


def _run_job(job: SurfaceJob, group: Group, device: torch.device) -> JobResult:
    notes: list[str] = []
    error = None
    try:  # every rank: model and data; errors stop all ranks, rank 0 reports them
        _check_job(job)
        check_normalization(job.normalization)
        device = local_device(group.info, device)
        precision = resolve_precision(job.precision, device)  # "auto" and emulated low precision
        if auto_note(job.precision, precision, device):
            notes.append(auto_note(job.precision, precision, device))
        ckpt_path = Path(job.ckpt) if job.ckpt is not None else default_checkpoint()
        grid = Grid(job.x, job.y)
        out = Path(job.out)
        stem = ckpt_path.stem
        dir_type = job.xspec.dir_type
        ends = "".join(f"_to_{Path(c).stem}" for c in (job.ckpt2, job.ckpt3) if c)
        dir_file = (Path(job.dir_file) if job.dir_file
                    else out / f"{stem}{ends}_dirs_{dir_type}_{grid.ndim}d_seed{job.seed}.h5")
        tag = f"x{job.x.spec()}" + (f"_y{job.y.spec()}" if job.y is not None else "")
        surf_file = Path(job.surf_file) if job.surf_file else out / f"{stem}_{tag.replace(':', '_')}.h5"
        if job.shard is not None:
            surf_file = job.shard.path(surf_file)
        if group.is_main:
            _check_writable(surf_file.parent, "--surf_file" if job.surf_file else "--out")
            if not dir_file.exists():
                _check_writable(dir_file.parent, "--dir_file" if job.dir_file else "--out")

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
        threads_note = set_threads(job.threads, device)
        if threads_note is not None:
            notes.append(threads_note)
        model.to(device)

        splits, populations = {}, {}
        for split in job.splits:
            data = load_dataset(dataset, split, job.data_root, job.n_samples, job.seed)
            if data.note is not None:
                notes.append(data.note)
            if job.n_samples is not None and job.n_samples > len(data):
                notes.append(f"--n-samples {job.n_samples} is more than the {len(data)} samples of {dataset} {split}; "
                             f"using all {len(data)}")
            x = data.x.to(device)
            if normalization is not None:
                x = normalization.apply(x)
            y = data.y.to(device)
            if job.sampling is not None and job.sampling.tolerance is not None and len(y):
                order = sample_order(len(y), job.sampling.seed).to(device)  # the common random order
                x, y = x[order], y[order]
            if len(y):
                _check_fits(model, x, y, f"{dataset} {split}")
            splits[split] = (x, y)
            # the set a fixed subset's SE refers to: known only when the subset is the whole split
            populations[split] = (len(y) if job.sampling is None or job.sampling.tolerance is not None
                                  or job.n_samples is None or job.n_samples > len(y) else math.inf)
        model.eval()
        tensors = target_tensors(model, dir_type)
    except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
        error = e
    group.agree(error)

    # rank 0 draws (or loads) the directions and saves them; then the other ranks read that file
    dirs, error = None, None
    if group.is_main:
        try:
            dirs = _directions(job, grid, tensors, ckpt_path.name, dir_file, arch, notes, ckpt.sha256)
            dirs.check_against(tensors, where=f"direction file {dir_file}")
        except Exception as e:  # noqa: BLE001
            error = e
    group.agree(error)

    error = None
    try:
        if dirs is None:
            dirs = load_directions(dir_file)
            dirs.check_against(tensors, where=f"direction file {dir_file}")
        ys = [dirs.y] if grid.ndim == 2 else []
        # folding bakes BN statistics into the weights: not with statistics re-estimated per point
        options = EngineOptions(job.precision, job.fold_bn and not job.bn_recompute, job.compile, job.batch_size,
                                cuda_fuse=job.cuda_fuse, cudnn_benchmark=job.cudnn_benchmark,
                                compile_mode=job.compile_mode, points_per_launch=job.points_per_launch)
        first_x = next(iter(splits.values()))[0] if splits else None
        example = None
        if first_x is not None and len(first_x):
            example = first_x[:options.batch_size or default_batch_size(model, first_x, precision)]
        engine = prepare_engine(model, dir_type, [dirs.x, *ys], dataclasses.replace(options, precision=precision),
                                example=example, check_points=grid.corners())
        setter, nhwc = engine.setter, engine.report.channels_last
        notes += engine.report.notes()
        loss_fn = get_loss(job.loss)
        evaluators = {s: engine.evaluator(x, y, loss_fn, batch_size=options.batch_size) for s, (x, y) in splits.items()}
        engine_attrs = engine.report.attrs()
        if precision != "fp32":
            # the error of the reduced precision at the center, against exact fp32 on the original model
            first = next(iter(splits))
            px, py = splits[first]
            if job.sampling is not None and job.sampling.tolerance is not None:
                px, py = px[:4096], py[:4096]  # a random subset: the set is in the common random order
            exact = Evaluator(model, engine.inputs(px), py, loss_fn, engine.batch_size(px, options.batch_size))()[0]
            setter.set([0.0] * len(setter.dirs))
            low = engine.evaluator(px, py, loss_fn, batch_size=options.batch_size)()[0]
            setter.restore()
            engine_attrs["center_rel_err"] = abs(low - exact) / max(abs(exact), 1e-12)
            notes.append(f"{precision}: relative loss error at the center {engine_attrs['center_rel_err']:.1e} "
                         f"({first} loss {low:.6g} vs fp32 {exact:.6g})")
        bn_samples = None
        if job.bn_recompute:
            from landscape.engine.bn import BNRecomputeSetter

            bx = load_dataset(dataset, "train", job.data_root, job.bn_samples or job.n_samples, job.seed).x.to(device)
            if normalization is not None:
                bx = normalization.apply(bx)
            bx = input_layout(bx, nhwc)
            setter = BNRecomputeSetter(setter, model, bx, batch_size=job.batch_size or 512)
            bn_samples = len(bx)
            notes.append(f"BatchNorm statistics re-estimated at every point from {bn_samples} training samples")
    except Exception as e:  # noqa: BLE001
        error = e
    group.agree(error)

    settings = {
        "arch": arch, "checkpoint_sha256": ckpt.sha256, "dataset": dataset, "splits": list(job.splits),
        "n_samples": job.n_samples, "sample_seed": job.seed,
        "normalization": normalization.to_dict() if normalization else None,
        "directions_sha256": dirs.fingerprint(), "dir_type": dir_type,
        "x": job.x.spec(), "y": job.y.spec() if job.y is not None else None, "loss": job.loss,
        "precision": precision,
    }
    if bn_samples is not None:  # only when on, so files made before the option still resume
        settings["bn_recompute"] = {"samples": bn_samples}
    measures = evaluators
    if job.sampling is not None:  # error bars (a fixed subset) or adaptive sampling: landscape.sampling.adaptive
        settings["sampling"] = job.sampling.settings()
        for ev in evaluators.values():
            if job.batch_size is None:  # a point grows in whole batches: no batch larger than the first chunk
                ev.batch_size = min(ev.batch_size, job.sampling.n0)
        if job.sampling.strata:
            # the order's file is keyed to the other settings; --overwrite computes it again
            key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
            settings["sampling"]["order"] = stratify_sets(evaluators, setter, job.sampling, group, notes,
                                                          order_path(surf_file), key,
                                                          resume=surf_file.exists() and not job.overwrite)
        if job.sampling.multilevel:
            measures = {s: MultilevelMeasure(ev, job.sampling, grid, populations[s]) for s, ev in evaluators.items()}
        elif job.points_per_launch > 1:
            measures = {s: SampledBlockMeasure(ev, job.sampling, populations[s]) for s, ev in evaluators.items()}
        else:
            measures = {s: SampledMeasure(ev, job.sampling, populations[s]) for s, ev in evaluators.items()}
    attrs = {
        "model": arch, "checkpoint": str(ckpt_path), "checkpoint_sha256": ckpt.sha256, "dataset": dataset,
        "splits": ",".join(job.splits), "n_samples": {s: len(e) for s, e in evaluators.items()},
        "seed": job.seed, "loss_name": job.loss, "dir_type": dir_type, "directions": dirs.attrs,
        "device": str(device), "batch_size": next(iter(evaluators.values())).batch_size, "engine": engine_attrs,
        "ranks": group.world_size,
    }
    surf = compute_surface(setter, measures, grid, surf_file, settings, attrs, str(dir_file),
                           overwrite=job.overwrite, flush_seconds=job.flush_seconds, max_points=job.max_points,
                           progress=job.progress, shard=job.shard, group=group, notes=notes)
    return JobResult(surf, surf_file, dir_file, arch, notes)


def _directions(job: SurfaceJob, grid: Grid, tensors, ckpt_name: str, dir_file: Path, arch: str,
                notes: list[str], ckpt_sha256: str | None = None) -> Directions:
    """Load the direction file if it exists (checking it fits the request), else make and save one."""
    # filter-normalized directions depend on the checkpoint's weights: a default-named file is
    # reused only for the same checkpoint (an explicit --dir_file may serve another one)
    want = {"dir_type": job.xspec.dir_type, "kind": "random" if job.ckpt2 is None else "interpolation",
            "checkpoint_sha256": ckpt_sha256}
    if job.ckpt2 is None:
        want.update(kind="random", seed=job.seed, xnorm=job.xspec.norm, xignore=job.xspec.ignore)
        if grid.ndim == 2 and job.ckpt3 is None:
            want.update(same_dir=job.same_dir, ynorm=job.yspec.norm, yignore=job.yspec.ignore)
    if dir_file.exists() and not (job.overwrite and job.dir_file is None):
        try:
            dirs = load_directions(dir_file)
        except LandscapeError as e:
            fix = ("pass --overwrite to draw new directions" if job.dir_file is None
                   else "pass a direction file written by plot_surface.py, or omit --dir_file")
            raise LandscapeError(f"{e}; {fix}") from None
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
    dirs.attrs.update(arch=arch, checkpoint=ckpt_name, checkpoint_sha256=ckpt_sha256)
    _save_directions(dir_file, dirs)
    return dirs


def _save_directions(path: Path, dirs: Directions) -> None:
    """save_directions through a temporary name of this process's own, then an atomic rename.

    The shards of a job array start together and may all write the same direction file; each
    writes identical contents, and a reader sees one whole file or another, never a mix.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".h5", dir=path.parent)
    os.close(fd)
    try:
        save_directions(tmp, dirs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _other_weights(job: SurfaceJob, path: str, arch: str, dir_type: str) -> list[torch.Tensor]:
    other, _, _ = build_model(load_checkpoint(path, allow_pickle=job.allow_pickle), arch)
    return [t for _, t in target_tensors(other, dir_type)]


def default_checkpoint() -> Path:
    """The bundled checkpoint of the embedded default (a ResNet-20 trained on digits)."""
    path = Path(__file__).resolve().parents[1] / "checkpoints" / "digits_resnet20.pt"
    if not path.is_file():
        raise LandscapeError(f"the bundled checkpoint {path} is missing; reinstall from a full checkout or pass --ckpt")
    return path
