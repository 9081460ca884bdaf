"""Data that does not stay on the device: one pass over a DataLoader per block of grid points.

The reference code reads the whole data set once per grid point. Here the loops are swapped:
each batch is read (and moved to the device) once per block of K points, and the model is
moved to each of the K points in turn on that batch, with one float64 accumulator per point.
A point's sums depend only on its coordinates and on the batches, not on the other points of
its block, so any K (and any number of ranks) gives the same values bit for bit.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, RandomSampler

from landscape.config import DEFAULT_POINTS_PER_PASS
from landscape.errors import LandscapeError
from landscape.engine.evaluate import (PRECISIONS, LossFn, PointSetter, batch_sums, check_metrics, cross_entropy, eval_mode,
                                input_layout, map_tensors)



def split_batch(batch: Any) -> tuple[Any, Any]:
    """(inputs, targets) of a batch `(inputs, targets)` or `(inputs, t1, t2, ...)` (targets a tuple)."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], (batch[1] if len(batch) == 2 else tuple(batch[1:]))
    raise LandscapeError(f"a batch must be a pair (inputs, targets), got {type(batch).__name__}"
                         + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                         + "; make the data yield (inputs, targets)")


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors (also inside tuples, lists and dicts) moved to `device`, asynchronously from pinned memory."""
    return map_tensors(lambda t: t.to(device, non_blocking=True), obj)


def forward(model: nn.Module, inputs: Any) -> Any:
    """The model on a batch's inputs: model(x), model(*inputs) for a tuple or list, model(**inputs) for a dict."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def batch_len(inputs: Any, targets: Any) -> int:
    """Samples in a batch: the length of its first tensor along dimension 0."""
    for obj in (inputs, targets):
        if isinstance(obj, torch.Tensor) and obj.dim() > 0:
            return len(obj)
        if isinstance(obj, (tuple, list, Mapping)):
            for o in (obj.values() if isinstance(obj, Mapping) else obj):
                if isinstance(o, torch.Tensor) and o.dim() > 0:
                    return len(o)
    raise LandscapeError("cannot tell how many samples a batch holds: neither its inputs nor its targets are tensors")


def check_deterministic(data: Iterable) -> None:
    """Refuse data that changes between passes: a shuffling DataLoader or a one-shot iterator."""
    if isinstance(data, DataLoader):
        sampler = data.batch_sampler.sampler if data.batch_sampler is not None else data.sampler
        if isinstance(sampler, RandomSampler):
            raise LandscapeError("the DataLoader shuffles (shuffle=True): every grid point must see the same samples; "
                                 "build it with shuffle=False (the surface does not depend on the order)")
    elif iter(data) is data:
        raise LandscapeError(f"data is an iterator ({type(data).__name__}), which can be read only once, but it is "
                             "read once per block of grid points; pass a list of batches, a Dataset or a DataLoader")


class StreamEvaluator:
    """Mean loss and metrics over data read in batches from an iterable (typically a DataLoader).

    A batch is (inputs, targets); inputs may be a tensor, a tuple (model(*inputs)) or a dict
    (model(**inputs), e.g. input ids and an attention mask).

    A measure for `surface.compute_surface`: `block(setter, points)` evaluates up to
    `points_per_pass` points in one pass over the data; calling it evaluates the current weights.
    """

    def __init__(self, model: nn.Module, data: Iterable, loss_fn: LossFn = cross_entropy,
                 metrics: Mapping[str, LossFn] | None = None, device: torch.device | str = "cpu",
                 precision: str = "fp32", points_per_pass: int = DEFAULT_POINTS_PER_PASS, channels_last: bool = False):
        if precision not in PRECISIONS:
            raise LandscapeError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", "precision")
        if points_per_pass < 1:
            raise LandscapeError(f"points_per_pass must be >= 1, got {points_per_pass}", "points_per_pass")
        check_deterministic(data)
        self.model, self.data, self.loss_fn = model, data, loss_fn
        self.metrics = check_metrics(metrics)
        self.metric_names = ("loss", *self.metrics)
        self._fns = [loss_fn, *self.metrics.values()]
        self.batch_means: set[str] = set()  # metrics whose callable gave batch means: no per-sample SE
        self.device = torch.device(device)
        self.precision = precision
        self.channels_last = channels_last  # 4-D input tensors in that memory order (see evaluate.use_channels_last)
        self.points_per_pass = points_per_pass
        self.n_samples: int | None = None  # known after the first pass

    def __len__(self) -> int:
        if self.n_samples is None:
            raise TypeError("the sample count is known after the first pass")
        return self.n_samples

    def _prepare(self, batch: Any) -> tuple[Any, Any, int]:
        """A batch on the device, its input in the engine's memory order: (inputs, targets, size)."""
        inputs, targets = split_batch(batch)
        inputs, targets = to_device(inputs, self.device), to_device(targets, self.device)
        if isinstance(inputs, torch.Tensor):
            inputs = input_layout(inputs, self.channels_last)
        return inputs, targets, batch_len(inputs, targets)

    def block_sums(self, setter: PointSetter | None, points: Sequence[Sequence[float]]) -> tuple[torch.Tensor, int]:
        """One pass over the data for every point: float64 sums (len(points), len(metric_names), 2)
        as in `Evaluator.sums`, and the sample count. `setter=None`: the current weights (one point).

        With one point the weights are written once; with several, before each point's forward
        pass on every batch. The model is left at the last point.
        """
        k = len(points) if setter is not None else 1
        total = torch.zeros(k, len(self._fns), 2, dtype=torch.float64, device=self.device)  # (K, metrics, 2)
        n = 0
        self.model.eval()
        if setter is not None and k == 1:
            setter.set(points[0])
        for batch in self.data:
            inputs, targets, nb = self._prepare(batch)
            with eval_mode(self.device, self.precision):
                for i in range(k):
                    if k > 1:
                        setter.set(points[i])
                    total[i] += batch_sums(forward(self.model, inputs), targets, nb, self._fns, self.metric_names,
                                           self.batch_means)
            n += nb
        if n == 0:
            raise LandscapeError("the data yielded no samples; check the Dataset or DataLoader")
        if self.n_samples is not None and n != self.n_samples:
            raise LandscapeError(f"the data yielded {n} samples in this pass but {self.n_samples} before; "
                                 "it must give the same samples on every pass")
        self.n_samples = n
        return total, n

    def each_batch(self, setter: PointSetter, points: Sequence[Sequence[float]],
                   take: Callable[[int, int, torch.Tensor], None], active: Callable[[int], bool]) -> None:
        """One pass over the data for the points that are `active`: on each batch, for each active
        point k, move there and pass `take(k, start, sums)` the batch's (len(metric_names), 2) float64
        sums (as `Evaluator.sums`), `start` the batch's first sample. The pass ends early once no
        point is active. (Adaptive sampling over streamed data: `sampling.StreamSampledMeasure`.)"""
        self.model.eval()
        pos, moved = 0, None
        for batch in self.data:
            ks = [k for k in range(len(points)) if active(k)]
            if not ks:
                break
            inputs, targets, nb = self._prepare(batch)
            with eval_mode(self.device, self.precision):
                for k in ks:
                    if moved != k:
                        setter.set(points[k])
                        moved = k
                    take(k, pos, batch_sums(forward(self.model, inputs), targets, nb, self._fns, self.metric_names,
                                            self.batch_means))
            pos += nb

    def block(self, setter: PointSetter, points: Sequence[Sequence[float]]) -> list[list[float]]:
        """The means of `metric_names` at each point, from one pass over the data."""
        total, n = self.block_sums(setter, points)
        return (total.select(2, 0) / n).tolist()

    def __call__(self) -> tuple[float, ...]:
        """The means of `metric_names` at the model's current weights (one pass)."""
        return tuple(self.block(None, [()])[0])
