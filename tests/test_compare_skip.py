"""scripts/compare_skip.py end to end on a 3x3 grid, and the comparison figure it draws."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

from matplotlib.contour import ContourSet  # noqa: E402

from landscape.sources.checkpoint import save_checkpoint  # noqa: E402
from landscape.errors import LandscapeError  # noqa: E402
from landscape.models import get_model  # noqa: E402
from landscape.plot.surface import comparison_figure  # noqa: E402
from landscape.storage import Surface, read_surface, write_surface  # noqa: E402

ROW_KEYS = {"model", "checkpoint", "surface", "center_loss", "center_acc", "neg_curvature_fraction",
            "n_local_minima", "basin_width"}


@pytest.fixture(scope="module")
def compare_skip(script) -> ModuleType:
    return script("compare_skip")


@pytest.fixture(scope="module")
def two_ckpts(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Untrained (seeded) digits ResNet-20 with and without shortcuts."""
    folder = tmp_path_factory.mktemp("ckpts")
    paths = []
    for arch in ("resnet20", "resnet20_noshort"):
        torch.manual_seed(0)
        model = get_model(arch, num_classes=10, in_channels=1)
        path = folder / f"{arch}.pt"
        save_checkpoint(path, model, {"arch": arch, "num_classes": 10, "in_channels": 1, "dataset": "digits"})
        paths.append(path)
    return paths


def test_end_to_end_and_resume(compare_skip: ModuleType, two_ckpts: list[Path], tmp_path: Path,
                               capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cmp"
    argv = ["--ckpts", *map(str, two_ckpts), "--x=-1:1:3", "--y=-1:1:3", "--n-samples", "32",
            "--out", str(out), "--no-progress", "--device", "cpu"]
    assert compare_skip.main(argv) == 0
    stem = out / "compare_skip_x-1_1_3_y-1_1_3"
    for ext, magic in (("png", b"\x89PNG"), ("pdf", b"%PDF")):
        assert Path(f"{stem}.{ext}").read_bytes().startswith(magic)
    report = json.loads(Path(f"{stem}.json").read_text())
    rows = report["rows"]
    assert [r["model"] for r in rows] == ["resnet20", "resnet20_noshort"]
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert set(r["basin_width"]) == {"1", "10"}
        assert 0.0 <= r["center_acc"] <= 1.0 and np.isfinite(r["center_loss"])
        assert r["n_curvature_points"] <= 1  # a 3x3 grid has one interior point
        assert read_surface(r["surface"]).done.all()
    md = Path(f"{stem}.md").read_text()
    assert "| resnet20 |" in md and "| resnet20_noshort |" in md
    printed = capsys.readouterr().out
    assert f"{stem}.png" in printed and f"{stem}.md" in printed

    # A rerun resumes: plant a value in each stored surface; recomputing would replace it.
    for r in rows:
        surf = read_surface(r["surface"])
        surf.metrics["train_loss"][:] = 123.0
        write_surface(r["surface"], surf)
    assert compare_skip.main(argv) == 0
    rerun = json.loads(Path(f"{stem}.json").read_text())["rows"]
    assert [r["center_loss"] for r in rerun] == [123.0, 123.0]
    assert "9/9 points done" in capsys.readouterr().out

    # A zoom is written beside the full view, not over it.
    assert compare_skip.main([*argv[:3], "--x=-0.5:0.5:3", *argv[5:]]) == 0
    assert Path(f"{out}/compare_skip_x-0.5_0.5_3_y-0.5_0.5_3.json").is_file()
    assert json.loads(Path(f"{stem}.json").read_text())["rows"][0]["center_loss"] == 123.0


def test_missing_checkpoint_is_named(compare_skip: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        compare_skip.main(["--ckpts", str(tmp_path / "nope.pt"), "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "nope.pt" in capsys.readouterr().err


def _surface(f, x: np.ndarray, y: np.ndarray) -> Surface:
    xx, yy = np.meshgrid(x, y)  # (ny, nx)
    return Surface(x=x, y=y, metrics={"train_loss": f(xx, yy)}, done=np.ones(xx.shape, dtype=bool))


def test_comparison_figure_shares_levels_and_z_range() -> None:
    x = np.linspace(-1.0, 1.0, 7)
    y = np.linspace(-1.0, 1.0, 5)
    flat = _surface(lambda a, b: 0.2 + a**2 + b**2, x, y)
    sharp = _surface(lambda a, b: 1.0 + 20 * (a**2 + b**2), x, y)
    sharp.metrics["train_loss"][0, 0] = np.inf  # a diverged point does not break the shared range
    fig = comparison_figure([flat, sharp], ["flat (train acc 99.9 %)", "sharp"], vmin=0.1, vmax=5, vlevel=0.5)
    axes = fig.axes
    flat_axes = [a for a in axes if a.name != "3d" and a.get_title()]
    contours, surfaces3d = flat_axes, [a for a in axes if a.name == "3d"]
    assert [a.get_title() for a in contours] == ["flat (train acc 99.9 %)", "sharp"]
    assert [a.get_title() for a in surfaces3d] == ["flat (train acc 99.9 %)", "sharp"]
    levels = [next(c for c in a.collections if isinstance(c, ContourSet)).levels for a in contours]
    np.testing.assert_allclose(levels[0], np.arange(0.1, 5, 0.5))
    np.testing.assert_allclose(levels[1], levels[0])
    zlims = [a.get_zlim() for a in surfaces3d]
    assert zlims[0] == pytest.approx((0.2, 5.0)) and zlims[1] == pytest.approx(zlims[0])
    clims = [a.collections[0].get_clim() for a in surfaces3d]
    assert clims[0] == pytest.approx((0.2, 5.0)) and clims[1] == pytest.approx(clims[0])
    # columns: contour above its 3-D surface
    c0, s0 = contours[0].get_position(), surfaces3d[0].get_position()
    assert c0.y0 > s0.y0 and abs(c0.x0 - s0.x0) < 0.05


def test_comparison_figure_rows_layout_and_errors() -> None:
    x = np.linspace(-1.0, 1.0, 4)
    s = _surface(lambda a, b: a**2 + b**2, x, x)
    fig = comparison_figure([s, s, s], ["a", "b", "c"], layout="rows", vmax=2.0, vlevel=0.25)
    contour_ax, surf_ax = fig.axes[0], next(a for a in fig.axes if a.name == "3d")
    assert surf_ax.get_position().x0 > contour_ax.get_position().x0  # contour left, 3-D right
    with pytest.raises(ValueError, match="layout"):
        comparison_figure([s], ["a"], layout="grid")
    with pytest.raises(ValueError, match="titles"):
        comparison_figure([s, s], ["a"])
    line = Surface(x=x, y=None, metrics={"train_loss": x**2}, done=np.ones(4, dtype=bool))
    with pytest.raises(LandscapeError, match="2-D"):
        comparison_figure([s, line], ["a", "b"])
