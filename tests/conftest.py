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
