"""The hot loop: move the weights to a point, then the loss and metrics over a resident data set.

Nothing here knows about files. A point is written into the model's tensors in place as
theta0 + sum_i c_i * d_i with fused `torch._foreach_*` ops; the data set lives on the
device as one normalized tensor; sums stay on the device until the point ends.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import itertools
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn as nn

from landscape import losses as _losses
from landscape.errors import LandscapeError
from landscape.metrics import accuracy

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

# CPU batch size: the largest power of two whose biggest activation tensor holds at most
# CPU_ACTIVATION_BUDGET elements (4 MiB in fp32, a share of a server CPU's last-level cache), within
# [CPU_BATCH_MIN, CPU_BATCH_MAX]: 64 for 3x32x32 CIFAR ResNets (16x32x32 activations), 256 for
# 8x8 digits; a batch whose activations outgrow a few MiB ran slower. In bf16 small inputs take up
# to CPU_BATCH_MAX_BF16 (the batch sweeps: BENCHMARKS.md). An adaptive run's batch is also capped
# at n0 (a point grows in whole batches). batch_size overrides it.
CPU_ACTIVATION_BUDGET = 2 ** 20
CPU_BATCH_MIN, CPU_BATCH_MAX, CPU_BATCH_MAX_BF16 = 8, 256, 1024
DEFAULT_BATCH = 256  # when the model cannot be probed, and for streamed DataLoaders
DEFAULT_BATCH_CUDA = 8192  # halved on out-of-memory until it fits


# glibc mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2 ** 20


def keep_freed_memory() -> bool:
    """Ask glibc's allocator to keep freed memory for reuse (mmap threshold at its 32 MiB maximum,
    trimming off) for the rest of the process. By default it hands large freed blocks, such as
    a batch's activations, back to the kernel and faults them in again on the next batch (millions
    of minor page faults per surface; faster without them on small models: BENCHMARKS.md). The
    process keeps its peak heap instead of shrinking. Returns False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module behind torch.compile's wrapper and `CudnnBenchmark` (probing it must not trigger
    a compilation)."""
    while True:
        inner = model.inner if isinstance(model, CudnnBenchmark) else getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


@torch.no_grad()
def activation_elements(model: nn.Module, x: torch.Tensor) -> int | None:
    """The element count of the largest tensor a module of `model` outputs for one sample of `x`
    (a forward pass on x[:1] with hooks), or None when that forward fails."""
    model = _unwrapped(model)
    sizes = [x[:1].numel()]

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        model(x[:1])
    except Exception:  # noqa: BLE001 - the caller falls back to a fixed size; real errors surface later
        return None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return max(sizes)


def default_batch_size(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> int:
    """The batch size when none is given: on CUDA DEFAULT_BATCH_CUDA (halved on out-of-memory);
    on the CPU the cache rule above (see CPU_ACTIVATION_BUDGET). Never more than len(x)."""
    if x.device.type != "cpu":
        return max(1, min(len(x), DEFAULT_BATCH_CUDA))
    per_sample = activation_elements(model, x) if len(x) else None
    if per_sample is None:
        return max(1, min(len(x), DEFAULT_BATCH))
    b = CPU_BATCH_MAX_BF16 if precision == "bf16" else CPU_BATCH_MAX
    while b > CPU_BATCH_MIN and b * per_sample > CPU_ACTIVATION_BUDGET:
        b //= 2
    return max(1, min(len(x), b))


def use_channels_last(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether to run `model` on inputs like `x` in channels_last (NHWC) memory order, and if so
    convert its 4-D weights in place (values unchanged; call before taking the direction tensors,
    since this replaces their storage). Yes for 4-D inputs to a model with 2-D convolutions whose
    forward pass accepts that order (a .view() of a feature map may not); the caller converts the
    inputs with `input_layout`. Faster for the CPU ResNets (BENCHMARKS.md); on CUDA the tensor-core
    path."""
    if x.dim() != 4 or len(x) == 0 or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    model.to(memory_format=torch.channels_last)
    inner = _unwrapped(model)
    was_training = inner.training
    try:
        with torch.no_grad():
            inner.eval()(x[:1].contiguous(memory_format=torch.channels_last))
    except Exception:  # noqa: BLE001 - e.g. a .view() that needs contiguous features: keep NCHW
        model.to(memory_format=torch.contiguous_format)
        return False
    finally:
        inner.train(was_training)
    return True


def input_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """`x` in the memory order `use_channels_last` chose (a copy only when it changes)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x

# Losses live in landscape.losses (re-exported here: `mse` is the reference's softmax MSE).
LossFn = _losses.LossFn
cross_entropy = _losses.cross_entropy
mse = _losses.softmax_mse
LOSSES = _losses.LOSSES
get_loss = _losses.get_loss
Measures = Mapping[str, LossFn]  # metric name -> (output, targets) -> per-sample values or a mean


def check_metrics(metrics: Mapping[str, LossFn] | None) -> dict[str, LossFn]:
    """The metric callables by name (None: accuracy, as "acc"); names become file datasets."""
    metrics = {"acc": accuracy} if metrics is None else dict(metrics)
    for name, fn in metrics.items():
        if not isinstance(name, str) or not name or "/" in name or name == "loss":
            raise LandscapeError(f"metric names must be non-empty strings without '/' other than 'loss', got {name!r}")
        if not callable(fn):
            raise LandscapeError(f"metric {name!r} must be a callable (output, targets) -> values, "
                                 f"got {type(fn).__name__}")
    return metrics


def batch_sums(output: Any, target: Any, n: int, fns: Sequence[LossFn], names: Sequence[str],
               means: set[str] | None = None) -> torch.Tensor:
    """(len(fns), 2) float64: per function, the sum and the sum of squares of its per-sample values
    (`losses.per_sample`: trailing dimensions averaged per sample; a 0-dim batch mean counts as n
    samples of that value, its sum of squares then ignoring the spread inside the batch, and its
    name is added to `means`)."""
    rows = []
    for fn, name in zip(fns, names):
        v, is_mean = _losses.per_sample(fn(output, target), n, name)
        if is_mean:
            if means is not None:
                means.add(name)
            m = v[0].double()
            rows.append(torch.stack([m * n, m.square() * n]))
        else:
            rows.append(torch.stack([v.sum(dtype=torch.float64), v.double().square().sum()]))
    return torch.stack(rows)


def batch_values(output: Any, target: Any, n: int, fns: Sequence[LossFn], names: Sequence[str],
                 means: set[str] | None = None) -> torch.Tensor:
    """(len(fns), n) float64: per function, its per-sample values (`losses.per_sample`; a 0-dim
    batch mean repeated n times, its name added to `means`)."""
    rows = []
    for fn, name in zip(fns, names):
        v, is_mean = _losses.per_sample(fn(output, target), n, name)
        if is_mean and means is not None:
            means.add(name)
        rows.append(v.double())
    return torch.stack(rows)


@contextlib.contextmanager
def eval_mode(device: torch.device, precision: str):
    """inference_mode, the precision's autocast and TF32 setting, for one pass of evaluation."""
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.inference_mode(), autocast, tf32_mode(device, precision == "tf32"):
        yield


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


# Modules that may hold floating tensors in a model evaluated with its weights stored in bf16.
# Autocast runs convolutions and linear layers in bf16 and leaves their bf16 outputs to the
# elementwise ops, pooling and additions that follow, so on a model whose only tensor-holding
# layers are these (BatchNorm folded away), storing the weights in bf16 and running without
# autocast computes the same thing (bit for bit in eager mode), minus autocast's per-layer casts
# of the weights and inputs (faster: BENCHMARKS.md, "bf16 weights instead of autocast"). Models with
# normalization layers or anything else that holds tensors keep fp32 storage under autocast.
LOW_PRECISION_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _device_of(model: nn.Module) -> torch.device:
    t = next(itertools.chain(model.parameters(), model.buffers()), None)
    return t.device if t is not None else torch.device("cpu")


def stores_in_low_precision(model: nn.Module) -> bool:
    """Whether `model` can run with its weights stored in bf16 (see LOW_PRECISION_LAYERS): every
    module that holds floating parameters or buffers of its own is a convolution or linear layer."""
    for m in _unwrapped(model).modules():
        own = [*m.parameters(recurse=False), *m.buffers(recurse=False)]
        if any(t.is_floating_point() for t in own) and not isinstance(m, LOW_PRECISION_LAYERS):
            return False
    return True


class LowPrecisionModel(nn.Module):
    """A copy of `model` with its floating tensors stored in `dtype`, run without autocast: floating
    input tensors are cast to `dtype` on the way in, output tensors in `dtype` back to float32 on
    the way out (losses and metrics see float32, as under autocast), inside tuples, lists and
    dicts too. `inner` holds the copy; a `CastPointSetter` keeps its weights equal to the rounded
    float32 ones."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = copy.deepcopy(_unwrapped(model)).to(dtype)  # keeps the channels_last strides
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        low, full = self.dtype, torch.float32
        args, kwargs = map_tensors(lambda t: t.to(low) if t.is_floating_point() else t, (args, kwargs))
        with torch.autocast(_device_of(self.inner).type, enabled=False):
            out = self.inner(*args, **kwargs)
        return map_tensors(lambda t: t.to(full) if t.dtype == low else t, out)


class CudnnBenchmark(nn.Module):
    """`inner` run with cuDNN's benchmark mode on (`torch.backends.cudnn.benchmark`): at the first
    call with a new input shape cuDNN times its convolution algorithms and keeps the fastest, which
    pays when, as over a surface, the same batch shape comes back thousands of times. The process's
    setting is restored after each call. Which algorithm wins can differ between processes, so
    values may then differ in the last bits between runs and ranks (bf16: ~1e-3 relative)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        with cudnn_benchmark_mode():
            return self.inner(*args, **kwargs)


@contextlib.contextmanager
def cudnn_benchmark_mode(on: bool = True):
    """Inside the block, torch.backends.cudnn.benchmark is `on`; the process's setting comes back
    afterwards (also after an exception)."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def map_tensors(fn, obj: Any) -> Any:
    """`obj` with every tensor t replaced by fn(t), also inside tuples, lists and mappings (a
    mapping comes back as a dict)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, o) for o in obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    return obj


class CastPointSetter(PointSetter):
    """A PointSetter that computes each point in float32 in the master model's tensors (as
    PointSetter does) and then copies the moving ones, rounded, into a low-precision copy
    (`LowPrecisionModel.inner`): the points are the float32 points rounded once, never sums of
    rounded terms."""

    def __init__(self, setter: PointSetter, master: nn.Module, copy_: nn.Module):
        self.live, self.theta0, self.dirs = setter.live, setter.theta0, setter.dirs
        name_of = {t.data_ptr(): name for name, t in _floating_tensors(master)}  # live tensors share storage
        low = dict(_floating_tensors(copy_))
        # a moving tensor the evaluated model does not hold (a module its forward never calls) has no copy
        used = [t for t in self.live if t.data_ptr() in name_of]
        self.low = [low[name_of[t.data_ptr()]] for t in used]
        self.sources = used  # aligned with self.low

    @torch.no_grad()
    def set(self, coords: Sequence[float]) -> None:
        super().set(coords)
        self._sync()

    @torch.no_grad()
    def restore(self) -> None:
        super().restore()
        self._sync()

    def _sync(self) -> None:
        if self.low:
            torch._foreach_copy_(self.low, self.sources)


def _floating_tensors(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of the model's floating parameters and buffers, in state_dict order."""
    return [(k, t) for k, t in _unwrapped(model).state_dict(keep_vars=True).items() if t.is_floating_point()]


def retry_halving_batch(owner: Any, fn: Callable[[], Any]) -> Any:
    """fn(), called again with `owner.batch_size` halved after each CUDA out-of-memory error (the
    error itself once the batch size is 1)."""
    while True:
        try:
            return fn()
        except torch.cuda.OutOfMemoryError:
            if owner.batch_size == 1:
                raise
            owner.batch_size = max(1, owner.batch_size // 2)
            torch.cuda.empty_cache()


class Evaluator:
    """Mean loss and metrics (accuracy by default) of a model over one resident data set.

    `x` is the model's input and `y` the targets, both with the samples along dimension 0;
    `loss_fn` and each of `metrics` map (output, targets) to per-sample values (or a mean, see
    `batch_sums`).
    """

    metric_names: tuple[str, ...] = ("loss", "acc")  # what __call__ returns, in order (per instance)

    def __init__(self, model: nn.Module, x: torch.Tensor, y: Any, loss_fn: LossFn = cross_entropy,
                 batch_size: int | None = None, precision: str = "fp32", metrics: Measures | None = None):
        if len(x) != len(y):
            raise LandscapeError(f"x has {len(x)} samples but y has {len(y)}; give one target per sample")
        if len(x) == 0:
            raise LandscapeError("the evaluation set is empty; check n_samples and the data", "n_samples")
        self.model = model
        self.x, self.y = x, y
        self.loss_fn = loss_fn
        self.metrics = check_metrics(metrics)
        self.metric_names = ("loss", *self.metrics)
        self._fns = [loss_fn, *self.metrics.values()]
        self.batch_means: set[str] = set()  # metrics whose callable gave batch means: no per-sample SE
        self.batch_size = default_batch_size(model, x, precision) if batch_size is None else batch_size
        if self.batch_size < 1:
            raise LandscapeError(f"batch_size must be >= 1, got {batch_size}", "batch_size")
        if precision not in PRECISIONS:
            raise LandscapeError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}", "precision")
        self.precision = precision

    def __len__(self) -> int:
        return len(self.y)

    def __call__(self) -> tuple[float, ...]:
        """The mean of each of `metric_names` (loss first; accuracy as a fraction) at the model's
        current weights; one host sync.

        On a CUDA out-of-memory error the batch size is halved and the point evaluated again.
        """
        return retry_halving_batch(self, self._evaluate)

    def _evaluate(self) -> tuple[float, ...]:
        n = len(self.x)
        return tuple(s / n for s in self.sums().select(1, 0).tolist())

    def sums(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Per-sample sums over the samples [start, stop) at the current weights, without a host sync.

        A float64 tensor of shape (len(metric_names), 2) on the data's device: row i holds the sum
        and the sum of squares of metric i's per-sample values (the loss; 1.0 or 0.0 for accuracy),
        enough for a mean and its standard error over any union of disjoint ranges. A function that
        returns a batch mean contributes (batch size) x mean and x mean^2 (see `batch_sums`): its
        means are right, its standard errors are not per-sample ones (its name is in `batch_means`).
        """
        stop = len(self.x) if stop is None else stop
        if not 0 <= start <= stop <= len(self.x):
            raise ValueError(f"sample range [{start}, {stop}) is outside [0, {len(self.x)})")
        self.model.eval()
        dev = self.x.device
        total = torch.zeros(len(self._fns), 2, dtype=torch.float64, device=dev)
        with eval_mode(dev, self.precision):
            for i in range(start, stop, self.batch_size):
                j = min(i + self.batch_size, stop)
                total += batch_sums(self.model(self.x[i:j]), self.y[i:j], j - i, self._fns, self.metric_names,
                                    self.batch_means)
            return total


    def values(self, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Per-sample values over the samples [start, stop) at the current weights: a float64 tensor
        (len(metric_names), stop - start) on the data's device (the loss first; 1.0/0.0 for accuracy;
        a metric that returns a batch mean gives that mean for each sample of the batch). Batches
        start at `start` and hold `batch_size` samples, as in `sums`."""
        stop = len(self.x) if stop is None else stop
        if not 0 <= start <= stop <= len(self.x):
            raise ValueError(f"sample range [{start}, {stop}) is outside [0, {len(self.x)})")
        self.model.eval()
        out = []
        with eval_mode(self.x.device, self.precision):
            for i in range(start, stop, self.batch_size):
                j = min(i + self.batch_size, stop)
                out.append(batch_values(self.model(self.x[i:j]), self.y[i:j], j - i, self._fns, self.metric_names,
                                        self.batch_means))
        if not out:
            return torch.zeros(len(self._fns), 0, dtype=torch.float64, device=self.x.device)
        return torch.cat(out, dim=1)
