"""The default CPU thread count (landscape.engine.threads): quota, ranks per node, and idle cores."""

import os
import subprocess
import sys

import pytest
import torch

from landscape.engine import threads as cpu

STAT = """cpu  400 0 200 1000 100 0 0 0 0 0
cpu0 100 0 50 500 50 0 0 0 0 0
cpu1 300 0 150 500 50 0 0 0 0 0
intr 12345
ctxt 999
"""


def test_cpu_times_sum_the_listed_cpus_idle_and_iowait():
    assert cpu.cpu_times([0], STAT) == (550, 700)
    assert cpu.cpu_times([1], STAT) == (550, 1000)
    assert cpu.cpu_times([0, 1], STAT) == (1100, 1700)
    assert cpu.cpu_times([2], STAT) is None  # not on this machine
    assert cpu.cpu_times([], STAT) is None


def test_cgroup_quota_is_the_smallest_over_the_cgroup_and_its_ancestors(tmp_path):
    """A fake cgroup tree: v2, a job slice limited to 2 cores holding a scope without a limit of its
    own gives 2; a tighter scope gives its own 1.5; v1 (cfs quota / period, -1 for none) likewise;
    no limit anywhere, or no files, gives None."""
    scope = tmp_path / "v2" / "job.slice" / "step.scope"
    scope.mkdir(parents=True)
    (tmp_path / "v2" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "v2" / "job.slice" / "cpu.max").write_text("200000 100000\n")
    (scope / "cpu.max").write_text("max 100000\n")
    assert cpu.cgroup_quota(tmp_path / "v2", "0::/job.slice/step.scope\n") == 2.0
    (scope / "cpu.max").write_text("150000 100000\n")
    assert cpu.cgroup_quota(tmp_path / "v2", "0::/job.slice/step.scope\n") == 1.5
    assert cpu.cgroup_quota(tmp_path / "v2", "0::/\n") is None  # the root: no limit
    v1 = tmp_path / "v1" / "cpu,cpuacct" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (v1.parent / "cpu.cfs_quota_us").write_text("-1\n")
    (v1.parent / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu.cgroup_quota(tmp_path / "v1", "2:cpu,cpuacct:/docker/abc\n1:memory:/docker/abc\n") == 4.0
    assert cpu.cgroup_quota(tmp_path / "v1", "1:memory:/docker/abc\n") is None
    assert cpu.cgroup_quota(tmp_path / "none", "0::/x\n") is None


@pytest.mark.parametrize("env,expected", [
    ({}, 1), ({"LOCAL_WORLD_SIZE": "4"}, 4),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS_PER_NODE": "8"}, 8),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS_PER_NODE": "8", "SLURM_CPUS_PER_TASK": "4"}, 1),  # srun binds each task
    ({"LOCAL_WORLD_SIZE": "x"}, 1)])
def test_ranks_sharing_the_node(env, expected):
    assert cpu.local_ranks(env) == expected


@pytest.mark.parametrize("available,idle,ranks,expected", [
    (2, 2.0, 1, 2), (2, 1.6, 1, 2), (2, 1.4, 1, 1), (2, 0.98, 1, 1), (2, 0.0, 1, 1), (2, None, 1, 2),
    (16, 16.0, 4, 4), (16, 6.0, 4, 2), (16, None, 4, 4), (1, None, 8, 1), (64, 10.2, 1, 10)])
def test_threads_are_the_share_of_the_idle_cores(available, idle, ranks, expected):
    assert cpu.choose_threads(available, idle, ranks) == expected


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_a_core_kept_busy_by_another_process_is_not_idle(monkeypatch):
    """A busy loop pinned to one of our CPUs: that CPU measures (almost) no idle time, whatever
    else the machine does, and the default then takes fewer threads than the cores, with a note."""
    before = torch.get_num_threads()
    target = cpu.usable_cpus()[0]
    hog = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{target}}})\nwhile True: pass"])
    try:
        cpu.idle_cores([target], interval=0.3)  # let it start
        idle = cpu.idle_cores([target], interval=0.5)
        assert idle is not None and 0.0 <= idle < 0.5
        everything = cpu.idle_cores(interval=0.5)
        assert everything is not None and 0.0 <= everything <= len(cpu.usable_cpus()) - 0.5
        if cpu.available_cores() == len(cpu.usable_cpus()):  # no cgroup quota below the CPUs we see
            monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
            note = cpu.set_threads(None, torch.device("cpu"))
            assert torch.get_num_threads() < cpu.available_cores()
            assert note is not None and "cores idle" in note and "--threads N" in note
    finally:
        hog.kill()
        hog.wait()
        torch.set_num_threads(before)


def test_set_threads_obeys_a_request_and_chooses_within_the_cores_otherwise(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert cpu.set_threads(1, torch.device("cpu")) is None and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # an explicit choice stays
        assert cpu.set_threads(None, torch.device("cpu")) is None and torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        cpu.set_threads(None, torch.device("cpu"))
        assert 1 <= torch.get_num_threads() <= cpu.available_cores()
        torch.set_num_threads(1)
        assert cpu.set_threads(None, torch.device("cuda")) is None and torch.get_num_threads() == 1  # left alone
    finally:
        torch.set_num_threads(before)
