"""The grid sweep: which points remain, evaluation, progress, periodic atomic flushes, resume,
shards and ranks. Every door's surface, and the curvature map, is computed by `sweep`.

The only module that ties the measures (models, data) to the store (files).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from tqdm.auto import tqdm

import landscape
from landscape.config import RunOptions
from landscape.distributed import Group, PeerError, Shard
from landscape.engine.evaluate import PointSetter
from landscape.errors import LandscapeError
from landscape.grid import Grid
from landscape.sampling.multilevel import SampleStore, samples_path
from landscape.storage import Surface, SurfaceLock, read_surface, settings_diff, write_surface

def open_surface(path: str | Path, grid: Grid, settings: Mapping[str, Any], metrics: list[str],
                 overwrite: bool = False, shard: Shard | None = None) -> Surface:
    """The surface at `path` to continue, or a new empty one.

    An existing file made with other settings (or for another shard) is an error unless `overwrite`.
    """
    path = Path(path)
    settings = json.loads(json.dumps(settings))  # normalize (tuples -> lists) for comparison
    if path.is_dir():
        raise LandscapeError(f"{path} is a folder; give out a file name such as {path / 'surface.h5'}", "out")
    if path.exists() and not overwrite:
        try:
            surf = read_surface(path)
        except LandscapeError as e:
            raise LandscapeError(f"{e}; pass overwrite to replace it, or write elsewhere", "overwrite") from None
        old = surf.settings
        if old is None:
            raise LandscapeError(f"{path} was not written by landscape (no settings); pass overwrite to replace it, "
                                 "or another out to write a new file", ("overwrite", "out"))
        if old != settings:
            if "format" in settings and old.get("format") != settings["format"]:
                raise LandscapeError(f"{path} was written by an earlier version of landscape (settings format "
                                     f"{old.get('format', 1)}, now {settings['format']}); finish it with that version, "
                                     "or pass overwrite to compute it again", "overwrite")
            raise LandscapeError(f"{path} was computed with other settings ({settings_diff(old, settings)}); "
                                 "pass overwrite to replace it, or another out to write a new file", ("overwrite", "out"))
        have = (surf.attrs.get("shard_index"), surf.attrs.get("shard_count"))
        want = (shard.index, shard.count) if shard is not None else (None, None)
        if have != want:
            what = f"share {have[0]}/{have[1]}" if have[1] is not None else "the whole surface"
            raise LandscapeError(
                f"{path} holds {what}, not {'share ' + shard.spec() if shard else 'the whole surface'}; "
                f"pass {'shard ' + str(have[0]) + '/' + str(have[1]) if have[1] is not None else 'no shard'} "
                "to continue it, or merge shards with scripts/merge_surfaces.py", "shard")
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


def sweep(
    setter: PointSetter,
    evaluators: Mapping[str, Any],
    grid: Grid,
    path: str | Path,
    settings: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
    dir_file: str | None = None,
    run: RunOptions = RunOptions(),
    *,
    group: Group | None = None,
    notes: list[str] | None = None,
    before: Callable[[], None] | None = None,
) -> Surface | None:
    """Evaluate every point of `grid` not yet done in the file at `path`, and write it.

    `evaluators` maps a prefix (a split name: "train", "test") to a measure: a callable
    returning one value per name in its `metric_names` at the current weights. The file gets
    `<prefix>_<name>` for each (`train_loss`, `train_acc` from an Evaluator), or `<name>` for
    the prefix "" (e.g. the reference's `max_eig`). The file is rewritten atomically at most every
    `run.flush_seconds`, at the end, and on interruption (Ctrl-C, SIGTERM), so a rerun of
    the same call continues where this one stopped. The model holds theta0 afterwards. Each run
    that computes points appends {points, seconds, ranks, finished} to the JSON list in the
    attribute `runs`: the wall seconds spent evaluating them (start-up not included), the cost
    per point a run showed.

    With a `group` of several ranks, rank 0 alone locks, reads and writes the file; every rank
    takes an interleaved share of the points left and the results reach rank 0 in blocks sized
    to arrive every `run.flush_seconds`. A point's values depend on its coordinates only, so any
    number of ranks gives the same file bit for bit. Returns the surface on rank 0, else None.
    A `run.shard` restricts the points to those whose flat index is `shard.index` modulo `shard.count`;
    `run.max_points` stops after that many points (a rerun continues). `before` is called by rank 0
    once the file is open, before any point: what else a run writes (its directions) is written
    only when the surface file can be continued.
    """
    if len(setter.dirs) != grid.ndim:
        raise ValueError(f"a {grid.ndim}-D grid needs {grid.ndim} directions, the setter has {len(setter.dirs)} directions")
    shard, overwrite, flush_seconds, max_points = run.shard, run.overwrite, run.flush_seconds, run.max_points
    progress = run.progress
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
            if before is not None:
                before()
            todo = np.flatnonzero(~surf.done.reshape(-1) & owned)
            for k, ev in evaluators.items():  # a coarse-to-fine measure: its order, the points already done
                if hasattr(ev, "point_order"):
                    if group.world_size > 1 or shard is not None:
                        raise LandscapeError(f"the {k or 'main'} measure (multilevel) evaluates points in "
                                             "dependency order: it runs in one process; drop torchrun/srun or shard",
                                             ("multilevel", "shard"))
                    done = surf.done.reshape(-1)
                    store = SampleStore(samples_path(path), k, run_fingerprint(surf))
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



def run_fingerprint(surf: Surface) -> str:
    """Names one surface file's run: its stored settings and creation time (a rerun with
    --overwrite is another run)."""
    return hashlib.sha256((str(surf.attrs["settings"]) + str(surf.attrs["created"])).encode()).hexdigest()



def check_writable(folder: Path, argument: str) -> None:
    """Fail before any work when `folder` cannot hold our files (read-only, a path through a file).

    Creates nothing: an existing folder gets a test file (removed at once), a missing one is
    checked at its nearest existing parent.
    """
    def refuse(why: str):
        return LandscapeError(f"cannot write to the folder {str(folder)!r} ({why}); pass {argument} with a writable "
                              "folder", argument)

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


