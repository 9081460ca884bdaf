#!/usr/bin/env python3
"""A notebook, as a script: build a model inline, train it briefly, plot its landscape with the API only.

Each `# %%` cell could be pasted into a Jupyter notebook as it is. The data are scikit-learn's
bundled 8x8 digits; the evaluation reads them through a DataLoader, so the surface is streamed:
each batch is read once per block of 8 grid points (`points_per_pass`).

    python examples/notebook_style.py               # about 40 s on 2 CPU cores
"""

# %% imports
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import landscape as ll  # noqa: E402

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/examples")

# %% data: 1797 digits, 8x8 gray levels 0..16
torch.manual_seed(0)
digits = load_digits()
x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
y = torch.tensor(digits.target)
train = TensorDataset(x[:1400], y[:1400])

# %% a model, inline
model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
    nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
    nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
)

# %% train briefly
t0 = time.perf_counter()
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
for epoch in range(15):
    for xb, yb in DataLoader(train, batch_size=64, shuffle=True):
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
print(f"trained 15 epochs in {time.perf_counter() - t0:.0f} s")

# %% the landscape: a DataLoader (shuffle=False) is streamed, 8 grid points per pass
t0 = time.perf_counter()
loader = DataLoader(train, batch_size=256, shuffle=False)
surf = ll.compute_surface(model, loader, ll.losses.cross_entropy, {"acc": ll.metrics.accuracy},
                          x=ll.Axis(-1, 1, 21), y=ll.Axis(-1, 1, 21), seed=0,
                          data_options=ll.DataOptions(points_per_pass=8), run=ll.RunOptions(progress=False))
line = ll.compute_surface(model, loader, ll.losses.cross_entropy, {"acc": ll.metrics.accuracy},
                          x=ll.Axis(-1, 1, 41), y=None, seed=0,
                          data_options=ll.DataOptions(points_per_pass=8), run=ll.RunOptions(progress=False))
print(f"surfaces in {time.perf_counter() - t0:.0f} s; loss at the center {surf.metrics['train_loss'][10, 10]:.3f}, "
      f"accuracy {surf.metrics['train_acc'][10, 10]:.3f}")

# %% plot
fig = Figure(figsize=(10, 4))
surf.plot_contour(ax=fig.add_subplot(1, 2, 1), vmin=0.0, vmax=4.0, vlevel=0.25)
line.plot_line(ax=fig.add_subplot(1, 2, 2))
fig.suptitle("a CNN built and trained inline on 8x8 digits (examples/notebook_style.py)")
OUT.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT / "notebook_style.png", dpi=110, bbox_inches="tight")
print(f"figure: {OUT / 'notebook_style.png'}")
