import json

import pytest
import torch

from landscape.sources.checkpoint import build_model, load_checkpoint
from landscape.sources.data import DEFAULT_NORMALIZATION, load_dataset
from landscape.errors import LandscapeError
from landscape.models import get_model
from landscape.train import OPTIMIZERS, TrainConfig, flip_crop, lr_factor, train



def test_step_decay_and_warmup():
    cfg = TrainConfig(epochs=100, warmup_epochs=5)
    assert lr_factor(0, cfg) == pytest.approx(1e-3 / 5)
    assert lr_factor(2.5, cfg) == pytest.approx((2.5 + 1e-3) / 5)
    assert lr_factor(10, cfg) == 1.0
    assert lr_factor(50, cfg) == pytest.approx(0.1)
    assert lr_factor(75, cfg) == pytest.approx(0.01)
    assert lr_factor(95, cfg) == pytest.approx(0.001)


def test_flip_crop_keeps_shape_and_moves_pixels_by_at_most_the_padding():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).view(2, 1, 8, 8) + 1
    out = flip_crop(x, g, pad=2)
    assert out.shape == x.shape
    for i in range(2):
        vals = set(out[i].flatten().tolist()) - {0.0}  # zeros come from the padding
        assert vals <= set(x[i].flatten().tolist())
        assert len(vals) >= 6 * 6  # at least the (8 - 2*pad)^2 core survives


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_lowers_the_training_loss(optimizer):
    tr = load_dataset("digits", "train", n_samples=256, seed=0)
    norm = DEFAULT_NORMALIZATION["digits"]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x = norm.apply(tr.x)
    before = torch.nn.functional.cross_entropy(model(x), tr.y).item()
    lr = 0.03 if optimizer in ("adam", "rmsprop") else 0.1
    result = train(model, tr, norm, TrainConfig(epochs=4, lr=lr, optimizer=optimizer, batch_size=32), progress=False)
    assert result["final"]["train_loss"] < before * 0.7


def test_bad_optimizer():
    with pytest.raises(LandscapeError, match="^optimizer must be one of"):
        TrainConfig(optimizer="lbfgs")


def test_train_script_writes_checkpoint_snapshots_and_manifest(script, tmp_path, capsys):
    mod = script("train")
    out = tmp_path / "run" / "final.pt"
    manifest = tmp_path / "MANIFEST.json"
    mod.main(["--model", "resnet20", "--dataset", "digits", "--epochs", "2", "--save-every", "1",
              "--out", str(out.parent), "--name", "final", "--manifest", str(manifest), "--seed", "3"])
    assert (tmp_path / "run" / "model_0.pt").is_file() and (tmp_path / "run" / "model_1.pt").is_file()
    ckpt = load_checkpoint(out)
    assert ckpt.meta["arch"] == "resnet20" and ckpt.meta["dataset"] == "digits" and ckpt.meta["in_channels"] == 1
    assert ckpt.meta["normalization"]["mean"] == list(DEFAULT_NORMALIZATION["digits"].mean)
    model, arch, notes = build_model(ckpt)
    assert arch == "resnet20" and notes == []
    entry = json.loads(manifest.read_text())["checkpoints"][0]
    assert entry["file"] == "final.pt" and entry["sha256"] == ckpt.sha256 and entry["seed"] == 3
    assert 0 <= entry["train_acc"] <= 1 and "--epochs 2" in entry["command"]
    snap = load_checkpoint(tmp_path / "run" / "model_0.pt")
    assert snap.meta["epoch"] == 0
    untrained = get_model("resnet20", num_classes=10, in_channels=1)
    assert set(snap.state_dict) == set(untrained.state_dict())
