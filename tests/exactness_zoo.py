"""The differential harness: small models the engine was not written for, every engine path, and a
plain evaluation written here to compare with.

Each case is a model with random weights and random BatchNorm statistics, inputs, and a per-sample
loss computed in float64. For each engine path `run_path` computes the surface with
`landscape.compute_surface` at a few points, and `plain_losses` computes the same points the plain
way: a fresh copy of the model, the point's weights written in (theta0 + x dx + y dy), `model(x)`
in eval mode on the whole set, the mean loss in float64. A path must agree to REL (fp32) or be
refused with a LandscapeError; never a wrong number.

`python tests/exactness_zoo.py` prints the table (model x path -> exact / refused, and which
BatchNorms fold) that docs/exactness.md holds; tests/test_exactness.py asserts it.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import landscape as ll  # noqa: E402
from landscape.config import DataOptions, RunOptions  # noqa: E402
from landscape.engine import EngineOptions  # noqa: E402
from landscape.grid import Grid  # noqa: E402
from landscape.errors import LandscapeError  # noqa: E402
from landscape.engine.hardware import is_native  # noqa: E402

QUIET = RunOptions(progress=False)
REL = 1e-6  # fp32 paths: relative difference of the mean loss allowed against plain evaluation
BF16_REL = 1e-2  # bf16: its rounding (measured here: at most 2.3e-3; the engine stores its error at the center)
N = 37  # samples: batches of 16 leave a short last one
BATCH = 16
X_AXIS, Y_AXIS = ll.Axis(-0.5, 0.5, 3), ll.Axis(-0.4, 0.4, 2)  # six points (x = 0 among them)


TEMPERATURE = 10.0  # random models give nearly uniform scores: sharpened, the loss feels every difference


def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy in float64 of the scores times TEMPERATURE (class scores (N, C) or
    (N, C, T) against (N,) or (N, T))."""
    return F.cross_entropy(TEMPERATURE * out.double(), y, reduction="none")


def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine parameters in every BatchNorm (folding must use them)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return model


# ---------------------------------------------------------------------------- the zoo


class ConvTwice(nn.Module):
    """One conv applied twice, each time followed by its own BN: neither BN may fold into it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv = nn.Conv2d(6, 6, 3, padding=1)
        self.bn1, self.bn2 = nn.BatchNorm2d(6), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.bn1(self.conv(h)))
        h = torch.relu(self.bn2(self.conv(h)))
        return self.fc(h.mean((2, 3)))


class LinearLastDim(nn.Module):
    """A Linear over the last dim of (N, C, L) followed by BatchNorm1d(C) with C == out_features:
    the BN normalizes dim 1, the Linear's features are the last dim: not foldable."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)
        self.head = nn.Linear(36, 5)

    def forward(self, x):  # x (N, 6, 6)
        return self.head(torch.relu(self.bn(self.fc(x))).flatten(1))


class SharedBlock(nn.Module):
    """One Linear + BatchNorm1d block applied to two branches."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(torch.relu(self.block(self.a(x))) + torch.relu(self.block(self.b(x))))


class PreAct(nn.Module):
    """Pre-activation residual blocks (BN -> ReLU -> conv): no BN follows a conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1, self.conv1 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.bn2, self.conv2 = nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1)
        self.bn3, self.fc = nn.BatchNorm2d(8), nn.Linear(8, 5)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(h))))))
        return self.fc(torch.relu(self.bn3(h)).mean((2, 3)))


class Grouped(nn.Module):
    """Depthwise and grouped convolutions, each with a BN; a residual ReLU block to fuse."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.gc = nn.Conv2d(8, 8, 1, groups=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(self.bn1(self.dw(h)))
        h = torch.relu(self.bn2(self.gc(h)) + h)
        return self.fc(h.mean((2, 3)))


class Transposed(nn.Module):
    """A grouped ConvTranspose2d + BN (its weight is (in, out / groups, k, k))."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(4, 6, 2, stride=2, groups=2)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.up(torch.relu(self.conv(x))))).mean((2, 3)))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):  # x (N, 3, 12)
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(2))


class Conv3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):  # x (N, 2, 4, 4, 4)
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3, 4)))


class AffineFreeBN(nn.Module):
    """BN with affine=False and a custom eps, after a conv and after a Linear (2-D output)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6, affine=False, eps=1e-2)
        self.fc1 = nn.Linear(6, 8, bias=False)
        self.bn1 = nn.BatchNorm1d(8, eps=0.3)
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc2(torch.relu(self.bn1(self.fc1(h))))


class BatchStatsBN(nn.Module):
    """A BN without running statistics: it normalizes with each batch's own statistics, in eval too."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6, track_running_stats=False)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.relu(self.bn2(self.conv2(h))).mean((2, 3)))


class Norms(nn.Module):
    """GroupNorm, LayerNorm and InstanceNorm: nothing to fold, everything to evaluate."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.inorm(torch.relu(self.gn(self.conv(x)))))
        return self.fc(self.ln(h.mean((2, 3))))


class TiedLM(nn.Module):
    """Tied embedding and output weights; a BatchNorm1d over the output logits' vocabulary dim
    after the tied head (folding would scale the embedding too)."""

    vocab, width, length = 11, 8, 5

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(self.vocab, self.width)
        self.mix = nn.Linear(self.width, self.width)
        self.head = nn.Linear(self.width, self.vocab, bias=False)
        self.head.weight = self.emb.weight
        self.bn = nn.BatchNorm1d(self.vocab)

    def forward(self, tokens):  # (N, T) -> (N, vocab, T)
        h = torch.tanh(self.mix(self.emb(tokens)))  # (N, T, W)
        logits = self.head(h.reshape(-1, self.width))  # (N*T, vocab)
        logits = self.bn(logits)
        return logits.view(tokens.shape[0], tokens.shape[1], self.vocab).transpose(1, 2)


class Attention(nn.Module):
    """nn.MultiheadAttention over a sequence, then a Linear + BN head."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 5)

    def forward(self, x):  # (N, 6, 4)
        h = self.inp(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(torch.relu(self.bn(self.fc(a.mean(1)))))


class Recurrent(nn.Module):
    """An LSTM, then a Linear + BN head."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)
        self.out = nn.Linear(8, 5)

    def forward(self, x):  # (N, 6, 4)
        h, _ = self.lstm(x)
        return self.out(torch.relu(self.bn(self.fc(h[:, -1]))))


class DictOut(nn.Module):
    """Returns a dict; the loss reads its "logits"."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        feats = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return {"logits": self.fc(feats), "features": feats}


class TupleOut(nn.Module):
    """Returns (logits, features); a residual conv block whose ReLU can be fused."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)) + h)
        feats = h.mean((2, 3))
        return self.fc(feats), feats


class FunctionalReuse(nn.Module):
    """A Linear followed by a BN, whose weight is also used through F.linear elsewhere."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = torch.relu(self.bn(self.fc(x)))
        return self.head(h + 0.5 * F.linear(x, self.fc.weight))


class ShapeChecked(nn.Module):
    """Checks its input's shape in Python, as transformers' models do: torch.fx cannot trace it,
    torch.export can; conv + BN blocks and a broadcasting bias after a conv (not fusable)."""

    channels = 3

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.shift = nn.Parameter(torch.randn(1, 6, 1, 1))
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        if x.shape[1] != self.channels:
            raise ValueError("wrong number of channels")
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)) + self.shift)
        return self.fc(h.mean((2, 3)))


class Unused(nn.Module):
    """A conv + BN network with a parameterized module its forward never calls."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.spare = nn.Linear(6, 6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def images(n: int = N, c: int = 3, size: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g), torch.randint(0, 5, (n,), generator=g)


def vectors(shape, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, *shape, generator=g), torch.randint(0, 5, (N,), generator=g)


def tokens(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TiedLM.vocab, (N, TiedLM.length), generator=g)
    return ids, torch.roll(ids, 1, dims=1)


@dataclass
class Case:
    """A zoo model: how to build it, its data, its float64 per-sample loss, and what folding must do."""

    name: str
    build: Callable[[], nn.Module]
    data: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    loss: Callable[[Any, torch.Tensor], torch.Tensor] = ce
    folds: int = 0  # BatchNorms that must fold
    kept: dict[str, str] = field(default_factory=dict)  # BN -> a part of the reason it must stay
    capture: str = "torch.fx"


def _logits(fn):
    return lambda out, y: fn(out["logits"] if isinstance(out, dict) else out[0], y)


ZOO = [
    Case("conv_twice", ConvTwice, images, kept={"bn1": "called at 2 sites", "bn2": "called at 2 sites"}),
    Case("linear_last_dim", LinearLastDim, lambda: vectors((6, 6)),
         kept={"bn": "does not normalize the output features of fc"}),
    Case("shared_block", SharedBlock, lambda: vectors((8,)), kept={"block.1": "called at 2 sites"}),
    Case("preactivation", PreAct, images, folds=1,  # bn2 follows conv1
         kept={"bn1": "output of stem also feeds other operations", "bn3": "input is not"}),
    Case("depthwise_grouped", Grouped, images, folds=3),
    Case("conv_transpose", Transposed, lambda: images(size=8), folds=1),
    Case("conv1d", Conv1dNet, lambda: vectors((3, 12)), folds=1),
    Case("conv3d", Conv3dNet, lambda: vectors((2, 4, 4, 4)), folds=1),
    Case("bn_affine_false_eps", AffineFreeBN, images, folds=2),
    Case("bn_batch_statistics", BatchStatsBN, images, folds=1, kept={"bn": "batch statistics"}),
    Case("group_layer_instance_norm", Norms, images),
    Case("tied_embedding", TiedLM, tokens, kept={"bn": "second name"}),
    Case("multihead_attention", Attention, lambda: vectors((6, 4)), folds=1),
    Case("lstm", Recurrent, lambda: vectors((6, 4)), folds=1),
    Case("dict_output", DictOut, images, loss=_logits(ce), folds=1),
    Case("tuple_output", TupleOut, images, loss=_logits(ce), folds=2),
    Case("functional_reuse", FunctionalReuse, lambda: vectors((8,)), kept={"bn": "another operation reads"}),
    Case("shape_checked", ShapeChecked, images, folds=2, capture="torch.export"),
    Case("unused_module", Unused, images, folds=1),
]
CASES = {c.name: c for c in ZOO}


def build(case: Case, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_bn_(case.build(), seed).eval()


# ---------------------------------------------------------------------------- plain evaluation


def _targets(model: nn.Module, dir_type: str) -> list[tuple[str, torch.Tensor]]:
    return list(model.named_parameters()) if dir_type == "weights" else list(model.state_dict(keep_vars=True).items())


def plain_losses(case: Case, model: nn.Module, dir_type: str, directions, coords) -> list[float]:
    """The mean loss at each point, the plain way: a fresh copy, the point's weights written in,
    model(x) on the whole set in eval mode, the mean of the float64 per-sample losses."""
    x, y = case.data()
    out = []
    for c in coords:
        m = copy.deepcopy(model)
        with torch.no_grad():
            for i, (_, t) in enumerate(_targets(m, dir_type)):
                if not t.is_floating_point():
                    continue
                new = t.detach().clone()
                for ci, d in zip(c, directions):
                    if ci != 0:
                        new.add_(d[i].to(t.dtype), alpha=float(ci))
                t.data.copy_(new)
            m.eval()
            out.append(float(case.loss(m(x), y).double().mean()))
    return out


# ---------------------------------------------------------------------------- the engine's paths


PATHS = {  # name -> compute_surface keyword arguments (besides the data, loss and grid)
    "plain": dict(engine=EngineOptions(fold_bn=False, fuse=False, prepack=False, channels_last=False,
                                       batch_size=BATCH)),
    "fold": dict(engine=EngineOptions(fold_bn=True, fuse=False, prepack=False, channels_last=False, batch_size=BATCH)),
    "fuse": dict(engine=EngineOptions(fold_bn=True, fuse=True, prepack=False, channels_last=False, batch_size=BATCH)),
    "prepack": dict(engine=EngineOptions(fold_bn=True, fuse=True, prepack=True, channels_last=False,
                                         batch_size=BATCH)),
    "channels_last": dict(engine=EngineOptions(fold_bn=False, fuse=False, channels_last=True, batch_size=BATCH)),
    "default": dict(),  # the API's defaults, batch size included
    "K=3": dict(engine=EngineOptions(batch_size=BATCH, points_per_launch=3)),
    "stream": dict(batch_size=BATCH, data_options=DataOptions(stream=True)),
    "states": dict(batch_size=BATCH, dir_type="states"),
    "interpolation": dict(batch_size=BATCH, dir_type="states"),
    "bf16": dict(batch_size=BATCH, precision="bf16"),
    "compile": dict(engine=EngineOptions(batch_size=BATCH, compile=True)),
}
COMPILED = ("conv_twice", "dict_output")  # compile is slow on the CPU: a few models


@dataclass
class Outcome:
    """One model on one path: the largest relative difference from plain evaluation, or the refusal."""

    rel: float | None = None
    refused: str | None = None
    report: dict[str, Any] | None = None  # the surface file's engine attribute

    def exact(self, path: str) -> bool:
        return self.rel is not None and self.rel <= (BF16_REL if path == "bf16" else REL)


def directions_for(case: Case, model: nn.Module, path: str):
    """(dir_type, directions, grid axes) of a path: two filter-normalized random directions over the
    weights; over the state_dict with ignore="none" (BN statistics move too) for "states"; for
    "interpolation" model -> a perturbed copy of it over the state_dict, a 1-D grid."""
    g = torch.Generator().manual_seed(7)
    if path == "interpolation":
        other = copy.deepcopy(model)
        with torch.no_grad():
            for name, t in other.state_dict().items():
                if not t.is_floating_point():
                    continue
                if name.endswith("running_var"):
                    t.mul_(torch.exp(0.2 * torch.randn(t.shape, generator=g)))  # stays positive
                else:
                    t.add_(0.1 * torch.randn(t.shape, generator=g))
        return "states", [ll.directions.interpolation(model, other, dir_type="states")], (ll.Axis(-0.5, 1.0, 4), None)
    if path == "states":
        return "states", [ll.directions.random(model, dir_type="states", ignore="none", generator=g)
                          for _ in range(2)], (X_AXIS, Y_AXIS)
    return "weights", [ll.directions.random(model, generator=g) for _ in range(2)], (X_AXIS, Y_AXIS)


def run_path(case: Case, path: str) -> Outcome:
    """The surface of `case` on `path` against plain evaluation."""
    model = build(case)
    dir_type, dirs, (xa, ya) = directions_for(case, model, path)
    kwargs = dict(PATHS[path])
    kwargs.pop("dir_type", None)
    x, y = case.data()
    data: Any = (x, y)
    if path == "stream":
        data = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, N, BATCH)]
    try:
        surf = ll.compute_surface(copy.deepcopy(model), data, loss=case.loss, metrics={}, x=xa, y=ya,
                                  directions=dirs, dir_type=dir_type, run=QUIET, **kwargs)
    except LandscapeError as e:
        return Outcome(refused=str(e))
    coords = [tuple(p) for p in Grid(xa, ya).points()]
    got = surf.metrics["train_loss"].reshape(-1)
    ref = plain_losses(case, model, dir_type, dirs, coords)
    rel = max(abs(g - r) / max(abs(r), 1e-300) for g, r in zip(got, ref))
    report = surf.attrs.get("engine")
    return Outcome(rel=float(rel), report=json.loads(report) if isinstance(report, str) else report)


def fold_summary(case: Case) -> str:
    """Which BatchNorms fold on the default path, and why the others do not."""
    out = run_path(case, "default")
    r = out.report or {}
    kept = r.get("not_folded", {})
    parts = [f"{r.get('folded', 0)} folded" + (f" ({r['capture']})" if r.get("folded") else "")]
    if kept:
        parts.append("kept: " + "; ".join(f"{m} ({why})" for m, why in kept.items()))
    return ", ".join(parts)


def paths_for(case: Case) -> list[str]:
    return [p for p in PATHS if p != "compile" or case.name in COMPILED]


def table() -> str:
    """The markdown table of every model on every path."""
    native = is_native("bf16", "cpu")
    head = list(PATHS)
    lines = ["| model | BatchNorm folding | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for case in ZOO:
        cells = []
        for p in head:
            if p not in paths_for(case):
                cells.append("")
                continue
            o = run_path(case, p)
            if o.refused is not None:
                cells.append("refused")
            else:
                cells.append(f"exact ({o.rel:.0e})" if o.exact(p) else f"**WRONG {o.rel:.1e}**")
        lines.append(f"| {case.name} | {fold_summary(case)} | " + " | ".join(cells) + " |")
    from landscape.engine import compile_refusal
    from landscape.engine.hardware import describe, device_info

    compiled = "compile: refused on the CPU with this torch" if compile_refusal(torch.device("cpu")) else ""
    foot = (f"\n{describe(device_info('cpu'))}, torch {torch.__version__}: bf16 "
            f"{'native' if native else 'not native, refused'}; {compiled + '; ' if compiled else ''}"
            f"fp32 paths within {REL:g} relative of plain evaluation, bf16 within {BF16_REL:g}.")
    return "\n".join(lines) + "\n" + foot


if __name__ == "__main__":
    print(table())
