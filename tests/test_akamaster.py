"""akamaster's pretrained CIFAR-10 ResNets: recognized from the file alone, accurate on real images, end to end.

Needs the shared data beside the clone (skipped without it); the package itself never reads it.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from landscape.sources.checkpoint import KNOWN_CHECKPOINTS, build_model, load_checkpoint, sha256_file
from landscape.sources.data import IMAGENET_NORMALIZATION, Normalization, load_dataset
from landscape.errors import LandscapeError
from landscape.engine.evaluate import Evaluator
from landscape.storage import read_surface

SHARED = Path(__file__).resolve().parents[2] / "shared"
AKAMASTER = SHARED / "checkpoints" / "akamaster"
FIRST100 = SHARED / "data" / "cifar10" / "cifar10_test_first100.npz"  # the first 100 test images, lossless
FILES = {
    "resnet20": "resnet20-12fca82f.th",
    "resnet32": "resnet32-d509ac18.th",
    "resnet44": "resnet44-014dd654.th",
    "resnet56": "resnet56-4bfd9763.th",
}
MEASURED_ACCURACY = {"resnet20": 0.94, "resnet32": 0.92, "resnet44": 0.93, "resnet56": 0.96}  # measured: docs/cli.md, third-party checkpoints

pytestmark = pytest.mark.skipif(not (AKAMASTER.is_dir() and FIRST100.is_file()),
                                reason=f"shared akamaster checkpoints or CIFAR-10 images not found under {SHARED}")


@pytest.fixture(scope="module")
def first100():
    return load_dataset("npz", "test", root=FIRST100)


def accuracy(ckpt_path: Path, data) -> tuple[str, float]:
    ckpt = load_checkpoint(ckpt_path)
    model, arch, _ = build_model(ckpt)
    x = Normalization.from_dict(ckpt.meta["normalization"]).apply(data.x)
    _, acc = Evaluator(model, x, data.y)()
    return arch, acc


def test_table_holds_the_files() -> None:
    assert {v["arch"] for v in KNOWN_CHECKPOINTS.values()} >= set(FILES)
    for arch, name in FILES.items():
        sha = sha256_file(AKAMASTER / name)
        assert sha.startswith(name.split("-")[1].split(".")[0])  # the name carries the hash's first 8 digits
        assert KNOWN_CHECKPOINTS[sha]["arch"] == arch


@pytest.mark.parametrize("arch", list(FILES))
def test_recognized_and_accurate(arch: str, first100) -> None:
    assert len(first100) == 100 and first100.x.shape == (100, 3, 32, 32)
    ckpt = load_checkpoint(AKAMASTER / FILES[arch])
    assert ckpt.known is not None
    assert {k: ckpt.meta[k] for k in ("arch", "dataset", "num_classes", "in_channels")} == \
        {"arch": arch, "dataset": "cifar10", "num_classes": 10, "in_channels": 3}
    assert Normalization.from_dict(ckpt.meta["normalization"]) == IMAGENET_NORMALIZATION
    assert 90 < ckpt.meta["checkpoint_accuracy"] < 94  # best_prec1, kept from the file
    note = ckpt.describe_known()
    assert FILES[arch] in note and "akamaster" in note and arch in note and "ImageNet" in note
    got, acc = accuracy(AKAMASTER / FILES[arch], first100)
    assert got == arch
    assert acc >= 0.9
    assert acc == pytest.approx(MEASURED_ACCURACY[arch], abs=0.005)


def test_explicit_model_still_works() -> None:
    ckpt = load_checkpoint(AKAMASTER / FILES["resnet56"])
    _, arch, notes = build_model(ckpt, "resnet56")
    assert (arch, notes) == ("resnet56", [])
    with pytest.raises(LandscapeError, match="does not fit resnet20"):
        build_model(ckpt, "resnet20")


def test_cli_end_to_end(plot_surface, capsys, tmp_path: Path, first100) -> None:
    ckpt = AKAMASTER / FILES["resnet20"]
    argv = ["--ckpt", str(ckpt), "--dataset", "npz", "--data-root", str(FIRST100), "--x=-0.1:0.1:3",
            "--n-samples", "100", "--no-progress", "--out", str(tmp_path)]
    assert plot_surface.main(argv) == 0
    out = capsys.readouterr().out
    assert "note: recognized resnet20-12fca82f.th" in out
    surf = read_surface(tmp_path / "resnet20-12fca82f_x-0.1_0.1_3.h5")
    assert surf.done.all()
    assert surf.attrs["model"] == "resnet20"
    assert surf.attrs["normalization"] == IMAGENET_NORMALIZATION.to_dict()
    _, direct = accuracy(ckpt, first100)
    assert surf.metrics["train_acc"][1] == direct >= 0.9  # x = 0 is the checkpoint itself


def test_partly_prefixed_copy_with_an_extra_key_fails_cleanly(tmp_path: Path) -> None:
    raw = torch.load(AKAMASTER / FILES["resnet20"], map_location="cpu", weights_only=True)
    sd = OrderedDict((k.removeprefix("module.") if i % 2 else k, v) for i, (k, v) in enumerate(raw["state_dict"].items()))
    assert any(k.startswith("module.") for k in sd) and not all(k.startswith("module.") for k in sd)
    path = tmp_path / "mixed.th"
    torch.save({"state_dict": sd}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.known is None  # another file, another hash
    model, arch, _ = build_model(ckpt, "resnet20")  # mixed prefixes alone are fine
    for k, v in raw["state_dict"].items():
        assert torch.equal(model.state_dict()[k.removeprefix("module.")], v), k

    sd["module.fc_extra.weight"] = torch.zeros(3)
    torch.save({"state_dict": sd}, path)
    for arch in ("resnet20", None):  # named, or left to detection
        with pytest.raises(LandscapeError) as e:
            build_model(load_checkpoint(path), arch)
        msg = str(e.value)
        assert "\n" not in msg
        assert "unexpected keys: fc_extra.weight" in msg
        assert "missing keys" not in msg
        if arch is None:
            assert "matches no registered architecture" in msg and "--model NAME" in msg
        else:
            assert "does not fit resnet20" in msg
