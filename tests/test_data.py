"""Data sets: the embedded digits split, files in each official format read back exactly, clear errors."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from landscape.data import DATASETS, DEFAULT_NORMALIZATION, Normalization, load_dataset
from landscape.errors import LandscapeError

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
    with pytest.raises(LandscapeError, match="--n-samples must be >= 1, got 0"):
        d.subset(0)


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
    assert f"looked for {root / 'test_batch'}" in msg
    assert "'cifar-10-batches-py'" in msg and str(root) in msg


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "npz"])
def test_file_datasets_need_data_root(name: str) -> None:
    with pytest.raises(LandscapeError, match=f"--dataset {name} needs --data-root DIR"):
        load_dataset(name, "train")


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
