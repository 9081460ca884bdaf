"""Shared fixtures: a small digits ResNet-20 checkpoint and the scripts as modules."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch

from landscape.sources.checkpoint import save_checkpoint
from landscape.models import get_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS_META = {"arch": "resnet20", "num_classes": 10, "in_channels": 1, "dataset": "digits"}

# The tests' models are tiny: one thread is fastest, and several threads on shared cores can make
# each forward pass 50x slower (they wait on each other) without changing any result. The
# environment variable keeps the jobs the tests run (and their subprocesses) at one thread too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained (seeded) ResNet-20 for 8x8 digits, saved with metadata."""
    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10, in_channels=1)
    path = tmp_path_factory.mktemp("ckpt") / "digits_r20.pt"
    save_checkpoint(path, model, DIGITS_META)
    return path


_SCRIPTS: dict[str, ModuleType] = {}


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py imported in-process, once per session (a subprocess pays ~3 s for torch)."""
    if name not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    return _SCRIPTS[name]


@pytest.fixture(scope="session")
def script():
    """`script("name")`: scripts/name.py as a module (see `load_script`)."""
    return load_script


@pytest.fixture(scope="session")
def plot_surface() -> ModuleType:
    return load_script("plot_surface")


@pytest.fixture(scope="session")
def merge() -> ModuleType:
    return load_script("merge_surfaces")


_RUN = ("overwrite", "max_points", "progress", "shard", "flush_seconds")
_ENGINE = ("precision", "batch_size", "fold_bn", "compile", "compile_mode", "points_per_launch", "cuda_fuse",
           "cudnn_benchmark", "fuse", "prepack", "channels_last")
_SOURCES = ("ckpt", "arch", "dataset", "data_root", "normalization", "splits", "n_samples", "loss", "allow_pickle",
            "model_def", "data_def", "loss_def", "metric_defs", "model_kwargs")
_DIRECTIONS = ("xspec", "yspec", "same_dir", "ckpt2", "ckpt3", "dir_file")


def surface_job(**kw):
    """A `landscape.surface.SurfaceJob` from flat keyword arguments, each put in its config (the tests'
    shorthand; `seed` goes to the sources and the directions, as the command line's --seed)."""
    from landscape.config import RunOptions
    from landscape.engine import EngineOptions
    from landscape.sources import SourceSpec
    from landscape.surface import DirectionRequest, SurfaceJob

    seed = kw.pop("seed", 0)
    run = RunOptions(**{k: kw.pop(k) for k in _RUN if k in kw})
    engine = EngineOptions(**{k: kw.pop(k) for k in _ENGINE if k in kw})
    sources = SourceSpec(seed=seed, **{k: kw.pop(k) for k in _SOURCES if k in kw})
    directions = DirectionRequest(seed=seed, **{k: kw.pop(k) for k in _DIRECTIONS if k in kw})
    return SurfaceJob(sources=sources, directions=directions, engine=engine, run=run, **kw)


_DATA = ("stream", "points_per_pass", "memory_budget", "num_workers")
_ENGINE_ONLY = tuple(k for k in _ENGINE if k not in ("precision", "batch_size"))


def api_kwargs(**kw) -> dict:
    """`compute_surface` keyword arguments from flat ones, each put in its config (the tests'
    shorthand): run, data and engine settings become RunOptions, DataOptions and EngineOptions."""
    from landscape.config import DataOptions, RunOptions
    from landscape.engine import EngineOptions

    run = {k: kw.pop(k) for k in _RUN if k in kw}
    data = {k: kw.pop(k) for k in _DATA if k in kw}
    engine = {k: kw.pop(k) for k in _ENGINE_ONLY if k in kw}
    if run:
        kw["run"] = RunOptions(**run)
    if data:
        kw["data_options"] = DataOptions(**data)
    if engine:
        kw["engine"] = EngineOptions(precision=kw.pop("precision", "fp32"), batch_size=kw.pop("batch_size", None),
                                     **engine)
    return kw
