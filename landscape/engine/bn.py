"""BatchNorm statistics re-estimated at every point of a surface (`--bn-recompute`).

Moving the weights of a BN network leaves its running statistics at the values of the
center; far from it they no longer describe the activations, and the eval-mode loss mixes
the landscape with that mismatch. With re-estimation, every point gets the statistics its
own weights produce on training data: running statistics reset, forward passes in train
mode with `momentum=None` (PyTorch's cumulative average: the running mean is the average of
the batch means, the running variance the average of the unbiased batch variances), no
gradients; then the point is evaluated in eval mode as usual. This is what
`torch.optim.swa_utils.update_bn` does, per point.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from landscape.errors import LandscapeError


def bn_modules(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers (1-D, 2-D, 3-D, sync) that keep running statistics, in module order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def bn_batches(n: int, batch_size: int) -> int:
    """How many nearly equal batches `n` samples are split into (sizes differ by at most one)."""
    if batch_size < 2:
        raise LandscapeError(f"BatchNorm re-estimation needs batches of at least 2 samples, got {batch_size}")
    if n < 2:
        raise LandscapeError(f"BatchNorm re-estimation needs at least 2 training samples, got {n}")
    return math.ceil(n / batch_size)


@torch.no_grad()
def recompute_bn_(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> None:
    """Reset every BN layer's running statistics and re-estimate them from `x`, in place.

    `x` (N, ...) is split into ceil(N / batch_size) nearly equal batches, so no batch is a lone
    sample; each is passed forward in train mode with momentum None. The modules' train/eval
    flags and momenta are restored afterwards.
    """
    bns = bn_modules(model)
    if not bns:
        return
    chunks = torch.tensor_split(x, bn_batches(len(x), batch_size))
    momenta = [m.momentum for m in bns]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for xb in chunks:
            model(xb)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        for m, training in modes:
            m.training = training


class BNRecomputeSetter:
    """A point setter that re-estimates BN statistics after every move; `restore` brings back the originals.

    Wraps a `landscape.engine.evaluate.PointSetter` (anything with `dirs`, `set`, `restore`) over the
    tensors of `model`, the module the evaluators run (not a BN-folded copy: folding bakes the
    statistics into the weights). `compute_surface` calls `set` once per point, so the
    statistics are re-estimated once per point whatever the number of splits evaluated.
    """

    def __init__(self, setter, model: nn.Module, x: torch.Tensor, batch_size: int = 512):
        self.setter = setter
        self.model = model
        self.x = x
        self.batch_size = batch_size
        bn_batches(len(x), batch_size)  # fail now on unusable sizes, not at the first point
        self.bns = bn_modules(model)
        if not self.bns:
            raise LandscapeError("bn_data (re-estimating BatchNorm statistics) needs a model with BatchNorm layers "
                                 "that keep running statistics, and this one has none; drop it", "bn_data")
        self.saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in self.bns]

    @property
    def dirs(self) -> list[list[torch.Tensor]]:
        return self.setter.dirs

    def set(self, coords: Sequence[float]) -> None:
        """Move to the point, then re-estimate the BN statistics there."""
        self.setter.set(coords)
        recompute_bn_(self.model, self.x, self.batch_size)

    @torch.no_grad()
    def restore(self) -> None:
        """The center's weights and the checkpoint's own BN statistics, bit for bit."""
        self.setter.restore()
        for m, (mean, var, count) in zip(self.bns, self.saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
