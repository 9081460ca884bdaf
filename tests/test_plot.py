"""Plots from synthetic surfaces: files written, orientation, masking, bad values, reference files, scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from landscape.errors import LandscapeError  # noqa: E402
from landscape.plot.surface import contour, heatmap, line1d, plot_surface_figures, surface3d  # noqa: E402
from landscape.storage import Surface, read_surface, write_surface  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
X = np.linspace(-1.0, 1.0, 7)  # nx = 7
Y = np.linspace(-0.5, 1.5, 5)  # ny = 5, a different range, so a transposition shows


def bowl(done: np.ndarray | None = None) -> Surface:
    """f = x² + y² (loss) on the 7×5 grid, accuracy falling away from the centre."""
    xx, yy = np.meshgrid(X, Y)  # (ny, nx) each
    loss = xx**2 + yy**2
    done = np.ones(loss.shape, dtype=bool) if done is None else done
    return Surface(x=X, y=Y, metrics={"train_loss": loss, "train_acc": 1.0 / (1.0 + loss)}, done=done)


def ramp() -> Surface:
    """f = x: increases along columns only."""
    xx, _ = np.meshgrid(X, Y)  # (ny, nx)
    return Surface(x=X, y=Y, metrics={"train_loss": xx.copy()}, done=np.ones(xx.shape, dtype=bool))


def parabola(test: bool = True) -> Surface:
    x = np.linspace(-1.0, 1.5, 11)
    metrics = {"train_loss": x**2, "train_acc": np.clip(1.0 - x**2 / 3, 0, 1)}
    if test:
        metrics |= {"test_loss": x**2 + 0.2, "test_acc": np.clip(0.9 - x**2 / 3, 0, 1)}
    return Surface(x=x, y=None, metrics=metrics, done=np.ones(x.shape, dtype=bool))


def assert_figures(paths: list[Path], stems: list[str]) -> None:
    expected = {Path(f"{s}.{ext}") for s in stems for ext in ("png", "pdf")}
    assert set(paths) == expected
    for p in paths:
        data = p.read_bytes()
        assert len(data) > 1000, p
        assert data.startswith(PNG_SIGNATURE if p.suffix == ".png" else b"%PDF"), p


def test_2d_figures_written(tmp_path: Path) -> None:
    write_surface(tmp_path / "bowl.h5", bowl())
    surf = read_surface(tmp_path / "bowl.h5")
    stem = tmp_path / "out" / "bowl"  # the folder does not exist yet
    paths = plot_surface_figures(surf, stem, vmin=0.1, vmax=3.0, vlevel=0.25)
    kinds = ("2dcontour", "2dcontourf", "2dheat", "3dsurface")
    assert_figures(paths, [f"{stem}_train_loss_{k}" for k in kinds])


def test_1d_figures_written(tmp_path: Path) -> None:
    write_surface(tmp_path / "line.h5", parabola())
    surf = read_surface(tmp_path / "line.h5")
    assert_figures(plot_surface_figures(surf, tmp_path / "p"), [f"{tmp_path}/p_1d"])
    assert_figures(plot_surface_figures(surf, tmp_path / "q", log=True), [f"{tmp_path}/q_1d", f"{tmp_path}/q_1d_log"])


def test_line1d_draws_train_solid_test_dashed_accuracy_in_percent() -> None:
    surf = parabola()
    ax, ax_acc = line1d(surf, loss_max=2.0, acc_min=50.0)
    styles = {line.get_label(): line.get_linestyle() for a in (ax, ax_acc) for line in a.get_lines()}
    assert styles == {"train loss": "-", "test loss": "--", "train accuracy": "-", "test accuracy": "--"}
    (train_acc,) = [line for line in ax_acc.get_lines() if line.get_label() == "train accuracy"]
    np.testing.assert_allclose(train_acc.get_ydata(), 100.0 * surf.metrics["train_acc"])
    assert ax.get_ylim() == (0.0, 2.0) and ax_acc.get_ylim() == (50.0, 100.0)
    ax, ax_acc = line1d(parabola(test=False), log=True)
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 1 and len(ax_acc.get_lines()) == 1


def test_heatmap_orientation_and_extent() -> None:
    surf = ramp()
    mesh = heatmap(surf, vmin=-1.0, vmax=1.0)
    data = mesh.get_array()
    assert data.shape == (len(Y), len(X))  # row = y, column = x
    assert np.all(np.diff(data, axis=1) > 0) and np.all(np.diff(data, axis=0) == 0)
    np.testing.assert_allclose(data[0], X)
    corners = mesh.get_coordinates()  # (ny + 1, nx + 1, 2): cell edges, half a step beyond the points
    dx, dy = X[1] - X[0], Y[1] - Y[0]
    np.testing.assert_allclose(corners[0, [0, -1], 0], [X[0] - dx / 2, X[-1] + dx / 2])
    np.testing.assert_allclose(corners[[0, -1], 0, 1], [Y[0] - dy / 2, Y[-1] + dy / 2])
    assert mesh.norm.vmin == -1.0 and mesh.norm.vmax == 1.0
    assert mesh.axes.get_ylim()[0] < mesh.axes.get_ylim()[1]  # origin lower: y grows upwards


def test_not_done_points_are_masked() -> None:
    done = np.ones((len(Y), len(X)), dtype=bool)
    done[1, 4] = done[3, 0] = False
    surf = bowl(done)
    surf.metrics["train_loss"][~done] = np.nan  # as in a file: NaN where not computed
    data = heatmap(surf).get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(data), ~done)
    cs = contour(surf, vmin=0.1, vmax=3.0, vlevel=0.25)
    assert cs.levels[0] == pytest.approx(0.1)
    z3 = surface3d(surf, zlim=3.0)
    assert z3 is not None


def test_inf_and_nan_at_done_points_are_drawn_as_top_of_range(tmp_path: Path) -> None:
    surf = bowl()
    surf.metrics["train_loss"][0, 0] = np.inf
    surf.metrics["train_loss"][2, 3] = np.nan
    surf.metrics["train_loss"][4, 6] = -np.inf
    data = heatmap(surf, vmin=0.1, vmax=10.0).get_array()
    assert not np.ma.getmaskarray(data).any()  # diverged points are computed points
    assert data[0, 0] == 10.0 and data[2, 3] == 10.0 and data[4, 6] == 0.1
    write_surface(tmp_path / "bad.h5", surf)
    paths = plot_surface_figures(read_surface(tmp_path / "bad.h5"), tmp_path / "bad", zlim=5.0)
    assert len(paths) == 8
    line = parabola(test=False)
    line.metrics["train_loss"][[2, 5]] = [np.inf, np.nan]
    assert len(plot_surface_figures(line, tmp_path / "badline", log=True)) == 4


def test_nothing_done_and_unknown_metric_raise(tmp_path: Path) -> None:
    empty = bowl(np.zeros((len(Y), len(X)), dtype=bool))
    with pytest.raises(LandscapeError, match="no computed point"):
        plot_surface_figures(empty, tmp_path / "e")
    with pytest.raises(LandscapeError, match="no computed point"):
        line1d(Surface(x=X, y=None, metrics={"train_loss": np.full(len(X), np.nan)}))
    with pytest.raises(LandscapeError, match="available: train_acc, train_loss"):
        plot_surface_figures(bowl(), tmp_path / "u", metric="test_loss")
    assert not list(tmp_path.iterdir())  # nothing written before failing


def test_reference_code_file_reads_and_plots(tmp_path: Path) -> None:
    """The reference stores (nx, ny) arrays filled in meshgrid (ny, nx) order, -1 = not done, acc in %."""
    xs, ys = np.linspace(-1, 1, 7), np.linspace(-2, 2, 5)
    xx, yy = np.meshgrid(xs, ys)  # (ny, nx): the order the reference code fills
    loss = np.full((len(xs), len(ys)), -1.0)  # the reference allocates (nx, ny)
    acc = np.full((len(xs), len(ys)), -1.0)
    flat_loss, flat_acc = loss.ravel(), acc.ravel()  # views; the reference writes losses.ravel()[ind]
    for ind, (px, py) in enumerate(zip(xx.ravel(), yy.ravel())):
        if ind in (3, 20):
            continue  # never computed
        flat_loss[ind] = 30 + 10 * px + py  # > 0: never the -1 fill value
        flat_acc[ind] = 50.0
    path = tmp_path / "ref.h5"
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = xs, ys
        f["train_loss"], f["train_acc"] = loss, acc
        f["dir_file"] = "ref_dirs.h5"

    surf = read_surface(path)
    assert surf.shape == (5, 7) and surf.dir_file == "ref_dirs.h5"
    for iy, py in enumerate(ys):
        for ix, px in enumerate(xs):
            if iy * len(xs) + ix in (3, 20):
                assert not surf.done[iy, ix] and np.isnan(surf.metrics["train_loss"][iy, ix])
            else:
                assert surf.done[iy, ix]
                assert surf.metrics["train_loss"][iy, ix] == pytest.approx(30 + 10 * px + py)
                assert surf.metrics["train_acc"][iy, ix] == pytest.approx(0.5)
    assert_figures(
        plot_surface_figures(surf, tmp_path / "ref", vmin=18, vmax=42, vlevel=2),
        [f"{tmp_path}/ref_train_loss_{k}" for k in ("2dcontour", "2dcontourf", "2dheat", "3dsurface")],
    )


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("DISPLAY", None)
    cmd = [sys.executable, str(ROOT / "scripts" / name), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_plot_2d_script(tmp_path: Path) -> None:
    write_surface(tmp_path / "bowl.h5", bowl())
    r = run_script("plot_2d.py", "--surf_file", str(tmp_path / "bowl.h5"), "--vmax", "3", "--vlevel", "0.25", "--show")
    assert r.returncode == 0, r.stderr
    printed = [Path(line) for line in r.stdout.splitlines()]
    assert len(printed) == 8 and all(p.is_file() and p.parent == tmp_path for p in printed)
    assert (tmp_path / "bowl_train_loss_2dheat.png").is_file()


def test_plot_1d_script(tmp_path: Path) -> None:
    write_surface(tmp_path / "line.h5", parabola())
    out = tmp_path / "figs" / "line"
    r = run_script("plot_1d.py", "--surf_file", str(tmp_path / "line.h5"), "--log", "--xmin", "-0.5",
                   "--loss_max", "2", "--acc_min", "10", "--out", str(out.parent), "--name", out.name)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(f"{out}_{k}.{e}" for k in ("1d", "1d_log") for e in ("png", "pdf"))


@pytest.mark.parametrize("name", ["plot_2d.py", "plot_1d.py"])
def test_script_missing_file_is_one_line_error(tmp_path: Path, name: str) -> None:
    r = run_script(name, "--surf_file", str(tmp_path / "missing.h5"))
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and "missing.h5" in r.stderr
