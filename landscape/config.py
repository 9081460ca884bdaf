"""The run's configuration besides the engine (`engine.EngineOptions`) and sampling
(`sampling.SamplingPlan`), and the one place that decides which options combine.

Frozen dataclasses, checked when made; their errors name the library's arguments, and a script
prints the flag instead (`errors.as_flags`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from landscape.errors import LandscapeError

if TYPE_CHECKING:
    from landscape.distributed import Shard
    from landscape.engine import EngineOptions
    from landscape.sampling import SamplingPlan

DEFAULT_POINTS_PER_PASS = 8  # grid points per pass over streamed data
DEFAULT_MEMORY_BUDGET = 2**30  # bytes: data sets larger than this are streamed, not kept on the device


@dataclass(frozen=True)
class DataOptions:
    """How the data reaches the engine: resident on the device, or streamed in batches (read once
    per block of `points_per_pass` grid points). None of these change a value."""

    stream: bool | None = None  # None: streamed when larger than memory_budget, or a DataLoader/iterable
    points_per_pass: int = DEFAULT_POINTS_PER_PASS
    memory_budget: int | None = None  # bytes; None: DEFAULT_MEMORY_BUDGET
    num_workers: int = 0  # DataLoader workers for a Dataset that is streamed

    def __post_init__(self) -> None:
        if self.points_per_pass < 1:
            raise LandscapeError(f"points_per_pass must be >= 1, got {self.points_per_pass}", "points_per_pass")
        if self.memory_budget is not None and self.memory_budget < 0:
            raise LandscapeError(f"memory_budget must be >= 0, got {self.memory_budget}", "memory_budget")
        if self.num_workers < 0:
            raise LandscapeError(f"num_workers must be >= 0, got {self.num_workers}", "num_workers")


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out and kept: the file's handling, progress, a share of a job array.
    None of these change a value."""

    overwrite: bool = False  # replace a file made with other settings
    max_points: int | None = None  # compute at most this many points now; a rerun continues
    progress: bool = True
    shard: Shard | None = None  # a job array's share: its own file, <surf>.shard-i-of-N.h5
    flush_seconds: float = 5.0  # rewrite the surface file at most this often (and at the end, and on SIGTERM)

    def __post_init__(self) -> None:
        if self.max_points is not None and self.max_points < 0:
            raise LandscapeError(f"max_points must be >= 0, got {self.max_points}", "max_points")
        if not self.flush_seconds >= 0:
            raise LandscapeError(f"flush_seconds must be >= 0, got {self.flush_seconds:g}", "flush_seconds")


def check_options(engine: EngineOptions, sampling: SamplingPlan | None = None, streamed: bool = False,
                  bn_recompute: bool = False, run: RunOptions | None = None, distributed: bool = False) -> None:
    """Refuse, in one line naming the arguments, every combination of options that cannot run
    together. Called by `compute_surface` (every door) once it knows whether the data is streamed,
    and by the command line before any file is read."""
    per_launch = engine.points_per_launch > 1
    tolerance = sampling is not None and sampling.tolerance is not None
    if per_launch:
        for clash, on, arg in (("tolerance (adaptive sampling)", tolerance, "tolerance"),
                               ("bn_recompute", bn_recompute, "bn_recompute"),
                               ("stream (streamed data is evaluated points_per_pass points at a time)", streamed,
                                "stream")):
            if on:
                raise LandscapeError(f"points_per_launch > 1 does not combine with {clash}; drop one of them",
                                     ("points_per_launch", arg, "points_per_pass"))
    if bn_recompute and streamed:
        raise LandscapeError("bn_recompute re-estimates BatchNorm statistics from resident training inputs; "
                             "it does not combine with streamed data", "bn_recompute")
    if sampling is not None and streamed and (sampling.multilevel or sampling.strata):
        what = "multilevel" if sampling.multilevel else "strata"
        raise LandscapeError(f"{what} needs the data resident (it reads each point's samples by index); "
                             "pass tensors within the memory budget, or drop it", what)
    if sampling is not None and sampling.multilevel:
        shard = run is not None and run.shard is not None
        if shard or distributed:
            raise LandscapeError("multilevel evaluates points in dependency order: it runs in one process; "
                                 f"drop {'shard' if shard else 'torchrun/srun'}", "multilevel")
