#!/usr/bin/env python3
"""The loss landscape of a tiny character-level transformer language model.

The text ships with Python: the Zen of Python (`import this`, stored ROT13-encoded as `this.s`).
A 2-layer causal transformer learns to predict each next character; the surface is the
per-token cross-entropy over every other 32-character window, around the trained weights, along two
filter-normalized random directions. The model's output is (batch, tokens, vocabulary): the
loss and the metric are small callables, nothing in `landscape` is told about sequences.

    python examples/tiny_lm.py                      # under 2 minutes on 2 CPU cores (training ~30 s)
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import landscape as ll  # noqa: E402


class TinyLM(nn.Module):
    """Token and position embeddings, a causal transformer encoder, a linear read-out: (N, T) -> (N, T, V)."""

    def __init__(self, vocab: int, context: int, width: int = 48, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Embedding(context, width)
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        h = self.tokens(idx) + self.positions(torch.arange(t, device=idx.device))  # (N, T, width)
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
        return self.head(self.blocks(h, mask=mask, is_causal=True))  # (N, T, V)


def token_cross_entropy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy, shape (N, T): landscape averages it per window."""
    return ll.losses.cross_entropy(out.transpose(1, 2), target)  # class scores along dim 1


def token_accuracy(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ll.metrics.accuracy(out.transpose(1, 2), target)  # (N, T)


def windows(text: str, context: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Every window of `context` characters and the same window shifted by one: (inputs, targets)."""
    chars = sorted(set(text))
    ids = torch.tensor([chars.index(c) for c in text])
    starts = torch.arange(len(ids) - context)
    x = torch.stack([ids[s:s + context] for s in starts])  # (N, T)
    y = torch.stack([ids[s + 1:s + 1 + context] for s in starts])  # (N, T)
    return x, y, chars


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="training steps (AdamW, batch 64)")
    p.add_argument("--grid", type=int, default=21, help="points per axis")
    p.add_argument("--range", type=float, default=0.3, help="each axis spans -R..R (the basin is narrow)")
    p.add_argument("--out", default="docs/examples",
                   help="folder for the figure (the surface file goes to results/examples/)")
    args = p.parse_args()
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # `import this` prints the Zen; we want its text
        import this
    text = codecs.decode(this.s, "rot13")
    context = 32
    x, y, chars = windows(text, context)
    model = TinyLM(len(chars), context)

    t0 = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        i = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(model(x[i]).transpose(1, 2), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s; last batch loss {loss.item():.3f} "
          f"(uniform guess: {math.log(len(chars)):.2f})")

    out = Path(args.out)
    t0 = time.perf_counter()
    axis = ll.Axis(-args.range, args.range, args.grid)
    x, y = x[::2], y[::2]  # every other window: the text is covered, at half the cost per point
    surf = ll.compute_surface(model, (x, y), token_cross_entropy, {"acc": token_accuracy}, x=axis, y=axis, seed=0,
                              out=Path("results/examples/tiny_lm.h5"), run=ll.RunOptions(overwrite=True, progress=False))
    print(f"surface of {surf.done.size} points over {len(x)} windows in {time.perf_counter() - t0:.0f} s; "
          f"loss at the center {surf.metrics['train_loss'][args.grid // 2, args.grid // 2]:.3f}")

    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    surf.plot_contour(ax=ax1, vmin=0.0, vmax=4.0, vlevel=0.25)
    ax1.set_title("per-token cross-entropy")
    ll.plot.contourf(surf, "train_acc", vmin=0.0, vmax=1.0001, vlevel=0.1, ax=ax2)
    ax2.set_title("next-character accuracy")
    fig.suptitle("TinyLM on the Zen of Python (examples/tiny_lm.py)")
    path = out / "tiny_lm.png"
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
