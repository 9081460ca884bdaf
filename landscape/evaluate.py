"""The hot loop: move the weights to a point, then loss and accuracy over a resident data set.

Nothing here knows about files. A point is written into the model's tensors in place as
theta0 + sum_i c_i * d_i with fused `torch._foreach_*` ops; the data set lives on the
device as one normalized tensor; sums stay on the device until the point ends.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.errors import LandscapeError
from landscape.fold import fold_batchnorm

# precision -> autocast dtype (None: no autocast). tf32 is fp32 storage with TF32 tensor-core
# matmuls and convolutions on CUDA (about 1e-3 relative error), plain fp32 elsewhere.
PRECISIONS = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@contextlib.contextmanager
def tf32_mode(device: torch.device, allow: bool):
    """Inside the block, CUDA matmuls and cuDNN convolutions use TF32 exactly when `allow`
    (cuDNN allows it by default); the previous settings come back afterwards. No-op off CUDA."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=allow):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old

# The fastest CPU batch depends on the model and on the machine's load (BENCHMARKS.md:
# scripts/benchmark.py --batch-size B); 512 is a middle choice, --batch-size overrides it.
DEFAULT_BATCH = 512
DEFAULT_BATCH_CUDA = 8192  # halved on out-of-memory until it fits

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> per-sample losses (N,)


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy of class scores (N, C) against labels (N,)."""
    return F.cross_entropy(output.float(), target, reduction="none")


def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error of softmax(scores) against one-hot labels (the reference's MSE)."""
    p = F.softmax(output.float(), dim=1)
    onehot = F.one_hot(target, p.shape[1]).to(p.dtype)
    return (p - onehot).pow(2).mean(dim=1)


LOSSES: dict[str, LossFn] = {"cross_entropy": cross_entropy, "mse": mse}


def get_loss(name: str) -> LossFn:
    if name not in LOSSES:
        raise LandscapeError(f"--loss_name must be one of {', '.join(LOSSES)}, got {name!r}")
    return LOSSES[name]


class PointSetter:
    """Writes theta0 + sum_i c_i * d_i into a model's tensors in place, and restores theta0.

    Tensors whose direction is zero along every axis (biases and BN with ignore=biasbn,
    integer buffers) are left alone: theta0 + 0 is theta0, so skipping them is exact.
    """

    def __init__(self, tensors: Sequence[torch.Tensor], directions: Sequence[Sequence[torch.Tensor]]):
        keep = [i for i, t in enumerate(tensors)
                if t.is_floating_point() and any(bool(d[i].any()) for d in directions)]
        self.live = [tensors[i] for i in keep]  # share storage with the model
        self.theta0 = [t.clone() for t in self.live]
        self.dirs = [[d[i].to(device=tensors[i].device, dtype=tensors[i].dtype) for i in keep]
                     for d in directions]

    @torch.no_grad()
    def set(self, coords: Sequence[float]) -> None:
        """Move to the point with coefficients `coords` (one per direction)."""
        if len(coords) != len(self.dirs):
            raise ValueError(f"expected {len(self.dirs)} coordinates, got {len(coords)}")
        if not self.live:
            return
        torch._foreach_copy_(self.live, self.theta0)
        for c, d in zip(coords, self.dirs):
            if c != 0:
                torch._foreach_add_(self.live, d, alpha=float(c))

    @torch.no_grad()
    def restore(self) -> None:
        """Write theta0 back, bit for bit."""
        if self.live:
            torch._foreach_copy_(self.live, self.theta0)


class Evaluator:
    """Mean loss and accuracy of a model over one resident, normalized data set."""

    metric_names = ("loss", "acc")  # what __call__ returns, in order

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn = cross_entropy,
                 batch_size: int | None = None, precision: str = "fp32"):
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if len(x) == 0:
            raise LandscapeError("the evaluation set is empty; check --n-samples and the data set")
        self.model = model
        self.x, self.y = x, y
        self.loss_fn = loss_fn
        self.batch_size = batch_size or min(len(x), DEFAULT_BATCH if x.device.type == "cpu" else DEFAULT_BATCH_CUDA)
        if self.batch_size < 1:
            raise LandscapeError(f"--batch-size must be >= 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise LandscapeError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision

    def __len__(self) -> int:
        return len(self.y)

    def __call__(self) -> tuple[float, float]:
        """(mean loss, accuracy as a fraction) at the model's current weights; one host sync.

        On a CUDA out-of-memory error the batch size is halved and the point evaluated again.
        """
        while True:
            try:
                return self._evaluate()
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                torch.cuda.empty_cache()

    def _evaluate(self) -> tuple[float, float]:
        loss_sum, correct = self.sums().select(1, 0).tolist()
        n = len(self.x)
        return loss_sum / n, correct / n

    def sums(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Per-sample sums over the samples [start, stop) at the current weights, without a host sync.

        A float64 tensor of shape (len(metric_names), 2) on the data's device: row i holds the sum
        and the sum of squares of metric i's per-sample values (the loss; 1.0 or 0.0 for accuracy),
        enough for a mean and its standard error over any union of disjoint ranges.
        """
        stop = len(self.x) if stop is None else stop
        if not 0 <= start <= stop <= len(self.x):
            raise ValueError(f"sample range [{start}, {stop}) is outside [0, {len(self.x)})")
        self.model.eval()
        dev = self.x.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        loss_sq = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        dtype = PRECISIONS[self.precision]
        autocast = (torch.autocast(dev.type, dtype=dtype) if dtype is not None else contextlib.nullcontext())
        with torch.inference_mode(), autocast, tf32_mode(dev, self.precision == "tf32"):
            for i in range(start, stop, self.batch_size):
                j = min(i + self.batch_size, stop)
                xb, yb = self.x[i:j], self.y[i:j]
                out = self.model(xb)
                loss = self.loss_fn(out, yb)
                loss_sum += loss.sum(dtype=torch.float64)
                loss_sq += loss.double().square().sum()
                correct += (out.argmax(dim=1) == yb).sum()
            hits = correct.to(torch.float64)
            return torch.stack([torch.stack([loss_sum, loss_sq]), torch.stack([hits, hits])])


@dataclass(frozen=True)
class EngineOptions:
    """How the hot loop runs; none of these change the surface beyond float rounding, except precision."""

    precision: str = "fp32"  # fp32 | tf32 | bf16 | fp16 (autocast; the loss is always summed in fp64)
    fold_bn: bool = True  # fold BatchNorm into the preceding layer where that is exact
    compile: bool = False  # torch.compile the evaluation model (pays off from ~100 points)
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise LandscapeError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


def prepare_engine(model: nn.Module, names: Sequence[str], tensors: Sequence[torch.Tensor],
                   directions: Sequence[Sequence[torch.Tensor]], options: EngineOptions,
                   ) -> tuple[nn.Module, PointSetter, list[str]]:
    """The model to evaluate and the setter that moves it, per `options`.

    With `fold_bn`, a folded copy of the model is evaluated (the original stays untouched);
    when folding is not exact (BN tensors move) or not possible, the model itself is used.
    Returns (eval_model, setter, notes).
    """
    notes = []
    eval_model, setter = model, None
    if options.fold_bn:
        folded, why = fold_batchnorm(model, names, directions)
        if folded is not None:
            eval_model, setter = folded.model, PointSetter(folded.tensors, folded.directions)
            notes.append(f"folded {folded.n_folded} BatchNorm layers into the preceding layers")
        else:
            notes.append(f"BatchNorm not folded: {why}")
    if setter is None:
        setter = PointSetter(tensors, directions)
    if options.compile:
        eval_model = torch.compile(eval_model)
    return eval_model, setter, notes
