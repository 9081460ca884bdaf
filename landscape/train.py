"""Training that writes checkpoints with metadata (and snapshots for trajectory plots).

The paper's recipe, scaled to the data: SGD with momentum 0.9, weight decay 5e-4,
batch 128, learning rate 0.1 divided by 10 at 50/75/90 % of training, optional
linear warm-up.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from landscape.sources.data import Normalization, TensorData
from landscape.errors import LandscapeError
from landscape.optim import CalibratedAdam

OPTIMIZERS = ("sgd", "adam", "adagrad", "rmsprop", "radam", "sadam")  # sadam: landscape.optim.CalibratedAdam


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 40
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    optimizer: str = "sgd"
    warmup_epochs: int = 0
    seed: int = 0
    save_every: int | None = None  # snapshot model_<epoch>.pt every K epochs
    augment: bool = False  # random 4-pixel-padded crop + horizontal flip (the CIFAR recipe)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise LandscapeError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}", "optimizer")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise LandscapeError("--epochs and --batch-size must be >= 1 and --lr > 0")


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    wd = cfg.weight_decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=wd)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)
    if cfg.optimizer == "radam":
        return torch.optim.RAdam(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "sadam":
        return CalibratedAdam(params, lr=cfg.lr, weight_decay=wd)
    raise LandscapeError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")


def lr_factor(epoch: float, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at a (fractional) epoch: warm-up, then /10 at 50, 75, 90 %."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return (epoch + 1e-3) / cfg.warmup_epochs
    frac = epoch / cfg.epochs
    return 0.1 ** sum(frac >= m for m in (0.5, 0.75, 0.9))


def flip_crop(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and random crop after zero padding, per image; (N, C, H, W)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=g) < 0.5
    x = torch.where(flip.to(x.device).view(n, 1, 1, 1), x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    rows = (dy.view(n, 1) + torch.arange(h)).to(x.device)  # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w)).to(x.device)  # (n, w)
    idx = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[idx, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode."""
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        loss += F.cross_entropy(out, y[i:i + batch_size], reduction="sum").item()
        correct += (out.argmax(1) == y[i:i + batch_size]).sum().item()
    return loss / len(x), correct / len(x)


def train(
    model: nn.Module,
    train_data: TensorData,
    normalization: Normalization,
    cfg: TrainConfig,
    test_data: TensorData | None = None,
    device: torch.device | str = "cpu",
    snapshot: Callable[[int, nn.Module, dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train in place; returns the final metrics and a per-epoch history.

    `snapshot(epoch, model, metrics)` is called at epoch 0 (the initial weights) and every
    `cfg.save_every` epochs, and after the last epoch.
    """
    torch.manual_seed(cfg.seed)
    device = torch.device(device)
    model.to(device)
    xtr = normalization.apply(train_data.x.to(device))
    ytr = train_data.y.to(device)
    xte = normalization.apply(test_data.x.to(device)) if test_data is not None else None
    yte = test_data.y.to(device) if test_data is not None else None
    opt = make_optimizer(model.parameters(), cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    steps = (len(xtr) + cfg.batch_size - 1) // cfg.batch_size
    autocast = device.type == "cuda"
    history = []
    t0 = time.time()
    if snapshot is not None:
        snapshot(0, model, {})
    bar = tqdm(range(1, cfg.epochs + 1), desc="train", unit="epoch", disable=not progress, dynamic_ncols=True)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(xtr), generator=g).to(device)
        total, correct = 0.0, 0
        for s in range(steps):
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_factor(epoch - 1 + s / steps, cfg)
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            xb, yb = xtr[idx], ytr[idx]
            if cfg.augment:
                xb = flip_crop(xb, g)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                out = model(xb)
                loss = F.cross_entropy(out.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
        row = {"epoch": epoch, "train_loss_running": total / len(xtr), "train_acc_running": correct / len(xtr)}
        bar.set_postfix(loss=f"{row['train_loss_running']:.3f}", acc=f"{row['train_acc_running']:.3f}")
        history.append(row)
        if snapshot is not None and cfg.save_every and epoch % cfg.save_every == 0 and epoch != cfg.epochs:
            snapshot(epoch, model, row)
    train_loss, train_acc = accuracy(model, xtr, ytr)
    final = {"train_loss": train_loss, "train_acc": train_acc, "wall_s": round(time.time() - t0, 1)}
    if xte is not None:
        final["test_loss"], final["test_acc"] = accuracy(model, xte, yte)
    if snapshot is not None:
        snapshot(cfg.epochs, model, final)
    return {"final": final, "history": history, "config": asdict(cfg)}
