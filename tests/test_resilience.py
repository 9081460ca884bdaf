"""Never lose work: kill -9 at random moments then resume equals an uninterrupted run bit for bit;
SIGTERM flushes before exit; a second writer is refused; stale locks are taken over; non-finite
values are stored as computed and never taken for "not done"."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from landscape.sources.data import DEFAULT_NORMALIZATION, load_dataset
from landscape.directions import DirectionSpec, make_directions, target_tensors
from landscape.errors import LandscapeError
from landscape.engine.evaluate import Evaluator, PointSetter
from landscape.grid import Axis, Grid
from landscape.storage import SurfaceLock, lock_path, read_surface
from landscape.config import RunOptions
from landscape.sweep import Interrupted, sweep

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "plot_surface.py"


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def wait_for_lock(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until `proc` holds the lock of the surface `path`: model, data and directions are ready."""
    lock, t0 = lock_path(path), time.monotonic()
    while True:
        try:
            if json.loads(lock.read_text())["pid"] == proc.pid:
                return
        except (OSError, ValueError, KeyError):
            pass  # absent, a stale one, or being written
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before it took {lock}: {proc.communicate()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{proc.pid} did not take {lock} within {timeout} s")
        time.sleep(0.005)


def bits(surf, m: str) -> bytes:
    return surf.metrics[m].tobytes()


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(plot_surface, capsys, digits_ckpt,
                                                                            tmp_path) -> None:
    args = ["--ckpt", str(digits_ckpt), "--x=-1:1:9", "--y=-1:1:9", "--n-samples", "64", "--threads", "1",
            "--no-progress", "--out", str(tmp_path)]
    ref_file = tmp_path / "ref.h5"
    assert plot_surface.main([*args, "--surf_file", str(ref_file)]) == 0
    capsys.readouterr()
    ref = read_surface(ref_file)
    surf_file = tmp_path / "killed.h5"
    lock = lock_path(surf_file)
    seed = time.time_ns() % 10**6
    rng = random.Random(seed)
    kills = []  # (points flushed before the kill was aimed, extra delay in s, points in the file after it)
    saved_n = 0
    for _ in range(3):
        proc = start([*args, "--surf_file", str(surf_file), "--flush-seconds", "0"])  # a flush after every point
        wait_for_lock(surf_file, proc)
        # aim at a random moment of the computation: after a random number of new points, plus a random
        # fraction of a point (mid-evaluation or mid-flush)
        target, extra = saved_n + rng.randint(1, 20), rng.uniform(0.0, 0.05)
        while proc.poll() is None and (not surf_file.exists() or int(read_surface(surf_file).done.sum()) < target):
            time.sleep(0.002)
        time.sleep(extra)
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (seed, kills, err)
        # readable, and every point it says is done is the right one, bit for bit
        saved = read_surface(surf_file)
        saved_n = int(saved.done.sum())
        kills.append((target, round(extra, 3), saved_n))
        assert target <= saved_n < 81, (seed, kills)
        for m in ref.metrics:
            assert saved.metrics[m][saved.done].tobytes() == ref.metrics[m][saved.done].tobytes(), (seed, kills)
        assert lock.exists()  # left behind by the killed process
    proc = start([*args, "--surf_file", str(surf_file)])
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert f"note: took over the stale lock {lock}" in out
    resumed = read_surface(surf_file)
    assert resumed.done.all()
    for m in ref.metrics:
        assert bits(resumed, m) == bits(ref, m), (m, seed, kills)
    # no lock and no temporary file of a killed writer is left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ref.h5", "ref_dirs.h5", "killed.h5", "killed_dirs.h5"]), (seed, kills)


def test_sigterm_flushes_before_exit_and_a_second_writer_is_refused(plot_surface, capsys, digits_ckpt,
                                                                     tmp_path) -> None:
    args = ["--ckpt", str(digits_ckpt), "--x=-1:1:15", "--y=-1:1:15", "--n-samples", "64", "--threads", "1",
            "--no-progress", "--out", str(tmp_path)]
    surf_file = tmp_path / "s.h5"
    proc = start([*args, "--surf_file", str(surf_file), "--flush-seconds", "1000"])  # no periodic flush
    try:
        wait_for_lock(surf_file, proc)
        holder = json.loads(lock_path(surf_file).read_text())
        assert (holder["pid"], holder["host"]) == (proc.pid, socket.gethostname())
        # a second process writing the same file is refused, naming the holder; nothing is written
        with pytest.raises(SystemExit) as e:
            plot_surface.main([*args, "--surf_file", str(surf_file)])
        assert e.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(
            f"error: {surf_file} is being written by pid {proc.pid} on this host ({socket.gethostname()}) since "), err
        assert "wait for it to finish, or stop it, then rerun to continue" in err[0]
        assert not surf_file.exists()
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    saved = read_surface(surf_file)
    n = int(saved.done.sum())
    assert n >= 1 and n < 225
    assert err.splitlines() == [f"interrupted: stopped by SIGTERM: {n}/225 points are saved in {surf_file}; "
                                "rerun the same command to continue"]
    assert not lock_path(surf_file).exists()
    # the flushed points are the first n of the grid, equal to an uninterrupted run's
    ref_file = tmp_path / "ref.h5"
    assert plot_surface.main([*args, "--surf_file", str(ref_file), "--max-points", str(n)]) == 0
    ref = read_surface(ref_file)
    np.testing.assert_array_equal(saved.done, ref.done)
    for m in ref.metrics:
        assert bits(saved, m) == bits(ref, m)


# ------------------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def linear_setup():
    d = load_dataset("digits", "train", n_samples=100, seed=0)
    x = DEFAULT_NORMALIZATION["digits"].apply(d.x)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=1, ndim=2)
    setter = PointSetter([t for _, t in tensors], [dirs.x, dirs.y])
    return setter, Evaluator(model, x, d.y)


class Counting:
    """A measure that counts its calls; on call `signal_at` it signals its own process."""

    metric_names = ("loss", "acc")

    def __init__(self, ev, signum=None, signal_at=None, values=None):
        self.ev, self.signum, self.signal_at, self.values = ev, signum, signal_at, values
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.calls == self.signal_at:
            os.kill(os.getpid(), self.signum)
        if self.values is not None:
            return self.values[(self.calls - 1) % len(self.values)]
        return self.ev()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_point_flushes_and_stops(linear_setup, tmp_path, signum) -> None:
    setter, ev = linear_setup
    grid = Grid(Axis(-1, 1, 4), Axis(-1, 1, 3))
    path = tmp_path / "s.h5"
    measure = Counting(ev, signum, signal_at=3)
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted) as e:
        sweep(setter, {"train": measure}, grid, path, {}, run=RunOptions(flush_seconds=1e9, progress=False))
    assert e.value.signum == signum
    assert str(e.value) == (f"stopped by {signal.Signals(signum).name}: 3/12 points are saved in {path}; "
                            "rerun the same command to continue")
    assert signal.getsignal(signum) is before  # the handler is put back
    saved = read_surface(path)
    assert np.flatnonzero(saved.done).tolist() == [0, 1, 2]  # the point being evaluated was finished
    assert not lock_path(path).exists()
    full = sweep(setter, {"train": Counting(ev)}, grid, tmp_path / "f.h5", {}, run=RunOptions(progress=False))
    resumed = sweep(setter, {"train": Counting(ev)}, grid, path, {}, run=RunOptions(progress=False))
    for m in full.metrics:
        assert resumed.metrics[m].tobytes() == full.metrics[m].tobytes()


def test_non_finite_values_are_stored_as_computed_and_not_recomputed(linear_setup, tmp_path) -> None:
    setter, _ = linear_setup
    values = [(np.nan, 0.0), (np.inf, 0.1), (-np.inf, 0.2), (0.0, 1.0), (-1.0, 0.5)]
    grid = Grid(Axis(-1, 1, 5))
    path = tmp_path / "n.h5"
    setter1 = PointSetter([t for t in setter.live], [setter.dirs[0]])
    sweep(setter1, {"train": Counting(None, values=values)}, grid, path, {}, run=RunOptions(progress=False))
    back = read_surface(path)
    assert back.done.all()
    loss = back.metrics["train_loss"]
    assert np.isnan(loss[0]) and loss[1:].tolist() == [np.inf, -np.inf, 0.0, -1.0]
    again = Counting(None, values=values)
    sweep(setter1, {"train": again}, grid, path, {}, run=RunOptions(progress=False))
    assert again.calls == 0  # `done` decides: NaN, inf, 0 and -1 are values, not "not computed"


# ------------------------------------------------------------------------- the lock


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def write_lock(path: Path, **holder) -> Path:
    lock = lock_path(path)
    lock.write_text(json.dumps({"host": socket.gethostname(), "started": "2030-01-01T00:00:00+00:00", **holder}))
    return lock


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path) -> None:
    path = tmp_path / "s.h5"
    pid = dead_pid()
    write_lock(path, pid=pid)
    (tmp_path / ".s.h5.abcd1234.tmp").write_bytes(b"half a file")  # a killed writer's temporary file
    (tmp_path / ".s.h5.other.abcd1234.tmp").write_bytes(b"someone else's")
    with SurfaceLock(path) as lock:
        assert json.loads(lock_path(path).read_text())["pid"] == os.getpid()
        assert lock.notes == [f"took over the stale lock {lock_path(path)} (pid {pid} on {socket.gethostname()}, "
                              "started 2030-01-01T00:00:00+00:00, no longer running)"]
    assert not lock_path(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".s.h5.other.abcd1234.tmp"]


def test_a_reused_pid_does_not_hold_the_lock(tmp_path) -> None:
    path = tmp_path / "s.h5"
    write_lock(path, pid=os.getppid(), proc_start=1)  # a live pid, but not the process that took the lock
    with SurfaceLock(path) as lock:
        assert "no longer running" in lock.notes[0]


@pytest.mark.parametrize(("host", "message"), [
    (None, "is being written by pid {pid} on this host ({host}) since 2030-01-01T00:00:00+00:00"),
    ("node042", "is being written by pid {pid} on host node042 since 2030-01-01T00:00:00+00:00 (lock file {lock}); "
                "wait for that job, or if it is no longer running, delete {lock}"),
])
def test_a_live_lock_is_refused_naming_its_holder(tmp_path, host, message) -> None:
    path = tmp_path / "s.h5"
    pid = os.getppid()
    lock = write_lock(path, pid=pid, **({"host": host} if host else {}))
    before = lock.read_text()
    with pytest.raises(LandscapeError) as e:
        SurfaceLock(path).acquire()
    assert message.format(pid=pid, host=socket.gethostname(), lock=lock) in str(e.value)
    assert lock.read_text() == before


def test_sigterm_stops_a_curvature_map_with_one_line(digits_ckpt, tmp_path) -> None:
    """plot_hessian_eig.py, like plot_surface.py: SIGTERM saves the points done and ends with one line."""
    surf_file = tmp_path / "eig.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "plot_hessian_eig.py"), "--ckpt", str(digits_ckpt),
                             "--hessian-samples", "16", "--x=-1:1:9", "--y=-1:1:9", "--threads", "1", "--no-progress",
                             "--out", str(tmp_path), "--surf_file", str(surf_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_for_lock(surf_file, proc)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    n = int(read_surface(surf_file).done.sum())
    assert n < 81
    assert err.splitlines() == [f"interrupted: stopped by SIGTERM: {n}/81 points are saved in {surf_file}; "
                                "rerun the same command to continue"]
