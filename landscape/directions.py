"""Directions in weight space: random (filter-normalized), interpolation, and their files.

A direction is a list of tensors, one per target tensor of the model: the parameters
(`dir_type="weights"`) or the state_dict entries (`dir_type="states"`, BN running
statistics included), in that order. Random directions are drawn on the CPU from an
explicit `torch.Generator`, so a seed gives the same direction on every device.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np
import torch
import torch.nn as nn

from landscape.errors import LandscapeError

DIR_TYPES = ("weights", "states")
NORMS = ("filter", "layer", "weight", "dfilter", "dlayer", "none")
IGNORES = ("biasbn", "none")
_EPS = 1e-10

Direction = list[torch.Tensor]


@dataclass(frozen=True)
class DirectionSpec:
    """How a random direction is drawn and normalized (the reference code's xnorm/xignore)."""

    dir_type: str = "weights"
    norm: str = "filter"
    ignore: str = "biasbn"

    def __post_init__(self) -> None:
        for value, allowed, flag in ((self.dir_type, DIR_TYPES, "dir_type"), (self.norm, NORMS, "norm"),
                                     (self.ignore, IGNORES, "ignore")):
            if value not in allowed:
                raise LandscapeError(f"{flag} must be one of {', '.join(allowed)}, got {value!r}", flag)


def target_tensors(model: nn.Module, dir_type: str) -> list[tuple[str, torch.Tensor]]:
    """The (name, tensor) pairs a direction spans; the tensors share storage with the model."""
    if dir_type == "weights":
        return [(n, p.detach()) for n, p in model.named_parameters()]
    if dir_type == "states":
        return list(model.state_dict().items())
    raise LandscapeError(f"dir_type must be one of {', '.join(DIR_TYPES)}, got {dir_type!r}", "dir_type")


def normalize_direction_(d: torch.Tensor, w: torch.Tensor, norm: str) -> None:
    """Rescale one direction tensor in place, per Li et al. (filter = per output filter)."""
    if norm == "filter":
        # each filter d_i -> d_i * ||w_i|| / ||d_i||  (first dim indexes filters / output units)
        dn = d.flatten(1).double().norm(dim=1)
        wn = w.flatten(1).double().norm(dim=1)
        scale = (wn / (dn + _EPS)).to(d.dtype)
        d.mul_(scale.view(-1, *([1] * (d.dim() - 1))))
    elif norm == "layer":
        d.mul_((w.double().norm() / (d.double().norm() + _EPS)).to(d.dtype))
    elif norm == "weight":
        d.mul_(w)
    elif norm == "dfilter":
        dn = d.flatten(1).double().norm(dim=1)
        d.div_((dn + _EPS).to(d.dtype).view(-1, *([1] * (d.dim() - 1))))
    elif norm == "dlayer":
        d.div_((d.double().norm() + _EPS).to(d.dtype))
    elif norm == "none":
        pass
    else:
        raise LandscapeError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")


def random_direction(tensors: Sequence[torch.Tensor], norm: str = "filter", ignore: str = "biasbn",
                     generator: torch.Generator | None = None) -> Direction:
    """A random direction shaped like `tensors`, normalized per tensor; new CPU tensors.

    Tensors with at most one dimension (biases, BN parameters and statistics) get a zero
    direction with `ignore="biasbn"`, otherwise a copy of the weight (the reference code's
    rule). Integer buffers (BN's num_batches_tracked) always get zeros: they are never moved.
    """
    if norm not in NORMS:
        raise LandscapeError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if ignore not in IGNORES:
        raise LandscapeError(f"ignore must be one of {', '.join(IGNORES)}, got {ignore!r}")
    out = []
    for w in tensors:
        w = w.detach().cpu()
        if not w.is_floating_point():
            out.append(torch.zeros(w.shape))
            continue
        d = torch.randn(w.shape, generator=generator, dtype=w.dtype)  # drawn for every tensor, as the reference
        if w.dim() <= 1:
            if ignore == "biasbn":
                d.zero_()
            else:
                d.copy_(w)
        else:
            normalize_direction_(d, w, norm)
        out.append(d)
    return out


def interpolation_direction(theta1: Sequence[torch.Tensor], theta2: Sequence[torch.Tensor]) -> Direction:
    """theta2 - theta1 per tensor (x=0 is model 1, x=1 is model 2); zeros for integer buffers."""
    if len(theta1) != len(theta2):
        raise LandscapeError(f"the two checkpoints have {len(theta1)} and {len(theta2)} tensors; they must share an architecture")
    out = []
    for a, b in zip(theta1, theta2):
        if a.shape != b.shape:
            raise LandscapeError(f"the two checkpoints differ in shape ({tuple(a.shape)} vs {tuple(b.shape)}); they must share an architecture")
        a, b = a.detach().cpu(), b.detach().cpu()
        out.append(b - a if a.is_floating_point() else torch.zeros(a.shape))
    return out


@dataclass
class Directions:
    """The x direction and, for 2-D surfaces, the y direction, plus the settings that made them."""

    x: Direction
    y: Direction | None = None
    names: list[str] = field(default_factory=list)  # target tensor names, for shape checks
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    def fingerprint(self) -> str:
        """sha256 of the direction values (not of the file, whose bytes may vary)."""
        h = hashlib.sha256()
        for d in (self.x, self.y or []):
            for t in d:
                h.update(str(tuple(t.shape)).encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def check_against(self, tensors: Sequence[tuple[str, torch.Tensor]], where: str = "direction file") -> None:
        """Raise a one-line error unless the directions fit these target tensors."""
        if len(self.x) != len(tensors):
            raise LandscapeError(
                f"{where} has {len(self.x)} tensors but the model has {len(tensors)} "
                f"(made for {self.attrs.get('arch', '?')}, dir_type={self.attrs.get('dir_type', '?')}); "
                "use a direction file made for this architecture and dir_type, or drop dir_file", "dir_file"
            )
        for i, (d, (name, w)) in enumerate(zip(self.x, tensors)):
            dy = self.y[i] if self.y is not None else d
            if d.shape != w.shape or dy.shape != w.shape:
                raise LandscapeError(
                    f"{where} tensor {i} has shape {tuple(d.shape)} but {name} has {tuple(w.shape)}; "
                    "the file was made for another architecture"
                )


def make_directions(tensors: Sequence[tuple[str, torch.Tensor]], spec: DirectionSpec, seed: int,
                    ndim: int = 2, same_dir: bool = False, yspec: DirectionSpec | None = None) -> Directions:
    """Random x (and y) directions from one seeded CPU generator: x first, then y."""
    g = torch.Generator().manual_seed(seed)
    ws = [w for _, w in tensors]
    x = random_direction(ws, spec.norm, spec.ignore, generator=g)
    y = None
    yspec = yspec or spec
    if ndim == 2:
        y = [t.clone() for t in x] if same_dir else random_direction(ws, yspec.norm, yspec.ignore, generator=g)
    attrs = {"kind": "random", "seed": seed, "same_dir": same_dir,
             "xnorm": spec.norm, "xignore": spec.ignore, "ynorm": yspec.norm, "yignore": yspec.ignore,
             "dir_type": spec.dir_type}
    return Directions(x, y, [n for n, _ in tensors], attrs)


def save_directions(path: str | os.PathLike, dirs: Directions) -> None:
    """Write the reference code's layout (groups xdirection/ydirection, datasets "0", "1", ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a temporary name of this process's own, then an atomic rename: the shards of a job array may
    # all write the same file at once; each writes the same contents, a reader sees one whole file
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".h5", dir=path.parent)
    os.close(fd)
    try:
        with h5py.File(tmp, "w", locking=False) as f:
            for group, d in (("xdirection", dirs.x), ("ydirection", dirs.y)):
                if d is None:
                    continue
                g = f.create_group(group)
                for i, t in enumerate(d):
                    g[str(i)] = t.detach().cpu().numpy()
            f.attrs["names"] = json.dumps(dirs.names)
            for k, v in dirs.attrs.items():
                f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) or v is None else v
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_directions(path: str | os.PathLike) -> Directions:
    """Read a direction file written here or by the reference code."""
    path = Path(path)
    if not path.is_file():
        raise LandscapeError(f"direction file {str(path)!r} does not exist; omit dir_file to draw new directions",
                             "dir_file")
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as e:
        raise LandscapeError(f"{str(path)!r} is not a readable HDF5 direction file ({e})") from None
    with f:
        if "xdirection" not in f:
            raise LandscapeError(f"{str(path)!r} has no 'xdirection' group: not a direction file")

        def read(group: str) -> Direction:
            g = f[group]
            return [torch.from_numpy(np.asarray(g[str(i)][()])) for i in range(len(g))]

        x = read("xdirection")
        y = read("ydirection") if "ydirection" in f else None
        attrs = {k: (v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v)
                 for k, v in f.attrs.items()}
    names = json.loads(attrs.pop("names")) if "names" in attrs else []
    return Directions(x, y, names, attrs)


# ---------------------------------------------------------------------------------------
# The one way every door gets its directions, and keeps them beside the surface.


def directions_path(surface: str | os.PathLike) -> Path:
    """Where a surface's directions are kept by default: `<surface stem>_dirs.h5` beside it."""
    surface = Path(surface)
    return surface.with_name(f"{surface.stem}_dirs.h5")


def resolve(model: nn.Module, given: Any, spec: DirectionSpec, seed: int, ndim: int,
            yspec: DirectionSpec | None = None, same_dir: bool = False) -> Directions:
    """The directions of a surface over `model`'s target tensors (`spec.dir_type`): `given` None draws
    random ones from `seed` (`make_directions`: x with `spec`, y with `yspec` or the same as x);
    else a Directions, a direction file's path, or a list of 1 or 2 direction lists. Checked
    against the model's tensors (shapes) and the grid's dimension."""
    tensors = target_tensors(model, spec.dir_type)
    if given is None:
        dirs = make_directions(tensors, spec, seed, ndim, same_dir, yspec)
    elif isinstance(given, Directions):
        dirs = given
    elif isinstance(given, (str, os.PathLike)):
        try:
            dirs = load_directions(given)
        except LandscapeError as e:
            raise LandscapeError(f"{e}; pass a direction file written by landscape or the reference code, or omit "
                                 "dir_file", "dir_file") from None
    elif isinstance(given, (tuple, list)) and given and all(isinstance(d, (tuple, list)) for d in given):
        if len(given) != ndim:
            raise LandscapeError(f"a {ndim}-D grid needs {ndim} directions, got {len(given)}; pass "
                                 f"{'x and y' if ndim == 2 else 'one'} direction(s), or y=None for 1-D", "directions")
        dirs = Directions(list(given[0]), list(given[1]) if ndim == 2 else None, [n for n, _ in tensors],
                          {"kind": "given", "dir_type": spec.dir_type})
    else:
        raise LandscapeError("directions must be None (random), a Directions, a direction file, or a list of "
                             f"1 or 2 directions (lists of tensors), got {type(given).__name__}", "directions")
    if ndim == 2 and dirs.y is None:
        raise LandscapeError("the directions have no y direction but the grid is 2-D; pass y=None for a 1-D surface",
                             "directions")
    where = f"direction file {given}" if isinstance(given, (str, os.PathLike)) else "the directions"
    dirs.check_against(tensors, where=where)
    return dirs


def keep_directions(path: str | os.PathLike, dirs: Directions, replace: bool) -> None:
    """Write the directions to `path` unless it holds them already; another direction file there is
    replaced only with `replace` (otherwise the surface's settings check reports the mismatch)."""
    path = Path(path)
    if path.exists():
        try:
            if load_directions(path).fingerprint() == dirs.fingerprint():
                return
        except LandscapeError:
            pass
        if not replace:
            return
    save_directions(path, dirs)


# ---------------------------------------------------------------------------------------
# The Python API's spelling: directions straight from models (`landscape.directions.random(model)`).


def random(model: nn.Module, norm: str = "filter", ignore: str = "biasbn", dir_type: str = "weights",
           generator: torch.Generator | None = None) -> Direction:
    """A random direction for `model`'s parameters (`dir_type="weights"`) or state_dict (`"states"`),
    filter-normalized by default; new CPU tensors. Pass a seeded `torch.Generator` to repeat it."""
    return random_direction([w for _, w in target_tensors(model, dir_type)], norm, ignore, generator=generator)


def interpolation(model1: nn.Module, model2: nn.Module, dir_type: str = "states") -> Direction:
    """model2 - model1 per tensor: x=0 is model1, x=1 is model2 (the 1-D Goodfellow plot)."""
    return interpolation_direction([w for _, w in target_tensors(model1, dir_type)],
                                   [w for _, w in target_tensors(model2, dir_type)])


def load(path: str | os.PathLike) -> Directions:
    """A direction file written by landscape or by the reference code."""
    return load_directions(path)
