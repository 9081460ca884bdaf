"""Cluster jobs: torchrun ranks equal one process bit for bit, shards merge into the unsharded
surface, a failing rank is named and what was gathered is on disk.

The multi-process tests launch real gloo ranks with `python -m torch.distributed.run` on the CPU.
"""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from landscape.distributed import DistInfo, Shard, _rendezvous_env, dist_info
from landscape.errors import LandscapeError
from landscape.storage import Surface, lock_path, merge_surfaces, read_surface, write_surface

ROOT = Path(__file__).resolve().parents[1]
GRID = ["--x=-1:1:7", "--y=-1:0.5:5"]  # 35 points, a non-square grid
SMALL = ["--n-samples", "48", "--threads", "1", "--no-progress"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, script: Path | str, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_same_surface(a: Surface, b: Surface) -> None:
    assert a.shape == b.shape
    assert set(a.metrics) == set(b.metrics)
    np.testing.assert_array_equal(a.done, b.done)
    for m in a.metrics:
        assert a.metrics[m].tobytes() == b.metrics[m].tobytes(), m  # bit for bit, NaN included


# ------------------------------------------------------------------------- environment


@pytest.mark.parametrize(("env", "expected"), [
    ({}, DistInfo()),
    ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, DistInfo(1, 4, 1, "torchrun")),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}, DistInfo(5, 8, 1, "slurm")),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "2"}, DistInfo(1, 2, 0, "slurm")),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_ARRAY_TASK_ID": "3"}, DistInfo()),  # a job-array task
    ({"RANK": "0", "WORLD_SIZE": "1"}, DistInfo(0, 1, 0, "torchrun")),
])
def test_dist_info_from_the_launchers_environment(env: dict, expected: DistInfo) -> None:
    assert dist_info(env) == expected


@pytest.mark.parametrize(("env", "message"), [
    ({"RANK": "2", "WORLD_SIZE": "2"}, "rank 2 is not within a world of 2 processes"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK must be an integer, got 'x'"),
])
def test_dist_info_rejects_a_bad_environment(env: dict, message: str) -> None:
    with pytest.raises(LandscapeError, match=message):
        dist_info(env)


@pytest.mark.parametrize(("env", "expected"), [
    ({"SLURM_NNODES": "1", "SLURM_JOB_ID": "123456"}, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "18456"}),
    ({"MASTER_ADDR": "node1", "MASTER_PORT": "29500"}, {}),
])
def test_srun_rendezvous_defaults_on_one_node(env: dict, expected: dict) -> None:
    assert _rendezvous_env(DistInfo(1, 2, 1, "slurm"), env) == expected


@pytest.mark.parametrize(("info", "env", "message"), [
    (DistInfo(1, 8, 1, "slurm"), {"SLURM_NNODES": "2"}, "8 processes need a rendezvous address: export MASTER_ADDR"),
    (DistInfo(1, 2, 1, "torchrun"), {"MASTER_ADDR": "node1"}, "MASTER_ADDR is set but MASTER_PORT is not"),
])
def test_rendezvous_without_an_address(info: DistInfo, env: dict, message: str) -> None:
    with pytest.raises(LandscapeError, match=message):
        _rendezvous_env(info, env)


def test_shard_spec_and_file_name() -> None:
    s = Shard.parse(" 2/ 5")
    assert (s.index, s.count, s.spec()) == (2, 5, "2/5")
    assert s.path("results/a_x-1_1_5.h5") == Path("results/a_x-1_1_5.shard-2-of-5.h5")
    assert s.owns(np.arange(12)).nonzero()[0].tolist() == [2, 7]
    shares = [Shard(i, 3).owns(np.arange(35)) for i in range(3)]
    assert (np.sum(shares, axis=0) == 1).all()  # every point in exactly one shard


# ------------------------------------------------------------------------- torchrun


def test_two_gloo_ranks_equal_one_process_and_resume_a_partial_file(plot_surface, capsys, digits_ckpt,
                                                                    tmp_path) -> None:
    base = ["--ckpt", str(digits_ckpt), *GRID, *SMALL, "--out", str(tmp_path)]
    one = tmp_path / "one.h5"
    assert plot_surface.main([*base, "--surf_file", str(one)]) == 0
    # a partial file first (12 points in one process), then 2 ranks share the 23 points left
    two = tmp_path / "two.h5"
    assert plot_surface.main([*base, "--surf_file", str(two), "--max-points", "12"]) == 0
    assert int(read_surface(two).done.sum()) == 12
    capsys.readouterr()
    proc = torchrun(2, ROOT / "scripts" / "plot_surface.py", [*base, "--surf_file", str(two), "--flush-seconds", "0.1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("surface:    ") == 1  # rank 0 alone reports
    assert f"surface:    {two}  (35/35 points done)" in proc.stdout
    a, b = read_surface(one), read_surface(two)
    assert_same_surface(a, b)
    assert b.attrs["ranks"] == 2 and a.attrs["ranks"] == 1
    assert a.settings == b.settings
    # rank 0 alone wrote: no lock, no temporary file, no file of another rank
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["one.h5", "two.h5", "one_dirs.h5", "two_dirs.h5"])


def test_two_gloo_ranks_read_rank_0s_stratified_order(plot_surface, capsys, digits_ckpt, tmp_path) -> None:
    """Adaptive sampling in a stratified order (rank 0 computes it, rank 1 applies the same): 2 ranks
    give the one-process surface bit for bit, with the same order in the settings."""
    base = ["--ckpt", str(digits_ckpt), *GRID, "--tolerance", "0.5", "--n0", "16", "--stratify", "8",
            "--threads", "1", "--no-progress", "--out", str(tmp_path)]
    one = tmp_path / "one.h5"
    assert plot_surface.main([*base, "--surf_file", str(one)]) == 0
    capsys.readouterr()
    two = tmp_path / "two.h5"
    proc = torchrun(2, ROOT / "scripts" / "plot_surface.py", [*base, "--surf_file", str(two)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_surface(one), read_surface(two)
    assert_same_surface(a, b)
    assert a.settings == b.settings and "order" in b.settings["sampling"] and b.attrs["ranks"] == 2


def test_two_srun_tasks_equal_one_process(plot_surface, capsys, digits_ckpt, tmp_path) -> None:
    """srun's environment (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, one node, no MASTER_ADDR), as srun sets it."""
    base = ["--ckpt", str(digits_ckpt), *GRID, *SMALL, "--out", str(tmp_path)]
    one = tmp_path / "one.h5"
    assert plot_surface.main([*base, "--surf_file", str(one)]) == 0
    capsys.readouterr()
    two = tmp_path / "two.h5"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", SLURM_NTASKS="2", SLURM_NNODES="1", MASTER_PORT=str(free_port()))
    procs = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / "plot_surface.py"), *base, "--surf_file",
                               str(two)], env={**env, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert f"surface:    {two}  (35/35 points done)" in outs[0][0]
    assert outs[1] == ("", "")  # rank 1 says nothing
    b = read_surface(two)
    assert b.attrs["ranks"] == 2
    assert_same_surface(read_surface(one), b)


WORKER = textwrap.dedent('''
    """A gloo rank computing a surface of a linear model; rank 1 fails at its third point."""
    import sys
    import torch, torch.nn as nn
    from landscape.sources.data import DEFAULT_NORMALIZATION, load_dataset
    from landscape.directions import DirectionSpec, make_directions, target_tensors
    from landscape.distributed import Group, dist_info
    from landscape.engine.evaluate import Evaluator, PointSetter
    from landscape.grid import Axis, Grid
    from landscape.config import RunOptions
    from landscape.sweep import sweep

    torch.set_num_threads(1)
    out, fail_rank = sys.argv[1], int(sys.argv[2])
    d = load_dataset("digits", "train", n_samples=200, seed=0)
    x = DEFAULT_NORMALIZATION["digits"].apply(d.x)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=1, ndim=2)
    setter = PointSetter([t for _, t in tensors], [dirs.x, dirs.y])
    ev = Evaluator(model, x, d.y)

    class Flaky:
        metric_names = ev.metric_names
        calls = 0

        def __call__(self):
            self.calls += 1
            if info.rank == fail_rank and self.calls == 3:
                raise RuntimeError("injected failure on this rank")
            return ev()

    info = dist_info()
    with Group(info) as group:
        try:
            sweep(setter, {"train": Flaky()}, Grid(Axis(-1, 1, 6), Axis(-1, 1, 4)), out, {"s": 1},
                  run=RunOptions(flush_seconds=0.0, progress=False), group=group)
        except Exception as e:
            print(f"rank {info.rank} raised {type(e).__name__}: {e}", flush=True)
            raise SystemExit(3)
''')


def test_a_failing_rank_is_named_and_the_gathered_points_are_on_disk(tmp_path, monkeypatch) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    out = tmp_path / "s.h5"
    proc = torchrun(2, worker, [str(out), "1"])
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "rank 0 raised LandscapeError: rank 1 of 2 failed at point" in text, text[-3000:]
    assert "RuntimeError: injected failure on this rank" in text
    assert f"points are saved in {out}; rerun the same command to continue" in text
    assert "rank 1 raised RuntimeError: injected failure on this rank" in text
    saved = read_surface(out)
    # blocks of one point each (flush_seconds=0): two full rounds, then rank 0's third point
    assert int(saved.done.sum()) == 5
    assert "5/24 points are saved" in text
    assert not lock_path(out).exists()
    # every saved point equals the one-process value (the same worker, in this process, no rank failing)
    ok = tmp_path / "ok.h5"
    monkeypatch.setattr(sys, "argv", [str(worker), str(ok), "-1"])
    runpy.run_path(str(worker), run_name="__main__")
    full = read_surface(ok)
    assert full.done.all()
    for m in saved.metrics:
        assert saved.metrics[m][saved.done].tobytes() == full.metrics[m][saved.done].tobytes()


# ------------------------------------------------------------------------- job arrays


def test_shards_merged_equal_the_unsharded_surface(plot_surface, merge, capsys, digits_ckpt, tmp_path) -> None:
    base = ["--ckpt", str(digits_ckpt), *GRID, *SMALL, "--out", str(tmp_path)]
    whole = tmp_path / "whole.h5"
    assert plot_surface.main([*base, "--surf_file", str(whole)]) == 0
    surf = tmp_path / "s.h5"
    for i in range(3):
        assert plot_surface.main([*base, "--surf_file", str(surf), "--shard", f"{i}/3"]) == 0
        shard = read_surface(tmp_path / f"s.shard-{i}-of-3.h5")
        assert (shard.attrs["shard_index"], shard.attrs["shard_count"]) == (i, 3)
        assert np.flatnonzero(shard.done).tolist() == list(range(i, 35, 3))
    out = capsys.readouterr().out
    assert f"surface:    {tmp_path / 's.shard-2-of-3.h5'}  (11/35 points done; shard 2/3: 11/11 of its points)" in out

    # two of three shards: written, incomplete, exit 1, the missing shard named
    assert merge.main([str(tmp_path / "s.shard-0-of-3.h5"), str(tmp_path / "s.shard-2-of-3.h5")]) == 1
    captured = capsys.readouterr()
    assert f"merged 2 files into {surf}: 23/35 points done" in captured.out
    assert "missing: 12 points; no file for shard(s) 1 of 3; run them (--shard I/3) and merge again" in captured.err
    assert int(read_surface(surf).done.sum()) == 23
    # the third shard later: merged into the existing file
    assert merge.main([str(tmp_path / "s.shard-1-of-3.h5")]) == 0
    assert f"merged 2 files into {surf}: 35/35 points done" in capsys.readouterr().out
    merged, ref = read_surface(surf), read_surface(whole)
    assert_same_surface(merged, ref)
    assert merged.settings == ref.settings
    assert "shard_index" not in merged.attrs
    assert merged.attrs["merged_from"] == [str(tmp_path / f"s.shard-{i}-of-3.h5") for i in (1, 0, 2)]
    # the merged file is the unsharded surface: plot_surface.py resumes it, with nothing left to do
    assert plot_surface.main([*base, "--surf_file", str(surf)]) == 0
    assert f"surface:    {surf}  (35/35 points done)" in capsys.readouterr().out
    assert_same_surface(read_surface(surf), ref)


def _surface(values: list[float], done: list[int], settings: str = '{"a": 1}') -> Surface:
    s = Surface(x=np.linspace(-1, 1, 5), y=None, attrs={"settings": settings})
    loss = s.add_metric("train_loss")
    for i, v in zip(done, values):
        loss[i] = v
        s.done[i] = True
    return s


def test_merge_keeps_non_finite_values_as_computed(tmp_path) -> None:
    a = _surface([np.nan, np.inf, 0.0], [0, 1, 2])
    b = _surface([np.inf, -np.inf, -1.0], [1, 3, 4])  # point 1 in both: inf in both
    write_surface(tmp_path / "a.h5", a)
    write_surface(tmp_path / "b.h5", b)
    merged, report = merge_surfaces([tmp_path / "a.h5", tmp_path / "b.h5"])
    assert report.complete and merged.done.all()
    assert merged.metrics["train_loss"].tolist()[1:] == [np.inf, 0.0, -np.inf, -1.0]
    assert np.isnan(merged.metrics["train_loss"][0])  # a diverged point, done, not "missing"
    c = _surface([np.nan], [0])
    write_surface(tmp_path / "c.h5", c)
    merged, report = merge_surfaces([tmp_path / "a.h5", tmp_path / "c.h5"])  # NaN agrees with NaN
    assert report.done == 3 and report.missing_example == ["x=0.5", "x=1"]
