"""PCA directions of a training trajectory and the path projected onto them (Li et al. 2018, Sec. 7).

Random directions are nearly orthogonal to an optimizer's path in high dimensions, so a
path drawn on a random plane barely moves. Instead: take the snapshots theta_0 .. theta_n of
one run and the final weights theta_f, form u_i = theta_i - theta_f (flattened, tensors with
<= 1 dimension left out with ignore="biasbn"), and use the top two principal components of
the u_i as the plane; the path then projects onto it with most of its variance.

The PCA goes through the n x n Gram matrix G_ij = <u_i, u_j> (n snapshots, n << parameters):
eigenvectors v_k of the centered G give the directions d_k = sum_i (Hv_k)_i u_i / sqrt(lambda_k)
(H centers), orthonormal by construction. Snapshots are memory-mapped and read one tensor at
a time: the only block in memory is (n snapshots) x (one tensor, or a chunk of one), never an
(n, n_params) matrix.

The directions are stored like any direction file (`save_directions`, the reference layout)
with the explained variance in the attributes; the projected path goes to `*_proj.h5` with
`proj_xcoord` and `proj_ycoord`, as the reference code writes it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from landscape.sources.checkpoint import _unwrap, load_checkpoint, save_checkpoint
from landscape.directions import IGNORES, Directions, target_tensors
from landscape.errors import LandscapeError
from landscape.grid import Axis
from landscape.plot.animate import (PATH_COLORS, Path2D, PathAnimation, draw_loss_contours,  # noqa: F401 (re-exported)
                                    interpolate_surface, loss_levels)
from landscape.train import TrainConfig, train

CHUNK_ELEMENTS = 1 << 24  # at most this many float64 values in one (n_snapshots, chunk) block (128 MiB)


# ---------------------------------------------------------------------------- snapshots


def snapshot_paths(folder: str | os.PathLike, prefix: str = "model_", suffix: str = ".pt", start_epoch: int = 0,
                   max_epoch: int | None = None, save_epoch: int = 1) -> list[tuple[int, Path]]:
    """(epoch, path) of `<folder>/<prefix><epoch><suffix>` for epoch = start, start+K, ..., max (the reference's loop).

    `max_epoch` None: the largest epoch present in the folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LandscapeError(f"folder {str(folder)!r} is not a folder; point it at the snapshots of "
                             "scripts/train.py --save-every K", "folder")
    if save_epoch < 1:
        raise LandscapeError(f"save_epoch must be >= 1, got {save_epoch}", "save_epoch")
    if max_epoch is None:
        pattern = re.compile(rf"^{re.escape(prefix)}(\d+){re.escape(suffix)}$")
        epochs = [int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))]
        if not epochs:
            raise LandscapeError(f"no {prefix}<epoch>{suffix} file in {folder}; check prefix and suffix", ("prefix", "suffix"))
        max_epoch = max(epochs)
    if max_epoch < start_epoch:
        raise LandscapeError(f"max_epoch ({max_epoch}) is below start_epoch ({start_epoch})", ("max_epoch", "start_epoch"))
    out = [(e, folder / f"{prefix}{e}{suffix}") for e in range(start_epoch, max_epoch + 1, save_epoch)]
    missing = [str(p) for _, p in out if not p.is_file()]
    if missing:
        raise LandscapeError(f"{len(missing)} snapshot(s) missing, first {missing[0]}; check start_epoch, "
                             "max_epoch and save_epoch against the files in the folder",
                             ("start_epoch", "max_epoch", "save_epoch"))
    return out


def _lazy_state(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's state_dict, memory-mapped: a tensor's bytes are read only when it is used.

    Files that cannot be mapped (torch's legacy, non-zip format) are read whole by `load_checkpoint`,
    which also turns unreadable files into one-line errors.
    """
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - torch raises several types; load_checkpoint says what is wrong
        return load_checkpoint(path).state_dict
    state, _ = _unwrap(obj, path)
    return state


def _names(model: torch.nn.Module, dir_type: str) -> list[tuple[str, torch.Tensor]]:
    return target_tensors(model, dir_type)


def _included(w: torch.Tensor, ignore: str) -> bool:
    if not w.is_floating_point():
        return False
    return w.dim() > 1 if ignore == "biasbn" else True


# ---------------------------------------------------------------------------- PCA


@dataclass
class PCA:
    """Two orthonormal principal directions of a trajectory and what they explain."""

    directions: Directions
    explained_variance: np.ndarray  # (2,) eigenvalues / (n - 1), as sklearn's PCA
    explained_variance_ratio: np.ndarray  # (2,) share of the total variance of the u_i
    gram: np.ndarray  # (n, n) <u_i, u_j>, float64, not centered
    coords: np.ndarray  # (n, 2) projections of u_i onto the directions (from the Gram matrix)
    peak_block_elements: int  # the largest (n, chunk) block held at once: the memory the PCA needed


def trajectory_pca(snapshots: Sequence[str | os.PathLike], final: str | os.PathLike, model: torch.nn.Module,
                   dir_type: str = "weights", ignore: str = "biasbn", center: bool = True,
                   chunk_elements: int = CHUNK_ELEMENTS) -> PCA:
    """PCA of u_i = theta_i - theta_final over the snapshots, through their Gram matrix.

    `model` holds the final weights and says which tensors make a direction (`dir_type`) and
    their order. `center=True` subtracts the mean of the u_i first, as the reference code's
    sklearn PCA does. The directions have a zero tensor wherever a tensor is left out.
    """
    if ignore not in IGNORES:
        raise LandscapeError(f"ignore must be one of {', '.join(IGNORES)}, got {ignore!r}")
    n = len(snapshots)
    if n < 3:
        raise LandscapeError(f"a trajectory PCA needs at least 3 snapshots, got {n}; save more often "
                             "(--save-every) or lower --save_epoch")
    targets = _names(model, dir_type)
    names = [k for k, _ in targets]
    keep = [i for i, (_, w) in enumerate(targets) if _included(w, ignore)]
    if not keep:
        raise LandscapeError("no tensor is left to span directions (every tensor has <= 1 dimension); use --ignore none")
    theta_f = [targets[i][1].detach().cpu() for i in keep]
    states = [_lazy_state(Path(p)) for p in snapshots]
    _check_keys(states, snapshots, [names[i] for i in keep], theta_f)

    def blocks():
        """(index into keep, flat slice, block (n, c) of u_i restricted to it) over every kept tensor."""
        for j, i in enumerate(keep):
            size = theta_f[j].numel()
            step = max(1, chunk_elements // n)
            f = theta_f[j].reshape(-1).double()
            for a in range(0, size, step):
                b = min(size, a + step)
                block = torch.stack([s[names[i]].reshape(-1)[a:b].double() for s in states]) - f[a:b]  # (n, c)
                yield j, slice(a, b), block

    gram = torch.zeros(n, n, dtype=torch.float64)
    peak = 0
    for _, _, block in blocks():
        gram += block @ block.T
        peak = max(peak, block.numel())
    g = gram.numpy()
    h = np.eye(n) - (1.0 / n if center else 0.0)  # (n, n) centering
    gc = h @ g @ h
    lam, vec = np.linalg.eigh(gc)  # ascending
    lam, vec = lam[::-1][:2], vec[:, ::-1][:, :2]
    total = float(np.trace(gc))
    if not total > 0 or not lam[1] > 1e-12 * lam[0]:
        raise LandscapeError("the snapshots span fewer than 2 dimensions (identical weights?); a trajectory plane "
                             "needs a path that moves in at least two directions")
    w = h @ vec / np.sqrt(lam)  # (n, 2): d_k = sum_i w_ik u_i
    coords = g @ w  # (n, 2): <u_i, d_k>
    flip = np.where(coords[0] > 0, -1.0, 1.0)  # a fixed orientation: the path starts at negative coordinates
    w, coords = w * flip, coords * flip
    wt = torch.from_numpy(w.T.copy())  # (2, n)
    dx = [torch.zeros_like(t) if t.is_floating_point() else torch.zeros(t.shape) for _, t in targets]
    dy = [d.clone() for d in dx]
    flat = {j: (dx[i].view(-1), dy[i].view(-1)) for j, i in enumerate(keep)}
    for j, sl, block in blocks():
        d = wt @ block  # (2, c)
        flat[j][0][sl] = d[0].to(dx[keep[j]].dtype)
        flat[j][1][sl] = d[1].to(dy[keep[j]].dtype)
    ratio = lam / total
    variance = lam / max(1, n - 1)
    attrs = {"kind": "pca", "dir_type": dir_type, "xignore": ignore, "yignore": ignore, "center": center,
             "explained_variance": variance.tolist(), "explained_variance_ratio": ratio.tolist(),
             "n_snapshots": n, "snapshots": [str(p) for p in snapshots], "final": str(final)}
    return PCA(Directions(dx, dy, names, attrs), variance, ratio, g, coords, peak)


def _check_keys(states, paths, names, theta_f) -> None:
    for s, p in zip(states, paths):
        missing = [k for k in names if k not in s]
        if missing:
            raise LandscapeError(f"snapshot {p} lacks {missing[0]} ({len(missing)} tensors in all); every snapshot "
                                 "must come from the same architecture as --final")
        for k, w in zip(names, theta_f):
            if tuple(s[k].shape) != tuple(w.shape):
                raise LandscapeError(f"snapshot {p} has {k} of shape {tuple(s[k].shape)} but the final model has "
                                     f"{tuple(w.shape)}; every snapshot must come from the same architecture")


# ---------------------------------------------------------------------------- projection


def project_trajectory(snapshots: Sequence[str | os.PathLike], model: torch.nn.Module, dirs: Directions,
                       dir_type: str = "weights") -> np.ndarray:
    """(n, 2) coordinates of theta_i - theta_model in the plane of `dirs`, one snapshot in memory at a time.

    Least squares onto (d_x, d_y) (the reference's "lstsq"): exact for any two independent
    directions, and the plain dot products when they are orthonormal.
    """
    if dirs.y is None:
        raise LandscapeError("projecting a trajectory needs a direction file with x and y directions")
    targets = _names(model, dir_type)
    dirs.check_against(targets)
    live = [i for i, (_, w) in enumerate(targets)
            if w.is_floating_point() and (bool(dirs.x[i].any()) or bool(dirs.y[i].any()))]
    dd = np.zeros((2, 2))  # Gram of the directions
    for i in live:
        a, b = dirs.x[i].double(), dirs.y[i].double()
        dd += [[float((a * a).sum()), float((a * b).sum())], [float((a * b).sum()), float((b * b).sum())]]
    out = np.empty((len(snapshots), 2))
    for k, p in enumerate(snapshots):
        state = _lazy_state(Path(p))
        rhs = np.zeros(2)
        for i in live:
            name, w = targets[i]
            if name not in state:
                raise LandscapeError(f"snapshot {p} lacks {name}; it is not from the model's architecture")
            u = state[name].double() - w.detach().cpu().double()
            rhs += [float((u * dirs.x[i].double()).sum()), float((u * dirs.y[i].double()).sum())]
        out[k] = np.linalg.solve(dd, rhs)
    return out


def path_length(snapshots: Sequence[str | os.PathLike], model: torch.nn.Module, dir_type: str = "weights",
                ignore: str = "biasbn") -> float:
    """sum_i ||theta_{i+1} - theta_i|| over the tensors a direction spans, two snapshots in memory at a time."""
    targets = _names(model, dir_type)
    names = [k for k, w in targets if _included(w, ignore)]
    total, prev = 0.0, None
    for p in snapshots:
        state = _lazy_state(Path(p))
        if prev is not None:
            total += float(np.sqrt(sum(float((state[k].double() - prev[k].double()).pow(2).sum()) for k in names)))
        prev = state
    return total


def write_projection(path: str | os.PathLike, coords: np.ndarray, epochs: Sequence[int] | None = None,
                     attrs: Mapping[str, Any] | None = None) -> Path:
    """`proj_xcoord`, `proj_ycoord` (n,) as the reference code's *_proj file, plus `epochs`; atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w", locking=False) as f:
        f["proj_xcoord"] = np.asarray(coords[:, 0], dtype=np.float64)
        f["proj_ycoord"] = np.asarray(coords[:, 1], dtype=np.float64)
        if epochs is not None:
            f["epochs"] = np.asarray(epochs, dtype=np.int64)
        for k, v in (attrs or {}).items():
            f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) or v is None else v
    os.replace(tmp, path)
    return path


def read_projection(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """((n, 2) coordinates, epochs or None) from a *_proj.h5 file, ours or the reference code's."""
    path = Path(path)
    if not path.is_file():
        raise LandscapeError(f"projection file {str(path)!r} does not exist")
    with h5py.File(path, "r", locking=False) as f:
        if "proj_xcoord" not in f or "proj_ycoord" not in f:
            raise LandscapeError(f"{str(path)!r} has no proj_xcoord/proj_ycoord: not a projection file")
        coords = np.stack([f["proj_xcoord"][:], f["proj_ycoord"][:]], axis=1)
        epochs = f["epochs"][:] if "epochs" in f else None
    return coords, epochs


def covering_axes(coords: np.ndarray, num: int = 21, margin: float = 0.2) -> tuple[Axis, Axis]:
    """x and y axes covering the points (and the origin, the final weights) with `margin` of the span each side."""
    if num < 2:
        raise LandscapeError(f"a trajectory surface needs at least 2 points per axis, got {num}")
    if not margin >= 0:
        raise LandscapeError(f"margin must be >= 0, got {margin}", "margin")
    axes = []
    for c in (coords[:, 0], coords[:, 1]):
        lo, hi = min(float(c.min()), 0.0), max(float(c.max()), 0.0)
        pad = margin * (hi - lo) if hi > lo else 1.0
        axes.append(Axis(lo - pad, hi + pad, num))
    return axes[0], axes[1]


# ---------------------------------------------------------------------------- figures

def axis_label(k: int, ratio: float) -> str:
    """'PC1: 93.4 %'."""
    return f"PC{k + 1}: {100.0 * ratio:.1f} %"


def draw_paths(ax: Axes, paths: Sequence[Path2D], annotate_epochs: bool = True) -> None:
    """Each path as a line with dots at the snapshots, its start (open circle) and end (filled star) marked."""
    for k, p in enumerate(paths):
        c = p.color or PATH_COLORS[k % len(PATH_COLORS)]
        ax.plot(p.coords[:, 0], p.coords[:, 1], "-", color=c, lw=1.3, label=p.label, zorder=3)
        ax.plot(p.coords[:, 0], p.coords[:, 1], ".", color=c, ms=4, zorder=3)
        ax.plot(*p.coords[0], "o", mfc="white", mec=c, ms=7, mew=1.5, zorder=4)
        ax.plot(*p.coords[-1], "*", color=c, ms=11, mec="k", mew=0.5, zorder=4)
        if annotate_epochs and p.epochs is not None and len(paths) == 1:
            span = float(np.ptp(p.coords, axis=0).max()) or 1.0
            last = None
            for (x, y), e in zip(p.coords, p.epochs):  # label epochs at least 5 % of the span apart
                if last is None or np.hypot(x - last[0], y - last[1]) > 0.05 * span:
                    ax.annotate(str(int(e)), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=c)
                    last = (x, y)


def trajectory_figure(x: np.ndarray, y: np.ndarray, z: np.ndarray | None, paths: Sequence[Path2D],
                      ratios: Sequence[float], title: str = "", vmax: float | None = None,
                      n_levels: int = 20) -> Figure:
    """Loss contours (log-spaced levels) on the PCA plane with the paths on top; axes say the explained variance.

    `z` (ny, nx) may be None (paths only); masked or NaN values are not drawn.
    """
    fig = Figure(figsize=(7.2, 6.0), layout="constrained")
    ax = fig.add_subplot()
    if z is not None:
        draw_loss_contours(ax, x, y, z, vmax=vmax, n_levels=n_levels)
    draw_paths(ax, paths)
    ax.plot([0], [0], "+", color="k", ms=10, zorder=5)
    ax.set_xlabel(axis_label(0, ratios[0]))
    ax.set_ylabel(axis_label(1, ratios[1]))
    ax.set_title(title)
    if len(paths) > 2:
        fig.set_figheight(6.0 + 0.22 * ((len(paths) + 1) // 2))
        fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    else:
        ax.legend(fontsize=8, loc="best")
    return fig


SURFACE_LOSS = "train loss of the surface at the projected point (bilinear)"


def trajectory_animation(x: np.ndarray | None, y: np.ndarray | None, z: np.ndarray | None, paths: Sequence[Path2D],
                         ratios: Sequence[float], title: str = "", frames: int | None = None,
                         vmax: float | None = None) -> PathAnimation:
    """The paths moving together over the loss contours of their PCA plane, one snapshot per frame.

    Each path's loss in the title is the surface z (ny, nx) interpolated at its projected point (the
    loss on the plane, where the path is drawn; NaN off the grid); without a surface, no loss.
    """
    if z is not None:
        paths = [replace(p, losses=interpolate_surface(x, y, z, p.coords)) for p in paths]
    return PathAnimation(paths, x, y, z, frames=frames, title=title, loss_name=SURFACE_LOSS if z is not None else None,
                         step_name="epoch", xlabel=axis_label(0, ratios[0]), ylabel=axis_label(1, ratios[1]),
                         vmax=vmax, marks=[(0.0, 0.0)])


# ---------------------------------------------------------------------------- optimizers compared on one plane


@dataclass(frozen=True)
class OptimizerRun:
    """One optimizer of a comparison: its label, its `train.py --optimizer` name, learning rate and momentum."""

    label: str
    optimizer: str
    lr: float
    momentum: float = 0.0

    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.label.lower()).strip("_")


# Learning rates for a CIFAR ResNet-20 with BN on the digits (batch 128, wd 5e-4, /10 at 50/75/90 %).
DEFAULT_RUNS = (
    OptimizerRun("SGD", "sgd", 0.05),
    OptimizerRun("SGD+momentum", "sgd", 0.02, 0.9),
    OptimizerRun("AdaGrad", "adagrad", 0.01),
    OptimizerRun("RMSprop", "rmsprop", 1e-3),
    OptimizerRun("Adam", "adam", 1e-3),
    OptimizerRun("RAdam", "radam", 1e-3),
    OptimizerRun("CalibratedAdam", "sadam", 1e-3),
)


@dataclass
class RunResult:
    """A trained run: its snapshots in order (the last is `final`), their epochs, and the final metrics."""

    run: OptimizerRun
    snapshots: list[Path]
    epochs: list[int]
    final: Path
    metrics: dict[str, float]
    trained: bool  # False when an earlier run with the same settings was reused


def state_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's state_dict values (names, shapes and bytes)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_runs(runs: Sequence[OptimizerRun], init: torch.nn.Module, meta: Mapping[str, Any], train_data, test_data,
               normalization, base: TrainConfig, out: str | os.PathLike, device: str | torch.device = "cpu",
               progress: bool = True, retrain: bool = False, log=print) -> list[RunResult]:
    """Train a copy of `init` with each optimizer: same initial weights, same batches, same schedule (`base`).

    Each run writes `out/<slug>/model_<epoch>.pt` every epoch (epoch 0: the initial weights) and
    `out/<slug>/final.pt`. A run whose final.pt records the same settings is reused unless `retrain`.
    """
    if not runs:
        raise LandscapeError("no optimizer to compare; give at least one in runs", "runs")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels) or len({r.slug() for r in runs}) != len(runs):
        raise LandscapeError(f"optimizer labels must be distinct, got {labels}")
    init_sha = state_fingerprint(init)
    results = []
    for run in runs:
        cfg = replace(base, optimizer=run.optimizer, lr=run.lr, momentum=run.momentum, save_every=1)
        folder = Path(out) / run.slug()
        final = folder / "final.pt"
        settings = json.dumps({"run": asdict(run), "train": asdict(cfg), "init_sha256": init_sha}, sort_keys=True)
        snaps = [folder / f"model_{e}.pt" for e in range(cfg.epochs)]
        if final.is_file() and not retrain and all(p.is_file() for p in snaps):
            old = load_checkpoint(final).meta
            if old.get("comparison") == settings:
                metrics = {k: float(old[k]) for k in ("train_loss", "train_acc", "test_loss", "test_acc", "wall_s")
                           if k in old}
                log(f"{run.label}: reusing {final}")
                results.append(RunResult(run, [*snaps, final], list(range(cfg.epochs + 1)), final, metrics, False))
                continue
        model = copy.deepcopy(init)
        run_meta = {**meta, "optimizer": run.label, "comparison": settings}

        def snapshot(epoch, m, metrics, folder=folder, cfg=cfg, run_meta=run_meta):
            if epoch != cfg.epochs:
                save_checkpoint(folder / f"model_{epoch}.pt", m, {**run_meta, "epoch": epoch})

        log(f"{run.label}: training {cfg.epochs} epochs ({run.optimizer}, lr {run.lr:g}, momentum {run.momentum:g})")
        result = train(model, train_data, normalization, cfg, test_data, device, snapshot, progress)
        save_checkpoint(final, model, {**run_meta, "epoch": cfg.epochs, **result["final"]})
        results.append(RunResult(run, [*snaps, final], list(range(cfg.epochs + 1)), final, dict(result["final"]), True))
    return results


def run_statistics(pca: PCA, slices: Mapping[str, slice]) -> dict[str, dict[str, float]]:
    """Per run (rows `slices` of the joint PCA): path length in weight space and in the plane, and the
    share of the run's squared distance to the origin (sum_i ||u_i||^2) that the plane captures.

    Everything comes from the Gram matrix: ||u_{i+1} - u_i||^2 = G_{i+1,i+1} + G_ii - 2 G_{i,i+1}.
    """
    g, c = pca.gram, pca.coords
    out = {}
    for label, sl in slices.items():
        idx = np.arange(pca.gram.shape[0])[sl]
        a, b = idx[:-1], idx[1:]
        steps = np.sqrt(np.maximum(g[a, a] + g[b, b] - 2 * g[a, b], 0.0))
        plane = np.linalg.norm(np.diff(c[idx], axis=0), axis=1)
        total = float(np.trace(g[np.ix_(idx, idx)]))
        captured = float((c[idx] ** 2).sum()) / total if total > 0 else float("nan")
        out[label] = {"path_length": float(steps.sum()), "plane_path_length": float(plane.sum()),
                      "variance_captured": captured}
    return out
