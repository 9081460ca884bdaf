"""How many CPU threads a run uses when `--threads` is not given.

torch's default is one thread per core of the machine. That is wrong in three common cases: a
cgroup CPU quota (a container or a batch job given fewer cores than the machine has), several
ranks on one node (torchrun starts them all with the same default), and cores that other work
keeps busy. The last is the costly one: OpenMP threads wait for each other at every operation,
so a thread that shares its core with another process stalls all of them: with one of two cores
kept busy, two threads ran slower than one (BENCHMARKS.md, "CPU threads when other work shares
the cores"; `scripts/benchmark.py --busy N --threads ...` measures it).

So the default is: the cores this process may use (its affinity mask, capped by a cgroup quota),
shared among the ranks of its node, and no more than are idle now (measured from /proc/stat over
a tenth of a second before any work starts). Only for runs on the CPU; `--threads N` overrides,
and an OMP_NUM_THREADS in the environment (an explicit choice; torchrun sets it to 1 for several
ranks per node) is left in force.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

IDLE_INTERVAL_S = 0.1  # how long the idle measurement looks (/proc/stat counts in 10 ms ticks)


def _quota_v2(cpu_max: str) -> float | None:
    """Cores allowed by a cgroup v2 cpu.max text ("max 100000" or "200000 100000")."""
    parts = cpu_max.split()
    if len(parts) < 2 or parts[0] == "max":
        return None
    return float(parts[0]) / float(parts[1])


def _quota_v1(quota: str, period: str) -> float | None:
    """Cores allowed by cgroup v1's cpu.cfs_quota_us / cpu.cfs_period_us (quota -1: none)."""
    q = float(quota.strip())
    return None if q < 0 else q / float(period.strip())


def cgroup_quota(root: str | Path = "/sys/fs/cgroup", self_cgroup: str | None = None) -> float | None:
    """The CPU quota of this process's cgroup in cores: the smallest over it and its ancestors
    (cgroup v2 cpu.max; v1 cpu.cfs_quota_us / cpu.cfs_period_us), found through /proc/self/cgroup
    (or the text `self_cgroup`) under `root`; None when there is none or none is readable."""
    root = Path(root)
    if self_cgroup is None:
        try:
            self_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            self_cgroup = "0::/"
    quotas = []
    for line in self_cgroup.splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            base, files = root / "unified" if (root / "unified").is_dir() else root, ("cpu.max",)
        elif "cpu" in controllers.split(","):
            base = next((root / n for n in (controllers, "cpu", "cpu,cpuacct") if (root / n).is_dir()), None)
            files = ("cpu.cfs_quota_us", "cpu.cfs_period_us")
            if base is None:
                continue
        else:
            continue
        level = base / path.strip().lstrip("/")
        while True:  # the cgroup, then each ancestor up to the hierarchy's root
            try:
                texts = [(level / f).read_text() for f in files]
                q = _quota_v2(*texts) if len(texts) == 1 else _quota_v1(*texts)
                if q is not None and q > 0:
                    quotas.append(q)
            except (OSError, ValueError, ZeroDivisionError):
                pass
            if level == base or base not in level.parents:
                break
            level = level.parent
    return min(quotas) if quotas else None


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask; all of them where that is unknown)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def available_cores() -> int:
    """Cores this process may use: its affinity mask, capped by the cgroup quota (rounded up)."""
    cores = len(usable_cpus())
    quota = cgroup_quota()
    return max(1, min(cores, math.ceil(quota)) if quota is not None else cores)


def cpu_times(cpus: Sequence[int], stat: str | None = None) -> tuple[int, int] | None:
    """(idle, total) clock ticks summed over `cpus` from /proc/stat (or the text `stat`); idle
    counts idle and iowait. None when the file or a CPU's line is missing."""
    if stat is None:
        try:
            stat = Path("/proc/stat").read_text()
        except OSError:
            return None
    rows = {}
    for line in stat.splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit():
            rows[int(name[3:])] = [int(v) for v in rest.split()]
    if not cpus or any(c not in rows for c in cpus):
        return None
    idle = sum(rows[c][3] + (rows[c][4] if len(rows[c]) > 4 else 0) for c in cpus)
    total = sum(sum(rows[c][:8]) for c in cpus)  # user..steal; guest time is already in user
    return idle, total


def idle_cores(cpus: Sequence[int] | None = None, interval: float = IDLE_INTERVAL_S) -> float | None:
    """How many of `cpus` (default: the usable ones) were idle over the next `interval` seconds,
    as a sum of idle fractions (0 to len(cpus)); None where /proc/stat cannot tell."""
    cpus = usable_cpus() if cpus is None else list(cpus)
    before = cpu_times(cpus)
    if before is None:
        return None
    time.sleep(interval)
    after = cpu_times(cpus)
    if after is None or after[1] <= before[1]:
        return None
    return len(cpus) * (after[0] - before[0]) / (after[1] - before[1])


def local_ranks(env: Mapping[str, str] = os.environ) -> int:
    """Ranks of this job on this node that share its cores: torchrun's LOCAL_WORLD_SIZE; under
    srun 1 when --cpus-per-task gave each task cores of its own, else SLURM_NTASKS_PER_NODE."""
    try:
        if "LOCAL_WORLD_SIZE" in env:
            return max(1, int(env["LOCAL_WORLD_SIZE"]))
        if "SLURM_PROCID" in env and "SLURM_CPUS_PER_TASK" not in env and "SLURM_NTASKS_PER_NODE" in env:
            return max(1, int(env["SLURM_NTASKS_PER_NODE"]))
    except ValueError:
        pass
    return 1


def choose_threads(available: int, idle: float | None, ranks: int = 1) -> int:
    """Threads for one rank: its share of the available cores, and no more than its share of the
    idle ones (rounded to the nearest), at least 1."""
    share = max(1, available // max(1, ranks))
    if idle is None:
        return share
    return max(1, min(share, math.floor(idle / max(1, ranks) + 0.5)))


def set_threads(requested: int | None, device: torch.device) -> str | None:
    """Set torch's CPU threads: `requested` if given, else on the CPU `choose_threads` for this
    process unless OMP_NUM_THREADS is set; returns a note when the default gave fewer threads than
    the cores it may use."""
    if requested is not None:
        torch.set_num_threads(requested)
        return None
    if device.type != "cpu" or os.environ.get("OMP_NUM_THREADS", "").strip():
        return None
    available, ranks = available_cores(), local_ranks()
    idle = idle_cores()
    threads = choose_threads(available, idle, ranks)
    torch.set_num_threads(threads)
    if threads * ranks >= available:
        return None
    why = [f"{idle:.1f} of {len(usable_cpus())} cores idle" if idle is not None else "",
           f"{available} cores shared by {ranks} ranks" if ranks > 1 else ""]
    return (f"{threads} CPU thread{'s' if threads > 1 else ''} ({'; '.join(w for w in why if w)}); "
            "--threads N to choose")
