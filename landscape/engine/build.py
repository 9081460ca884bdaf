"""The evaluation engine: which model the hot loop runs, how it is moved, and the proof that it is exact.

`prepare_engine` turns a model, its directions and `EngineOptions` into an `Engine`: the model to
evaluate (a BN-folded copy, a graph with fused convolutions, channels_last weights, bf16 storage,
compiled, ...), the setter that moves it to a grid point, and an `EngineReport` (data, not text)
of what was done and why anything asked for was not.

Every fast path must give the surface of plain evaluation (the model as given, eager, fp32) up to
float rounding, or not run:
- the rewrites are applied only where they are proven exact from the model's graph (`fold`);
- then the engine is checked against plain evaluation on a sample batch at a few grid points
  (the center and the grid's corners): every output of the model must agree within CHECK_RTOL of
  its largest magnitude. The automatic rewrites (folding, fusion, prepacking, channels_last) are
  all dropped when the check fails, with a note; an option asked for explicitly (K points per
  launch, low precision, compile) is refused with a one-line error instead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx
import torch.nn as nn

from landscape.engine import hardware
from landscape.directions import target_tensors
from landscape.errors import LandscapeError
from landscape.engine.evaluate import (CastPointSetter, CudnnBenchmark, Evaluator, LossFn, LowPrecisionModel, Measures,
                                PointSetter, _device_of, cross_entropy, default_batch_size, eval_mode, input_layout,
                                map_tensors, stores_in_low_precision, use_channels_last)
from landscape.engine.fold import call_args, describe_kept, fold_batchnorm, fuse_conv_activation, propagate_shapes

# The largest difference allowed between an engine's outputs and plain fp32 evaluation, relative
# to the largest output magnitude. fp32 rewrites change only the rounding (measured: <= 2e-6 on
# the test zoo and the bundled ResNets at the grid's corners); a wrong rewrite differs by 1e-2 and
# more (a double-scaled BN: 5 %). Low precision is compared to fp32 with its own rounding allowed.
CHECK_RTOL = {"fp32": 1e-4, "tf32": 1e-4, "bf16": 0.1, "fp16": 0.05}
CHECK_RTOL_CUDA_TF32 = 2e-2
CHECK_SAMPLES = 64  # the sample batch the rewrites are checked on


@dataclass(frozen=True)
class EngineOptions:
    """How the hot loop runs; none of these change the surface beyond float rounding, except precision."""

    precision: str = "fp32"  # fp32 | tf32 | bf16 | fp16 | auto (bf16 where native, else fp32); see hardware
    fold_bn: bool = True  # fold BatchNorm into the preceding layer where that is proven exact
    compile: bool = False  # torch.compile the evaluation model (pays off from ~100 points)
    batch_size: int | None = None
    fuse: bool = True  # eager on CPU: conv + ReLU (+ residual) as one oneDNN call where proven exact
    prepack: bool = True  # with fuse: the fused calls' weights reordered for oneDNN once per point
    channels_last: bool | None = None  # NHWC for 4-D inputs; None: where the model accepts it
    points_per_launch: int = 1  # K > 1: K grid points in one vmapped forward pass (landscape.engine.multipoint)
    # on CUDA, opt-in until scripts/gpu_check.sh shows they pay (BENCHMARKS.md):
    cuda_fuse: bool = False  # eager: conv + ReLU (+ residual) as one cuDNN call
    cudnn_benchmark: bool = False  # cuDNN times its algorithms per batch shape (`CudnnBenchmark`)
    compile_mode: str | None = None  # torch.compile's mode, e.g. "max-autotune-no-cudagraphs"
    check: bool = True  # check the engine against plain evaluation before use (see the module's help)
    allow_emulated: bool = False  # run bf16/fp16 even where emulated (to measure its cost: benchmark.py)

    def __post_init__(self) -> None:
        if self.precision not in hardware.PRECISION_CHOICES:
            raise LandscapeError(f"precision must be one of {', '.join(hardware.PRECISION_CHOICES)}, "
                                 f"got {self.precision!r}", "precision")
        if self.batch_size is not None and self.batch_size < 1:
            raise LandscapeError(f"batch_size must be >= 1, got {self.batch_size}", "batch_size")
        if self.points_per_launch < 1:
            raise LandscapeError(f"points_per_launch must be >= 1, got {self.points_per_launch}", "points_per_launch")
        if self.compile_mode is not None:
            import torch._inductor

            modes = list(torch._inductor.list_mode_options())
            if self.compile_mode not in modes:
                raise LandscapeError(f"compile_mode must be one of {', '.join(modes)}, got {self.compile_mode!r}",
                                     "compile_mode")
            if not self.compile:
                raise LandscapeError(f"compile_mode {self.compile_mode!r} without compile: set compile=True too")
        if self.points_per_launch > 1 and (self.compile or self.cuda_fuse):
            what = "compile" if self.compile else "cuda_fuse"
            raise LandscapeError(f"points_per_launch > 1 does not combine with {what}; drop one of them",
                                 ("points_per_launch", what))


@dataclass
class EngineReport:
    """What the engine does, as data (the surface file's `engine` attribute, and the notes)."""

    device: str
    precision: str  # what runs (an asked "auto" resolved)
    hardware: dict[str, Any]
    channels_last: bool = False
    folded: list[tuple[str, str]] = field(default_factory=list)  # (layer, BN)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (BN, why not folded)
    capture: str | None = None  # how the graph was captured for folding, or why it could not be
    fused: int = 0  # convolutions fused with the ReLU (and residual addition) after them
    fused_with: str | None = None  # "oneDNN" | "cuDNN"
    not_fused: str | None = None  # why fusion asked for did not happen
    prepacked: bool = False
    low_precision_storage: bool = False  # weights stored in bf16, run without autocast
    compile: bool = False
    compile_mode: str | None = None
    cudnn_benchmark: bool = False
    points_per_launch: int = 1
    check: dict[str, Any] | None = None  # {"points", "samples", "max_rel_diff", "rtol"} of the last check
    fallback: str | None = None  # why the automatic rewrites were dropped
    ignored: list[str] = field(default_factory=list)  # options that have no effect here, and why

    @property
    def fold_bn(self) -> bool:
        return bool(self.folded)

    def notes(self) -> list[str]:
        out = []
        if self.folded:
            out.append(f"folded {len(self.folded)} BatchNorm layers into the preceding layers ({self.capture})")
        if self.kept:
            out.append(f"BatchNorm not folded: {describe_kept(self.kept)}")
        elif not self.folded and self.capture and not self.capture.startswith("torch."):
            out.append(f"BatchNorm not folded: {self.capture}")
        if self.fused:
            out.append(f"fused {self.fused} convolutions with the ReLU (and residual addition) after them"
                       + (" (cuDNN)" if self.fused_with == "cuDNN" else ""))
        if self.not_fused:
            out.append(f"convolutions not fused: {self.not_fused}")
        if self.low_precision_storage:
            out.append("bf16: weights stored in bf16, run without autocast")
        if self.points_per_launch > 1:
            out.append(f"{self.points_per_launch} points per launch (vmap over their stacked weights)")
        if self.cudnn_benchmark:
            out.append("cuDNN benchmark mode: the fastest convolution algorithms per batch shape")
        if self.fallback:
            out.append(self.fallback)
        return out + self.ignored

    def attrs(self) -> dict[str, Any]:
        """The surface file's `engine` attribute."""
        out = {"precision": self.precision, "fold_bn": self.fold_bn, "folded": len(self.folded),
               "fused": self.fused, "prepacked": self.prepacked, "channels_last": self.channels_last,
               "compile": self.compile, "threads": torch.get_num_threads(), "hardware": self.hardware}
        if self.capture is not None:
            out["capture"] = self.capture
        if self.kept:
            out["not_folded"] = {m: why for m, why in self.kept}
        if self.compile_mode is not None:
            out["compile_mode"] = self.compile_mode
        if self.points_per_launch > 1:
            out["points_per_launch"] = self.points_per_launch
        if self.device.startswith("cuda"):
            out["cuda_fuse"] = self.fused_with == "cuDNN"
            out["cudnn_benchmark"] = self.cudnn_benchmark
        if self.check is not None:
            out["check"] = self.check
        if self.fallback:
            out["fallback"] = self.fallback
        return out


@dataclass
class Engine:
    """The model the hot loop runs, the setter that moves it, and what was done (`report`)."""

    model: nn.Module
    setter: PointSetter
    report: EngineReport
    original: nn.Module | None = None  # the model as given (batch sizes are chosen on it)

    @property
    def precision(self) -> str:
        return self.report.precision

    def inputs(self, x: Any) -> Any:
        """Input tensors in the memory order the engine runs (channels_last where chosen)."""
        return input_layout(x, self.report.channels_last) if isinstance(x, torch.Tensor) else x

    def batch_size(self, x: torch.Tensor, given: int | None = None) -> int:
        """`given`, else the default for inputs like `x` (`evaluate.default_batch_size`) chosen on the
        model as given: forward hooks do not see the engine's fused calls. With K points per launch
        on the CPU a K-th of it (the K points' activations share the cache that rule sizes a batch for)."""
        if given is not None:
            return given
        batch = default_batch_size(self.original if self.original is not None else self.model, x, self.precision)
        k = self.report.points_per_launch
        return max(1, batch // k) if k > 1 and x.device.type == "cpu" else batch

    def evaluator(self, x: torch.Tensor, y: Any, loss_fn: LossFn = cross_entropy, metrics: Measures | None = None,
                  batch_size: int | None = None) -> Evaluator:
        """The evaluator of resident data (x, y) on this engine: an `Evaluator`, or with K points per
        launch a `MultiPointEvaluator`; x in the engine's memory order."""
        batch = self.batch_size(x, batch_size) if len(x) else batch_size
        k = self.report.points_per_launch
        if k > 1:
            from landscape.engine.multipoint import MultiPointEvaluator

            return MultiPointEvaluator(self.model, self.inputs(x), y, loss_fn, batch, self.precision, metrics, k)
        return Evaluator(self.model, self.inputs(x), y, loss_fn, batch, self.precision, metrics)


def batch_statistics_layers(model: nn.Module) -> list[str]:
    """The BatchNorm layers of `model` that normalize with the statistics of the batch they see in
    its current mode (training mode, or no running statistics): through them a sample's output
    depends on the other samples of its batch, so the loss depends on how the set is batched."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and (m.training or not m.track_running_stats or m.running_mean is None or m.running_var is None)]


def compile_options(mode: str | None) -> dict[str, Any]:
    """Inductor's settings of a torch.compile `mode` (for `torch.compile(options=...)`)."""
    import torch._inductor

    return dict(torch._inductor.list_mode_options(mode)) if mode not in (None, "default") else {}


# torch releases whose inductor CPU code corrupts memory on the models we run (pytorch/pytorch#181618 and
# its duplicates, "module: regression"): in torch 2.13.0 a compiled folded ResNet-56 in channels_last
# aborted in malloc on an AVX-512/AMX CPU, and with oneDNN capped at AVX2 one benchmark run gave a loss
# 100 % off plain evaluation (the next run of the same command agreed to 2e-6: a memory error, not a
# formula). Nothing the engine checks can prove such a run right.
UNSAFE_CPU_COMPILE = ("2.13.",)


def compile_refusal(device: torch.device) -> str | None:
    """Why `torch.compile` is refused on `device` with this torch, or None."""
    if device.type == "cpu" and torch.__version__.startswith(UNSAFE_CPU_COMPILE):
        return (f"compile is refused on the CPU with torch {torch.__version__.split('+')[0]}: its inductor code "
                "corrupts memory on models like ours (pytorch/pytorch#181618: crashes, and a wrong loss in our "
                "benchmark); run without compile (eager fp32 ran as fast as compiled, within 4 %, on our CPUs) or on a GPU")
    return None


# ---------------------------------------------------------------------------- checking


def _forward(model: nn.Module, inputs: Any) -> Any:
    args, kwargs = call_args(model, inputs)
    return model(*args, **kwargs)


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    """The floating tensors of a model output (also inside tuples, lists, dicts), in order, as float64."""
    found: list[torch.Tensor] = []
    map_tensors(lambda t: found.append(t.detach().double().cpu()) if t.is_floating_point() else None, out)
    return found


def relative_difference(fast: Sequence[torch.Tensor], ref: Sequence[torch.Tensor]) -> float:
    """max |fast - ref| / max |ref| over all outputs (inf when their structure differs); equal
    non-finite values (a diverged point) count as agreeing."""
    if len(fast) != len(ref) or any(a.shape != b.shape for a, b in zip(fast, ref)):
        return math.inf
    scale, worst = 0.0, 0.0
    for a, b in zip(fast, ref):
        finite = torch.isfinite(b)
        if finite.any():
            scale = max(scale, float(b[finite].abs().max()))
        same = (a == b) | (torch.isnan(a) & torch.isnan(b))
        diff = torch.where(same, torch.zeros_like(a), (a - b).abs())
        if diff.numel():
            d = float(diff.max())
            worst = max(worst, math.inf if math.isnan(d) else d)
    if worst == 0.0:
        return 0.0
    return worst / scale if scale > 0 else math.inf


class _Reference:
    """Plain evaluation at the check points: the original model, eager, fp32, moved by its own setter;
    computed once and kept."""

    def __init__(self, model: nn.Module, setter: PointSetter, inputs: Any, points: Sequence[Sequence[float]]):
        self.outputs = []
        try:
            with eval_mode(_device_of(model), "fp32"):
                for p in points:
                    setter.set(p)
                    self.outputs.append(_flat_outputs(_forward(model, inputs)))
        finally:
            setter.restore()


def _engine_outputs(engine_model: nn.Module, setter: PointSetter, inputs: Any, points: Sequence[Sequence[float]],
                    precision: str, device: torch.device, per_launch: int) -> list[list[torch.Tensor]]:
    try:
        if per_launch > 1:
            from landscape.engine.multipoint import vmapped_outputs

            with eval_mode(device, precision):
                return [_flat_outputs(o) for o in vmapped_outputs(engine_model, setter, points, inputs)]
        out = []
        with eval_mode(device, precision):
            for p in points:
                setter.set(p)
                out.append(_flat_outputs(_forward(engine_model, inputs)))
        return out
    finally:
        setter.restore()


def _check(ref: _Reference, outputs_fn: Callable[[], list[list[torch.Tensor]]], rtol: float, points, samples: int
           ) -> tuple[dict[str, Any], str | None]:
    """({points, samples, max_rel_diff, rtol}, None) or (..., why) when the engine disagrees or fails."""
    result: dict[str, Any] = {"points": [list(map(float, p)) for p in points], "samples": samples, "rtol": rtol}
    try:
        fast = outputs_fn()
    except Exception as e:  # noqa: BLE001 - a fast path that fails is not used
        result["max_rel_diff"] = None
        text = str(e).strip()
        return result, f"it failed ({type(e).__name__}: {text.splitlines()[0][:160] if text else ''})"
    diffs = [relative_difference(f, r) for f, r in zip(fast, ref.outputs)]
    worst = max(diffs) if diffs else 0.0
    result["max_rel_diff"] = worst
    if not worst <= rtol:
        at = points[diffs.index(worst)]
        return result, (f"its outputs differ from plain evaluation by {worst:.2g} (relative; allowed {rtol:g}) "
                        f"at ({', '.join(f'{c:g}' for c in at)})")
    return result, None


def _sample(example: Any, n: int) -> Any:
    """The first n samples of a batch's inputs (a tensor, tuple or dict of tensors)."""
    return map_tensors(lambda t: t[:n] if t.dim() > 0 else t, example)


# ---------------------------------------------------------------------------- building


def prepare_engine(model: nn.Module, dir_type: str, directions: Sequence[Sequence[torch.Tensor]],
                   options: EngineOptions = EngineOptions(), example: Any = None,
                   check_points: Sequence[Sequence[float]] | None = None) -> Engine:
    """The engine for `model` (put in eval mode) moved along `directions` (over its
    `target_tensors(model, dir_type)`), per `options`.

    `example`: a batch of the model's inputs as the evaluator will pass them (a tensor, or a tuple
    or dict for streamed data); it decides channels_last, gives the shapes that prove folding and
    fusion exact, and is what the engine is checked on (its first CHECK_SAMPLES samples; the whole
    batch when compiling, so that the compiled shapes are the evaluation's). Without it, nothing is
    rewritten. `check_points`: the grid points to check at (default: the center and the point 1
    along every direction; pass the grid's corners).

    With `fold_bn`, the BatchNorms proven exact to fold are folded into a copy (the original is
    untouched; `fold.fold_batchnorm`). With `fuse`, on the CPU in fp32, or bf16 with bf16 weights,
    a traced graph runs each conv + ReLU (+ residual) as one oneDNN call (`fold.fuse_conv_activation`),
    with `prepack` the weights reordered for it once per point; on CUDA with `cuda_fuse` one cuDNN
    call. In bf16 a model whose only tensor-holding layers are convolutions and linear layers runs
    as a `LowPrecisionModel` with bf16 weights; others under autocast. Precision "auto", and
    bf16/fp16 where they would be emulated, are resolved by `hardware.resolve_precision`.
    """
    model.eval()
    device = _device_of(model)
    info = hardware.device_info(device)
    if options.compile and compile_refusal(device):
        raise LandscapeError(compile_refusal(device), "compile")
    emulated = options.allow_emulated and options.precision in ("bf16", "fp16")
    precision = options.precision if emulated else hardware.resolve_precision(options.precision, device, info)
    per_launch = options.points_per_launch
    ndim = len(directions)
    points = [tuple(map(float, p)) for p in (check_points or [(0.0,) * ndim, (1.0,) * ndim])]
    if all(any(c != 0 for c in p) for p in points):
        points = [(0.0,) * ndim, *points]
    probe = _sample(example, CHECK_SAMPLES) if example is not None else None
    refs: dict[int, _Reference] = {}  # plain evaluation, per input batch (computed once each)

    def reference(inputs: Any) -> _Reference:
        if id(inputs) not in refs:
            plain = PointSetter([t for _, t in target_tensors(model, dir_type)], directions)
            refs[id(inputs)] = _Reference(model, plain, inputs, points)
        return refs[id(inputs)]

    # first with the automatic rewrites (channels_last, folding, fusion, prepacking), then, if any
    # check fails, without them: the model as given with the options asked for
    auto = dataclasses.replace(options, fold_bn=options.fold_bn and example is not None,
                               fuse=options.fuse and example is not None and per_launch == 1 and not options.compile,
                               channels_last=options.channels_last if isinstance(example, torch.Tensor) else False)
    bare = dataclasses.replace(auto, fold_bn=False, fuse=False, prepack=False, channels_last=False)
    failed: str | None = None
    for attempt in (auto, bare) if auto != bare else (bare,):
        report = EngineReport(str(device), precision, info, compile=options.compile, compile_mode=options.compile_mode,
                              points_per_launch=per_launch)
        engine, why = _attempt(model, dir_type, directions, attempt, precision, device, example, probe, points,
                               report, reference if options.check and probe is not None else None)
        if why is None:
            if failed is not None:
                report.fallback = f"evaluating the model as given: {failed}"
            return engine
        failed = why
        if report.channels_last:
            model.to(memory_format=torch.contiguous_format)
    asked = [w for w, on in ((f"points_per_launch={per_launch}", per_launch > 1), (f"precision {precision}",
                                                                                  precision != "fp32"),
                             ("compile", options.compile)) if on]
    raise LandscapeError(f"{' with '.join(asked) or 'the engine'} does not compute this model exactly "
                         f"(within its rounding): {failed}; use "
                         + ", ".join(w for w, on in (("points_per_launch=1", per_launch > 1),
                                                     ("precision fp32", precision != "fp32"),
                                                     ("no compile", options.compile)) if on),
                         "points_per_launch" if per_launch > 1 else "precision" if precision != "fp32" else None)


def _attempt(model: nn.Module, dir_type: str, directions, options: EngineOptions, precision: str,
             device: torch.device, example: Any, probe: Any, points, report: EngineReport,
             reference: Callable[[Any], _Reference] | None) -> tuple[Engine | None, str | None]:
    """The engine per `options`, checked against plain evaluation when `reference` is given:
    (engine, None), or (None, why) at the first check that fails."""
    per_launch = options.points_per_launch
    if options.channels_last is not False and isinstance(example, torch.Tensor):
        report.channels_last = use_channels_last(model, example)
    engine_model, setter = _rewritten(model, dir_type, directions, options, precision, device, example, report)
    fast_probe = input_layout(probe, report.channels_last) if isinstance(probe, torch.Tensor) else probe
    done = [w for w, on in (("channels_last", report.channels_last), ("BatchNorm folding", report.folded),
                            ("fused convolutions", report.fused)) if on]
    if reference is not None and done:  # the exact rewrites, in fp32 one point at a time
        report.check, why = _check(reference(probe), lambda: _engine_outputs(engine_model, setter, fast_probe, points,
                                                                             "fp32", device, 1),
                                   CHECK_RTOL["fp32"], points, _len(probe))
        if why is not None:
            return None, f"with {', '.join(done)} {why}"
    if reference is not None and per_launch > 1:
        report.check, why = _check(reference(probe), lambda: _engine_outputs(engine_model, setter, fast_probe, points,
                                                                             "fp32", device, per_launch),
                                   CHECK_RTOL["fp32"], points, _len(probe))
        if why is not None:
            return None, f"with {per_launch} points per launch {why}"

    # the options that change more than rounding, or compile: checked against fp32 with their tolerance
    if precision == "bf16" and per_launch == 1 and stores_in_low_precision(engine_model):
        low = LowPrecisionModel(engine_model, torch.bfloat16)
        setter = CastPointSetter(setter, engine_model, low.inner)
        engine_model = low
        report.low_precision_storage = True
    if options.compile:
        engine_model = torch.compile(engine_model, options=compile_options(options.compile_mode) or None)
    if options.cudnn_benchmark:
        if device.type == "cuda":
            engine_model = CudnnBenchmark(engine_model)
            report.cudnn_benchmark = True
        else:
            report.ignored.append(f"cuDNN benchmark mode asked for; it has no effect on {device.type}")
    if options.cuda_fuse and device.type != "cuda":
        report.ignored.append(f"cuDNN fusion asked for; it has no effect on {device.type}")
    if reference is not None and (precision != "fp32" or options.compile) and per_launch == 1:
        inputs = example if options.compile else probe  # compiled: the evaluation's batch shape
        fast = input_layout(inputs, report.channels_last) if isinstance(inputs, torch.Tensor) else inputs
        rtol = CHECK_RTOL_CUDA_TF32 if precision == "tf32" and device.type == "cuda" else CHECK_RTOL[precision]
        report.check, why = _check(reference(inputs), lambda: _engine_outputs(engine_model, setter, fast, points,
                                                                              precision, device, 1),
                                   rtol, points, _len(inputs))
        if why is not None:
            return None, why
    return Engine(engine_model, setter, report, model), None


def _len(inputs: Any) -> int:
    found: list[int] = []
    map_tensors(lambda t: found.append(len(t)) if t.dim() > 0 else None, inputs)
    return found[0] if found else 0


def _rewritten(model: nn.Module, dir_type: str, directions: Sequence[Sequence[torch.Tensor]], options: EngineOptions,
               precision: str, device: torch.device, example: Any, report: EngineReport
               ) -> tuple[nn.Module, PointSetter]:
    """The model with BatchNorm folded and convolutions fused where proven exact, and its setter."""
    tensors = target_tensors(model, dir_type)
    names = [n for n, _ in tensors]
    engine_model, setter = model, None
    inputs = input_layout(example, report.channels_last) if isinstance(example, torch.Tensor) else example
    probe = _sample(inputs, 2) if inputs is not None else None
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if options.fold_bn and has_bn:
        folded = fold_batchnorm(model, names, directions, probe)
        report.kept, report.capture = folded.kept, folded.capture
        if folded.model is not None:
            engine_model, setter = folded.model, PointSetter(folded.tensors, folded.directions)
            report.folded = folded.pairs
    if setter is None:
        setter = PointSetter([t for _, t in tensors], directions)
    low = precision == "bf16" and stores_in_low_precision(engine_model)
    on_cpu = device.type == "cpu" and (precision == "fp32" or (low and torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    on_cuda = device.type == "cuda" and options.cuda_fuse and (precision in ("fp32", "tf32") or low)
    if options.fuse and (on_cpu or on_cuda) and any(type(m) is nn.Conv2d for m in engine_model.modules()):
        try:
            gm = propagate_shapes(engine_model, probe)
        except Exception as e:  # noqa: BLE001 - fx raises many types for dynamic control flow
            report.not_fused = f"the model is not traceable by torch.fx ({type(e).__name__})"
        else:
            fused = fuse_conv_activation(gm, pack=options.prepack and on_cpu, device_type=device.type)
            if fused:
                engine_model, report.fused = gm.eval(), fused
                report.fused_with = "cuDNN" if device.type == "cuda" else "oneDNN"
                report.prepacked = options.prepack and on_cpu
    return engine_model, setter
