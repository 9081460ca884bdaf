"""The surface file (HDF5): layout, atomic writes, reading ours and the reference code's.

Layout (DESIGN.md):
    xcoordinates (nx,), ycoordinates (ny,)          ycoordinates absent for 1-D
    <metric> (ny, nx) or (nx,) float64              train_loss, train_acc, test_loss, ...
    done     same shape, uint8                      1 where the point is computed
    dir_file                                        the direction file's path (string)
    exact/<accuracy>  same shape, float64           the accuracies as computed fractions (below)
    attrs: format_version, settings (JSON), and readable copies of the settings

The reference code's conventions, so that its plot_1D.py and plot_2D.py draw our files right
(format 2; `FORMAT_VERSION`):
- accuracies are stored in percent: the metric `acc` of each split (`train_acc`, `test_acc`) and
  its standard error (`train_acc_se`); `is_accuracy` names them. In memory (`Surface.metrics`)
  they are fractions: the conversion happens here, at the file boundary (x100 on writing, /100
  on reading). A float64 fraction does not always survive x100 then /100 (about one in six moves
  by one unit in the last place), so the group `exact` also holds each accuracy as the fraction
  computed, and the reader takes it wherever it still matches the percentage: a surface read
  back equals the one written bit for bit (a resumed or merged surface equals an uninterrupted
  one), and a percentage that another program changed is read as that percentage / 100.
- every metric array holds -1 at points not yet computed (the reference's resume logic treats
  values <= 0 as not done). `done` alone decides what is computed, in the file and in memory:
  a metric may be 0, negative, inf or NaN at a computed point. In memory, points not done are NaN.
Format 1 files (accuracy as a fraction, NaN at points not done) read as before; files of the
reference code (no `done`, no `format_version`) too: a point is done when its loss is not -1,
and their accuracies are in percent.

One process writes a surface file at a time: `SurfaceLock` holds `<file>.lock` (host, pid,
start time) while it writes. Every write is atomic (temporary file, fsync, rename), so HDF5's
own file locking is not needed and is turned off (`locking=False`): on shared file systems
(NFS, Lustre, GPFS) it fails or hangs, and the reference code's users had to set
HDF5_USE_FILE_LOCKING=FALSE by hand. Readers never see a half-written file.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from landscape.errors import LandscapeError

FORMAT_VERSION = 2  # 2: accuracies in percent, -1 at points not done; 1: fractions, NaN (still read)
NOT_COMPUTED = -1.0  # what the file holds at points not yet computed (the reference's fill value)
_ACCURACY = re.compile(r"(?:[^_/]+_)?acc(?:_se)?")  # `acc` of a split, or its standard error
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once, at import (os.umask can only be read by setting it)
_COORDS = ("xcoordinates", "ycoordinates")
_EXACT = "exact"  # the group of the accuracies as exact fractions
_RESERVED = {*_COORDS, "done", "dir_file", _EXACT}
_STRUCTURED = "json_attrs"  # the names of the attributes stored as JSON (dicts, lists, None)


@dataclass
class Surface:
    """A loss surface in memory: coordinates, metric arrays, the done mask and attributes."""

    x: np.ndarray  # (nx,)
    y: np.ndarray | None  # (ny,) or None for a 1-D surface
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # name -> shape; NaN = not computed
    done: np.ndarray | None = None  # bool, shape
    attrs: dict[str, Any] = field(default_factory=dict)
    dir_file: str | None = None

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x, dtype=np.float64)
        if self.y is not None:
            self.y = np.asarray(self.y, dtype=np.float64)
        if self.done is None:
            self.done = np.zeros(self.shape, dtype=bool)

    @property
    def shape(self) -> tuple[int, ...]:
        """(ny, nx) for 2-D surfaces (row = y, column = x), (nx,) for 1-D."""
        return (len(self.x),) if self.y is None else (len(self.y), len(self.x))

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def settings(self) -> dict[str, Any] | None:
        """The settings that produced the values (parsed from the `settings` attribute)."""
        s = self.attrs.get("settings")
        return None if s is None else json.loads(s)

    def add_metric(self, name: str) -> np.ndarray:
        """Return the array for `name`, creating it (all NaN) if absent."""
        if name not in self.metrics:
            self.metrics[name] = np.full(self.shape, np.nan)  # NaN = not computed yet
        return self.metrics[name]

    def masked(self, name: str) -> np.ma.MaskedArray:
        """The metric with points that are not done masked out."""
        return np.ma.masked_array(self.metrics[name], mask=~self.done)

    def plot_contour(self, metric: str | None = None, ax: Any = None, **kwargs: Any) -> Any:
        """`landscape.plot.surface.contour` of this surface (2-D); `metric` defaults to the first loss stored,
        the levels (vmin, vmax, vlevel) to a choice from its computed values (`landscape.plot.choose_levels`)."""
        from landscape.plot.surface import contour  # matplotlib only when plotting

        return contour(self, metric or self._first_loss(), ax=ax, **kwargs)

    def save_figures(self, folder: str | os.PathLike, name: str | None = None,
                     metric: str | Sequence[str] | None = None, **kwargs: Any) -> list[Path]:
        """The standard figures as PNG and PDF files in `folder`: `landscape.plot.save_figures(self, ...)`,
        which documents the names and options (every loss by default; levels chosen from the data)."""
        from landscape.plot.surface import save_figures

        return save_figures(self, folder, name=name, metric=metric, **kwargs)

    def plot_line(self, ax: Any = None, **kwargs: Any) -> Any:
        """`landscape.plot.surface.line1d` of this surface (1-D)."""
        from landscape.plot.surface import line1d

        return line1d(self, ax=ax, **kwargs)

    def _first_loss(self) -> str:
        return next((m for m in self.metrics if m.endswith("loss")), next(iter(self.metrics), "train_loss"))


def is_accuracy(name: str) -> bool:
    """Whether the metric `name` is an accuracy, stored in percent: `acc` of a split (`train_acc`,
    `test_acc`, or `acc` without a split) or its standard error (`train_acc_se`)."""
    return _ACCURACY.fullmatch(name) is not None


def to_file_units(name: str, values: np.ndarray) -> np.ndarray:
    """The metric's values as a surface file stores them: accuracies in percent, others as they are."""
    values = np.asarray(values, dtype=np.float64)
    return values * 100.0 if is_accuracy(name) else values


def settings_diff(old: Any, new: Any, arrow: str = "->", limit: int = 3) -> str:
    """The first differences between two settings, nested keys dotted: 'data.train.samples: 16 -> 32'."""
    out: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
        elif a != b:
            out.append(f"{key}: {a!r} {arrow} {b!r}")

    walk(old, new, "")
    return "; ".join(out[:limit]) + (f"; and {len(out) - limit} more" if len(out) > limit else "")


def write_surface(path: str | os.PathLike, surf: Surface) -> None:
    """Write the whole surface atomically: a temporary file in the same folder, fsync, rename.

    A kill at any moment leaves either the previous file or the new one, never a mix. Accuracies
    are stored in percent, and as exact fractions in the group `exact` (module docstring).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a surface is as readable as any new file
        with h5py.File(tmp, "w", locking=False) as f:
            f["xcoordinates"] = surf.x
            if surf.y is not None:
                f["ycoordinates"] = surf.y
            done = np.asarray(surf.done, dtype=bool)
            for name, arr in surf.metrics.items():
                if name in _RESERVED:
                    raise ValueError(f"metric name {name!r} is reserved")
                values = to_file_units(name, arr)
                if values.shape != done.shape:  # not a per-point array: as it is
                    f[name] = values
                    continue
                f[name] = np.where(done, values, NOT_COMPUTED)  # shape; -1 = not computed
                if is_accuracy(name):
                    exact = f.require_group(_EXACT)
                    exact.attrs["about"] = ("accuracies as the float64 fractions computed; the arrays of the same "
                                            "names hold them in percent (the reference code's unit)")
                    exact[name] = np.where(done, np.asarray(arr, dtype=np.float64), NOT_COMPUTED)
            f["done"] = done.astype(np.uint8)
            if surf.dir_file is not None:
                f["dir_file"] = surf.dir_file
            attrs = {k: v for k, v in surf.attrs.items() if k not in ("format_version", _STRUCTURED)}
            structured = sorted(k for k, v in attrs.items() if v is None or isinstance(v, (dict, list, tuple)))
            for k, v in attrs.items():
                f.attrs[k] = _attr_value(v)
            f.attrs[_STRUCTURED] = json.dumps(structured)  # written as JSON: read back as what they were
            f.attrs["format_version"] = FORMAT_VERSION  # the values' format is this writer's, whatever was read
            f.flush()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_surface(path: str | os.PathLike) -> Surface:
    """Read a surface file written by this package (any format) or by the reference loss-landscape code.

    In memory accuracies are fractions and points not done are NaN, whatever the file holds:
    format 2 stores accuracies in percent and -1 at points not done, format 1 fractions and NaN.
    Reference files have no `done` mask: there a point is done when its loss is not -1, the
    reference code's fill value; their accuracies are in percent. They store 2-D values with
    shape (nx, ny) but fill them in meshgrid order, which is (ny, nx); non-square grids are
    reshaped accordingly.
    """
    path = Path(path)
    if not path.is_file():
        raise LandscapeError(f"surface file {str(path)!r} does not exist; compute it with scripts/plot_surface.py")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as e:
        raise LandscapeError(f"{str(path)!r} is not a readable HDF5 surface file ({_short(e)})") from None
    try:
        with f:
            return _read(f, path)
    except (OSError, KeyError, ValueError, TypeError) as e:  # a damaged file that h5py could still open
        raise LandscapeError(f"{str(path)!r} is a damaged surface file ({type(e).__name__}: {_short(e)})") from None


def _read(f: h5py.File, path: Path) -> Surface:
    if "xcoordinates" not in f:
        raise LandscapeError(f"{str(path)!r} has no 'xcoordinates': not a loss-surface file")
    x = f["xcoordinates"][:]
    y = f["ycoordinates"][:] if "ycoordinates" in f else None
    attrs = {k: _read_attr(v) for k, v in f.attrs.items()}
    for k in json.loads(attrs.pop(_STRUCTURED, "[]")):
        if isinstance(attrs.get(k), str):
            attrs[k] = json.loads(attrs[k])
    surf = Surface(x=x, y=y, attrs=attrs)
    dir_file = f["dir_file"][()] if "dir_file" in f else None
    surf.dir_file = dir_file.decode() if isinstance(dir_file, bytes) else dir_file
    names = [k for k in f.keys() if k not in _RESERVED and isinstance(f[k], h5py.Dataset)]
    ours = "done" in f
    for name in names:
        if f[name].size != int(np.prod(surf.shape)) or f[name].ndim == 0:
            continue  # not a per-point array (a scalar dataset cannot be sliced with [:])
        arr = np.asarray(f[name][:], dtype=np.float64)
        surf.metrics[name] = arr.reshape(surf.shape)  # reference (nx, ny) holds (ny, nx) order
    if ours:
        version = attrs.get("format_version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
            raise LandscapeError(f"{str(path)!r} has surface format {version!r}, this landscape reads formats 1 to "
                                 f"{FORMAT_VERSION}; read it with the landscape version that wrote it, or upgrade")
        surf.done = f["done"][:].astype(bool).reshape(surf.shape)
        exact = f[_EXACT] if version >= 2 and isinstance(f.get(_EXACT), h5py.Group) else {}
        for name, arr in surf.metrics.items():
            if version >= 2 and is_accuracy(name):
                percent = arr.copy()
                arr /= 100.0  # percent in the file, a fraction in memory
                if name in exact and exact[name].shape == f[name].shape:
                    fraction = np.asarray(exact[name][:], dtype=np.float64).reshape(surf.shape)
                    same = _equal_or_both_nan(to_file_units(name, fraction), percent)  # else changed by another program
                    arr[same] = fraction[same]
            arr[~surf.done] = np.nan  # NaN = not computed (-1 in the file since format 2)
    else:
        loss_keys = [k for k in surf.metrics if k.endswith("loss")]
        key = loss_keys[0] if loss_keys else next(iter(surf.metrics), None)
        if key is not None:
            surf.done = surf.metrics[key] != -1
        for name, arr in surf.metrics.items():
            arr[~surf.done] = np.nan
            if name.endswith("acc"):
                arr /= 100.0  # the reference code stores accuracy in %, we store a fraction
    return surf


def _short(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def _attr_value(v: Any) -> Any:
    if v is None or isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    return v


def _read_attr(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------
# One writer per file: `<file>.lock`.


def lock_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the name may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int, proc_start: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    now = _proc_start(pid)
    return proc_start is None or now is None or now == proc_start


class SurfaceLock:
    """An exclusive claim on writing `path`: the file `<path>.lock`, created with O_CREAT|O_EXCL.

    The lock holds JSON: host, pid, the process's start time and the command. A second writer
    is refused with a message naming the holder. A lock left by a killed process on this host
    (its pid is gone, or now belongs to another process) is taken over, with a note. O_EXCL
    works on NFS and parallel file systems, where flock and HDF5's own locking may not.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.file = lock_path(path)
        self.held = False
        self.notes: list[str] = []
        self._mine = {
            "host": socket.gethostname(), "pid": os.getpid(), "proc_start": _proc_start(os.getpid()),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300],
        }

    def acquire(self) -> SurfaceLock:
        for _ in range(5):
            try:
                self.file.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            except OSError as e:
                raise LandscapeError(f"cannot create the lock file {self.file} ({e.strerror}); write the surface "
                                     "to a writable folder with --out or --surf_file") from None
            with os.fdopen(fd, "w") as fh:
                json.dump(self._mine, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.held = True
            self._remove_orphans()
            return self
        raise LandscapeError(f"{self.file} keeps being taken by other processes; run one job per surface file")

    def _take_over_if_stale(self) -> None:
        try:
            raw = self.file.read_text()
        except FileNotFoundError:
            return  # released meanwhile: try again
        except OSError as e:
            raise LandscapeError(f"cannot read the lock file {self.file} ({e.strerror}); delete it if no job "
                                 f"is writing {self.path}") from None
        try:
            holder = json.loads(raw)
            host, pid = str(holder["host"]), int(holder["pid"])
        except (ValueError, KeyError, TypeError):
            # empty or unreadable: its writer was killed between creating and filling it, or is filling it now
            if _age(self.file) < 10.0:
                raise LandscapeError(f"{self.path} is being claimed by another process right now "
                                     f"(lock file {self.file}); run one job per surface file") from None
            holder, host, pid = {}, None, None
        if host == socket.gethostname() and pid is not None and _pid_alive(pid, holder.get("proc_start")):
            raise LandscapeError(
                f"{self.path} is being written by pid {pid} on this host ({host}) since {holder.get('started')} "
                f"(lock file {self.file}); wait for it to finish, or stop it, then rerun to continue"
            )
        if host is not None and host != socket.gethostname():
            raise LandscapeError(
                f"{self.path} is being written by pid {pid} on host {host} since {holder.get('started')} "
                f"(lock file {self.file}); wait for that job, or if it is no longer running, delete {self.file}"
            )
        # stale: remove it, unless another process has replaced it since we read it
        try:
            if self.file.read_text() == raw:
                self.file.unlink()
        except FileNotFoundError:
            pass
        who = f"pid {pid} on {host}, started {holder.get('started')}" if pid is not None else "an unreadable lock"
        self.notes.append(f"took over the stale lock {self.file} ({who}, no longer running)")

    def _remove_orphans(self) -> None:
        """Temporary files of killed writers of this file (only the lock holder may remove them)."""
        pattern = re.compile(rf"^\.{re.escape(self.path.name)}\.[A-Za-z0-9_]{{8}}\.tmp$")
        try:
            for p in self.path.parent.iterdir():
                if pattern.match(p.name):
                    p.unlink(missing_ok=True)
        except OSError:
            pass

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:
            if json.loads(self.file.read_text()).get("pid") == os.getpid():
                self.file.unlink()
        except (OSError, ValueError):
            pass

    def __enter__(self) -> SurfaceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _age(path: Path) -> float:
    """Seconds since `path` was last modified (inf when it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


# ---------------------------------------------------------------------------------------
# Merging shards (and partial runs) of one surface.

SHARD_ATTRS = ("shard_index", "shard_count")


@dataclass
class MergeReport:
    """What `merge_surfaces` found: the inputs, the points done and the points missing."""

    inputs: list[Path]
    done: int
    total: int
    missing_shards: list[int] = field(default_factory=list)  # shard indices of the inputs' count, none given
    shard_count: int | None = None
    missing_example: list[str] = field(default_factory=list)  # a few missing points, as "x=..., y=..."

    @property
    def complete(self) -> bool:
        return self.done == self.total


def _equal_or_both_nan(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _where(surf: Surface, flat: int) -> str:
    if surf.y is None:
        return f"x={surf.x[flat]:g}"
    iy, ix = np.unravel_index(flat, surf.shape)
    return f"x={surf.x[ix]:g}, y={surf.y[iy]:g}"


def merge_surfaces(paths: Sequence[str | os.PathLike]) -> tuple[Surface, MergeReport]:
    """Join surface files of one grid and one set of settings: shards of a job array, partial runs.

    A point is done when any input has it done; a point done in several inputs must hold the same
    values in all of them (bit for bit as the files store them, NaN equal to NaN), else the merge is refused. Shard
    attributes are dropped: the result is the unsharded surface, which plot_surface.py can resume.
    """
    paths = [Path(p) for p in dict.fromkeys(str(p) for p in paths)]
    if not paths:
        raise LandscapeError("no surface files to merge; pass the shard files, e.g. results/s.shard-*-of-4.h5")
    surfs = [read_surface(p) for p in paths]
    first, base = paths[0], surfs[0]
    for p, s in zip(paths, surfs):
        if s.settings is None:
            raise LandscapeError(f"{p} was not written by landscape (no settings); only landscape surfaces "
                                 "can be merged")
    for p, s in zip(paths[1:], surfs[1:]):
        old, new = base.settings, s.settings
        if old != new:
            raise LandscapeError(f"{p} was computed with other settings than {first} "
                                 f"({settings_diff(old, new, 'vs')}); merge only the shards of one job")
        if (s.shape != base.shape or not np.array_equal(s.x, base.x)
                or (s.y is not None and not np.array_equal(s.y, base.y))):
            raise LandscapeError(f"{p} has another grid than {first}; merge only the shards of one job")
        if set(s.metrics) != set(base.metrics):
            raise LandscapeError(f"{p} holds {sorted(s.metrics)} but {first} holds {sorted(base.metrics)}; "
                                 "merge only the shards of one job")
    out = Surface(x=base.x.copy(), y=None if base.y is None else base.y.copy(), dir_file=base.dir_file,
                  attrs={k: v for k, v in base.attrs.items() if k not in SHARD_ATTRS})
    for m in base.metrics:
        out.add_metric(m)
    owner = np.full(out.shape, -1)  # which input supplied each point
    for i, (p, s) in enumerate(zip(paths, surfs)):
        both = out.done & s.done
        for m in base.metrics:  # compared as stored: a format-1 fraction equals its format-2 percent read back
            same = _equal_or_both_nan(to_file_units(m, out.metrics[m]), to_file_units(m, s.metrics[m]))
            bad = np.flatnonzero(both & ~same)
            if bad.size:
                k = int(bad[0])
                raise LandscapeError(
                    f"{p} and {paths[int(owner.flat[k])]} disagree at {bad.size} point(s) both computed (first at "
                    f"{_where(out, k)}: {m} {s.metrics[m].flat[k]!r} vs {out.metrics[m].flat[k]!r}); they were not "
                    "computed the same way (device? precision?): merge only one of them"
                )
        new = s.done & ~out.done
        for m in base.metrics:
            out.metrics[m][new] = s.metrics[m][new]
        out.done |= s.done
        owner[new] = i
    sources: list[str] = []  # the shard files behind the result, through earlier merges too
    for p, s in zip(paths, surfs):
        earlier = s.attrs.get("merged_from")
        if isinstance(earlier, str):  # a file written before attributes were read back as lists
            earlier = json.loads(earlier)
        sources += list(earlier) if earlier else [str(p)]
    out.attrs["merged_from"] = list(dict.fromkeys(sources))
    counts = {s.attrs.get("shard_count") for s in surfs}
    report = MergeReport(inputs=paths, done=int(out.done.sum()), total=out.done.size)
    if len(counts) == 1 and None not in counts:
        n = int(counts.pop())
        given = {int(s.attrs["shard_index"]) for s in surfs}
        report.shard_count, report.missing_shards = n, [i for i in range(n) if i not in given]
    report.missing_example = [_where(out, int(k)) for k in np.flatnonzero(~out.done)[:3]]
    return out, report
