"""The model zoo: every registered net runs, the paper's sizes hold, pretrained weights fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from landscape.errors import LandscapeError
from landscape.models import get_model, list_models
from landscape.models.cifar_resnet import BasicBlock, CifarResNet, PadShortcut

SHARED = Path(__file__).resolve().parents[2] / "shared"  # CI: the repo clone beside shared/
AKAMASTER = SHARED / "checkpoints" / "akamaster"
CIFAR10 = SHARED / "data" / "cifar10"
SLOW = ("resnet110", "resnet50")  # one forward each, not two


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.inference_mode():
        return model.eval()(torch.randn(shape))


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes(name: str) -> None:
    if not name.startswith(SLOW):
        assert forward(get_model(name), (2, 3, 32, 32)).shape == (2, 10)
    model = get_model(name, num_classes=7, in_channels=1)
    assert forward(model, (2, 1, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize(
    "name", ["resnet20", "resnet20_b", "resnet20_noshort", "resnet18", "resnet18_noshort", "vgg9"]
)
def test_forward_8x8(name: str) -> None:
    model = get_model(name, num_classes=10, in_channels=1)
    assert forward(model, (2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "paper", "tol"),
    [
        ("resnet20", 0.27e6, 0.01 * 0.27e6),
        ("resnet56", 0.85e6, 0.01 * 0.85e6),
        # "1.7M" is rounded to 2 digits; the net has 1,727,962 (1.6 % more), as in akamaster.
        ("resnet110", 1.7e6, 0.05e6),
    ],
)
def test_param_count_matches_paper(name: str, paper: float, tol: float) -> None:
    assert abs(n_params(get_model(name)) - paper) <= tol


@pytest.mark.parametrize(
    ("depth", "count"), [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018)]
)
def test_param_count_exact(depth: int, count: int) -> None:
    assert n_params(get_model(f"resnet{depth}")) == count
    assert n_params(get_model(f"resnet{depth}_noshort")) == count


def test_noshort_differs_from_shortcut_with_same_weights() -> None:
    with_skip, no_skip = get_model("resnet20"), get_model("resnet20_noshort")
    no_skip.load_state_dict(with_skip.state_dict())  # strict: the same keys
    x = (2, 3, 32, 32)
    assert not torch.allclose(forward(with_skip, x), forward(no_skip, x))


def test_option_a_shortcut_pads_zeros() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16, 32, stride=2)(x)  # (2, 32, 4, 4)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def akamaster_state_dict(depth: int) -> dict[str, torch.Tensor]:
    """The pretrained weights, `module.` stripped; skips the test where they are absent."""
    files = sorted(AKAMASTER.glob(f"resnet{depth}-*.th"))
    if not files:
        pytest.skip(f"no resnet{depth} checkpoint under {AKAMASTER}")
    ckpt = torch.load(files[0], map_location="cpu", weights_only=True)
    return {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_akamaster_checkpoints_fit(depth: int) -> None:
    theirs = akamaster_state_dict(depth)
    model = get_model(f"resnet{depth}")
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert sorted(theirs) == sorted(ours)
    assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in ours.items()}
    model.load_state_dict(theirs, strict=False)
    assert torch.isfinite(forward(model, (2, 3, 32, 32))).all()


@pytest.mark.parametrize(("depth", "accuracy"), [(20, 0.94), (56, 0.96)])
def test_akamaster_accuracy_on_real_images(depth: int, accuracy: float) -> None:
    """Option A done right: the pretrained nets score as their README says (first 100 test)."""
    path = CIFAR10 / "cifar10_test_first100.npz"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    data = np.load(path, allow_pickle=False)
    x = torch.from_numpy(data["x"]).permute(0, 3, 1, 2).float() / 255  # (100, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet stats, as trained
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    model = get_model(f"resnet{depth}").eval()
    model.load_state_dict(akamaster_state_dict(depth), strict=False)
    with torch.inference_mode():
        pred = model((x - mean) / std).argmax(1)
    acc = (pred == torch.from_numpy(data["y"])).double().mean().item()
    assert acc == pytest.approx(accuracy, abs=0.02)  # 94 % and 96 % here, torch 2.13 CPU


@pytest.mark.parametrize("shortcut", ["C", "a", "", None])
def test_bad_shortcut_raises(shortcut: object) -> None:
    with pytest.raises(ValueError, match=r"shortcut must be one of .*'none'.*got"):
        CifarResNet(20, shortcut=shortcut)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=repr(shortcut)):
        BasicBlock(16, 16, 1, shortcut)  # type: ignore[arg-type]


@pytest.mark.parametrize("depth", [2, 21, 57])
def test_bad_depth_raises(depth: int) -> None:
    with pytest.raises(ValueError, match=rf"depth must be 6n\+2.*got {depth}"):
        CifarResNet(depth)


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(LandscapeError, match="resnet56"):
        get_model("resnet57")
