"""BatchNorm folding for evaluation: conv/linear + BN (eval mode) become one layer with a bias.

In eval mode BN is an affine map per channel, y = s * (z - mu) + beta with s = gamma / sqrt(var + eps),
so conv(W) followed by BN equals conv(s * W) with bias s * (b - mu) + beta. When the BN tensors do
not move across the surface (their directions are zero, as with ignore="biasbn"), the folded
weight at a point is s * (W0 + x d1 + y d2) = (s W0) + x (s d1) + y (s d2): the directions are
folded once and each point costs one axpy per tensor, as before, with one layer less to run.
"""

from __future__ import annotations

import copy
import operator
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.fx
import torch.nn as nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class Folded:
    """A folded copy of a model, with its moving tensors and directions expressed in it."""

    model: nn.Module
    tensors: list[torch.Tensor]  # the folded model's tensors that move, in the original target order
    directions: list[list[torch.Tensor]]  # per axis, aligned with `tensors`
    n_folded: int


def _pairs(gm: torch.fx.GraphModule) -> list[tuple[torch.fx.Node, torch.fx.Node]]:
    """(layer node, BN node) where a BN is applied directly and only to a conv/linear output."""
    mods = dict(gm.named_modules())
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods[node.target], _BN) and node.args:
            prev = node.args[0]
            if (isinstance(prev, torch.fx.Node) and prev.op == "call_module"
                    and isinstance(mods[prev.target], _FOLDABLE) and len(prev.users) == 1):
                out.append((prev, node))
    return out


def fold_batchnorm(model: nn.Module, names: Sequence[str], directions: Sequence[Sequence[torch.Tensor]],
                   ) -> tuple[Folded | None, str]:
    """Fold every conv/linear + BN pair of an eval-mode model; `names` are the directions' tensor names
    (parameter or state_dict names of `model`).

    Returns (Folded, "") or (None, reason) when folding would not be exact or is impossible:
    the model cannot be traced by torch.fx, a BN tensor moves, or nothing is foldable.
    The original model is not modified.
    """
    moving = {n for i, n in enumerate(names) if any(bool(d[i].any()) for d in directions)}
    try:
        gm = torch.fx.symbolic_trace(copy.deepcopy(model).eval())
    except Exception as e:  # fx raises many types for dynamic control flow
        return None, f"model is not traceable by torch.fx ({type(e).__name__})"
    pairs = _pairs(gm)
    if not pairs:
        return None, "no conv/linear + BatchNorm pair to fold"
    mods = dict(gm.named_modules())
    bn_keys = ("weight", "bias", "running_mean", "running_var")
    for _, bn_node in pairs:
        moved = [f"{bn_node.target}.{k}" for k in bn_keys if f"{bn_node.target}.{k}" in moving]
        if moved:
            return None, f"BatchNorm tensors move ({moved[0]}); folding would not be linear in the coordinates"
    scales: dict[str, torch.Tensor] = {}  # layer name -> per-output-channel scale s
    with torch.no_grad():
        for layer_node, bn_node in pairs:
            layer, bn = mods[layer_node.target], mods[bn_node.target]
            if not bn.track_running_stats or bn.running_var is None:
                return None, f"{bn_node.target} has no running statistics"
            var = bn.running_var.double()
            mean = bn.running_mean.double()
            gamma = bn.weight.double() if bn.affine else torch.ones_like(var)
            beta = bn.bias.double() if bn.affine else torch.zeros_like(var)
            s = gamma / torch.sqrt(var + bn.eps)
            w = layer.weight
            shape = (-1,) + (1,) * (w.dim() - 1)
            if isinstance(layer, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
                return None, "transposed convolutions are not folded"
            b = layer.bias.double() if layer.bias is not None else torch.zeros_like(var)
            new_w = (w.double() * s.view(shape)).to(w.dtype)
            new_b = (s * (b - mean) + beta).to(w.dtype)
            layer.weight.copy_(new_w)
            if layer.bias is None:
                layer.bias = nn.Parameter(new_b, requires_grad=False)
            else:
                layer.bias.copy_(new_b)
            scales[layer_node.target] = s
            bn_node.replace_all_uses_with(layer_node)
            gm.graph.erase_node(bn_node)
    for _, bn_node in pairs:
        _replace_module(gm, bn_node.target, nn.Identity())
    gm.graph.lint()
    gm.recompile()

    state = dict(gm.state_dict(keep_vars=True))
    tensors, dirs = [], [[] for _ in directions]
    for i, name in enumerate(names):
        if name not in moving:
            continue
        owner, _, kind = name.rpartition(".")
        if name not in state:
            return None, f"tensor {name} is not in the traced model"
        t = state[name].detach()
        s = scales.get(owner)
        for axis, d in enumerate(directions):
            di = d[i].to(device=t.device, dtype=torch.float64)
            if s is not None and kind in ("weight", "bias"):
                di = di * s.to(di.device).view((-1,) + (1,) * (di.dim() - 1))
            dirs[axis].append(di.to(t.dtype))
        tensors.append(t)
    return Folded(gm.eval(), tensors, dirs, len(pairs)), ""


def _replace_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


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

    def conv_of(node):
        m = mods.get(node.target) if node.op == "call_module" else None
        ok = (isinstance(m, nn.Conv2d) and m.padding_mode == "zeros" and not isinstance(m.padding, str)
              and len(node.users) == 1 and len(node.args) == 1 and not node.kwargs)
        return m if ok else None

    def is_relu(node):
        if node.op == "call_function" and node.target in _RELU:
            return len(node.args) == 1 and not node.kwargs.get("inplace", False)
        return node.op == "call_module" and type(mods.get(node.target)) is nn.ReLU

    def conv_args(node, m, before):
        with graph.inserting_before(before):
            w = graph.get_attr(f"{node.target}.weight")
            b = graph.get_attr(f"{node.target}.bias") if m.bias is not None else None
        return (w, b, list(m.padding), list(m.stride), list(m.dilation), m.groups, pack)

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
              and other is not node):
            last = next(iter(user.users))
            args, op = (node.args[0], other, *conv_args(node, m, last)), conv_add_relu
        else:
            continue
        with graph.inserting_before(last):
            new = graph.call_function(op, args)
        last.replace_all_uses_with(new)
        for dead in dict.fromkeys([last, user, node]):  # users first; last is user for a lone ReLU
            graph.erase_node(dead)
        fused += 1
    if fused:
        graph.lint()
        gm.recompile()
    return fused
