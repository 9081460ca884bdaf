"""Data sets as tensors, loaded once: digits (embedded), cifar10/100, mnist, npz.

Images come back as float32 (N, C, H, W) in [0, 1]; normalization is a separate step
whose statistics travel with the checkpoint (`Normalization`).
"""

from __future__ import annotations

import gzip
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from landscape.errors import LandscapeError

DATASETS = ("digits", "cifar10", "cifar100", "mnist", "npz")
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Normalization:
    """Per-channel (x - mean) / std, applied to images in [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Return a normalized copy of x, shape (N, C, H, W)."""
        c = x.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise LandscapeError(
                f"normalization has {len(self.mean)} channels but the data has {c}; "
                "the checkpoint was trained on other data (check --dataset)"
            )
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))


# Statistics of each training set, pixels scaled to [0, 1].
DEFAULT_NORMALIZATION = {
    "digits": Normalization((0.3054,), (0.3761,)),
    "cifar10": Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Normalization((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": Normalization((0.1307,), (0.3081,)),
}

NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "mnist": 10}


@dataclass
class TensorData:
    """A labelled image set held as two tensors."""

    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64
    name: str
    split: str

    def __len__(self) -> int:
        return len(self.y)

    @property
    def in_channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES.get(self.name, int(self.y.max()) + 1)

    def subset(self, n: int | None, seed: int = 0) -> TensorData:
        """A seeded random subset of n samples (kept in their original order); None = all."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise LandscapeError(f"--n-samples must be >= 1, got {n}")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return TensorData(self.x[idx], self.y[idx], self.name, self.split)


def load_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    n_samples: int | None = None,
    seed: int = 0,
) -> TensorData:
    """Load a data set split as tensors; `n_samples` takes a seeded subset."""
    if split not in SPLITS:
        raise LandscapeError(f"split must be one of {SPLITS}, got {split!r}")
    if name == "digits":
        x, y = _digits(split)
    elif name in ("cifar10", "cifar100"):
        x, y = _cifar(name, split, _need_root(name, root))
    elif name == "mnist":
        x, y = _mnist(split, _need_root(name, root))
    elif name == "npz":
        x, y = _npz(split, _need_root(name, root))
    else:
        raise LandscapeError(f"--dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    data = TensorData(_to_float_images(x), torch.as_tensor(np.asarray(y), dtype=torch.int64), name, split)
    return data.subset(n_samples, seed)


def _need_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise LandscapeError(f"--dataset {name} needs --data-root DIR (the folder that holds the {name} files)")
    return Path(root).expanduser()


def _to_float_images(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W[, C]) or float arrays -> float32 (N, C, H, W) in [0, 1]."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    elif x.ndim != 4:
        raise LandscapeError(f"images must have shape (N, H, W), (N, H, W, C) or (N, C, H, W); got {x.shape}")
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    return t.float()


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped with the package).

    A fixed stratified split: 1,437 train / 360 test (random_state=0).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.2, random_state=0, stratify=d.target)
    return (x_tr, y_tr) if split == "train" else (x_te, y_te)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists and dicts only: the CIFAR python format, nothing executable."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2 (batches re-saved that way)
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a data file")


def _cifar(name: str, split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    folder_name = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    folder = root / folder_name if (root / folder_name).is_dir() else root
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key = b"labels"
    else:
        files = ["train"] if split == "train" else ["test"]
        label_key = b"fine_labels"
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise LandscapeError(
            f"{name} {split} files not found: looked for {folder / missing[0]}; put the extracted "
            f"'{folder_name}' folder (python version from https://www.cs.toronto.edu/~kriz/cifar.html) "
            f"inside --data-root {root}"
        )
    xs, ys = [], []
    for f in files:
        with open(folder / f, "rb") as fh:
            try:
                d = _ArrayUnpickler(fh, encoding="bytes").load()
            except (pickle.UnpicklingError, EOFError, ValueError) as e:
                raise LandscapeError(f"{folder / f} is not a CIFAR python batch file ({e})") from None
        if not isinstance(d, dict) or b"data" not in d or label_key not in d:
            found = sorted(map(repr, d))[:6] if isinstance(d, dict) else type(d).__name__
            raise LandscapeError(f"{folder / f} is not a CIFAR python batch file: it needs keys b'data' and "
                                 f"{label_key!r}, found {found}")
        xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _mnist(split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if split == "train" else "t10k"
    folders = [root, root / "MNIST" / "raw", root / "mnist"]

    def find(stem: str) -> Path:
        for folder in folders:
            for p in (folder / stem, folder / f"{stem}.gz"):
                if p.is_file():
                    return p
        raise LandscapeError(
            f"MNIST file {stem}[.gz] not found in {root} (also looked in MNIST/raw/ and mnist/); "
            "put the four IDX files from http://yann.lecun.com/exdb/mnist/ there"
        )

    x = _read_idx(find(f"{prefix}-images-idx3-ubyte"))
    y = _read_idx(find(f"{prefix}-labels-idx1-ubyte"))
    return x, y.astype(np.int64)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise LandscapeError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise LandscapeError(f"{path} is truncated: its header needs {4 + 4 * ndim} bytes, the file has {len(raw)}")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise LandscapeError(f"{path} is truncated: header says {dims}, found {data.size} values")
    return data.reshape(dims).copy()  # writable: torch warns on (and must not share) a read-only buffer


def _npz(split: str, root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A generic .npz: a file with `x`, `y` (or `x_train`, `y_train`, `x_test`, `y_test`),
    or a folder with `train.npz` / `test.npz`."""
    path = root / f"{split}.npz" if root.is_dir() else root
    if not path.is_file():
        raise LandscapeError(f"npz data not found: looked for {path}; pass --data-root FILE.npz or a folder with {split}.npz")
    with np.load(path, allow_pickle=False) as d:
        for kx, ky in ((f"x_{split}", f"y_{split}"), ("x", "y")):
            if kx in d and ky in d:
                return d[kx], d[ky]
        raise LandscapeError(f"{path} needs arrays 'x' and 'y' (or 'x_{split}', 'y_{split}'); it has {sorted(d.keys())}")


def as_tensor_data(x: Sequence | np.ndarray | torch.Tensor, y: Sequence | np.ndarray | torch.Tensor,
                   name: str = "tensors", split: str = "train") -> TensorData:
    """Wrap in-memory arrays (images in [0, 1] or uint8) as TensorData."""
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return TensorData(_to_float_images(x), torch.as_tensor(np.asarray(y), dtype=torch.int64), name, split)
