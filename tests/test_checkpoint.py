"""Checkpoints: every common layout loads to the same weights; mismatches and bad files are one-line errors."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn as nn

from landscape.sources.checkpoint import KNOWN_CHECKPOINTS, build_model, load_checkpoint, save_checkpoint, sha256_file
from landscape.errors import LandscapeError
from landscape.models import get_model

AKAMASTER = Path(__file__).resolve().parents[2] / "shared" / "checkpoints" / "akamaster"  # CI: shared/ beside the clone
AKAMASTER_FILES = {
    "resnet20": "resnet20-12fca82f.th",
    "resnet32": "resnet32-d509ac18.th",
    "resnet44": "resnet44-014dd654.th",
    "resnet56": "resnet56-4bfd9763.th",
}


class Note:
    """A plain Python object, as some trainers pickle next to the weights."""

    def __init__(self, text: str) -> None:
        self.text = text


def make_model(arch: str = "resnet20", seed: int = 0) -> nn.Module:
    """A seeded 1-channel, 10-class model with non-default BN statistics (so buffers must load too)."""
    torch.manual_seed(seed)
    model = get_model(arch, num_classes=10, in_channels=1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def outputs(model: nn.Module) -> torch.Tensor:
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        return model.eval()(x)


def prefixed(sd: dict, prefix: str) -> OrderedDict:
    return OrderedDict((prefix + k, v) for k, v in sd.items())


LAYOUTS: dict[str, Callable[[dict], object]] = {
    "bare": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd},
    "model": lambda sd: {"model": sd},
    "net": lambda sd: {"net": sd, "epoch": 3},
    "model_state_dict": lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
    "module.": lambda sd: prefixed(sd, "module."),
    "_orig_mod.": lambda sd: prefixed(sd, "_orig_mod."),
    "module._orig_mod.": lambda sd: prefixed(sd, "module._orig_mod."),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_loads_the_same_weights(tmp_path: Path, layout: str) -> None:
    model = make_model()
    path = tmp_path / "ckpt.pt"
    torch.save(LAYOUTS[layout](model.state_dict()), path)
    loaded, arch, notes = build_model(load_checkpoint(path), "resnet20")
    assert arch == "resnet20"
    assert notes == []
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert torch.equal(outputs(loaded), outputs(model))


def test_save_checkpoint_metadata_round_trip(tmp_path: Path) -> None:
    # resnet20_noshort has the same keys and shapes as resnet20: only the metadata can tell them apart
    model = make_model("resnet20_noshort")
    path = tmp_path / "meta.pt"
    sha = save_checkpoint(path, model, {"arch": "resnet20_noshort", "num_classes": 10, "in_channels": 1})
    ckpt = load_checkpoint(path)
    assert ckpt.sha256 == sha
    assert ckpt.meta == {"arch": "resnet20_noshort", "num_classes": 10, "in_channels": 1}
    loaded, arch, notes = build_model(ckpt)
    assert arch == "resnet20_noshort"
    assert notes == []
    assert torch.equal(outputs(loaded), outputs(model))


def test_option_b_is_detected_without_metadata(tmp_path: Path) -> None:
    model = make_model("resnet20_b")
    path = tmp_path / "b.pt"
    torch.save(model.state_dict(), path)
    loaded, arch, notes = build_model(load_checkpoint(path))
    assert arch == "resnet20_b"
    assert len(notes) == 1 and "resnet20_b" in notes[0]
    assert torch.equal(outputs(loaded), outputs(model))


def test_option_a_without_metadata_is_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "a.pt"
    torch.save(make_model("resnet20").state_dict(), path)
    with pytest.raises(LandscapeError) as e:
        build_model(load_checkpoint(path))
    msg = str(e.value)
    assert "resnet20," in msg and "resnet20_noshort" in msg
    assert "--model" in msg
    assert str(path) in msg


def test_projection_shortcut_checkpoint_switches_to_b(tmp_path: Path) -> None:
    model = make_model("resnet20_b")
    path = tmp_path / "ref_resnet20.pt"
    torch.save({"state_dict": prefixed(model.state_dict(), "module.")}, path)
    loaded, arch, notes = build_model(load_checkpoint(path), "resnet20")
    assert arch == "resnet20_b"
    assert len(notes) == 1 and "resnet20_b" in notes[0] and "resnet20" in notes[0]
    assert torch.equal(outputs(loaded), outputs(model))


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    sd = make_model().state_dict()
    del sd["layer2.1.conv2.weight"]
    sd["head.scale"] = torch.ones(10)
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(LandscapeError) as e:
        build_model(load_checkpoint(path), "resnet20")
    msg = str(e.value)
    assert "\n" not in msg
    assert "resnet20" in msg
    assert "missing keys: layer2.1.conv2.weight" in msg
    assert "unexpected keys: head.scale" in msg
    assert "closest architectures" in msg


def test_shape_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "r20.pt"
    torch.save(make_model().state_dict(), path)
    with pytest.raises(LandscapeError) as e:
        build_model(load_checkpoint(path), "resnet20", num_classes=7)
    msg = str(e.value)
    assert "\n" not in msg
    assert "num_classes=7" in msg
    assert "shape mismatches: linear.weight (10, 64) vs (7, 64)" in msg
    assert "missing keys" not in msg and "unexpected keys" not in msg


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(LandscapeError, match="does not exist") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _truncated(path: Path) -> None:
    torch.save(make_model().state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])


@pytest.mark.parametrize("damage", [_random_bytes, _truncated], ids=["random-bytes", "truncated"])
def test_unreadable_file(tmp_path: Path, damage: Callable[[Path], None]) -> None:
    path = tmp_path / "bad.pt"
    damage(path)
    with pytest.raises(LandscapeError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert msg.startswith(f"cannot read checkpoint {str(path)!r}: ")
    assert "\n" not in msg
    assert "--allow-pickle" not in msg  # pickle would not help: the file is damaged


def test_pickled_object_needs_allow_pickle(tmp_path: Path) -> None:
    model = make_model()
    path = tmp_path / "with_object.pt"
    torch.save({"state_dict": model.state_dict(), "note": Note("trained on digits")}, path)
    with pytest.raises(LandscapeError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "--allow-pickle" in msg
    assert "Note" in msg
    assert "\n" not in msg
    ckpt = load_checkpoint(path, allow_pickle=True)
    loaded, _, _ = build_model(ckpt, "resnet20")
    assert torch.equal(outputs(loaded), outputs(model))


@pytest.mark.skipif(not AKAMASTER.is_dir(), reason=f"akamaster checkpoints not found at {AKAMASTER}")
@pytest.mark.parametrize("arch", list(AKAMASTER_FILES))
def test_akamaster_checkpoints(arch: str) -> None:
    path = AKAMASTER / AKAMASTER_FILES[arch]
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert all(k.startswith("module.") for k in raw["state_dict"])
    assert not any(k.endswith("num_batches_tracked") for k in raw["state_dict"])
    ckpt = load_checkpoint(path)
    assert ckpt.meta["checkpoint_accuracy"] == raw["best_prec1"]
    model, got, notes = build_model(ckpt, arch)
    assert (got, notes) == (arch, [])
    state = model.state_dict()
    for k, v in raw["state_dict"].items():
        assert torch.equal(state[k.removeprefix("module.")], v), k


# ------------------------------------------------------------------------------- known checkpoints


def test_known_checkpoint_table() -> None:
    assert len(KNOWN_CHECKPOINTS) == 4
    for sha, entry in KNOWN_CHECKPOINTS.items():
        assert len(sha) == 64 and int(sha, 16) >= 0
        assert set(entry) == {"arch", "dataset", "num_classes", "in_channels", "normalization", "source"}
        assert (entry["dataset"], entry["num_classes"], entry["in_channels"]) == ("cifar10", 10, 3)
        assert entry["normalization"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
        get_model(entry["arch"])  # a registered architecture
    assert sorted(e["arch"] for e in KNOWN_CHECKPOINTS.values()) == ["resnet20", "resnet32", "resnet44", "resnet56"]


def test_known_checkpoint_fills_metadata_and_the_file_wins(tmp_path: Path, monkeypatch) -> None:
    # Register a local file as "known" (our own table, patched for the test) with an entry that
    # disagrees with the file's metadata on arch: the file's word wins, the table fills the rest.
    model = make_model("resnet20")
    bare, with_meta = tmp_path / "bare.pt", tmp_path / "meta.pt"
    torch.save({"state_dict": prefixed(model.state_dict(), "module."), "best_prec1": 91.5}, bare)
    save_checkpoint(with_meta, model, {"arch": "resnet20", "dataset": "digits"})
    entry = {"arch": "resnet20_noshort", "dataset": "cifar10", "num_classes": 10, "in_channels": 1,
             "normalization": {"mean": [0.5], "std": [0.25]}, "source": "a test table entry"}
    for path in (bare, with_meta):
        monkeypatch.setitem(KNOWN_CHECKPOINTS, sha256_file(path), entry)

    ckpt = load_checkpoint(bare)
    assert ckpt.known is entry
    assert ckpt.meta == {**entry, "checkpoint_accuracy": 91.5}
    assert "recognized bare.pt by its sha256 as a test table entry: resnet20_noshort trained on cifar10" \
        in ckpt.describe_known()
    loaded, arch, notes = build_model(ckpt)  # no --model needed: the table names it
    assert (arch, notes) == ("resnet20_noshort", [])
    ckpt.meta["normalization"]["mean"][0] = 9.0  # the meta is a copy: the table stays as it was
    assert entry["normalization"]["mean"] == [0.5]

    ckpt = load_checkpoint(with_meta)
    assert ckpt.meta["arch"] == "resnet20" and ckpt.meta["dataset"] == "digits"  # from the file
    assert ckpt.meta["normalization"] == {"mean": [0.5], "std": [0.25]}  # from the table
    assert build_model(ckpt)[1] == "resnet20"


def test_unknown_checkpoint_has_no_known_entry(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(make_model().state_dict(), path)
    ckpt = load_checkpoint(path)
    assert ckpt.known is None and ckpt.describe_known() is None and ckpt.meta == {}


def test_no_architecture_fits_names_the_difference(tmp_path: Path) -> None:
    sd = prefixed(make_model().state_dict(), "module.")
    sd["module.extra.scale"] = torch.ones(3)
    path = tmp_path / "extra.pt"
    torch.save(sd, path)
    with pytest.raises(LandscapeError) as e:
        build_model(load_checkpoint(path))
    msg = str(e.value)
    assert "\n" not in msg
    assert "matches no registered architecture; the closest, resnet20, differs by unexpected keys: extra.scale" in msg
    assert "--model NAME" in msg
