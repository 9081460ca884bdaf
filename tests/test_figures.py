"""Figures that fit any model: levels chosen from the data, 3-D surfaces that leave out what lies
above the top (and log scales), and the standard figures saved in one call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from matplotlib.colors import LogNorm  # noqa: E402

from landscape.errors import LandscapeError  # noqa: E402
from landscape.plot import (choose_levels, contour, contourf, heatmap, save_figures, surface3d,  # noqa: E402
                            surface_figures)
from landscape.storage import Surface, read_surface, write_surface  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
X = np.linspace(-1.0, 1.0, 9)
Y = np.linspace(-1.0, 1.0, 7)


def bowl(low: float, high: float, log: bool = False, test: bool = False) -> Surface:
    """A bowl from `low` at the centre to `high` at the corners (geometric in between with `log`)."""
    xx, yy = np.meshgrid(X, Y)  # (ny, nx)
    r = (xx**2 + yy**2) / 2  # 0 at the centre, 1 at the corners
    loss = low * (high / low) ** r if log else low + (high - low) * r
    metrics = {"train_loss": loss, "train_acc": 1 / (1 + loss)}
    if test:
        metrics |= {"test_loss": loss + 0.05, "test_acc": 0.9 / (1 + loss)}
    return Surface(x=X, y=Y, metrics=metrics, done=np.ones(loss.shape, dtype=bool))


def is_round(v: float) -> bool:
    """At most three significant digits: 0.04, 0.15, 40.1, 2e-12."""
    return v == 0 or float(f"{v:.3g}") == v


# ---------------------------------------------------------------------------- levels


def test_a_small_loss_gets_a_readable_set_of_levels() -> None:
    """0.02 .. 0.19: the reference's defaults (0.1, 10, 0.5) give one level; the data give ten round ones."""
    values = np.linspace(0.02, 0.19, 40)
    assert len(np.arange(0.1, 10, 0.5)[(np.arange(0.1, 10, 0.5) >= 0.02) & (np.arange(0.1, 10, 0.5) <= 0.19)]) == 1
    lv = choose_levels(values)
    np.testing.assert_array_equal(lv.levels, [0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2])
    assert not lv.log and lv.vmin == 0.02 and lv.vmax == 0.2


def test_a_surface_over_six_decades_gets_log_spaced_levels() -> None:
    lv = choose_levels(np.logspace(-3, 3, 50))
    assert lv.log and lv.vmin == 1e-3 and lv.vmax == 1e3
    np.testing.assert_allclose(lv.levels, [m * 10.0**e for e in range(-3, 3) for m in (1, 2, 5)] + [1e3])
    ratios = lv.levels[1:] / lv.levels[:-1]
    assert ratios.min() >= 2 - 1e-9 and ratios.max() <= 2.5 + 1e-9  # evenly spread in log
    assert isinstance(lv.norm, LogNorm)


@pytest.mark.parametrize(("low", "high"), [(0.02, 0.19), (1e-3, 1e3), (0.002, 12.0), (-3.0, 4.0), (5.0, 5.0),
                                           (1e-12, 1e12), (40.0, 41.0)])
def test_chosen_levels_bracket_the_data_and_are_round(low: float, high: float) -> None:
    lv = choose_levels(np.array([low, (low + high) / 2, high]))
    assert 5 <= len(lv.levels) <= 25
    assert lv.levels[0] <= low and lv.levels[-1] >= high
    assert lv.vmin <= low and lv.vmax >= high
    assert np.all(np.diff(lv.levels) > 0)
    assert all(is_round(v) for v in lv.levels)
    assert lv.log == (low > 0 and high / low > 20)


def test_given_values_keep_the_reference_arange() -> None:
    values = np.linspace(0.02, 0.19, 40)
    lv = choose_levels(values, 0.1, 10.0, 0.5)
    np.testing.assert_array_equal(lv.levels, np.arange(0.1, 10.0, 0.5))
    assert (lv.vmin, lv.vmax, lv.log) == (0.1, 10.0, False)
    lv = choose_levels(values, vmax=0.1)  # only the top given: levels chosen below it
    assert lv.vmax == 0.1 and lv.levels[-1] <= 0.1 and lv.levels[0] <= 0.02
    lv = choose_levels(values, vlevel=0.05)  # only the step given: from the data's range
    np.testing.assert_allclose(lv.levels, [0.0, 0.05, 0.1, 0.15, 0.2])
    lv = choose_levels(values, log=True)  # log asked for over one decade
    assert lv.log and list(lv.levels) == [0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2]


@pytest.mark.parametrize(("kw", "message"), [
    ({"vlevel": 0.0}, "vlevel must be positive, got 0.0"),
    ({"vmin": 2.0, "vmax": 1.0}, "vmin must be below vmax, got vmin=2.0 and vmax=1.0"),
    ({"vmin": 0.0, "log": True}, "a log scale needs vmin > 0, got vmin=0.0"),
    ({"vmin": 50.0}, "vmin=50.0 is not below the largest value computed (3); lower vmin or give vmax too"),
    ({"vmax": -1.0}, "vmax=-1.0 is not above the smallest value computed (1); raise vmax or give vmin too"),
    ({"vlevel": 1e-6}, "contour levels between 1 and 3; pass a larger vlevel, or none to choose"),
    ({"vmax": float("nan")}, "vmax must be a finite number, got nan"),
])
def test_bad_levels_are_one_line_errors(kw: dict, message: str) -> None:
    with pytest.raises(LandscapeError) as e:
        choose_levels(np.array([1.0, 2.0, 3.0]), **kw)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_log_needs_positive_values() -> None:
    with pytest.raises(LandscapeError, match="a log scale needs positive values"):
        choose_levels(np.array([-2.0, 0.0]), log=True)


def test_figures_follow_the_chosen_levels() -> None:
    """Contour, filled contour, heat map and 3-D top: one choice from the data."""
    surf = bowl(0.02, 0.19)
    lv = choose_levels(surf.metrics["train_loss"])
    np.testing.assert_array_equal(contour(surf).levels, lv.levels)
    np.testing.assert_array_equal(contourf(surf).levels, lv.levels)
    mesh = heatmap(surf)
    assert (mesh.norm.vmin, mesh.norm.vmax) == (lv.vmin, lv.vmax) == (0.02, 0.2)
    wide = bowl(1e-3, 1e3, log=True)
    cs = contour(wide)
    assert isinstance(cs.norm, LogNorm) and cs.levels[0] == 1e-3 and cs.levels[-1] == 1e3
    mesh = heatmap(wide)
    assert isinstance(mesh.norm, LogNorm) and (mesh.norm.vmin, mesh.norm.vmax) == (1e-3, 1e3)
    np.testing.assert_array_equal(contour(wide, vmin=0.1, vmax=10, vlevel=0.5).levels, np.arange(0.1, 10, 0.5))


# ---------------------------------------------------------------------------- 3-D


def test_3d_leaves_out_values_above_the_top() -> None:
    """A flat 0.5 with one spike of 100: the faces keep 0.5 (a hole at the spike), not a slab at the top."""
    surf = bowl(0.1, 0.2)
    surf.metrics["train_loss"][:] = 0.5
    surf.metrics["train_loss"][3, 4] = 100.0
    surf.metrics["train_loss"][0, 0] = np.inf  # a diverged point: left out too
    poly = surface3d(surf, zlim=1.0)
    faces = poly.get_array()
    assert len(faces) == (len(X) - 1) * (len(Y) - 1)
    np.testing.assert_array_equal(faces, 0.5)  # clipping would give the spike's faces (3 * 0.5 + 1) / 4
    assert poly.norm.vmax == 1.0


def test_3d_log_scale() -> None:
    surf = bowl(1e-3, 1e2, log=True)
    poly = surface3d(surf, log=True)
    ax = poly.axes
    faces = poly.get_array()
    assert faces.min() >= -3 - 1e-9 and faces.max() <= 2 + 1e-9  # log10 of the values
    assert poly.norm.vmin == pytest.approx(-3) and poly.norm.vmax == pytest.approx(2)
    assert "log scale" in ax.get_zlabel()
    assert ax.zaxis.get_major_formatter()(-2.0, 0) == "0.01"  # ticks labelled with the values
    surf.metrics["train_loss"][2, 2] = 0.0  # not positive: drawn at the bottom
    poly = surface3d(surf, vmin=1e-4, zlim=10.0, log=True)
    assert poly.get_array().min() >= -4 - 1e-9 and poly.get_array().max() <= 1 + 1e-9
    with pytest.raises(LandscapeError, match="a log scale needs vmin and zlim > 0"):
        surface3d(surf, vmin=0.0, log=True)


def test_log_reaches_every_2d_figure() -> None:
    figs = surface_figures(bowl(0.5, 3.0), log=True)
    three_d = figs["train_loss_3dsurface"].axes[0]
    assert "log scale" in three_d.get_zlabel()
    heat = figs["train_loss_2dheat"].axes[0].collections[0]
    assert isinstance(heat.norm, LogNorm)
    plain = surface_figures(bowl(0.5, 3.0))
    assert "log scale" not in plain["train_loss_3dsurface"].axes[0].get_zlabel()
    assert not isinstance(plain["train_loss_2dheat"].axes[0].collections[0].norm, LogNorm)
    wide = surface_figures(bowl(1e-3, 1e3, log=True))  # spans decades: log without asking
    assert "log scale" in wide["train_loss_3dsurface"].axes[0].get_zlabel()
    labels = [t.get_text() for t in wide["train_loss_2dcontour"].axes[0].texts]
    assert "0.005" in labels and "0" not in labels  # small levels labelled with their values
    given = surface_figures(bowl(1e-3, 1e3, log=True), vmin=0.1, vmax=10, vlevel=0.5)  # the reference's look
    assert "log scale" not in given["train_loss_3dsurface"].axes[0].get_zlabel()


# ---------------------------------------------------------------------------- save_figures


def test_save_figures_writes_every_loss(tmp_path: Path) -> None:
    write_surface(tmp_path / "s.h5", bowl(0.02, 0.19, test=True))
    surf = read_surface(tmp_path / "s.h5")
    paths = save_figures(surf, tmp_path / "figs", name="run")
    kinds = ("2dcontour", "2dcontourf", "2dheat", "3dsurface")
    expected = {tmp_path / "figs" / f"run_{m}_{k}.{e}" for m in ("train_loss", "test_loss") for k in kinds
                for e in ("png", "pdf")}
    assert set(paths) == expected and len(paths) == 16
    for p in paths:
        head = p.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if p.suffix == ".png" else b"%PDF")
    one = surf.save_figures(tmp_path / "m", metric="test_loss", only=["3dsurface"])
    assert one == [tmp_path / "m" / f"surface_test_loss_3dsurface.{e}" for e in ("png", "pdf")]


def test_save_figures_1d(tmp_path: Path) -> None:
    x = np.linspace(-1, 1, 11)
    line = Surface(x=x, y=None, metrics={"train_loss": x**2 + 0.01, "train_acc": 1 - x**2 / 2},
                   done=np.ones(11, dtype=bool))
    paths = save_figures(line, tmp_path, log=True)
    assert sorted(p.name for p in paths) == ["surface_1d.pdf", "surface_1d.png", "surface_1d_log.pdf",
                                             "surface_1d_log.png"]


def test_save_figures_errors(tmp_path: Path) -> None:
    surf = bowl(0.1, 1.0)
    with pytest.raises(LandscapeError, match="name 'a/b' must be a file name stem"):
        save_figures(surf, tmp_path, name="a/b")
    (tmp_path / "f").write_text("x")
    with pytest.raises(LandscapeError, match="is a file"):
        save_figures(surf, tmp_path / "f")
    acc_only = Surface(x=X, y=Y, metrics={"train_acc": surf.metrics["train_acc"]}, done=surf.done)
    with pytest.raises(LandscapeError, match="no loss to plot .*train_acc.*pass metric"):
        save_figures(acc_only, tmp_path / "g")
    with pytest.raises(LandscapeError, match="metric 'test_loss' is not in the surface"):
        save_figures(surf, tmp_path / "h", metric=["train_loss", "test_loss"])
    assert not (tmp_path / "g").exists() and not (tmp_path / "h").exists()  # nothing written before failing


# ---------------------------------------------------------------------------- plot_2d.py


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("DISPLAY", None)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def test_plot_2d_defaults_from_the_data_and_log(tmp_path: Path) -> None:
    write_surface(tmp_path / "small.h5", bowl(0.02, 0.19))
    r = run_script("plot_2d.py", "--surf_file", str(tmp_path / "small.h5"))
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 8
    r = run_script("plot_2d.py", "--surf_file", str(tmp_path / "small.h5"), "--log", "--name", "log",
                   "--only", "3dsurface")
    assert r.returncode == 0, r.stderr
    assert sorted(Path(p).name for p in r.stdout.split()) == ["log_train_loss_3dsurface.pdf",
                                                              "log_train_loss_3dsurface.png"]
    plain = (tmp_path / "small_train_loss_3dsurface.png").read_bytes()
    assert (tmp_path / "log_train_loss_3dsurface.png").read_bytes() != plain
    r = run_script("plot_2d.py", "--surf_file", str(tmp_path / "small.h5"), "--log", "--vmin", "0")
    assert r.returncode == 2 and r.stderr.startswith("error: a log scale needs --vmin > 0"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
