"""Shared fixtures: a small digits ResNet-20 checkpoint and the plot_surface script as a module."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch

from landscape.checkpoint import save_checkpoint
from landscape.models import get_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS_META = {"arch": "resnet20", "num_classes": 10, "in_channels": 1, "dataset": "digits"}

# The tests' models are tiny: one thread is fastest, and several threads on shared cores can make
# each forward pass 50x slower (they wait on each other) without changing any result.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained (seeded) ResNet-20 for 8x8 digits, saved with metadata."""
    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10, in_channels=1)
    path = tmp_path_factory.mktemp("ckpt") / "digits_r20.pt"
    save_checkpoint(path, model, DIGITS_META)
    return path


@pytest.fixture(scope="session")
def plot_surface() -> ModuleType:
    """scripts/plot_surface.py imported in-process (a subprocess pays ~3 s for torch)."""
    spec = importlib.util.spec_from_file_location("plot_surface", ROOT / "scripts" / "plot_surface.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
