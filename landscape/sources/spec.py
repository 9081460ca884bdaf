"""What the command line names as a surface's sources, resolved into a model, data, a loss and metrics.

`SourceSpec` holds the flags (a checkpoint or a model definition; a data set or a data definition;
the normalization, splits and subset; the loss and metrics); `resolve` loads them into `Sources`,
which is what `landscape.surface.compute_surface` takes from any door: the Python API gives the
same pieces directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from landscape.errors import LandscapeError
from landscape.losses import get_loss
from landscape.metrics import accuracy
from landscape.sources import plugins
from landscape.sources.checkpoint import Checkpoint, _compare, _describe, _signature, build_model, load_checkpoint
from landscape.sources.data import _subset_indices, check_normalization, load_dataset, resolve_normalization

ROOT = Path(__file__).resolve().parents[2]


def default_checkpoint() -> Path:
    """The bundled checkpoint of the embedded default (a ResNet-20 trained on digits)."""
    path = ROOT / "checkpoints" / "digits_resnet20.pt"
    if not path.is_file():
        raise LandscapeError(f"the bundled checkpoint {path} is missing; reinstall from a full checkout or pass --ckpt")
    return path


@dataclass(frozen=True)
class SourceSpec:
    """Where the model, data, loss and metrics come from (the command line's model and data flags)."""

    ckpt: str | None = None  # None (and no model_def): the bundled embedded default
    arch: str | None = None  # a registered architecture; None: the checkpoint's metadata, else detected
    model_def: str | None = None  # FILE.py:factory or module:factory
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    allow_pickle: bool = False
    dataset: str | None = None  # None: the checkpoint's metadata
    data_root: str | None = None
    data_def: str | None = None  # FILE.py:function returning tensors, a Dataset or a DataLoader
    normalization: str | None = None  # None: the checkpoint's statistics, else the dataset's
    splits: tuple[str, ...] = ("train",)
    n_samples: int | None = None  # a seeded random subset of each split
    seed: int = 0  # of the subset, and of a model definition's initial weights without a checkpoint
    loss: str = "cross_entropy"  # a name in landscape.losses.LOSSES
    loss_def: str | None = None
    metric_defs: tuple[str, ...] | None = None  # NAME=FILE.py:fn

    def __post_init__(self) -> None:
        check_normalization(self.normalization)
        if not self.splits or any(s not in ("train", "test") for s in self.splits):
            raise LandscapeError(f"splits must be train, test or train,test, got {','.join(self.splits)!r}", "splits")
        if self.n_samples is not None and self.n_samples < 1:
            raise LandscapeError(f"n_samples must be >= 1, got {self.n_samples}", "n_samples")
        if self.loss_def is None:
            get_loss(self.loss)  # a bad name fails before any file is read


@dataclass
class Sources:
    """A resolved model, its data per split, the loss and metrics, and where they came from."""

    model: nn.Module
    data: dict[str, Any]  # split -> (x, y) tensors, a Dataset, a DataLoader or a list of batches
    loss: Callable
    metrics: dict[str, Callable]
    name: str  # for file names: the checkpoint's stem, else the model factory's name
    provenance: dict[str, Any] = field(default_factory=dict)  # the surface file's attributes (not compared)
    populations: dict[str, int] = field(default_factory=dict)  # split -> samples of the whole split
    notes: list[str] = field(default_factory=list)
    checkpoint: Checkpoint | None = None
    arch: str | None = None


def resolve(spec: SourceSpec, device: torch.device) -> Sources:
    """Load the model (on `device`, eval mode), the data of each split (normalized, subset), the loss
    and the metrics a `SourceSpec` names."""
    notes: list[str] = []
    ckpt, arch = None, None
    if spec.model_def is not None:
        torch.manual_seed(spec.seed)  # the factory's initial weights, when no checkpoint is given
        model = plugins.build_model(spec.model_def, dict(spec.model_kwargs))
        name = spec.model_def.rpartition(":")[2]
        if spec.ckpt is not None:
            ckpt = load_checkpoint(spec.ckpt, allow_pickle=spec.allow_pickle)
            missing, unexpected, shapes = _compare(_signature(model), ckpt.state_dict)
            if missing or unexpected or shapes:
                raise LandscapeError(f"--ckpt {spec.ckpt} does not fit the --model-def model: "
                                     f"{_describe(missing, unexpected, shapes)}; pass the checkpoint saved from "
                                     "that model (and its --model-kwargs)")
            model.load_state_dict(ckpt.state_dict)
            name = Path(spec.ckpt).stem
        else:
            notes.append(f"no --ckpt: the surface is around the model's initial weights (torch seed {spec.seed})")
    else:
        path = Path(spec.ckpt) if spec.ckpt is not None else default_checkpoint()
        ckpt = load_checkpoint(path, allow_pickle=spec.allow_pickle)
        if ckpt.known is not None:
            notes.append(ckpt.describe_known())
        model, arch, more = build_model(ckpt, spec.arch)
        notes += more
        name = path.stem
    model.to(device).eval()

    provenance: dict[str, Any] = {"model": arch or type(model).__name__}
    if ckpt is not None:
        provenance.update(checkpoint=str(ckpt.path), checkpoint_sha256=ckpt.sha256)
    if spec.model_def is not None:
        provenance.update(model_def=spec.model_def, model_kwargs=dict(spec.model_kwargs))
    data: dict[str, Any] = {}
    populations: dict[str, int] = {}
    if spec.data_def is not None:
        provenance["data_def"] = spec.data_def
        for s in spec.splits:
            data[s], populations[s] = _subset(plugins.build_data(spec.data_def, s), spec.n_samples, spec.seed, s)
    else:
        dataset = spec.dataset or (ckpt.meta.get("dataset") if ckpt is not None else None)
        if dataset is None:
            raise LandscapeError(f"{ckpt.path if ckpt is not None else 'the model'} does not say which data it was "
                                 "trained on; pass --dataset (or --data-def)")
        meta_norm = ckpt.meta.get("normalization") if ckpt is not None else None
        normalization, where = resolve_normalization(spec.normalization, dataset, meta_norm)
        if spec.normalization not in (None, "checkpoint") or not meta_norm:
            notes.append(f"input normalization mean {normalization.mean}, std {normalization.std} from {where}"
                         if normalization is not None else f"no input normalization ({where})")
        provenance.update(dataset=dataset, normalization=normalization.to_dict() if normalization else None)
        for s in spec.splits:
            d = load_dataset(dataset, s, spec.data_root, spec.n_samples, spec.seed)
            if d.note is not None:
                notes.append(d.note)
            if spec.n_samples is not None and spec.n_samples > len(d):
                notes.append(f"--n-samples {spec.n_samples} is more than the {len(d)} samples of {dataset} {s}; "
                             f"using all {len(d)}")
            x = d.x if normalization is None else normalization.apply(d.x)
            if len(d) and spec.model_def is None:
                _check_fits(model, x.to(device), d.y, f"{dataset} {s}")
            data[s] = (x, d.y)
            populations[s] = d.population or len(d)
    provenance.update(n_samples=spec.n_samples, sample_seed=spec.seed)

    if spec.loss_def is not None:
        loss = plugins.load_symbol(spec.loss_def, "--loss-def", "a callable (output, targets) -> per-sample losses")
    else:
        loss = get_loss(spec.loss)
    metrics = plugins.parse_metric_defs(list(spec.metric_defs) if spec.metric_defs else None)
    if metrics is None:  # accuracy where the built-in pieces make it meaningful: a classifier and its loss
        metrics = {} if spec.loss_def is not None or spec.model_def is not None else {"acc": accuracy}
    return Sources(model, data, loss, metrics, name, provenance, populations, notes, ckpt, arch)


def _subset(data: Any, n: int | None, seed: int, split: str) -> tuple[Any, int | None]:
    """A seeded random subset of n samples of a data definition's tensors or Dataset (the same
    indices as a built-in data set's), and the whole split's size; refused for batches and loaders."""
    from torch.utils.data import Dataset, Subset

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        whole = len(data[0])
        if n is None or n >= whole:
            return tuple(data), whole
        idx = _subset_indices(whole, n, seed)
        return (data[0][idx], data[1][idx]), whole
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        whole = len(data)
        if n is None or n >= whole:
            return data, whole
        return Subset(data, _subset_indices(whole, n, seed).tolist()), whole
    if n is not None:
        raise LandscapeError(f"--n-samples takes a subset of tensors or a Dataset; the --data-def {split} data is a "
                             f"{type(data).__name__}: return (x, y) or a Dataset from it, or drop --n-samples")
    return data, None


def _check_fits(model: nn.Module, x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """The model takes these images and has an output for every label (one forward pass on 2 samples)."""
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise LandscapeError(f"{what} has label {lo}; labels must be class indices 0..C-1: fix the data file")
    try:
        with torch.inference_mode():
            out = model(x[:2])
    except RuntimeError as e:
        text = str(e).strip()
        first = (text.splitlines()[0] if text else type(e).__name__)[:160]
        raise LandscapeError(f"the model does not take the {what} images, shape {tuple(x.shape[1:])} ({first}); "
                             "the checkpoint was trained on other data: pass its --dataset") from None
    if out.dim() == 2 and hi >= out.shape[1]:
        raise LandscapeError(f"{what} has labels up to {hi} but the model has {out.shape[1]} outputs; the checkpoint "
                             "was trained for other classes: pass its --dataset (or fix the labels)")


def load_endpoint(path: str, arch: str | None, model_def: str | None, model_kwargs: Mapping[str, Any],
                  allow_pickle: bool) -> nn.Module:
    """Another checkpoint of the same model (an interpolation's end), on the CPU."""
    ckpt = load_checkpoint(path, allow_pickle=allow_pickle)
    if model_def is not None:
        model = plugins.build_model(model_def, dict(model_kwargs))
        model.load_state_dict(ckpt.state_dict)
        return model
    model, _, _ = build_model(ckpt, arch)
    return model
