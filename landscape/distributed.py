"""Cluster jobs: who this process is (torchrun, srun), the process group, and job-array shards.

A surface is computed by `world` ranks that take interleaved shares of the points not yet
done; every few seconds their results are gathered and rank 0, the only process that opens
the surface file, writes them (surface.py). A job array splits the grid instead: `--shard i/N`
computes the points `idx % N == i` into a shard file of its own, and `merge_surfaces` (storage.py)
joins the shards.

`dist_info()` reads the launcher's environment the way nanoGPT does, with no framework:
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); srun sets
SLURM_PROCID / SLURM_NTASKS (SLURM_STEP_NUM_TASKS) / SLURM_LOCALID, and the sbatch script
exports MASTER_ADDR / MASTER_PORT (scripts/slurm/srun.sbatch).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.distributed as dist

from landscape.errors import LandscapeError

# How long a rank waits for the others at a gather before giving up: points are gathered every
# few seconds, so this only matters when a rank hangs (a stuck GPU, a node that froze).
TIMEOUT = _dt.timedelta(minutes=30)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job; one process (rank 0 of 1) unless a launcher says otherwise."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launcher: str | None = None  # "torchrun" (any env:// launcher), "slurm" (srun) or None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None:
        if default is None:
            raise LandscapeError(f"environment variable {name} is not set; launch with torchrun or srun")
        return default
    try:
        return int(value)
    except ValueError:
        raise LandscapeError(f"environment variable {name} must be an integer, got {value!r}; "
                             "unset it or launch with torchrun/srun") from None


def dist_info(env: Mapping[str, str] | None = None) -> DistInfo:
    """Rank, world size and local rank from torchrun's or Slurm's environment variables."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:  # torchrun, or any launcher of the env:// kind
        rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
        local, launcher = _env_int(env, "LOCAL_RANK", 0), "torchrun"
    elif "SLURM_PROCID" in env:
        # srun sets SLURM_STEP_NUM_TASKS for its step; SLURM_NTASKS is the allocation's (or the step's)
        world = _env_int(env, "SLURM_STEP_NUM_TASKS", _env_int(env, "SLURM_NTASKS", 1))
        if world <= 1:
            return DistInfo()  # one task, e.g. one element of a job array
        rank, local, launcher = _env_int(env, "SLURM_PROCID"), _env_int(env, "SLURM_LOCALID", 0), "slurm"
    else:
        return DistInfo()
    if world < 1 or not 0 <= rank < world:
        raise LandscapeError(f"rank {rank} is not within a world of {world} processes; "
                             "check RANK/WORLD_SIZE (or SLURM_PROCID/SLURM_NTASKS)")
    return DistInfo(rank, world, local, launcher)


def _rendezvous_env(info: DistInfo, env: Mapping[str, str]) -> dict[str, str]:
    """MASTER_ADDR / MASTER_PORT for init_process_group: from the launcher, or defaults on one node."""
    out = {}
    if "MASTER_ADDR" not in env:
        nodes = _env_int(env, "SLURM_STEP_NUM_NODES", _env_int(env, "SLURM_NNODES", 1))
        if info.launcher != "slurm" or nodes > 1:
            raise LandscapeError(
                f"{info.world_size} processes need a rendezvous address: export MASTER_ADDR (the first node, e.g. "
                "$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1)) and MASTER_PORT, "
                "as scripts/slurm/srun.sbatch does"
            )
        out["MASTER_ADDR"] = "127.0.0.1"
    if "MASTER_PORT" not in env:
        if info.launcher != "slurm":
            raise LandscapeError("MASTER_ADDR is set but MASTER_PORT is not; export MASTER_PORT=29500 (any free port)")
        # a port per job, so two jobs sharing a node do not meet at one rendezvous
        out["MASTER_PORT"] = str(15000 + _env_int(env, "SLURM_JOB_ID", 0) % 20000)
    return out


# ---------------------------------------------------------------------------------------
# The process group: a few collectives, the same calls in one process as in many.


class PeerError(LandscapeError):
    """Another rank failed and rank 0 reports it; this rank stops without a message of its own."""


class Group:
    """The ranks of one job. With one process every collective is the identity, at no cost."""

    def __init__(self, info: DistInfo = DistInfo(), device: torch.device | None = None):
        self.info = info
        self.device = device
        self.backend: str | None = None
        self._owned = False

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def world_size(self) -> int:
        return self.info.world_size

    @property
    def is_main(self) -> bool:
        return self.info.rank == 0

    def start(self) -> Group:
        """Join the process group: gloo on CPUs; gloo and NCCL ("cpu:gloo,cuda:nccl") on GPUs."""
        if not self.info.is_distributed:
            return self
        if dist.is_initialized():  # the caller set one up (e.g. a library user)
            return self
        for k, v in _rendezvous_env(self.info, os.environ).items():
            os.environ[k] = v
        # The ranks exchange a few numbers per point as Python objects: gloo carries them (on GPUs too,
        # so no rank has to pin a device first); NCCL is there for CUDA tensors, created only if used.
        cuda = self.device is not None and self.device.type == "cuda"
        self.backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
        try:
            dist.init_process_group(self.backend, init_method="env://", rank=self.info.rank,
                                    world_size=self.info.world_size, timeout=TIMEOUT)
        except (RuntimeError, ValueError) as e:
            raise LandscapeError(
                f"rank {self.info.rank} could not join the other {self.info.world_size - 1} processes at "
                f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} ({_first_line(e)}); "
                "check MASTER_ADDR/MASTER_PORT and that every rank was started"
            ) from None
        self._owned = True
        return self

    def close(self) -> None:
        if self._owned:
            dist.destroy_process_group()
            self._owned = False

    def __enter__(self) -> Group:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.info.is_distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.info.is_distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, error: BaseException | None) -> None:
        """Stop every rank if any rank failed; rank 0 reports the first failure, naming its rank.

        With one process, re-raise the error as it is.
        """
        if not self.info.is_distributed:
            if error is not None:
                raise error
            return
        mine = None if error is None else _describe(error)
        failures = [(r, e) for r, e in enumerate(self.all_gather(mine)) if e is not None]
        if not failures:
            return
        rank, text = failures[0]
        if self.is_main:
            if rank == 0 and isinstance(error, LandscapeError):
                raise error
            if rank == 0 and error is not None and not isinstance(error, LandscapeError):
                traceback.print_exception(error)
            raise LandscapeError(f"rank {rank} of {self.world_size} failed: {text}")
        if error is not None and not isinstance(error, LandscapeError):
            raise error  # this rank's own traceback goes to its log; rank 0 prints the one-line summary
        raise PeerError(text)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _describe(e: BaseException) -> str:
    if isinstance(e, LandscapeError):
        return str(e)
    return f"{type(e).__name__}: {_first_line(e)}"


def local_device(info: DistInfo, device: torch.device) -> torch.device:
    """The GPU of this rank: `cuda` -> `cuda:(LOCAL_RANK mod visible GPUs)`, made the current device.

    With all of a node's GPUs visible (torchrun, srun --gres=gpu:4) each local rank gets its own;
    where the launcher binds one GPU per task (srun --gpus-per-task=1), each task sees one: cuda:0.
    An explicit `cuda:N` is kept.
    """
    if device.type != "cuda" or not info.is_distributed or device.index is not None:
        return device
    dev = torch.device("cuda", info.local_rank % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    return dev


# ---------------------------------------------------------------------------------------
# Job-array shards.

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Share `index` of `count`: the grid points whose flat index is `index` modulo `count`."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            last = self.count - 1
            raise LandscapeError(f"shard {self.index}/{self.count}: the index must be 0 to {last} (shards are "
                                 f"numbered from 0, like $SLURM_ARRAY_TASK_ID with --array=0-{last})", "shard")

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """'i/N' -> Shard(i, N), e.g. --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT."""
        m = _SHARD.match(str(spec))
        if m is None:
            raise LandscapeError(f"shard must be INDEX/COUNT like 0/4 (shard 0 of 4), got {spec!r}", "shard")
        if int(m.group(2)) == 0:
            raise LandscapeError(f"shard {spec}: the count must be at least 1 (INDEX/COUNT like 0/4)", "shard")
        return cls(int(m.group(1)), int(m.group(2)))

    def spec(self) -> str:
        return f"{self.index}/{self.count}"

    def path(self, surf_file: str | os.PathLike) -> Path:
        """`results/s.h5` -> `results/s.shard-1-of-4.h5`."""
        p = Path(surf_file)
        return p.with_name(f"{p.stem}.shard-{self.index}-of-{self.count}{p.suffix or '.h5'}")

    def owns(self, flat_index: Any) -> Any:
        """Whether the grid point(s) with these flat indices belong to this shard."""
        return flat_index % self.count == self.index
