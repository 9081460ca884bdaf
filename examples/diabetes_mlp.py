#!/usr/bin/env python3
"""The loss landscape of an MLP regression: mean squared error on scikit-learn's diabetes data.

The data ship with scikit-learn (442 patients, 10 features, a disease-progression score); no
download. Features and target are standardized, 80% train / 20% test. The surface stores the
MSE on both splits (`train_loss`, `test_loss`) and a metric of our own, the mean absolute error
(`train_mae`, `test_mae`), around the trained weights.

    python examples/diabetes_mlp.py                 # about 10 s on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from sklearn.datasets import load_diabetes  # noqa: E402

import landscape as ll  # noqa: E402


def absolute_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample |prediction - target| (N,)."""
    return (out.squeeze(1) - target).abs()


def load() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    x, y = load_diabetes(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:354], order[354:]
    mx, sx, my, sy = x[train].mean(0), x[train].std(0), y[train].mean(), y[train].std()
    return {s: ((x[i] - mx) / sx, (y[i] - my) / sy) for s, i in (("train", train), ("test", test))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300, help="full-batch Adam steps")
    p.add_argument("--grid", type=int, default=41, help="points per axis")
    p.add_argument("--out", default="docs/examples",
                   help="folder for the figure (the surface file goes to results/examples/)")
    args = p.parse_args()
    torch.manual_seed(0)
    data = load()
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    t0 = time.perf_counter()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data["train"]
    for _ in range(args.steps):
        loss = ll.losses.squared_error(model(x), y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s; train MSE {loss.item():.3f} "
          "(standardized target: 1.0 is predicting the mean)")

    out = Path(args.out)
    t0 = time.perf_counter()
    axis = ll.Axis(-1, 1, args.grid)
    surf = ll.compute_surface(model, data, ll.losses.squared_error, {"mae": absolute_error}, x=axis, y=axis,
                              seed=0, out=Path("results/examples/diabetes_mlp.h5"), run=ll.RunOptions(overwrite=True, progress=False))
    c = args.grid // 2
    print(f"surface of {surf.done.size} points in {time.perf_counter() - t0:.0f} s; at the center train MSE "
          f"{surf.metrics['train_loss'][c, c]:.3f}, test MSE {surf.metrics['test_loss'][c, c]:.3f}")

    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    for i, split in enumerate(("train", "test")):
        ax = fig.add_subplot(1, 2, i + 1)
        ll.plot.contour(surf, f"{split}_loss", vmin=0.0, vmax=3.0, vlevel=0.2, ax=ax)
        ax.set_title(f"{split} MSE (standardized)")
    fig.suptitle("MLP regression on scikit-learn's diabetes data (examples/diabetes_mlp.py)")
    path = out / "diabetes_mlp.png"
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
