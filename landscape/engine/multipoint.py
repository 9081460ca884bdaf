"""Several grid points per launch: K points of the surface evaluated in one forward pass per batch.

The model's moving tensors are stacked along a new leading dimension, one slice per point, and
the model runs under `torch.func.vmap` over that dimension (`torch.func.functional_call`): a
convolution whose weight is batched and whose input is not becomes one convolution with K times
the output channels, and the ones after it grouped convolutions with K groups. Each point's
values are those of the one-point loop up to float rounding (the tests check it).

This is the speed issue's "several grid points per launch" lever, for where one point does not
fill the device (a small data set on a GPU). It is opt-in (`--points-per-launch K`) until
`scripts/benchmark.py` (modes `*-vmapK`) shows a win: on the CPU the grouped convolutions made it
slower than the one-point loop (BENCHMARKS.md); on a GPU `scripts/gpu_check.sh` measures it.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
import torch.nn as nn

from landscape.errors import LandscapeError
from landscape.engine.evaluate import (CudnnBenchmark, Evaluator, LossFn, Measures, PointSetter, _unwrapped, batch_sums,
                                cross_entropy, cudnn_benchmark_mode, eval_mode, retry_halving_batch)

_NO_BATCHING_RULE = "There is a performance drop because we have not yet implemented the batching rule"


def moving_names(model: nn.Module, setter: PointSetter) -> list[str]:
    """The model's names of the tensors `setter` moves (matched by storage)."""
    by_storage = {t.data_ptr(): name for name, t in _unwrapped(model).state_dict(keep_vars=True).items()}
    missing = sum(t.data_ptr() not in by_storage for t in setter.live)
    if missing:
        raise LandscapeError(f"{missing} tensors the setter moves are not tensors of the evaluated model; "
                             "K points per launch needs the model the setter moves (no bf16 copy)")
    return [by_storage[t.data_ptr()] for t in setter.live]


def stacked(setter: PointSetter, names: Sequence[str], points: Sequence[Sequence[float]]) -> dict[str, torch.Tensor]:
    """The moving tensors at each point, stacked: name -> (K, *shape); each computed as the setter
    computes one point (theta0, then + c_i d_i for each nonzero c_i, in its dtype)."""
    out = {}
    for j, name in enumerate(names):
        rows = []
        for c in points:
            t = setter.theta0[j].clone()
            for ci, d in zip(c, setter.dirs):
                if ci != 0:
                    t.add_(d[j], alpha=float(ci))
            rows.append(t)
        out[name] = torch.stack(rows)
    return out


def vmapped(model: nn.Module):
    """f(params, x) -> the outputs of `model` at K points for one input batch x: `params` maps the
    moving tensors' names to (K, *shape) stacks; the outputs have a leading K dimension."""
    inner = _unwrapped(model)
    return torch.func.vmap(lambda params, xb: torch.func.functional_call(inner, params, (xb,)), in_dims=(0, None))


def vmapped_outputs(model: nn.Module, setter: PointSetter, points: Sequence[Sequence[float]], x: torch.Tensor) -> list:
    """The model's output at each of `points` for the input batch `x`, all in one vmapped pass (as
    `MultiPointEvaluator` computes them); the model's own tensors are not touched."""
    params = stacked(setter, moving_names(model, setter), points)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_BATCHING_RULE)
        out = vmapped(model)(params, x)
    return [at_point(out, k) for k in range(len(points))]


def at_point(out: Any, k: int) -> Any:
    """Point k's share of a vmapped output (each tensor's index k along the leading dimension, also
    inside tuples, lists and dicts)."""
    return torch.utils._pytree.tree_map(lambda t: t[k] if isinstance(t, torch.Tensor) else t, out)


class MultiPointEvaluator(Evaluator):
    """An `Evaluator` whose `block(setter, points)` evaluates `points_per_pass` points per pass over
    the data, all of them in each forward pass (vmap over their stacked weights). Called without
    points it evaluates the model's current weights, as an `Evaluator` does.

    `model` must be the model the setter moves, run in float32 storage (for instance a folded copy
    from `prepare_engine` with `fuse=False`: the fused oneDNN calls have no vmap rule; bf16/fp16
    by autocast, `precision`). The batch size, when not given, is the one-point default, on the
    CPU divided by K (the K points' activations share the cache that rule sizes a batch for)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: Any, loss_fn: LossFn = cross_entropy,
                 batch_size: int | None = None, precision: str = "fp32", metrics: Measures | None = None,
                 points_per_pass: int = 4):
        if points_per_pass < 1:
            raise LandscapeError(f"points_per_launch must be >= 1, got {points_per_pass}", "points_per_launch")
        super().__init__(model, x, y, loss_fn, batch_size, precision, metrics)
        if batch_size is None and x.device.type == "cpu":
            self.batch_size = max(1, self.batch_size // points_per_pass)
        self.points_per_pass = points_per_pass
        # a point's values depend (in the last bits) on the points launched with it: the sweep gives
        # this measure fixed groups of points (surface._passes), so resumed runs are bit for bit
        self.aligned = True
        self._inner = _unwrapped(model)
        self._benchmark = isinstance(model, CudnnBenchmark)  # keep its mode around the vmapped passes
        self._run = vmapped(model)

    @torch.no_grad()
    def block_sums(self, setter: PointSetter, points: Sequence[Sequence[float]]) -> torch.Tensor:
        """(K, len(metric_names), 2) float64 on the data's device: per point, the sums and sums of
        squares of the per-sample values (as `Evaluator.sums`), all K points in each forward pass;
        in passes of `points_per_pass` points. The model's own tensors are not touched."""
        names = moving_names(self._inner, setter)
        k_all, n = len(points), len(self.x)
        total = torch.zeros(k_all, len(self._fns), 2, dtype=torch.float64, device=self.x.device)
        self._inner.eval()
        benchmark = self._benchmark or torch.backends.cudnn.benchmark
        with eval_mode(self.x.device, self.precision), cudnn_benchmark_mode(benchmark), warnings.catch_warnings():
            # torch has no batching rule for the in-place view adaptive pooling takes in channels_last
            # and loops over the K points there; the pooling is a sliver of the work
            warnings.filterwarnings("ignore", message=_NO_BATCHING_RULE)
            for p0 in range(0, k_all, self.points_per_pass):
                chunk = points[p0:p0 + self.points_per_pass]
                params = stacked(setter, names, chunk)
                for i in range(0, n, self.batch_size):
                    j = min(i + self.batch_size, n)
                    out = self._run(params, self.x[i:j])  # (K, batch, ...)
                    for k in range(len(chunk)):
                        total[p0 + k] += batch_sums(at_point(out, k), self.y[i:j], j - i, self._fns, self.metric_names,
                                                    self.batch_means)
        return total

    def block(self, setter: PointSetter, points: Sequence[Sequence[float]]) -> list[list[float]]:
        """The mean of each of `metric_names` at each of `points` (one host sync); on a CUDA
        out-of-memory error the batch size is halved and the block evaluated again."""
        if not len(points):
            return []
        sums = retry_halving_batch(self, lambda: self.block_sums(setter, points))
        return (sums[:, :, 0] / len(self.x)).tolist()
