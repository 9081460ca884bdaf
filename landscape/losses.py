"""Losses for the surface: callables (model output, targets) -> per-sample values, or a mean.

A batch is `(inputs, targets)`: the model sees `inputs`, a loss or metric sees the model's
output and `targets` (whatever the batch holds after the inputs: a tensor, a tuple, a dict).
Return one value per sample, shape (N,) or (N, ...) (trailing dimensions, e.g. tokens, are
averaged per sample), so that the surface can also give standard errors; a 0-dim tensor is
taken as the batch mean and weighted by the batch size.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from landscape.errors import LandscapeError

LossFn = Callable[[Any, Any], torch.Tensor]  # (output, targets) -> per-sample values (N, ...) or a mean ()


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of class scores (N, C, ...) against class indices (N, ...)."""
    return F.cross_entropy(output.float(), target, reduction="none")


def softmax_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error of softmax(scores) against one-hot labels (the reference's `mse`)."""
    p = F.softmax(output.float(), dim=1)
    onehot = F.one_hot(target, p.shape[1]).to(p.dtype)
    return (p - onehot).pow(2).mean(dim=1)


def squared_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample squared error of regression outputs, averaged over trailing dimensions (MSE per sample)."""
    out = output.float()
    target = target.to(out.dtype).reshape(out.shape)
    return (out - target).pow(2).reshape(len(out), -1).mean(dim=1)


def per_sample(values: Any, n: int, name: str = "loss") -> tuple[torch.Tensor, bool]:
    """The one loss convention of surfaces and curvature: a callable's values for a batch of `n`
    samples as (n,) per-sample values, and whether they came as a batch mean.

    Values of shape (n, ...) are averaged over the trailing dimensions (tokens, pixels) to one
    per sample; a 0-dim value is the batch's mean and stands for n samples of that value, so a
    mean over batches of different sizes weights each by its size. Differentiable; per-sample
    values keep their dtype, averages over trailing dimensions are taken in float64 (integers and
    booleans become float64).
    """
    v = values if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=torch.float64)
    if not v.is_floating_point():
        v = v.double()
    if v.dim() == 0:
        return v.expand(n), True
    if v.shape[0] != n:
        raise LandscapeError(f"{name} gave values of shape {tuple(v.shape)} for a batch of {n} samples; "
                             f"return one value per sample, shape ({n}, ...), or a 0-dim mean")
    return (v.double().reshape(n, -1).mean(dim=1) if v.dim() > 1 else v), False


# the names --loss accepts on the command line
LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": softmax_mse}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise LandscapeError(f"loss must be one of {', '.join(LOSSES)}, got {name!r}", "loss")
    return LOSSES[name]
