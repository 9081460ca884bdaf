"""Checkpoints: load any common layout safely, resolve the architecture, save with metadata.

Loading uses `torch.load(weights_only=True)`; arbitrary pickles only with `allow_pickle=True`.
Accepted layouts: a bare state_dict, or a dict holding it under `state_dict`, `model`,
`net` or `model_state_dict`, with `module.` (DataParallel) and `_orig_mod.` (torch.compile)
prefixes. Checkpoints written here carry `meta`: architecture, num_classes, in_channels,
dataset, normalization and accuracies, so a file alone says how to rebuild its model.
Well-known third-party files that carry no metadata are recognized by their sha256
(`KNOWN_CHECKPOINTS`), which supplies the same fields.
"""

from __future__ import annotations

import copy
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from landscape.sources.data import IMAGENET_NORMALIZATION
from landscape.errors import LandscapeError
from landscape.models import get_model, list_models

FORMAT = "landscape-checkpoint"
_WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.")
_OPTIONAL_KEYS = ("num_batches_tracked",)  # absent from many older checkpoints; harmless to keep fresh
_PICKLE_MARKERS = ("GLOBAL", "add_safe_globals", "Unsupported class")  # torch's weights_only refusals of objects


def _akamaster(arch: str) -> dict[str, Any]:
    # akamaster/pytorch_resnet_cifar10: option-A shortcuts (our resnetNN), ImageNet mean/std on pixels/255
    return {"arch": arch, "dataset": "cifar10", "num_classes": 10, "in_channels": 3,
            "normalization": IMAGENET_NORMALIZATION.to_dict(),
            "source": f"akamaster/pytorch_resnet_cifar10 pretrained {arch} (BSD-2-Clause, Yerlan Idelbayev)"}


# Third-party checkpoints without metadata, keyed by the file's sha256: what the file itself cannot say.
KNOWN_CHECKPOINTS: dict[str, dict[str, Any]] = {
    "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8": _akamaster("resnet20"),
    "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850": _akamaster("resnet32"),
    "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4": _akamaster("resnet44"),
    "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367": _akamaster("resnet56"),
}


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors keyed as the model expects them, and what is known about it."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str | None = None
    known: dict[str, Any] | None = None  # its KNOWN_CHECKPOINTS entry, when the file is a known one

    def describe_known(self) -> str | None:
        """A one-line note saying which known checkpoint this is, or None."""
        if self.known is None:
            return None
        name = self.path.name if self.path else "checkpoint"
        imagenet = self.known.get("normalization") == IMAGENET_NORMALIZATION.to_dict()
        norm = "ImageNet mean/std" if imagenet else "its own mean/std"
        return (f"recognized {name} by its sha256 as {self.known['source']}: {self.known['arch']} "
                f"trained on {self.known['dataset']} with {norm}")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike, allow_pickle: bool = False) -> Checkpoint:
    """Load a checkpoint file onto the CPU and unwrap its state_dict."""
    path = Path(path)
    if not path.is_file():
        raise LandscapeError(f"checkpoint {str(path)!r} does not exist; check the path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # torch raises several types for foreign or damaged files
        text = str(e).strip()
        detail = text.split("WeightsUnpickler error:", 1)[-1].strip()  # torch's own cause, after its advice
        first = detail.splitlines()[0] if detail else type(e).__name__
        # Only a pickled Python object (a global the safe unpickler refuses) is fixed by --allow-pickle;
        # a damaged or foreign file also fails the safe unpickler, but with another cause.
        if not allow_pickle and any(m in text for m in _PICKLE_MARKERS):
            raise LandscapeError(
                f"checkpoint {str(path)!r} holds Python objects besides tensors ({first.split('. ')[0][:120]}); "
                "if you trust its source, pass --allow-pickle"
            ) from None
        raise LandscapeError(f"cannot read checkpoint {str(path)!r}: {first[:120]}; it is not a torch.save file "
                             "or it is damaged: check the --ckpt path or copy the file again") from None
    state, meta = _unwrap(obj, path)
    sha = sha256_file(path)
    known = KNOWN_CHECKPOINTS.get(sha)
    if known is not None:
        meta = {**copy.deepcopy(known), **meta}  # metadata stored in the file wins
    return Checkpoint(state_dict=state, meta=meta, path=path, sha256=sha, known=known)


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    meta: dict[str, Any] = {}
    if isinstance(obj, nn.Module):  # a whole pickled model (only with allow_pickle)
        obj = obj.state_dict()
    if isinstance(obj, Mapping) and not _is_state_dict(obj):
        meta = dict(obj.get("meta") or {})
        for key in ("best_prec1", "acc", "accuracy"):  # accuracy as other trainers store it
            if key in obj and "checkpoint_accuracy" not in meta:
                meta["checkpoint_accuracy"] = float(obj[key])
        inner = next((obj[k] for k in _WRAPPER_KEYS if k in obj), None)
        if isinstance(inner, nn.Module):
            inner = inner.state_dict()
        if inner is None or not _is_state_dict(inner):
            raise LandscapeError(
                f"checkpoint {str(path)!r} has no state_dict: found keys {sorted(map(str, obj))[:8]}; "
                f"expected a state_dict or a dict with one of {_WRAPPER_KEYS}"
            )
        obj = inner
    if not isinstance(obj, Mapping) or not _is_state_dict(obj):
        raise LandscapeError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state_dict")
    return {_strip(k): v for k, v in obj.items()}, meta


def _is_state_dict(d: Mapping) -> bool:
    return len(d) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def infer_io(state: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(num_classes, in_channels) guessed from the first conv and the last linear weight."""
    convs = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 4]
    linears = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    in_channels = int(convs[0].shape[1]) if convs else 3
    num_classes = int(linears[-1].shape[0]) if linears else 10
    return num_classes, in_channels


def _signature(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _compare(expected: dict[str, tuple[int, ...]], state: Mapping[str, torch.Tensor]):
    """(missing, unexpected, shape mismatches) of a state_dict against a model's signature."""
    missing = [k for k in expected if k not in state and not k.endswith(_OPTIONAL_KEYS)]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {expected[k]}" for k in expected
              if k in state and tuple(state[k].shape) != expected[k]]
    return missing, unexpected, shapes


def _meta_model(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    with torch.device("meta"):
        return get_model(arch, num_classes=num_classes, in_channels=in_channels)


def match_architectures(state: Mapping[str, torch.Tensor], num_classes: int, in_channels: int,
                        names: list[str] | None = None) -> list[str]:
    """Registered architectures whose keys and shapes equal the state_dict's exactly."""
    hits = []
    for name in names if names is not None else list_models():
        if not any(_compare(_signature(_meta_model(name, num_classes, in_channels)), state)):
            hits.append(name)
    return hits


def _closest(state: Mapping[str, torch.Tensor], num_classes: int, in_channels: int, k: int = 3) -> list[str]:
    have = {(key, tuple(v.shape)) for key, v in state.items()}
    scores = []
    for name in list_models():
        sig = set(_signature(_meta_model(name, num_classes, in_channels)).items())
        scores.append((len(have & sig) / max(1, len(have | sig)), name))
    return [n for _, n in sorted(scores, key=lambda t: (-t[0], t[1]))[:k]]  # ties: alphabetical


def _preview(keys: list[str], n: int = 4) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _describe(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_preview(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches: {_preview(shapes, 2)}")
    return "; ".join(parts)


def build_model(ckpt: Checkpoint, arch: str | None = None, num_classes: int | None = None,
                in_channels: int | None = None) -> tuple[nn.Module, str, list[str]]:
    """Rebuild the checkpoint's model on the CPU with its weights loaded, in eval mode.

    The architecture comes from `arch`, else the checkpoint's metadata, else the one
    registered architecture whose keys and shapes match. Returns (model, arch, notes),
    where notes are one-line remarks for the user (e.g. which architecture was detected).
    """
    state = ckpt.state_dict
    guess_classes, guess_in = infer_io(state)
    num_classes = num_classes or ckpt.meta.get("num_classes") or guess_classes
    in_channels = in_channels or ckpt.meta.get("in_channels") or guess_in
    arch = arch or ckpt.meta.get("arch")
    where = str(ckpt.path) if ckpt.path else "checkpoint"
    notes: list[str] = []
    if arch is None:
        hits = match_architectures(state, num_classes, in_channels)
        if len(hits) == 1:
            arch = hits[0]
            notes.append(f"checkpoint has no architecture metadata; its keys and shapes match {arch}")
        elif hits:
            raise LandscapeError(
                f"{where} matches several architectures ({', '.join(hits)}); pass --model NAME to choose"
            )
        else:
            closest = _closest(state, num_classes, in_channels)
            diff = _describe(*_compare(_signature(_meta_model(closest[0], num_classes, in_channels)), state))
            raise LandscapeError(
                f"{where} matches no registered architecture; the closest, {closest[0]}, differs by {diff} "
                f"(closest: {', '.join(closest)}); fix the file's keys or pass --model NAME"
            )
    model = get_model(arch, num_classes=num_classes, in_channels=in_channels)
    missing, unexpected, shapes = _compare(_signature(model), state)
    if missing or unexpected or shapes:
        # The same family with another shortcut type (e.g. the reference code's projection
        # shortcuts for resnet56) is a different layout of the same network: accept it, and say so.
        family = [n for n in list_models() if n != arch and n.startswith(arch + "_")]
        variants = match_architectures(state, num_classes, in_channels, family)
        if len(variants) == 1:
            notes.append(f"checkpoint keys match {variants[0]}, not {arch}; using {variants[0]}")
            arch = variants[0]
            model = get_model(arch, num_classes=num_classes, in_channels=in_channels)
        else:
            raise LandscapeError(
                f"{where} does not fit {arch} (num_classes={num_classes}, in_channels={in_channels}): "
                + _describe(missing, unexpected, shapes)
                + f"; closest architectures: {', '.join(_closest(state, num_classes, in_channels))}"
            )
    model.load_state_dict(state, strict=False)  # only optional keys can be absent here
    return model.eval(), arch, notes


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: Mapping[str, Any]) -> str:
    """Save an fp32 state_dict with metadata atomically; returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"format": FORMAT, "state_dict": state, "meta": dict(meta)}, tmp)
    os.replace(tmp, path)
    return sha256_file(path)
