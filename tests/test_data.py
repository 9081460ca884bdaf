"""Data sets: the embedded digits split, files in each official format read back exactly, clear errors."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import landscape.sources.data as data_module
from landscape.sources.data import (DATASETS, DEFAULT_NORMALIZATION, IMAGENET_NORMALIZATION, JPEG_ARCHIVES, NORMALIZATIONS,
                            Normalization, cache_dir, check_normalization, jpeg_cache_path, load_dataset,
                            resolve_normalization)
from landscape.errors import LandscapeError, as_flags
from landscape.storage import read_surface

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"  # beside the clone, if at all

CALLS: list[str] = []  # what the payloads below would record, were they ever run


def _record(what: str) -> None:
    CALLS.append(what)


class Payload:
    """Unpickling this calls a function of this module: a stand-in for arbitrary code."""

    def __reduce__(self):
        return (_record, ("payload ran",))


class ShellPayload:
    """Unpickling this would run a shell command through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> dict[str, object]:
    return {s: load_dataset("digits", s) for s in ("train", "test")}


def test_digits_split(digits) -> None:
    full = np.bincount(load_digits().target)  # (10,) class counts of all 1797 images
    counts = {}
    for split, n in (("train", 1437), ("test", 360)):
        d = digits[split]
        assert len(d) == n
        assert d.x.shape == (n, 1, 8, 8) and d.x.dtype == torch.float32
        assert d.y.dtype == torch.int64
        assert float(d.x.min()) == 0.0 and float(d.x.max()) == 1.0
        assert sorted(d.y.unique().tolist()) == list(range(10))
        assert (d.in_channels, d.num_classes) == (1, 10)
        counts[split] = np.bincount(d.y.numpy(), minlength=10)
        # stratified: every class keeps its share of the full set (to rounding)
        assert np.all(np.abs(counts[split] - full * n / full.sum()) < 1), (split, counts[split])
    assert np.array_equal(counts["train"] + counts["test"], full)


def test_digits_deterministic(digits) -> None:
    again = load_dataset("digits", "train")
    assert torch.equal(again.x, digits["train"].x) and torch.equal(again.y, digits["train"].y)


def test_digits_default_normalization_is_the_training_statistics(digits) -> None:
    x = digits["train"].x.double()
    norm = DEFAULT_NORMALIZATION["digits"]
    assert norm.mean[0] == pytest.approx(float(x.mean()), abs=1e-4)
    assert norm.std[0] == pytest.approx(float(x.std()), abs=1e-4)


def test_subset(digits) -> None:
    d = digits["train"]
    a, b, c = d.subset(50, seed=1), d.subset(50, seed=1), d.subset(50, seed=2)
    assert len(a) == 50 and a.x.shape == (50, 1, 8, 8)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    # the subset's rows are rows of the set, in their original order
    rows = [int(torch.nonzero((d.x == xi).flatten(1).all(1))[0]) for xi in a.x]
    assert rows == sorted(rows) and len(set(rows)) == 50
    for n in (len(d), len(d) + 10):
        whole = d.subset(n, seed=3)
        assert torch.equal(whole.x, d.x) and torch.equal(whole.y, d.y)
    sub = load_dataset("digits", "train", n_samples=50, seed=1)  # the loader's subset is the same one
    assert torch.equal(sub.x, a.x) and torch.equal(sub.y, a.y)
    with pytest.raises(LandscapeError, match="^n_samples must be >= 1, got 0") as e:
        d.subset(0)
    assert as_flags(e.value) == "--n-samples must be >= 1, got 0"


# ------------------------------------------------------------------------------- CIFAR


def _write_pickle(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _write_cifar10(root: Path, n: int = 4) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The official python layout in root/cifar-10-batches-py; returns the raw (data, labels) per split."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    parts: dict[str, list] = {"train": [], "test": []}
    for i, name in enumerate([f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)  # rows: R plane, G plane, B plane
        labels = [(i + j) % 10 for j in range(n)]
        _write_pickle(folder / name, {b"batch_label": b"batch", b"data": data, b"labels": labels,
                                      b"filenames": [b"img.png"] * n})
        parts["test" if name == "test_batch" else "train"].append((data, labels))
    return {s: (np.concatenate([d for d, _ in p]), np.concatenate([l for _, l in p])) for s, p in parts.items()}


def test_cifar10_reads_the_official_layout(tmp_path: Path) -> None:
    raw = _write_cifar10(tmp_path)
    data, labels = raw["train"]
    data[5, 2 * 1024 + 3 * 32 + 7] = 200  # image 5 (batch 2, image 1), blue channel, row 3, column 7
    _write_pickle(tmp_path / "cifar-10-batches-py" / "data_batch_2",
                  {b"data": data[4:8], b"labels": labels[4:8].tolist()})
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the parent or the folder itself
        train = load_dataset("cifar10", "train", root=root)
        assert train.x.shape == (20, 3, 32, 32) and train.x.dtype == torch.float32
        assert float(train.x[5, 2, 3, 7]) == pytest.approx(200 / 255)
        assert float(train.x[0, 0, 0, 1]) == pytest.approx(data[0, 1] / 255)  # red, row 0, column 1
        assert float(train.x[19, 1, 31, 31]) == pytest.approx(data[19, 1024 + 1023] / 255)  # green, last pixel
        assert train.y.tolist() == labels.tolist()
        test = load_dataset("cifar10", "test", root=root)
        assert test.x.shape == (4, 3, 32, 32)
        assert test.y.tolist() == raw["test"][1].tolist()
        assert torch.equal(torch.round(test.x * 255).to(torch.uint8).flatten(1), torch.from_numpy(raw["test"][0]))


def test_cifar100_reads_the_official_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    written = {}
    for split, n in (("train", 6), ("test", 3)):
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        _write_pickle(folder / split, {b"data": data, b"fine_labels": fine, b"coarse_labels": [v // 5 for v in fine]})
        written[split] = (data, fine)
    for root in (tmp_path, folder):
        for split, (data, fine) in written.items():
            d = load_dataset("cifar100", split, root=root)
            assert d.x.shape == (len(fine), 3, 32, 32)
            assert d.y.tolist() == fine
            assert d.num_classes == 100
            assert float(d.x[1, 2, 31, 0]) == pytest.approx(data[1, 2 * 1024 + 31 * 32] / 255)


@pytest.mark.parametrize("kind", ["custom-class", "os.system"])
def test_cifar_reader_refuses_code(tmp_path: Path, kind: str) -> None:
    _write_cifar10(tmp_path)
    marker = tmp_path / "ran"
    payload = Payload() if kind == "custom-class" else ShellPayload(marker)
    _write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {b"data": payload, b"labels": [0]})
    CALLS.clear()
    with pytest.raises(LandscapeError) as e:
        load_dataset("cifar10", "test", root=tmp_path)
    msg = str(e.value)
    assert "test_batch is not a CIFAR python batch file" in msg
    assert "refusing to unpickle" in msg
    assert ("_record" if kind == "custom-class" else "system") in msg
    assert CALLS == [] and not marker.exists()


def test_cifar_batch_without_the_keys(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    _write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {"data": np.zeros((1, 3072), np.uint8), "labels": [0]})
    with pytest.raises(LandscapeError) as e:
        load_dataset("cifar10", "test", root=tmp_path)
    msg = str(e.value)
    assert "test_batch is not a CIFAR python batch file: it needs keys b'data' and b'labels'" in msg
    assert "'data'" in msg and "'labels'" in msg


# ------------------------------------------------------------------------------- CIFAR-10 JPEG archives


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache folder for the test, through $LANDSCAPE_CACHE."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("LANDSCAPE_CACHE", str(folder))
    return folder


def _smooth_images(n: int, seed: int) -> np.ndarray:
    """(n, 32, 32, 3) uint8: distinct smooth colour waves (JPEG keeps them within a few levels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0  # (32, 32)
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for i in range(n):
        f, ph = rng.uniform(0.5, 3, size=3), rng.uniform(0, 2 * np.pi, size=3)
        img = np.stack([0.5 + 0.4 * np.sin(f[c] * (xx + (c + 1) * yy) * np.pi + ph[c]) for c in range(3)], -1)
        out[i] = np.clip(img * 255 + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    return out


def _write_jpeg_archive(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """The shared archives' layout: concatenated JPEG bytes, N+1 offsets, labels, names."""
    from PIL import Image

    blobs = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=95, subsampling=0)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    names = np.array([f"{path.stem}/{i:04d}.jpg" for i in range(len(blobs))])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, jpeg=np.concatenate(blobs), offsets=offsets, y=np.asarray(labels, dtype=np.int64), names=names)


@pytest.fixture
def archives(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray, np.ndarray]]:
    """A data folder with small train (6 images) and test (4 images) JPEG archives: split -> (path, x, y)."""
    root = tmp_path / "data"
    out = {}
    for split, n, seed in (("train", 6, 10), ("test", 4, 11)):
        x, y = _smooth_images(n, seed), (np.arange(n) * 3 + seed) % 10
        _write_jpeg_archive(root / JPEG_ARCHIVES[split], x, y)
        out[split] = (root / JPEG_ARCHIVES[split], x, y)
    return out


def _as_uint8_hwc(x: torch.Tensor) -> np.ndarray:
    return torch.round(x * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, 32, 32, 3)


def test_cifar10_jpeg_archives(archives, cache: Path) -> None:
    root = archives["train"][0].parent
    before = sorted(p.name for p in root.iterdir())
    for split, (path, x, y) in archives.items():
        d = load_dataset("cifar10", split, root=root)
        assert d.x.shape == (len(y), 3, 32, 32) and d.x.dtype == torch.float32
        assert d.y.tolist() == y.tolist()  # the labels of this split's archive: the file choice is right
        assert "JPEG" in d.note and str(path) in d.note
        err = np.abs(_as_uint8_hwc(d.x).astype(int) - x.astype(int))  # (N, 32, 32, 3)
        assert err.mean() < 4 and err.max() < 20, (err.mean(), err.max())
        # each decoded image is nearest to its own original (the order is kept)
        dist = ((_as_uint8_hwc(d.x)[:, None].astype(float) - x[None].astype(float)) ** 2).mean(axis=(2, 3, 4))
        assert dist.argmin(axis=1).tolist() == list(range(len(y)))
    assert sorted(p.name for p in root.iterdir()) == before  # nothing written next to the data
    assert sorted(p.name for p in cache.iterdir()) == sorted(jpeg_cache_path(p).name for p, _, _ in archives.values())


def test_cifar10_prefers_the_lossless_batches(archives, cache: Path) -> None:
    root = archives["train"][0].parent
    raw = _write_cifar10(root)
    d = load_dataset("cifar10", "test", root=root)
    assert d.note is None and len(d) == 4
    assert torch.equal(torch.round(d.x * 255).to(torch.uint8).flatten(1), torch.from_numpy(raw["test"][0]))
    assert not cache.exists()  # no archive was opened


def test_npz_dataset_reads_a_jpeg_archive(archives, cache: Path) -> None:
    path, x, y = archives["test"]
    d = load_dataset("npz", "test", root=path)
    assert d.y.tolist() == y.tolist() and d.x.shape == (4, 3, 32, 32)
    assert np.abs(_as_uint8_hwc(d.x).astype(int) - x.astype(int)).max() < 20
    assert "JPEG" in d.note


def test_jpeg_cache_hit_skips_decoding(archives, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, y = archives["train"]
    root = path.parent
    first = load_dataset("cifar10", "train", root=root)
    cached = np.load(jpeg_cache_path(path))
    assert cached.dtype == np.uint8 and cached.shape == (6, 32, 32, 3)
    assert np.array_equal(cached, _as_uint8_hwc(first.x))  # the cache holds exactly the decode

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data_module, "_decode_jpegs", refuse)
    second = load_dataset("cifar10", "train", root=root)
    assert torch.equal(second.x, first.x) and second.y.tolist() == y.tolist()
    # a copy elsewhere (another path and mtime, same bytes) has the same key: the cache follows the content
    copy = root.parent / "elsewhere" / path.name
    copy.parent.mkdir()
    shutil.copyfile(path, copy)
    assert jpeg_cache_path(copy) == jpeg_cache_path(path)
    assert torch.equal(load_dataset("cifar10", "train", root=copy.parent).x, first.x)


def test_jpeg_cache_key_follows_the_content(archives, cache: Path) -> None:
    path, x, y = archives["test"]
    old, size = jpeg_cache_path(path), path.stat().st_size
    load_dataset("cifar10", "test", root=path.parent)
    _write_jpeg_archive(path, x[::-1].copy(), y[::-1])  # the same files in another order
    assert path.stat().st_size == size
    new = jpeg_cache_path(path)
    assert new != old and new.parent == old.parent
    d = load_dataset("cifar10", "test", root=path.parent)
    assert d.y.tolist() == y[::-1].tolist()
    assert np.abs(_as_uint8_hwc(d.x).astype(int) - x[::-1].astype(int)).max() < 20


def test_cache_dir_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANDSCAPE_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("LANDSCAPE_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "landscape"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == tmp_path / "home" / ".cache" / "landscape"


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-shape", "empty"])
def test_corrupt_cache_falls_back_to_decoding(archives, cache: Path, damage: str) -> None:
    path, _, _ = archives["train"]
    good = load_dataset("cifar10", "train", root=path.parent)
    target = jpeg_cache_path(path)
    if damage == "garbage":
        target.write_bytes(b"not an array" * 50)
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:3000])
    elif damage == "wrong-shape":
        np.save(target, np.zeros((6, 32, 32), dtype=np.uint8))
    else:
        target.write_bytes(b"")
    with pytest.warns(UserWarning) as w:
        again = load_dataset("cifar10", "train", root=path.parent)
    assert len(w) == 1
    message = str(w[0].message)
    assert message.startswith(f"ignoring the {'' if damage == 'wrong-shape' else 'unreadable '}cache file {target}")
    assert message.endswith("decoding again") and "\n" not in message
    assert torch.equal(again.x, good.x)
    assert np.array_equal(np.load(target), _as_uint8_hwc(good.x))  # rewritten whole


def test_unwritable_cache_only_warns(archives, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache folder's parent should be")
    monkeypatch.setenv("LANDSCAPE_CACHE", str(blocker / "cache"))
    path, x, y = archives["test"]
    with pytest.warns(UserWarning) as w:
        d = load_dataset("cifar10", "test", root=path.parent)
    assert len(w) == 1
    assert str(w[0].message).startswith(f"cannot write the decoded-image cache {blocker / 'cache'}")
    assert "set LANDSCAPE_CACHE to a writable folder" in str(w[0].message)
    assert d.y.tolist() == y.tolist() and np.abs(_as_uint8_hwc(d.x).astype(int) - x.astype(int)).max() < 20


def test_damaged_archives(tmp_path: Path, cache: Path) -> None:
    x = _smooth_images(3, 5)
    path = tmp_path / JPEG_ARCHIVES["test"]
    _write_jpeg_archive(path, x, np.arange(3))
    with np.load(path) as d:
        parts = dict(d)
    bad_jpeg = parts["jpeg"].copy()
    bad_jpeg[parts["offsets"][1]:parts["offsets"][1] + 16] = 0  # the second file's header
    cases = [
        (dict(parts, jpeg=bad_jpeg), r"image 1 \(cifar10_test_jpeg10k_raw/0001.jpg\) of .* cannot be used"),
        (dict(parts, offsets=parts["offsets"][:-1]), "inconsistent offsets/y"),
        (dict(parts, jpeg=parts["jpeg"][:-10]), "JPEG bytes but its offsets end at"),
        ({k: v for k, v in parts.items() if k != "offsets"}, r"is not a JPEG archive: it needs arrays \['jpeg', 'offsets', 'y'\]"),
        (dict(parts, jpeg=parts["jpeg"].astype(np.int16)), r"holds 'jpeg' as int16 \(\d+,\); a JPEG archive needs 1-D uint8"),
    ]
    for arrays, expected in cases:
        np.savez(path, **arrays)
        with pytest.raises(LandscapeError, match=expected) as e:
            data_module.read_jpeg_archive(path)
        assert "\n" not in str(e.value)
    np.savez(path, **parts)
    whole = path.read_bytes()
    for damaged, expected in ((whole[:len(whole) // 2], "File is not a zip file"), (b"x" * 100, "pickled")):
        path.write_bytes(damaged)  # a cut-off download; not an npz at all
        with pytest.raises(LandscapeError, match=f"cannot read {path} as an .npz JPEG archive .*{expected}") as e:
            load_dataset("cifar10", "test", root=tmp_path)
        assert "\n" not in str(e.value)
    assert not cache.exists()  # nothing cached from a damaged archive


@pytest.mark.skipif(not (SHARED_CIFAR10 / JPEG_ARCHIVES["test"]).is_file(), reason="the shared CIFAR-10 JPEG test archive is absent")
def test_real_jpeg_test_archive(cache: Path) -> None:
    t0 = time.perf_counter()
    d = load_dataset("cifar10", "test", root=SHARED_CIFAR10)
    decode_s = time.perf_counter() - t0
    assert d.x.shape == (10000, 3, 32, 32) and d.x.dtype == torch.float32
    assert np.bincount(d.y.numpy(), minlength=10).tolist() == [1000] * 10
    assert d.y.tolist() == sorted(d.y.tolist())  # sorted by class
    t0 = time.perf_counter()
    again = load_dataset("cifar10", "test", root=SHARED_CIFAR10)
    assert torch.equal(again.x, d.x)
    assert time.perf_counter() - t0 < decode_s  # the cache is faster than decoding
    first100 = SHARED_CIFAR10 / "cifar10_test_first100.npz"
    if first100.is_file():  # the lossless originals: image i of class c is JPEG c*1000 + (rank of i within c)
        ref = load_dataset("npz", "test", root=first100)
        ranks = [int((ref.y[:i] == c).sum()) for i, c in enumerate(ref.y.tolist())]
        jpeg = d.x[[c * 1000 + r for c, r in zip(ref.y.tolist(), ranks)]]
        mse = ((jpeg - ref.x) ** 2).flatten(1).mean(1)  # (100,)
        psnr = 10 * torch.log10(1 / mse)
        assert 28 < float(psnr.mean()) < 33 and float(psnr.min()) > 20  # ../shared/data/cifar10/README.md: 30.4 dB mean, 24.5 min


# ------------------------------------------------------------------------------- MNIST


def _idx(arr: np.ndarray) -> bytes:
    magic = 0x00000800 | arr.ndim  # 0x0803 images, 0x0801 labels: unsigned bytes
    return struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_mnist_idx_files(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(2)
    written = {}
    for prefix, n in (("train", 5), ("t10k", 3)):
        images = rng.integers(0, 256, size=(n, 7, 6), dtype=np.uint8)  # non-square: rows stay rows
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            raw = _idx(arr)
            if gz:
                (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (tmp_path / stem).write_bytes(raw)
        written["train" if prefix == "train" else "test"] = (images, labels)
    assert (tmp_path / "train-images-idx3-ubyte").exists() != gz
    for split, (images, labels) in written.items():
        d = load_dataset("mnist", split, root=tmp_path)
        assert d.x.shape == (len(labels), 1, 7, 6)
        assert torch.equal(d.x[:, 0], torch.from_numpy(images).float() / 255)
        assert d.y.tolist() == labels.tolist()


@pytest.mark.parametrize(("keep", "expected"), [
    (-5, r"is truncated: header says \(4, 3, 3\), found 31 values"),
    (10, r"is truncated: its header needs 16 bytes, the file has 10"),
], ids=["data", "header"])
def test_mnist_truncated_idx(tmp_path: Path, keep: int, expected: str) -> None:
    images = np.zeros((4, 3, 3), dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(images)[:keep])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(LandscapeError, match=expected):
        load_dataset("mnist", "test", root=tmp_path)


# ------------------------------------------------------------------------------- npz


def test_npz_file_nhwc(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(6, 5, 7, 3), dtype=np.uint8)  # (N, H, W, C)
    y = np.arange(6) % 4
    np.savez(tmp_path / "set.npz", x=x, y=y)
    d = load_dataset("npz", "train", root=tmp_path / "set.npz")
    assert d.x.shape == (6, 3, 5, 7)
    assert torch.equal(d.x, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    assert float(d.x[2, 1, 4, 6]) == pytest.approx(x[2, 4, 6, 1] / 255)
    assert d.y.tolist() == y.tolist()


def test_npz_folder_with_splits(tmp_path: Path) -> None:
    for split, n in (("train", 5), ("test", 2)):
        x = np.full((n, 4, 4, 3), 10 if split == "train" else 20, dtype=np.uint8)
        np.savez(tmp_path / f"{split}.npz", x=x, y=np.zeros(n, dtype=np.int64))
    train, test = load_dataset("npz", "train", root=tmp_path), load_dataset("npz", "test", root=tmp_path)
    assert len(train) == 5 and float(train.x.max()) == pytest.approx(10 / 255)
    assert len(test) == 2 and float(test.x.max()) == pytest.approx(20 / 255)


def test_npz_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "odd.npz"
    np.savez(path, images=np.zeros((2, 4, 4), dtype=np.uint8), targets=np.zeros(2))
    with pytest.raises(LandscapeError) as e:
        load_dataset("npz", "train", root=path)
    msg = str(e.value)
    assert "needs arrays 'x' and 'y'" in msg
    assert "['images', 'targets']" in msg


# ------------------------------------------------------------------------------- missing data


def test_cifar10_missing_folder(tmp_path: Path) -> None:
    root = tmp_path / "nonexistent"
    with pytest.raises(LandscapeError) as e:
        load_dataset("cifar10", "test", root=root)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"looked for {root / 'test_batch'} and {root / 'cifar10_test_jpeg10k_raw.npz'}" in msg
    assert "'cifar-10-batches-py'" in msg and str(root) in msg  # both accepted layouts are named
    assert "cifar10_test_jpeg10k_raw.npz (the JPEG archive)" in msg


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "npz"])
def test_file_datasets_need_data_root(name: str) -> None:
    with pytest.raises(LandscapeError, match=f"^dataset {name} needs data_root ") as e:
        load_dataset(name, "train")
    assert as_flags(e.value).startswith(f"--dataset {name} needs --data-root (the folder")


def test_unknown_dataset() -> None:
    with pytest.raises(LandscapeError) as e:
        load_dataset("imagenet", "train")
    msg = str(e.value)
    assert "'imagenet'" in msg
    assert all(name in msg for name in DATASETS)


def test_unknown_split() -> None:
    with pytest.raises(LandscapeError, match=r"split must be one of \('train', 'test'\), got 'val'"):
        load_dataset("digits", "val")


# ------------------------------------------------------------------------------- normalization


def test_normalization_apply() -> None:
    x = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 2, 2).repeat(2, 3, 1, 1)  # (2, 3, 2, 2)
    norm = Normalization(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    out = norm.apply(x)
    assert out.shape == x.shape
    assert out[0, 0].flatten().tolist() == [-1.0, -0.5, 0.0, 1.0]  # (v - 0.5) / 0.5
    assert out[1, 1].flatten().tolist() == [-1.0, 0.0, 1.0, 3.0]  # (v - 0.25) / 0.25
    assert out[0, 2].flatten().tolist() == [0.0, 0.125, 0.25, 0.5]  # v / 2
    assert torch.equal(x[0, 0].flatten(), torch.tensor([0.0, 0.25, 0.5, 1.0]))  # the input is unchanged
    assert Normalization.from_dict(norm.to_dict()) == norm


def test_normalization_channel_mismatch() -> None:
    with pytest.raises(LandscapeError, match="normalization has 3 channels but the data has 1"):
        DEFAULT_NORMALIZATION["cifar10"].apply(torch.zeros(2, 1, 8, 8))


# ------------------------------------------------------------------------------- --normalization


@pytest.mark.parametrize(("spec", "mean", "std"), [
    ("0.485,0.456,0.406/0.229,0.224,0.225", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ("0.5/0.25", (0.5,), (0.25,)),
    (" 0 , 0.5,1/1,2 ,3", (0.0, 0.5, 1.0), (1.0, 2.0, 3.0)),
    ("-1,0,1e-1/1e-3,1,2", (-1.0, 0.0, 0.1), (0.001, 1.0, 2.0)),
])
def test_normalization_parse(spec: str, mean: tuple, std: tuple) -> None:
    assert Normalization.parse(spec) == Normalization(mean, std)
    assert check_normalization(spec) == spec


@pytest.mark.parametrize(("spec", "expected"), [
    ("imagenett", "normalization must be one of checkpoint, dataset, imagenet, none or per-channel mean/std"),
    ("", "normalization must be one of"),
    ("0.5,0.5,0.5", "got '0.5,0.5,0.5'"),
    ("0.5/0.2/0.1", "got '0.5/0.2/0.1'"),
    ("a,b,c/1,1,1", "got 'a,b,c/1,1,1'"),
    ("0.5,0.5/0.2", "has 2 means but 1 stds"),
    ("0.5/0", "needs finite means and positive finite stds"),
    ("0.5/-1", "positive finite stds"),
    ("nan/1", "finite means"),
    ("0.5/inf", "positive finite stds"),
])
def test_normalization_parse_errors(spec: str, expected: str) -> None:
    with pytest.raises(LandscapeError) as e:
        check_normalization(spec)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_resolve_normalization() -> None:
    ckpt_norm = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    own = Normalization((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    cifar = DEFAULT_NORMALIZATION["cifar10"]
    assert resolve_normalization(None, "cifar10", ckpt_norm)[0] == own
    assert resolve_normalization("checkpoint", "cifar10", own)[0] == own
    assert resolve_normalization("checkpoint", "cifar10", None) == (
        cifar, "the cifar10 training-set statistics (the checkpoint has none)")
    assert resolve_normalization("checkpoint", "npz", None)[0] is None
    assert resolve_normalization("checkpoint", "mnist", {})[0] == DEFAULT_NORMALIZATION["mnist"]  # empty = absent
    assert resolve_normalization("dataset", "cifar10", ckpt_norm)[0] == cifar
    assert resolve_normalization("imagenet", "digits", ckpt_norm)[0] == IMAGENET_NORMALIZATION
    assert resolve_normalization("none", "cifar10", ckpt_norm)[0] is None
    assert resolve_normalization("1,2,3/4,5,6", "cifar10", ckpt_norm)[0] == Normalization((1, 2, 3), (4, 5, 6))
    with pytest.raises(LandscapeError, match="normalization 'dataset': npz has no default statistics"):
        resolve_normalization("dataset", "npz", None)
    with pytest.raises(LandscapeError, match="normalization metadata .* is not"):
        resolve_normalization(None, "cifar10", {"mu": [0.5]})
    assert NORMALIZATIONS == ("checkpoint", "dataset", "imagenet", "none")


@pytest.mark.parametrize(("flag", "expected"), [
    ([], None), (["--normalization", "checkpoint"], None), (["--normalization", "dataset"], "dataset"),
    (["--normalization", "imagenet"], "imagenet"), (["--normalization", "none"], "none"),
    (["--normalization=0.5,0.5,0.5/0.2,0.2,0.2"], "0.5,0.5,0.5/0.2,0.2,0.2"),
])
def test_normalization_flag(plot_surface, flag: list[str], expected: str | None) -> None:
    assert plot_surface.build_job(plot_surface.parse_args(["--x=-1:1:3", *flag])).sources.normalization == expected


def test_normalization_flag_error_is_one_line(plot_surface, capsys, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        plot_surface.main(["--normalization", "0.5,0.5/0.2", "--x=-1:1:3", "--out", str(tmp_path)])
    assert e.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["error: --normalization '0.5,0.5/0.2' has 2 means but 1 stds; give one of each per channel"]
    assert not any(tmp_path.iterdir())  # refused before any work


def test_normalization_is_recorded_and_checked_on_resume(plot_surface, capsys, digits_ckpt: Path,
                                                         tmp_path: Path) -> None:
    base = ["--ckpt", str(digits_ckpt), "--x=-1:1:3", "--n-samples", "16", "--no-progress", "--out", str(tmp_path)]
    assert plot_surface.main([*base, "--normalization", "0.5/0.25"]) == 0
    assert "note: input normalization mean (0.5,), std (0.25,) from --normalization" in capsys.readouterr().out
    surf = read_surface(tmp_path / "digits_r20_x-1_1_3.h5")
    assert surf.attrs["normalization"] == {"mean": [0.5], "std": [0.25]}
    with pytest.raises(SystemExit):  # other inputs: the data's sha256 differs
        plot_surface.main([*base, "--normalization", "none"])
    assert "computed with other settings (data.train.sha256:" in capsys.readouterr().err
    assert plot_surface.main([*base, "--normalization", "none", "--overwrite"]) == 0
    assert "note: no input normalization (--normalization none)" in capsys.readouterr().out
    assert read_surface(tmp_path / "digits_r20_x-1_1_3.h5").attrs["normalization"] is None
