"""Several grid points per launch: K points of the surface evaluated in one forward pass per batch.

The model's moving tensors are stacked along a new leading dimension, one slice per point, and
the model runs under `torch.func.vmap` over that dimension (`torch.func.functional_call`): a
convolution whose weight is batched and whose input is not becomes one convolution with K times
the output channels, and the ones after it grouped convolutions with K groups. Each point's
values are those of the one-point loop up to float rounding (the tests check it).

This is the speed issue's "several grid points per launch" lever, kept out of the surface loop
until `scripts/benchmark.py` (modes `*-vmapK`) shows a win: on this CPU grouped convolutions are
slower than K plain ones; on a GPU it is measured by `scripts/gpu_check.sh`.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.evaluate import PointSetter, _unwrapped, default_batch_size, eval_mode


class MultiPointEvaluator:
    """Loss and accuracy (cross-entropy, top-1) at K points per pass over resident data (x, y).

    `model` is the evaluation model (for instance a folded copy from `prepare_engine` with
    `fuse=False`: the fused oneDNN calls have no vmap rule) and `setter` the PointSetter that
    moves it; its moving tensors are found in the model by storage. `precision` as in
    `Evaluator` (bf16/fp16 by autocast)."""

    def __init__(self, model: nn.Module, setter: PointSetter, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int | None = None, precision: str = "fp32"):
        self.model = _unwrapped(model)
        by_storage = {t.data_ptr(): name for name, t in self.model.state_dict(keep_vars=True).items()}
        missing = [i for i, t in enumerate(setter.live) if t.data_ptr() not in by_storage]
        if missing:
            raise ValueError(f"{len(missing)} moving tensors of the setter are not tensors of the model")
        self.names = [by_storage[t.data_ptr()] for t in setter.live]
        self.setter, self.x, self.y, self.precision = setter, x, y, precision
        self.batch_size = batch_size  # None: per call, see `_batch`

        def one(params, xb):
            return torch.func.functional_call(self.model, params, (xb,))

        self._run = torch.func.vmap(one, in_dims=(0, None))

    def stacked(self, coords: Sequence[Sequence[float]]) -> dict[str, torch.Tensor]:
        """The moving tensors at each of the K points, stacked: name -> (K, *shape); computed as
        the setter computes one point (theta0, then + c_i d_i for each nonzero c_i, in float32)."""
        out = {}
        for j, name in enumerate(self.names):
            rows = []
            for c in coords:
                t = self.setter.theta0[j].clone()
                for ci, d in zip(c, self.setter.dirs):
                    if ci != 0:
                        t.add_(d[j], alpha=float(ci))
                rows.append(t)
            out[name] = torch.stack(rows)
        return out

    def _batch(self, k: int) -> int:
        """The batch size given, else the one-point default; on the CPU divided by K (the K
        points' activations share the cache the rule sizes a batch for)."""
        if self.batch_size is not None:
            return self.batch_size
        b = default_batch_size(self.model, self.x, self.precision)
        return max(1, b // k) if self.x.device.type == "cpu" else b

    @torch.no_grad()
    def __call__(self, coords: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
        """(loss, accuracy) at each point of `coords`, all K in one pass per batch."""
        if not coords:
            return []
        params = self.stacked(coords)
        k, n = len(coords), len(self.x)
        bs = self._batch(k)
        total = torch.zeros(k, 2, dtype=torch.float64, device=self.x.device)
        self.model.eval()
        with eval_mode(self.x.device, self.precision):
            for i in range(0, n, bs):
                xb, yb = self.x[i:i + bs], self.y[i:i + bs]
                out = self._run(params, xb).float()  # (K, B, classes)
                loss = F.cross_entropy(out.flatten(0, 1), yb.repeat(k), reduction="none").view(k, -1)
                hits = (out.argmax(-1) == yb).to(torch.float64)
                total[:, 0] += loss.double().sum(1)
                total[:, 1] += hits.sum(1)
        return [(float(a), float(b)) for a, b in (total / n).tolist()]
