"""The ParaView export (.vtp): read back with VTK's own reader, points, polygons and values against the
surface; clipping, log, interpolation, points not computed; the script's one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from landscape.errors import LandscapeError
from landscape.plot.vtp import HeightGrid, height_grid, surface_to_vtp, vtp_filename, write_vtp
from landscape.storage import Surface, write_surface

ROOT = Path(__file__).resolve().parents[1]
X = np.linspace(-1.0, 1.0, 7)  # nx = 7
Y = np.linspace(-0.5, 1.5, 5)  # ny = 5: another size and range, so a transposition shows


def bowl(x: np.ndarray = X, y: np.ndarray = Y, done: np.ndarray | None = None) -> Surface:
    """train_loss = x² + y², train_acc = 1 / (1 + loss), on the grid (ny, nx)."""
    xx, yy = np.meshgrid(x, y)  # (ny, nx) each
    loss = xx**2 + yy**2
    done = np.ones(loss.shape, dtype=bool) if done is None else done
    return Surface(x=x, y=y, metrics={"train_loss": loss, "train_acc": 1.0 / (1.0 + loss)}, done=done)


def read_vtp(path: Path) -> dict[str, np.ndarray]:
    """The file as VTK reads it: points (n, 3), connectivity (m, 4) and every point-data array."""
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    errors: list[str] = []
    reader = vtk.vtkXMLPolyDataReader()
    reader.AddObserver("ErrorEvent", lambda obj, event: errors.append(event))
    reader.SetFileName(str(path))
    reader.Update()
    assert not errors and reader.GetErrorCode() == 0, f"VTK could not read {path}"
    poly = reader.GetOutput()
    offsets = vtk_to_numpy(poly.GetPolys().GetOffsetsArray())
    assert np.array_equal(np.diff(offsets), np.full(poly.GetNumberOfPolys(), 4))  # quads only
    out = {
        "points": vtk_to_numpy(poly.GetPoints().GetData()),
        "polys": vtk_to_numpy(poly.GetPolys().GetConnectivityArray()).reshape(-1, 4),
        "scalars": poly.GetPointData().GetScalars().GetName(),
    }
    data = poly.GetPointData()
    for i in range(data.GetNumberOfArrays()):
        out[data.GetArrayName(i)] = vtk_to_numpy(data.GetArray(i))
    assert poly.GetNumberOfPoints() == len(out["points"]) and poly.GetNumberOfPolys() == len(out["polys"])
    return out


def run(script, argv: list[str], capsys: pytest.CaptureFixture) -> tuple[str, str]:
    script("h52vtp").main(argv)
    cap = capsys.readouterr()
    return cap.out, cap.err


def one_line_error(script, argv: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as exc:
        script("h52vtp").main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


# ---------------------------------------------------------------------------- the file


@pytest.mark.parametrize("ascii", [False, True], ids=["binary", "ascii"])
def test_points_polygons_values(tmp_path: Path, ascii: bool) -> None:
    surf = bowl()
    info = surface_to_vtp(surf, tmp_path / "b.vtp", "train_loss", ascii=ascii)
    v = read_vtp(info.path)
    ny, nx = surf.shape
    assert (info.points, info.polygons) == (nx * ny, (nx - 1) * (ny - 1))
    assert v["points"].shape == (nx * ny, 3) and v["polys"].shape == ((nx - 1) * (ny - 1), 4)
    xx, yy = np.meshgrid(X, Y)  # (ny, nx): points in this order, x fastest
    assert np.array_equal(v["points"][:, 0], xx.ravel())
    assert np.array_equal(v["points"][:, 1], yy.ravel())
    assert np.array_equal(v["points"][:, 2], surf.metrics["train_loss"].ravel())
    assert v["scalars"] == "train_loss"
    assert np.array_equal(v["train_loss"], surf.metrics["train_loss"].ravel())  # exact: Float64 both ways
    assert v["polys"][0].tolist() == [0, 1, nx + 1, nx]
    j, i = 2, 3  # the cell between x[3], x[4] and y[2], y[3]: counter-clockwise seen from +z
    cell = v["polys"][j * (nx - 1) + i]
    corners = [(X[i], Y[j]), (X[i + 1], Y[j]), (X[i + 1], Y[j + 1]), (X[i], Y[j + 1])]
    assert [tuple(v["points"][k, :2]) for k in cell] == corners


def test_another_metric_and_exact_values(tmp_path: Path) -> None:
    surf = bowl()
    rng = np.random.default_rng(0)
    surf.metrics["test_loss"] = rng.lognormal(size=surf.shape)  # values with all their digits
    v = read_vtp(surface_to_vtp(surf, tmp_path / "t.vtp", "test_loss", ascii=True).path)
    assert np.array_equal(v["test_loss"], surf.metrics["test_loss"].ravel())
    v = read_vtp(surface_to_vtp(surf, tmp_path / "a.vtp", "train_acc").path)
    assert np.array_equal(v["train_acc"], surf.metrics["train_acc"].ravel())


def test_zmax_and_log(tmp_path: Path) -> None:
    surf = bowl()
    loss = surf.metrics["train_loss"].ravel()
    v = read_vtp(surface_to_vtp(surf, tmp_path / "z.vtp", zmax=1.5).path)
    assert np.array_equal(v["train_loss"], np.minimum(loss, 1.5)) and (loss > 1.5).any()
    v = read_vtp(surface_to_vtp(surf, tmp_path / "l.vtp", log=True).path)
    assert v["scalars"] == "log(train_loss + 0.1)"
    assert np.allclose(v["log(train_loss + 0.1)"], np.log(loss + 0.1), rtol=0, atol=1e-15)
    v = read_vtp(surface_to_vtp(surf, tmp_path / "zl.vtp", zmax=1.5, log=True).path)
    expected = np.log(np.minimum(loss, 1.5) + 0.1)  # clipped first, as the reference does
    assert np.allclose(v["log(train_loss + 0.1)"], expected, rtol=0, atol=1e-15)
    assert np.array_equal(v["points"][:, 2], v["log(train_loss + 0.1)"])


def test_interp_grid_and_values(tmp_path: Path) -> None:
    x, y = np.linspace(-1.0, 1.0, 5), np.linspace(-0.5, 1.5, 6)
    surf = bowl(x, y)
    n = 21  # the new spacing divides the old: every original point is on the new grid
    v = read_vtp(surface_to_vtp(surf, tmp_path / "i.vtp", interp=n).path)
    assert v["points"].shape == (n * n, 3) and v["polys"].shape == ((n - 1) ** 2, 4)
    assert v["polys"][0].tolist() == [0, 1, n + 1, n]
    xi, yi = np.linspace(-1.0, 1.0, n), np.linspace(-0.5, 1.5, n)
    xx, yy = np.meshgrid(xi, yi)  # (n, n)
    assert np.allclose(v["points"][:, 0], xx.ravel(), rtol=0, atol=1e-15)
    assert np.allclose(v["points"][:, 1], yy.ravel(), rtol=0, atol=1e-15)
    z = v["train_loss"].reshape(n, n)  # (ny, nx)
    assert np.allclose(z[::4, ::5], surf.metrics["train_loss"], rtol=0, atol=1e-12)  # the originals
    assert np.allclose(z, xx**2 + yy**2, rtol=0, atol=1e-9)  # in between: a quadratic is reproduced
    assert not np.allclose(z[1::4, 1::5], 0.0)  # (in-between points do exist)


def test_interp_smooth_function_and_descending_axis(tmp_path: Path) -> None:
    x, y = np.linspace(1.0, -1.0, 21), np.linspace(-1.0, 1.0, 17)  # x descending: sorted before the spline
    xx, yy = np.meshgrid(x, y)
    surf = Surface(x=x, y=y, metrics={"train_loss": np.sin(xx) * np.cos(2 * yy) + 2}, done=np.ones(xx.shape, bool))
    g = height_grid(surf, interp=33)
    gx, gy = np.meshgrid(g.x, g.y)
    assert g.x[0] == -1.0 and g.x[-1] == 1.0
    assert np.allclose(g.z, np.sin(gx) * np.cos(2 * gy) + 2, rtol=0, atol=1e-3)


def test_interp_with_zmax_and_log(tmp_path: Path) -> None:
    surf = bowl(np.linspace(-2, 2, 9), np.linspace(-2, 2, 9))
    v = read_vtp(surface_to_vtp(surf, tmp_path / "zi.vtp", zmax=3.0, log=True, interp=17).path)
    z = v["log(train_loss + 0.1)"].reshape(17, 17)
    assert z.max() <= np.log(3.1) and np.isclose(z.max(), np.log(3.1))  # overshoot clipped
    expected = np.log(np.minimum(surf.metrics["train_loss"], 3.0) + 0.1)
    assert np.allclose(z[::2, ::2], expected, rtol=0, atol=1e-12)


def test_large_file_several_blocks(tmp_path: Path) -> None:
    """Compressed binary arrays over 1 MiB are in several blocks (1 MiB each), the last one full or not."""
    x, y = np.linspace(-1, 1, 257), np.linspace(-1, 2, 257)  # 256 x 256 cells: connectivity = 2 MiB of Int64
    xx, yy = np.meshgrid(x, y)
    v = read_vtp(write_vtp(tmp_path / "big.vtp", HeightGrid(x=x, y=y, z=np.cos(xx * yy), name="f")).path)
    assert len(v["polys"]) * 4 * 8 == 2 << 20  # two full blocks
    assert 1 << 20 < len(v["points"]) * 3 * 8 < 2 << 20  # one full block, one part
    assert np.array_equal(v["points"][:, 1], yy.ravel())
    assert np.array_equal(v["f"], np.cos(xx * yy).ravel())
    assert v["polys"][-1].tolist() == [257 * 255 + 255, 257 * 255 + 256, 257 * 256 + 256, 257 * 256 + 255]


# ---------------------------------------------------------------------------- points not computed


def test_points_not_done_are_left_out(tmp_path: Path) -> None:
    done = np.ones((5, 7), dtype=bool)
    done[2, 3] = False  # an inner point: its 4 cells go
    done[0, 0] = False  # a corner: its 1 cell goes
    surf = bowl(done=done)
    surf.metrics["train_loss"][~done] = -1.0  # the reference's fill value: must not become a height
    info = surface_to_vtp(surf, tmp_path / "p.vtp")
    v = read_vtp(info.path)
    assert len(v["points"]) == 35 - 2 and len(v["polys"]) == 24 - 5
    assert -1.0 not in v["train_loss"]
    xx, yy = np.meshgrid(X, Y)
    assert np.array_equal(v["points"][:, 0], xx[done]) and np.array_equal(v["points"][:, 1], yy[done])
    assert np.array_equal(v["train_loss"], surf.metrics["train_loss"][done])
    used = np.unique(v["polys"])
    assert used.min() >= 0 and used.max() < len(v["points"])
    for cell in v["polys"]:  # every polygon is a grid cell: two x values and two y values
        assert len(np.unique(v["points"][cell, 0])) == 2 and len(np.unique(v["points"][cell, 1])) == 2
    assert not info.notes


def test_diverged_points(tmp_path: Path) -> None:
    surf = bowl()
    surf.metrics["train_loss"][1, 1] = np.nan
    surf.metrics["train_loss"][3, 5] = np.inf
    g = height_grid(surf)
    assert g.valid.sum() == 33 and len(g.notes) == 1 and "2 computed point(s)" in g.notes[0]
    v = read_vtp(surface_to_vtp(surf, tmp_path / "d.vtp", zmax=4.0).path)  # +inf is drawn at zmax
    assert len(v["points"]) == 34 and v["train_loss"].max() == 4.0


def test_reference_file(tmp_path: Path, script, capsys) -> None:
    """The reference code's layout: no `done`, -1 where not computed, 2-D arrays stored as (nx, ny)."""
    surf = bowl()
    loss = surf.metrics["train_loss"].copy()
    loss[4, 6] = -1.0
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        f["xcoordinates"], f["ycoordinates"] = X, Y
        f["train_loss"] = loss.reshape(7, 5)  # shape (nx, ny), filled in (ny, nx) order
    out, _ = run(script, ["--file", str(tmp_path / "ref.h5")], capsys)
    assert out.strip() == str(tmp_path / "ref_train_loss.vtp")
    v = read_vtp(tmp_path / "ref_train_loss.vtp")
    assert len(v["points"]) == 34 and len(v["polys"]) == 23 and -1.0 not in v["train_loss"]


# ---------------------------------------------------------------------------- the script


def test_script_names_and_folders(tmp_path: Path, script, capsys) -> None:
    write_surface(tmp_path / "s.h5", bowl())
    out, _ = run(script, ["--surf_file", str(tmp_path / "s.h5")], capsys)
    assert out.strip() == str(tmp_path / "s_train_loss.vtp")
    out, _ = run(script, ["--surf_file", str(tmp_path / "s.h5"), "--surf_name", "train_acc", "--zmax", "0.5",
                          "--log", "--interp", "9", "--out", str(tmp_path / "new" / "folder"), "--name", "r20"],
                 capsys)
    expected = tmp_path / "new" / "folder" / "r20_train_acc_zmax0.5_log_interp9.vtp"
    assert out.strip() == str(expected) and expected.is_file()
    assert len(read_vtp(expected)["points"]) == 81
    assert vtp_filename("s", "test_loss", zmax=10.0) == "s_test_loss_zmax10.vtp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "s.h5", "s_train_loss.vtp"]  # no temporary file


def test_script_overwrites_atomically(tmp_path: Path, script, capsys) -> None:
    write_surface(tmp_path / "s.h5", bowl())
    target = tmp_path / "s_train_loss.vtp"
    target.write_text("old")
    run(script, ["-f", str(tmp_path / "s.h5")], capsys)
    assert len(read_vtp(target)["points"]) == 35
    one_line_error(script, ["-f", str(tmp_path / "s.h5"), "--interp", "1"], capsys)
    assert target.read_text().startswith("<?xml")  # an error leaves the file as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5", "s_train_loss.vtp"]


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails at the last step (the rename) leaves the old file and no temporary file."""
    import landscape.plot.vtp as vtp

    target = tmp_path / "s.vtp"
    target.write_text("old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(vtp.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        surface_to_vtp(bowl(), target)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["s.vtp"]


def test_script_runs_standalone(tmp_path: Path) -> None:
    write_surface(tmp_path / "s.h5", bowl())
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "h52vtp.py"), "--surf_file", str(tmp_path / "s.h5"),
                        "--zmax", "2", "--out", str(tmp_path / "o")], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "o" / "s_train_loss_zmax2.vtp")
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "h52vtp.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--surf_file" in r.stdout and "--interp" in r.stdout


def test_note_for_diverged_points(tmp_path: Path, script, capsys) -> None:
    surf = bowl()
    surf.metrics["train_loss"][2, 2] = np.inf
    write_surface(tmp_path / "s.h5", surf)
    _, err = run(script, ["-f", str(tmp_path / "s.h5")], capsys)
    assert err.startswith("note: 1 computed point(s) of train_loss are not finite") and "--zmax" in err


# ---------------------------------------------------------------------------- one-line errors


def test_error_1d_file(tmp_path: Path, script, capsys) -> None:
    x = np.linspace(-1, 1, 11)
    write_surface(tmp_path / "line.h5", Surface(x=x, y=None, metrics={"train_loss": x**2}, done=np.ones(11, bool)))
    err = one_line_error(script, ["--surf_file", str(tmp_path / "line.h5")], capsys)
    assert "1-D" in err and "--y=" in err and "plot_1d.py" in err
    assert not list(tmp_path.glob("*.vtp"))
    with pytest.raises(LandscapeError, match="1-D"):
        height_grid(Surface(x=x, y=None, metrics={"train_loss": x**2}))


def test_error_unknown_surf_name(tmp_path: Path, script, capsys) -> None:
    write_surface(tmp_path / "s.h5", bowl())
    err = one_line_error(script, ["--surf_file", str(tmp_path / "s.h5"), "--surf_name", "test_loss"], capsys)
    assert err.startswith("error: --surf_name 'test_loss' is not in the surface") and "train_acc, train_loss" in err


@pytest.mark.parametrize("value, words", [
    ("1", "--interp must be a whole number of at least 2"),
    ("0", "--interp must be a whole number of at least 2"),
    ("-1", "--interp must be a whole number of at least 2"),  # the reference's "off": leave the flag out
    ("2.5", "invalid int value"),
    ("many", "invalid int value"),
])
def test_error_bad_interp(tmp_path: Path, script, capsys, value: str, words: str) -> None:
    write_surface(tmp_path / "s.h5", bowl())
    err = one_line_error(script, ["--surf_file", str(tmp_path / "s.h5"), f"--interp={value}"], capsys)
    assert words in err


def test_error_interp_needs_every_point_and_4_per_axis(tmp_path: Path, script, capsys) -> None:
    done = np.ones((5, 7), dtype=bool)
    done[1, 2] = False
    write_surface(tmp_path / "part.h5", bowl(done=done))
    err = one_line_error(script, ["-f", str(tmp_path / "part.h5"), "--interp", "50"], capsys)
    assert err.startswith("error: --interp needs a height at every grid point, but 1 of 35") and "plot_surface.py" in err
    write_surface(tmp_path / "small.h5", bowl(X, Y[:3]))
    err = one_line_error(script, ["-f", str(tmp_path / "small.h5"), "--interp", "50"], capsys)
    assert "at least 4 points along x and y" in err and "ny=3" in err
    assert not list(tmp_path.glob("*.vtp"))


def test_error_nothing_computed(tmp_path: Path, script, capsys) -> None:
    write_surface(tmp_path / "none.h5", bowl(done=np.zeros((5, 7), dtype=bool)))
    err = one_line_error(script, ["-f", str(tmp_path / "none.h5")], capsys)
    assert "no computed point yet" in err and "plot_surface.py" in err
    done = np.zeros((5, 7), dtype=bool)
    done[::2, ::2] = True  # points, but no cell with 4 corners
    write_surface(tmp_path / "sparse.h5", bowl(done=done))
    err = one_line_error(script, ["-f", str(tmp_path / "sparse.h5")], capsys)
    assert "no grid cell has a height at all 4 corners" in err


def test_error_zmax_and_paths(tmp_path: Path, script, capsys) -> None:
    write_surface(tmp_path / "s.h5", bowl())
    err = one_line_error(script, ["-f", str(tmp_path / "s.h5"), "--zmax", "-1"], capsys)
    assert err.startswith("error: --zmax -1 is not above the lowest computed train_loss")
    err = one_line_error(script, ["-f", str(tmp_path / "s.h5"), "--zmax", "nan"], capsys)
    assert "--zmax must be a finite number" in err
    err = one_line_error(script, ["-f", str(tmp_path / "s.h5"), "--out", str(tmp_path / "x.vtp")], capsys)
    assert "--out is the folder" in err and "--name x" in err
    err = one_line_error(script, ["-f", str(tmp_path / "s.h5"), "--name", "a/b"], capsys)
    assert "--name 'a/b' is a file name stem" in err
    err = one_line_error(script, ["-f", str(tmp_path / "missing.h5")], capsys)
    assert "does not exist" in err
    err = one_line_error(script, [], capsys)
    assert "--surf_file" in err
    assert not list(tmp_path.glob("*.vtp"))
