"""Data sets as tensors, loaded once: digits (embedded), cifar10/100, mnist, npz.

Images come back as float32 (N, C, H, W) in [0, 1]; normalization is a separate step
whose statistics travel with the checkpoint (`Normalization`).

CIFAR-10 is read from the official python batches or, failing those, from archives of
the original JPEG files (`JPEG_ARCHIVES`). Decoding 50,000 JPEGs takes seconds, so the
decoded uint8 pixels are cached once per archive in the user's cache folder (`cache_dir`).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import tempfile
import warnings
import zipfile
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

    @classmethod
    def parse(cls, spec: str) -> Normalization:
        """'m1,m2,m3/s1,s2,s3' (one value per channel) -> Normalization."""
        parts = spec.split("/")
        try:
            if len(parts) != 2:
                raise ValueError
            mean, std = (tuple(float(v) for v in part.split(",")) for part in parts)
        except ValueError:
            raise LandscapeError(
                f"normalization must be one of {', '.join(NORMALIZATIONS)} or per-channel "
                f"mean/std like 0.485,0.456,0.406/0.229,0.224,0.225; got {spec!r}", "normalization"
            ) from None
        if len(mean) != len(std):
            raise LandscapeError(f"normalization {spec!r} has {len(mean)} means but {len(std)} stds; "
                                 "give one of each per channel", "normalization")
        if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
            raise LandscapeError(f"normalization {spec!r} needs finite means and positive finite stds", "normalization")
        return cls(mean, std)


# Statistics of each training set, pixels scaled to [0, 1].
DEFAULT_NORMALIZATION = {
    "digits": Normalization((0.3054,), (0.3761,)),
    "cifar10": Normalization((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Normalization((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": Normalization((0.1307,), (0.3081,)),
}

IMAGENET_NORMALIZATION = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# How `--normalization` picks the statistics (besides an explicit "m1,m2,m3/s1,s2,s3").
NORMALIZATIONS = ("checkpoint", "dataset", "imagenet", "none")

NUM_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "mnist": 10}


def check_normalization(spec: str | None) -> str | None:
    """Validate a `--normalization` value early (before any file is read); returns it unchanged."""
    if spec is not None and spec not in NORMALIZATIONS:
        Normalization.parse(spec)
    return spec


def resolve_normalization(spec: str | None, dataset: str,
                          checkpoint: Normalization | dict | None = None) -> tuple[Normalization | None, str]:
    """The statistics a `--normalization` value selects, and a few words saying where they came from.

    `spec` None means "checkpoint": the checkpoint's statistics, else the dataset's defaults,
    else none (data sets without known statistics, e.g. npz, are used as stored in [0, 1]).
    """
    spec = "checkpoint" if spec is None else spec
    if isinstance(checkpoint, dict) and not checkpoint:
        checkpoint = None  # an empty entry says nothing
    if isinstance(checkpoint, dict):
        try:
            checkpoint = Normalization.from_dict(checkpoint)
        except (KeyError, TypeError, ValueError):
            raise LandscapeError(f"the checkpoint's normalization metadata {checkpoint!r} is not {{'mean': [...], "
                                 "'std': [...]}; pass --normalization dataset, imagenet, none or m1,m2,m3/s1,s2,s3") from None
    if spec == "checkpoint":
        if checkpoint is not None:
            return checkpoint, "the checkpoint's metadata"
        if dataset in DEFAULT_NORMALIZATION:
            return DEFAULT_NORMALIZATION[dataset], f"the {dataset} training-set statistics (the checkpoint has none)"
        return None, f"neither the checkpoint nor {dataset} has statistics"
    if spec == "dataset":
        if dataset not in DEFAULT_NORMALIZATION:
            raise LandscapeError(f"normalization 'dataset': {dataset} has no default statistics (only "
                                 f"{', '.join(DEFAULT_NORMALIZATION)} do); pass imagenet, none or m1,m2,m3/s1,s2,s3",
                                 "normalization")
        return DEFAULT_NORMALIZATION[dataset], f"the {dataset} training-set statistics (--normalization dataset)"
    if spec == "imagenet":
        return IMAGENET_NORMALIZATION, "ImageNet statistics (--normalization imagenet)"
    if spec == "none":
        return None, "--normalization none"
    return Normalization.parse(spec), "--normalization"


@dataclass
class TensorData:
    """A labelled image set held as two tensors."""

    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64
    name: str
    split: str
    note: str | None = None  # a remark for the user about where the images came from
    population: int | None = None  # samples of the whole split these were drawn from (None: these)

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
        idx = _subset_indices(len(self), n, seed)
        return TensorData(self.x[idx], self.y[idx], self.name, self.split, self.note, self.population or len(self))


def _subset_indices(total: int, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded random subset of n out of total (n < total)."""
    if n < 1:
        raise LandscapeError(f"n_samples must be >= 1, got {n}", "n_samples")
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=g)[:n].sort().values


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
    note = None
    if name == "digits":
        x, y = _digits(split)
    elif name in ("cifar10", "cifar100"):
        x, y, note = _cifar(name, split, _need_root(name, root))
    elif name == "mnist":
        x, y = _mnist(split, _need_root(name, root))
    elif name == "npz":
        x, y, note = _npz(split, _need_root(name, root))
    else:
        raise LandscapeError(f"dataset must be one of {', '.join(DATASETS)}, got {name!r}", "dataset")
    y = np.asarray(y)
    whole = len(y)
    if n_samples is not None and n_samples < len(y):  # the same subset as TensorData.subset, taken before
        idx = _subset_indices(len(y), n_samples, seed).numpy()  # the float conversion (4x the uint8 memory)
        x, y = np.asarray(x)[idx], y[idx]
    return TensorData(_to_float_images(x), torch.as_tensor(y, dtype=torch.int64), name, split, note, whole)


def _need_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise LandscapeError(f"dataset {name} needs data_root (the folder that holds the {name} files)", ("dataset", "data_root"))
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


def _cifar(name: str, split: str, root: Path) -> tuple[np.ndarray, np.ndarray, str | None]:
    """(images, labels, note): the official python batches, else (CIFAR-10) the JPEG archive."""
    folder_name = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    folder = root / folder_name if (root / folder_name).is_dir() else root
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key = b"labels"
    else:
        files = ["train"] if split == "train" else ["test"]
        label_key = b"fine_labels"
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and name == "cifar10":
        archive = root / JPEG_ARCHIVES[split]
        if archive.is_file():
            x, y = read_jpeg_archive(archive)
            return x, y, (f"cifar10 {split}: decoded from the JPEG copies in {archive} "
                          "(lossy: losses and accuracies differ from the official batches)")
        raise LandscapeError(
            f"cifar10 {split} files not found: looked for {folder / missing[0]} and {archive}; put the extracted "
            f"'{folder_name}' folder (python version from https://www.cs.toronto.edu/~kriz/cifar.html) "
            f"or {JPEG_ARCHIVES[split]} (the JPEG archive) inside --data-root {root}"
        )
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
    return np.concatenate(xs), np.concatenate(ys), None


# ------------------------------------------------------------------------------- JPEG archives
# An .npz holding original JPEG files: `jpeg` (all files' bytes concatenated, uint8), `offsets`
# (int64, N+1: image i is jpeg[offsets[i]:offsets[i+1]]), `y` (N,) and optionally `names` (N,).

JPEG_ARCHIVES = {"train": "cifar10_train_jpeg50k.npz", "test": "cifar10_test_jpeg10k_raw.npz"}
_JPEG_KEYS = ("jpeg", "offsets", "y")
_CACHE_FORMAT = 1  # part of every cache key: bump when the decoded array's meaning changes
_FINGERPRINT_BYTES = 1 << 20


def cache_dir() -> Path:
    """The user cache folder: $LANDSCAPE_CACHE, else $XDG_CACHE_HOME/landscape, else ~/.cache/landscape."""
    if os.environ.get("LANDSCAPE_CACHE"):
        return Path(os.environ["LANDSCAPE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "landscape"


def jpeg_cache_path(archive: Path) -> Path:
    """Where the decoded pixels of `archive` are cached.

    The key hashes the file's size, first and last MiB, and the decoder (Pillow) version. An
    .npz is a zip whose last bytes (the central directory) hold every member's CRC-32, so the
    key changes with the content, not with the path or the modification time of a copy.
    """
    import PIL

    size = archive.stat().st_size
    h = hashlib.sha256(f"landscape-jpeg-cache {_CACHE_FORMAT} {size} Pillow {PIL.__version__}\n".encode())
    with open(archive, "rb") as f:
        h.update(f.read(_FINGERPRINT_BYTES))
        f.seek(max(0, size - _FINGERPRINT_BYTES))
        h.update(f.read())
    return cache_dir() / f"{archive.stem}-{h.hexdigest()[:16]}.npy"


def read_jpeg_archive(archive: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32, 3) uint8 RGB, labels (N,) int64) of a JPEG archive, via the cache."""
    try:
        return _read_jpeg_archive(archive)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        cause = str(e).splitlines()[0].split(". ")[0][:120] if str(e) else type(e).__name__
        raise LandscapeError(f"cannot read {archive} as an .npz JPEG archive ({cause}); copy the file again "
                             "or check --data-root") from None


def _read_jpeg_archive(archive: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(archive, allow_pickle=False) as d:
        missing = [k for k in _JPEG_KEYS if k not in d]
        if missing:
            raise LandscapeError(f"{archive} is not a JPEG archive: it needs arrays {list(_JPEG_KEYS)}, "
                                 f"it has {sorted(d.keys())}")
        offsets = d["offsets"].astype(np.int64)  # (N + 1,)
        y = d["y"].astype(np.int64)  # (N,)
        n = len(offsets) - 1
        if n < 1 or len(y) != n or offsets[0] != 0 or np.any(np.diff(offsets) <= 0):
            raise LandscapeError(f"{archive} has inconsistent offsets/y ({len(offsets)} offsets, {len(y)} labels); "
                                 "it needs N+1 increasing offsets from 0 and N labels")
        cache = jpeg_cache_path(archive)
        x = _load_cache(cache, n)
        if x is None:
            jpeg = d["jpeg"]  # (total bytes,) uint8
            if jpeg.dtype != np.uint8 or jpeg.ndim != 1:
                raise LandscapeError(f"{archive} holds 'jpeg' as {jpeg.dtype} {jpeg.shape}; a JPEG archive needs "
                                     "1-D uint8 bytes")
            if offsets[-1] != jpeg.size:
                raise LandscapeError(f"{archive} has {jpeg.size} JPEG bytes but its offsets end at {offsets[-1]}; "
                                     "the file is damaged, copy it again")
            names = d["names"] if "names" in d else None
            x = _decode_jpegs(jpeg, offsets, archive, names)
            _save_cache(cache, x)
    return x, y


def _decode_jpegs(jpeg: np.ndarray, offsets: np.ndarray, archive: Path,
                  names: np.ndarray | None = None) -> np.ndarray:
    """Decode every JPEG with Pillow to RGB; returns (N, 32, 32, 3) uint8."""
    from PIL import Image, UnidentifiedImageError

    n = len(offsets) - 1
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)  # (N, H, W, C)
    buf = memoryview(jpeg)
    for i in range(n):
        try:
            with Image.open(io.BytesIO(buf[offsets[i]:offsets[i + 1]])) as img:
                img = img.convert("RGB")
                if img.size != (32, 32):
                    raise ValueError(f"it is {img.size[0]}x{img.size[1]}, not 32x32")
                out[i] = np.asarray(img)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            what = f"image {i}" + (f" ({names[i]})" if names is not None else "")
            raise LandscapeError(f"{what} of {archive} cannot be used ({e}); the archive is damaged, copy it again") from None
    return out


def _load_cache(cache: Path, n: int) -> np.ndarray | None:
    """The cached (n, 32, 32, 3) uint8 array, or None (absent, or unusable: then say so)."""
    try:
        x = np.load(cache, allow_pickle=False)
    except (FileNotFoundError, NotADirectoryError):  # not cached yet (or no cache folder: writing will say so)
        return None
    except (OSError, ValueError, EOFError) as e:
        warnings.warn(f"ignoring the unreadable cache file {cache} ({str(e).splitlines()[0]}); decoding again",
                      stacklevel=3)
        return None
    if x.dtype != np.uint8 or x.shape != (n, 32, 32, 3):
        warnings.warn(f"ignoring the cache file {cache}: it holds {x.dtype} {x.shape}, not uint8 {(n, 32, 32, 3)}; "
                      "decoding again", stacklevel=3)
        return None
    return x


def _save_cache(cache: Path, x: np.ndarray) -> None:
    """Write the cache atomically (a temporary file, then os.replace); a failure only warns."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=f".{cache.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, x)
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a shared LANDSCAPE_CACHE should stay readable
            os.replace(tmp, cache)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        warnings.warn(f"cannot write the decoded-image cache {cache} ({e}); each run will decode again "
                      "(set LANDSCAPE_CACHE to a writable folder)", stacklevel=3)


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


def _npz(split: str, root: Path) -> tuple[np.ndarray, np.ndarray, str | None]:
    """A generic .npz: a file with `x`, `y` (or `x_train`, `y_train`, `x_test`, `y_test`),
    or a folder with `train.npz` / `test.npz`; a JPEG archive (`jpeg`, `offsets`, `y`) also works."""
    path = root / f"{split}.npz" if root.is_dir() else root
    if not path.is_file():
        raise LandscapeError(f"npz data not found: looked for {path}; set data_root to FILE.npz or a folder with {split}.npz", "data_root")
    with np.load(path, allow_pickle=False) as d:
        for kx, ky in ((f"x_{split}", f"y_{split}"), ("x", "y")):
            if kx in d and ky in d:
                return d[kx], d[ky], None
        is_jpeg = all(k in d for k in _JPEG_KEYS)
        if not is_jpeg:
            raise LandscapeError(f"{path} needs arrays 'x' and 'y' (or 'x_{split}', 'y_{split}', or a JPEG "
                                 f"archive's {', '.join(_JPEG_KEYS)}); it has {sorted(d.keys())}")
    x, y = read_jpeg_archive(path)
    return x, y, f"npz {split}: decoded from the JPEG files in {path} (lossy copies)"


def as_tensor_data(x: Sequence | np.ndarray | torch.Tensor, y: Sequence | np.ndarray | torch.Tensor,
                   name: str = "tensors", split: str = "train") -> TensorData:
    """Wrap in-memory arrays (images in [0, 1] or uint8) as TensorData."""
    x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return TensorData(_to_float_images(x), torch.as_tensor(np.asarray(y), dtype=torch.int64), name, split)
