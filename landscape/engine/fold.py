"""Exact graph rewrites for evaluation: BatchNorm folding and conv + activation fusion.

BatchNorm folding. In eval mode a BN with running statistics is an affine map per channel,
y = s * (z - mu) + beta with s = gamma / sqrt(var + eps), so a conv/linear layer W followed by it
equals the layer with weight s * W and bias s * (b - mu) + beta. When the BN tensors do not move
across the surface (their directions are zero, as with ignore="biasbn"), the folded weight at a
point is s * (W0 + x d1 + y d2) = (s W0) + x (s d1) + y (s d2): the directions are folded once and
each point costs one axpy per tensor, as before, with one layer less to run.

That identity holds only for the right graph, so a pair is folded only where it is proven from a
captured graph (`torch.fx.symbolic_trace`, or `torch.export` for models fx cannot trace, such as
transformers' ResNet and MobileNetV2) and the module types:
- the layer is exactly a Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear, and the BN exactly a
  BatchNorm1d/2d/3d or SyncBatchNorm, neither with hooks or a second name in the model;
- each is called at one site only, the layer's output feeds the BN and nothing else, and no other
  operation reads their tensors (tied weights, a parameter used through `F.linear`);
- the BN is in eval mode and keeps running statistics (a BN with track_running_stats=False
  normalizes with the batch's own statistics), and none of its tensors moves;
- the BN normalizes the layer's output features: a sample batch propagated through the graph
  gives the layer an output of shape (N, C, ...) with C the BN's features, and a Linear a 2-D
  output (a Linear over the last dimension of (N, C, L) followed by BatchNorm1d(C) is not folded).
Everything else stays as it is, with the module and the reason in the report. The folded model is
a copy of the original in which each folded BN is an `nn.Identity` and its layer holds the folded
weight and bias: it runs the model's own forward, so no traced graph is executed.

Fusion (`fuse_conv_activation`) rewrites a traced graph: a Conv2d followed only by a ReLU, or by
an addition of a tensor of its own shape and a ReLU, becomes one oneDNN (or cuDNN) call, under the
same rules (exact module types, no hooks, shapes from a sample batch).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import logging
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
# the layer types a BN folds into, with the number of dimensions of their batched output
LAYER_DIMS = {nn.Linear: 2, nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5,
              nn.ConvTranspose1d: 3, nn.ConvTranspose2d: 4, nn.ConvTranspose3d: 5}
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")
# aten ops (torch.export) that a call of each layer type performs
_EXPORT_LAYER_OPS = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                     "conv_transpose3d", "convolution", "_convolution"}


@dataclass
class Call:
    """One call of a layer or BatchNorm module in a captured graph."""

    module: str  # its qualified name
    node: torch.fx.Node
    source: torch.fx.Node | None  # the node its (first) input comes from
    users: int  # how many graph nodes use its output
    shape: tuple[int, ...] | None  # its output's shape for the sample batch
    private: bool  # its tensors are the module's own and no other node of the graph reads them


@dataclass
class Capture:
    """The layer and BatchNorm calls of a model, from one captured graph."""

    how: str  # "torch.fx" | "torch.export"
    calls: dict[str, list[Call]]  # module name -> its calls, in graph order


@dataclass
class FoldResult:
    """What `fold_batchnorm` did: the folded copy (None when nothing was folded), its moving tensors
    and directions expressed in it, the folded pairs and the BatchNorms left alone with the reason."""

    model: nn.Module | None
    tensors: list[torch.Tensor] = field(default_factory=list)  # the copy's tensors that move, in `names` order
    directions: list[list[torch.Tensor]] = field(default_factory=list)  # per axis, aligned with `tensors`
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (layer, BN) folded
    kept: list[tuple[str, str]] = field(default_factory=list)  # (BN, why it was not folded)
    capture: str | None = None  # how the graph was captured, or why it could not be
    names: list[str] = field(default_factory=list)  # the names of `tensors`

    @property
    def n_folded(self) -> int:
        return len(self.pairs)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:160]


def call_args(model: nn.Module, example: Any) -> tuple[tuple, dict]:
    """(args, kwargs) of `model`'s forward for a batch's inputs: a tensor, a tuple/list of
    positional inputs, or a dict of keyword inputs (as `landscape.engine.stream.forward` calls it)."""
    if isinstance(example, Mapping):
        return (), dict(example)
    if isinstance(example, (tuple, list)):
        return tuple(example), {}
    return (example,), {}


def placeholder_values(model: nn.Module, gm: torch.fx.GraphModule, example: Any) -> list[Any]:
    """The values of `gm`'s placeholders (a trace of `model`) for a batch's inputs `example`."""
    args, kwargs = call_args(model, example)
    bound = inspect.signature(model.forward).bind(*args, **kwargs)
    bound.apply_defaults()
    return [bound.arguments[str(n.target).lstrip("*")] for n in gm.graph.nodes if n.op == "placeholder"]


def propagate_shapes(model: nn.Module, example: Any) -> torch.fx.GraphModule:
    """`torch.fx.symbolic_trace(model)` with every node's output shape and dtype (`tensor_meta`)
    for the inputs `example` (one forward pass of the traced graph); raises what tracing raises."""
    gm = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        ShapeProp(gm).propagate(*placeholder_values(model, gm, example))
    return gm


def _aliases(model: nn.Module) -> tuple[dict[int, int], dict[int, int]]:
    """How many names each module and each tensor has in `model` (by object identity)."""
    mods: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        mods[id(m)] = mods.get(id(m), 0) + 1
    tensors: dict[int, int] = {}
    for _, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        tensors[id(t)] = tensors.get(id(t), 0) + 1
    return mods, tensors


def _own_tensors(m: nn.Module) -> list[torch.Tensor]:
    return [*m.parameters(recurse=False), *m.buffers(recurse=False)]


def _is_candidate(m: nn.Module) -> bool:
    return type(m) in LAYER_DIMS or type(m) in BN_TYPES


def _capture_fx(model: nn.Module, example: Any) -> Capture:
    """The calls of `model` from `torch.fx.symbolic_trace`, with shapes from running the traced graph
    on the sample batch (ShapeProp)."""
    gm = propagate_shapes(model, example)
    read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    calls: dict[str, list[Call]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = model.get_submodule(node.target)
        if not _is_candidate(m):
            continue
        private = not any(r == node.target or r.startswith(f"{node.target}.") for r in read)
        meta = node.meta.get("tensor_meta")
        shape = tuple(meta.shape) if hasattr(meta, "shape") else None
        source = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        calls.setdefault(node.target, []).append(Call(node.target, node, source, len(node.users), shape, private))
    return Capture("torch.fx", calls)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings, log records or stderr output from torch while a capture is tried: a model that
    cannot be captured is expected (it is evaluated unfolded, and the reason is in the report), and
    torch.export prints its partial graph and logs errors when it fails."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _capture_export(model: nn.Module, example: Any) -> Capture:
    """The calls of `model` from `torch.export` (non-strict): each aten op is attributed to the
    innermost module that ran it; shapes are the exported graph's own."""
    args, kwargs = call_args(model, example)
    with _quiet():
        ep = torch.export.export(model, args, kwargs, strict=False)
    sig = ep.graph_signature
    fqn = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}  # placeholder name -> tensor name
    modules = dict(model.named_modules())

    def tensor_arg(arg, name: str | None) -> bool:
        """`arg` is the placeholder of the tensor `name` read by this node alone (or both are absent)."""
        if name is None:
            return arg is None
        return (isinstance(arg, torch.fx.Node) and arg.op == "placeholder" and fqn.get(arg.name) == name
                and len(arg.users) == 1)

    calls: dict[str, list[Call]] = {}
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            continue
        path = list(stack.values())[-1][0]
        m = modules.get(path)
        if m is None or not _is_candidate(m):
            continue
        op = getattr(getattr(node.target, "overloadpacket", None), "__name__", str(node.target))
        if type(m) in BN_TYPES:
            if op != "batch_norm":
                calls.setdefault(path, []).append(Call(path, node, None, len(node.users), None, False))
                continue
            names = [f"{path}.{k}" if getattr(m, k, None) is not None else None for k in _BN_KEYS]
            private = all(tensor_arg(a, n) for a, n in zip(node.args[1:5], names)) and node.args[5] is False
        else:
            if op not in _EXPORT_LAYER_OPS:
                continue  # e.g. the padding a Conv2d with padding_mode="reflect" does first
            bias = f"{path}.bias" if m.bias is not None else None
            private = (tensor_arg(node.args[1], f"{path}.weight")
                       and tensor_arg(node.args[2] if len(node.args) > 2 else None, bias))
        val = node.meta.get("val")
        shape = tuple(int(s) for s in val.shape) if isinstance(val, torch.Tensor) else None
        source = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        calls.setdefault(path, []).append(Call(path, node, source, len(node.users), shape, private))
    return Capture("torch.export", calls)


def capture_calls(model: nn.Module, example: Any) -> tuple[Capture | None, str]:
    """The calls of layers and BatchNorms in `model` (eval mode) for inputs like `example`: from
    torch.fx when it can trace the model, else from torch.export. (None, why) when neither can."""
    try:
        with _quiet():
            return _capture_fx(model, example), ""
    except Exception as e:  # noqa: BLE001 - fx raises many types for dynamic control flow
        fx_error = f"torch.fx: {type(e).__name__}"
    try:
        return _capture_export(model, example), ""
    except Exception as e:  # noqa: BLE001
        return None, f"the model could not be captured ({fx_error}; torch.export: {type(e).__name__}: {_first_line(e)})"


def _hooked(m: nn.Module) -> bool:
    return any(bool(getattr(m, h, None)) for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))


def plan_folds(model: nn.Module, cap: Capture, moving: set[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Which (layer, BN) pairs of `model` fold exactly, and each other BN with the reason it does
    not; `moving` names the tensors the directions move."""
    mod_names, tensor_names = _aliases(model)
    by_node = {c.node: c for calls in cap.calls.values() for c in calls}
    pairs, kept = [], []

    def problem(name: str, m: nn.Module, calls: list[Call]) -> str | None:
        if len(calls) != 1:
            return f"{name} is called at {len(calls)} sites"
        if _hooked(m) or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
            return f"{name} has forward hooks"
        if mod_names.get(id(m), 0) > 1 or any(tensor_names.get(id(t), 0) > 1 for t in _own_tensors(m)):
            return f"{name} or one of its tensors has a second name (tied or shared)"
        if not calls[0].private:
            return f"another operation reads the tensors of {name}"
        return None

    for bn_name, calls in cap.calls.items():
        bn = model.get_submodule(bn_name)
        if type(bn) not in BN_TYPES:
            continue
        why = problem(bn_name, bn, calls)
        if why is None and bn.training:
            why = "it is in training mode (batch statistics)"
        if why is None and (not bn.track_running_stats or bn.running_mean is None or bn.running_var is None):
            why = "it normalizes with batch statistics (track_running_stats=False)"
        if why is None and any(f"{bn_name}.{k}" in moving for k in _BN_KEYS):
            why = "its tensors move along the directions"
        layer_call = by_node.get(calls[0].source) if why is None else None
        if why is None and (layer_call is None or type(model.get_submodule(layer_call.module)) not in LAYER_DIMS):
            why = "its input is not a conv/linear layer's output"
        if why is None:
            layer_name = layer_call.module
            layer = model.get_submodule(layer_name)
            why = problem(layer_name, layer, cap.calls[layer_name])
            if why is None and layer_call.users != 1:
                why = f"the output of {layer_name} also feeds other operations"
            if why is None and (layer_call.shape is None or calls[0].shape is None):
                why = f"the output shape of {layer_name} is unknown"
            if why is None and (len(layer_call.shape) != LAYER_DIMS[type(layer)] or
                                layer_call.shape[1] != bn.num_features or calls[0].shape != layer_call.shape):
                why = (f"it does not normalize the output features of {layer_name} (output shape "
                       f"{tuple(layer_call.shape)}, {bn.num_features} BN features)")
            if why is None and not layer.weight.is_floating_point():
                why = f"{layer_name} has no floating-point weight"
            if why is None:
                pairs.append((layer_name, bn_name))
                continue
        kept.append((bn_name, why))
    return pairs, kept


def scale_out_channels(t: torch.Tensor, s: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """`t` (a layer's weight, or a direction shaped like it) with output channel c multiplied by s[c],
    in float64. A transposed convolution's weight is (in, out / groups, ...)."""
    t = t.double()
    s = s.to(device=t.device, dtype=torch.float64)
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        g = layer.groups
        k = [1] * (t.dim() - 2)
        return (t.reshape(g, t.shape[0] // g, t.shape[1], *t.shape[2:]) * s.view(g, 1, -1, *k)).reshape(t.shape)
    return t * s.view(-1, *([1] * (t.dim() - 1)))


def fold_batchnorm(model: nn.Module, names: Sequence[str], directions: Sequence[Sequence[torch.Tensor]],
                   example: Any) -> FoldResult:
    """Fold every BN of the eval-mode `model` that `plan_folds` proves exact into its layer, in a copy;
    `names` are the directions' tensor names (parameter or state_dict names of `model`) and
    `example` a batch of inputs (a tensor, tuple or dict) to propagate shapes with. The original
    model is not modified."""
    moving = {n for i, n in enumerate(names) if any(bool(d[i].any()) for d in directions)}
    if example is None:
        return FoldResult(None, capture="no sample batch to check shapes with")
    cap, why = capture_calls(model, example)
    if cap is None:
        return FoldResult(None, capture=why)
    pairs, kept = plan_folds(model, cap, moving)
    if not pairs:
        return FoldResult(None, kept=kept, capture=cap.how)
    folded = copy.deepcopy(model)
    scales: dict[str, tuple[torch.Tensor, nn.Module]] = {}  # layer name -> (s, layer)
    with torch.no_grad():
        for layer_name, bn_name in pairs:
            layer, bn = folded.get_submodule(layer_name), folded.get_submodule(bn_name)
            var, mean = bn.running_var.double(), bn.running_mean.double()
            gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
            beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
            s = gamma / torch.sqrt(var + bn.eps)
            w = layer.weight
            b = layer.bias.double() if layer.bias is not None else torch.zeros_like(var)
            layer.weight.copy_(scale_out_channels(w, s, layer).to(w.dtype))
            new_b = (s * (b - mean) + beta).to(w.dtype)
            if layer.bias is None:
                layer.bias = nn.Parameter(new_b, requires_grad=False)
            else:
                layer.bias.copy_(new_b)
            parent, _, child = bn_name.rpartition(".")
            setattr(folded.get_submodule(parent) if parent else folded, child, nn.Identity())
            scales[layer_name] = (s, layer)
    state = dict(folded.state_dict(keep_vars=True))
    result = FoldResult(folded.eval(), directions=[[] for _ in directions], pairs=pairs, kept=kept, capture=cap.how)
    for i, name in enumerate(names):
        if name not in moving:
            continue
        owner, _, kind = name.rpartition(".")
        t = state[name].detach()  # a moving tensor is never a folded BN's (plan_folds)
        for axis, d in enumerate(directions):
            di = d[i].to(device=t.device)
            if owner in scales and kind in ("weight", "bias"):
                s, layer = scales[owner]
                di = scale_out_channels(di, s, layer) if kind == "weight" else di.double() * s.to(di.device)
            result.directions[axis].append(di.to(t.dtype))
        result.tensors.append(t)
        result.names.append(name)
    return result


def describe_kept(kept: Sequence[tuple[str, str]], limit: int = 3) -> str:
    """'bn1 (why); layer2.bn (why); and N more' for a note."""
    shown = "; ".join(f"{m} ({why})" for m, why in kept[:limit])
    return shown + (f"; and {len(kept) - limit} more" if len(kept) > limit else "")


_RELU = (torch.relu, torch.nn.functional.relu)
_ADD = (operator.add, operator.iadd, torch.add)


# attribute of a convolution weight: (its version counter, its copy in oneDNN's blocked layout)
_PACKED = "_landscape_packed"


def packed_weight(weight, padding, stride, dilation, groups, x):
    """`weight` reordered once into the blocked layout oneDNN computes with (for inputs shaped like
    x), instead of once per call inside it. The copy is kept on the tensor with the version counter
    it was made at, so writing a new point into the weight in place (the setters' `_foreach_copy_`
    and `_foreach_add_` bump the counter) makes a new copy at the next call, once per point; an
    inference tensor (no counter) is used as it is."""
    if weight.is_inference():
        return weight
    version = weight._version
    cached = getattr(weight, _PACKED, None)
    if cached is None or cached[0] != version:
        cached = (version, torch.ops.mkldnn._reorder_convolution_weight(weight, padding, stride, dilation, groups,
                                                                        list(x.shape)))
        setattr(weight, _PACKED, cached)
    return cached[1]


# fused cuDNN calls that failed in this process: (kind, input shape without the batch, weight
# shape, dtype, stride, padding) -> cuDNN's error; those run unfused (see `_cudnn_fused`)
CUDNN_FUSION_FAILED: dict[tuple, str] = {}


def _cudnn_fused(key: tuple, fused, unfused):
    """fused() (a fused cuDNN call), or unfused() where a call like it (`key`) has failed in this
    process: cuDNN builds fused kernels at run time and has none for some shapes and data types
    (a 3-channel stem, say); it raises then. Each failing kind of call is warned about once and
    runs unfused from then on; the others stay fused."""
    if key not in CUDNN_FUSION_FAILED:
        try:
            return fused()
        except RuntimeError as e:
            text = str(e).strip()
            CUDNN_FUSION_FAILED[key] = text.splitlines()[0] if text else type(e).__name__
            warnings.warn(f"a fused cuDNN convolution ({key[0]}, input {key[1]}, weight {key[2]}, {key[3]}) failed "
                          f"({CUDNN_FUSION_FAILED[key]}); running it unfused", RuntimeWarning, stacklevel=3)
    return unfused()


def _key(kind, x, weight, stride, padding) -> tuple:
    return (kind, tuple(x.shape[1:]), tuple(weight.shape), str(x.dtype).removeprefix("torch."), tuple(stride),
            tuple(padding))


def conv_relu(x, weight, bias, padding, stride, dilation, groups, pack=False):
    """relu(conv2d(x)) as one oneDNN call, or on CUDA one cuDNN call (see `fuse_conv_activation`);
    `pack`: with the weight in oneDNN's layout (`packed_weight`; CPU only)."""
    if x.is_cuda:
        return _cudnn_fused(
            _key("relu", x, weight, stride, padding),
            lambda: torch.cudnn_convolution_relu(x, weight, bias, stride, padding, dilation, groups),
            lambda: torch.relu(torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups)))
    if pack:
        weight = packed_weight(weight, padding, stride, dilation, groups, x)
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, padding, stride, dilation, groups,
                                                   "relu", [], "")


def conv_add_relu(x, other, weight, bias, padding, stride, dilation, groups, pack=False):
    """relu(conv2d(x) + other) as one oneDNN call (see `fuse_conv_activation`); in bf16 only for
    inputs that are NHWC and not also NCHW (oneDNN otherwise falls back to an addition that has no
    bf16 kernel), else the three ops. On CUDA one cuDNN call (conv, + other, + bias, ReLU)."""
    if x.is_cuda:
        return _cudnn_fused(
            _key("add_relu", x, weight, stride, padding),
            lambda: torch.cudnn_convolution_add_relu(x, weight, other, 1.0, bias, stride, padding, dilation, groups),
            lambda: torch.relu(torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups) + other))
    nhwc = torch.channels_last
    if x.dtype == torch.float32 or (x.is_contiguous(memory_format=nhwc) and not x.is_contiguous()
                                    and other.is_contiguous(memory_format=nhwc)):
        if pack:
            weight = packed_weight(weight, padding, stride, dilation, groups, x)
        return torch.ops.mkldnn._convolution_pointwise.binary(x, other, weight, bias, padding, stride, dilation,
                                                              groups, "add", None, "relu", [], "")
    return torch.relu(torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation, groups) + other)


def fuse_conv_activation(gm: torch.fx.GraphModule, pack: bool = False, device_type: str = "cpu") -> int:
    """Replace, in place, every 2-D convolution followed only by a ReLU, or by an addition and a
    ReLU (a residual block's end), by one oneDNN call that applies them as post-ops
    (`conv_relu`, `conv_add_relu`: `torch.ops.mkldnn._convolution_pointwise`, the kernels inductor
    uses on CPU): one pass over the output instead of two or three. Returns the number of
    convolutions fused (0 when oneDNN, for `device_type` "cuda" cuDNN, is not available). For CPU
    models in float32 (the tests find the unfused losses to 1e-6) or bfloat16 (the addition and
    ReLU act on the float32 accumulator before the one rounding). On CUDA the same two functions
    call cuDNN's fused kernels (`torch.cudnn_convolution_relu`, `torch.cudnn_convolution_add_relu`),
    falling back to the unfused ops where cuDNN has none (`_cudnn_fused`).

    Shapes come from the nodes' `tensor_meta` (run `torch.fx.passes.shape_prop.ShapeProp` on a sample
    batch first): a convolution is fused only with a batched 4-D input of its weight's dtype, and an
    addition only of a tensor of the convolution's output shape and dtype (no broadcasting). Only
    exact `nn.Conv2d` and `nn.ReLU` modules without hooks, a ReLU without `inplace`, and an in-place
    addition only into the convolution's output.

    The graph reads each convolution's weight and bias by name (`get_attr`), so a point written
    into the module's tensors in place is what the next forward pass uses; the modules stay (unused)
    so their state_dict names do not change. With `pack`, the fused calls reorder each weight into
    oneDNN's blocked layout once per point (`packed_weight`) instead of once per batch.
    """
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    if not (torch.backends.cudnn.is_available() if device_type == "cuda" else torch.backends.mkldnn.is_available()):
        return 0
    pack = pack and device_type == "cpu"
    mods = dict(gm.named_modules())
    graph = gm.graph

    def meta(node):
        m = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
        return m if hasattr(m, "shape") else None

    def conv_of(node):
        m = mods.get(node.target) if node.op == "call_module" else None
        ok = (type(m) is nn.Conv2d and not _hooked(m) and m.padding_mode == "zeros" and not isinstance(m.padding, str)
              and len(node.users) == 1 and len(node.args) == 1 and not node.kwargs)
        # a batched 4-D input of the weight's dtype (shapes from ShapeProp: none, no fusion)
        src, out = meta(node.args[0]) if ok else None, meta(node)
        ok = ok and src is not None and out is not None and len(src.shape) == 4 and src.dtype == m.weight.dtype
        return m if ok else None

    def is_relu(node):
        if node.op == "call_function" and node.target in _RELU:
            return len(node.args) == 1 and not node.kwargs.get("inplace", False)
        return node.op == "call_module" and type(mods.get(node.target)) is nn.ReLU and not _hooked(mods[node.target])

    def same_tensor_shape(a, b):
        ma, mb = meta(a), meta(b)
        return ma is not None and mb is not None and tuple(ma.shape) == tuple(mb.shape) and ma.dtype == mb.dtype

    def conv_args(node, m, before):
        with graph.inserting_before(before):
            w = graph.get_attr(f"{node.target}.weight")
            b = graph.get_attr(f"{node.target}.bias") if m.bias is not None else None
        return (w, b, list(m.padding), list(m.stride), list(m.dilation), m.groups, pack)

    for node in list(graph.nodes):  # a folded BN is an Identity: drop it from the graph
        m = mods.get(node.target) if node.op == "call_module" else None
        if type(m) is nn.Identity and not _hooked(m) and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    fused = 0
    for node in list(graph.nodes):
        m = conv_of(node)
        if m is None:
            continue
        user = next(iter(node.users))
        if is_relu(user):
            last, args, op = user, (node.args[0], *conv_args(node, m, user)), conv_relu
        elif (user.op == "call_function" and user.target in _ADD and len(user.args) == 2 and not user.kwargs
              and len(user.users) == 1 and is_relu(next(iter(user.users)))
              and isinstance(other := user.args[1] if user.args[0] is node else user.args[0], torch.fx.Node)
              and other is not node and same_tensor_shape(other, node)  # no broadcasting
              and (user.target is not operator.iadd or user.args[0] is node)):  # `other += conv` writes other
            last = next(iter(user.users))
            args, op = (node.args[0], other, *conv_args(node, m, last)), conv_add_relu
        else:
            continue
        with graph.inserting_before(last):
            new = graph.call_function(op, args)
        new.meta = dict(last.meta)  # the same output: its shape for the next fusions
        last.replace_all_uses_with(new)
        for dead in dict.fromkeys([last, user, node]):  # users first; last is user for a lone ReLU
            graph.erase_node(dead)
        fused += 1
    if fused:
        graph.lint()
        gm.recompile()
    return fused
