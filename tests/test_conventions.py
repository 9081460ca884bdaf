"""The reference code's conventions in the surface file (format 2): accuracy in percent, -1 at
points not computed; format-1 files and the reference's own files still read; resume and merge
stay bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from landscape.errors import LandscapeError
from landscape.storage import (FORMAT_VERSION, NOT_COMPUTED, Surface, is_accuracy, merge_surfaces, read_surface,
                               write_surface)

SMALL = ["--n-samples", "37", "--no-progress"]  # 37: accuracies c/37, many of which do not survive x100 then /100


def awkward_fractions(k: int) -> np.ndarray:
    """k fractions c/n whose x100-then-/100 round trip lands one unit in the last place away."""
    out = [c / n for n in range(3, 200) for c in range(1, n) if (c / n * 100) / 100 != c / n]
    assert len(out) >= k
    return np.array(out[:k])


def partial_surface() -> Surface:
    """A 3x4 surface with losses, accuracies, their standard errors and sample counts; 7 points done."""
    x, y = np.linspace(-1, 1, 4), np.linspace(0, 1, 3)
    s = Surface(x=x, y=y, attrs={"settings": json.dumps({"a": 1})})
    done = np.zeros((3, 4), dtype=bool)
    done.flat[[0, 1, 2, 5, 6, 10, 11]] = True
    s.done = done
    acc = awkward_fractions(12).reshape(3, 4)
    values = {"train_loss": np.arange(12.0).reshape(3, 4) - 1.0,  # -1 and 0 are real values at done points
              "train_acc": acc, "test_loss": np.full((3, 4), 2.5), "test_acc": acc[::-1].copy(),
              "train_loss_se": np.full((3, 4), 0.125), "train_acc_se": acc / 7, "train_n": np.full((3, 4), 37.0)}
    for name, v in values.items():
        s.metrics[name] = np.where(done, v, np.nan)  # NaN = not computed, in memory
    return s


def test_accuracy_names() -> None:
    assert all(map(is_accuracy, ["train_acc", "test_acc", "acc", "train_acc_se", "test_acc_se", "val_acc"]))
    assert not any(map(is_accuracy, ["train_loss", "train_loss_se", "train_n", "train_top5_acc", "accuracy",
                                     "train_acc_n", "max_eig"]))


def test_file_holds_percent_and_minus_one_memory_fractions_and_nan(tmp_path: Path) -> None:
    s = partial_surface()
    raw = {m: a.copy() for m, a in s.metrics.items()}
    write_surface(tmp_path / "s.h5", s)
    done = s.done
    accuracies = ("train_acc", "test_acc", "train_acc_se")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION == 2
        np.testing.assert_array_equal(f["done"][:], done.astype(np.uint8))
        for m, a in raw.items():
            stored = f[m][:]
            assert stored.shape == (3, 4)
            assert NOT_COMPUTED == -1.0 and (stored[~done] == NOT_COMPUTED).all(), m  # the reference's "not done"
            np.testing.assert_array_equal(stored[done], a[done] * 100.0 if m in accuracies else a[done], err_msg=m)
        assert 0 < f["train_acc"][0, 0] < 100 and f["train_acc"][0, 0] == pytest.approx(100 * raw["train_acc"][0, 0])
        assert sorted(f["exact"]) == sorted(accuracies)  # the fractions as computed, beside the percentages
        np.testing.assert_array_equal(f["exact/train_acc"][:][done], raw["train_acc"][done])
    for m, a in raw.items():
        np.testing.assert_array_equal(s.metrics[m], a, err_msg=m)  # writing changes nothing in memory
    back = read_surface(tmp_path / "s.h5")
    assert "exact" not in back.metrics
    np.testing.assert_array_equal(back.done, done)
    for m, a in raw.items():
        assert np.isnan(back.metrics[m][~done]).all(), m
        assert back.metrics[m][done].tobytes() == a[done].tobytes(), m  # the fractions computed, bit for bit
    assert back.metrics["train_loss"].flat[0] == -1.0 and back.done.flat[0]  # -1 computed: a value
    # these fractions do not survive x100 then /100: without the exact ones they would move
    assert ((raw["train_acc"][done] * 100.0) / 100.0 != raw["train_acc"][done]).any()
    # reading and writing again changes no byte
    write_surface(tmp_path / "again.h5", back)
    with h5py.File(tmp_path / "s.h5", "r") as f, h5py.File(tmp_path / "again.h5", "r") as g:
        for m in [*raw, *(f"exact/{a}" for a in accuracies)]:
            assert f[m][:].tobytes() == g[m][:].tobytes(), m


def test_a_percentage_changed_by_another_program_is_read(tmp_path: Path) -> None:
    """The reference's own scripts know nothing of `exact`: a percentage they rewrite is read as it is."""
    s = partial_surface()
    write_surface(tmp_path / "s.h5", s)
    with h5py.File(tmp_path / "s.h5", "a") as f:
        f["train_acc"][0, 1] = 12.5
    back = read_surface(tmp_path / "s.h5")
    assert back.metrics["train_acc"][0, 1] == 0.125
    assert back.metrics["train_acc"][0, 0] == s.metrics["train_acc"][0, 0]  # the others: exact
    with h5py.File(tmp_path / "s.h5", "a") as f:
        del f["exact"]  # a format-2 file without the exact fractions: percent / 100
    back = read_surface(tmp_path / "s.h5")
    others = s.done.copy()
    others[0, 1] = False
    assert back.metrics["train_acc"][0, 1] == 0.125
    np.testing.assert_allclose(back.metrics["train_acc"][others], s.metrics["train_acc"][others], rtol=3e-16)


def write_format_1(path: Path, s: Surface) -> None:
    """A surface file as landscape wrote it before format 2: fractions, NaN where not done."""
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = s.x
        if s.y is not None:
            f["ycoordinates"] = s.y
        for m, a in s.metrics.items():
            f[m] = np.where(s.done, a, np.nan)
        f["done"] = s.done.astype(np.uint8)
        f["dir_file"] = "dirs.h5"
        f.attrs["format_version"] = 1
        for k, v in s.attrs.items():
            f.attrs[k] = v
        f.attrs["json_attrs"] = "[]"


def test_format_1_file_still_reads_and_is_rewritten_as_format_2(tmp_path: Path) -> None:
    s = partial_surface()
    write_format_1(tmp_path / "old.h5", s)
    old = read_surface(tmp_path / "old.h5")
    assert old.attrs["format_version"] == 1 and old.dir_file == "dirs.h5"
    np.testing.assert_array_equal(old.done, s.done)
    for m, a in s.metrics.items():  # read as written: fractions, NaN where not done
        np.testing.assert_array_equal(old.metrics[m], a, err_msg=m)
    write_surface(tmp_path / "new.h5", old)
    with h5py.File(tmp_path / "new.h5", "r") as f:
        assert f.attrs["format_version"] == 2  # not the format that was read
        np.testing.assert_array_equal(f["train_acc"][:][s.done], s.metrics["train_acc"][s.done] * 100.0)
        assert (f["train_acc"][:][~s.done] == -1.0).all()
    new = read_surface(tmp_path / "new.h5")
    np.testing.assert_allclose(new.metrics["train_acc"][s.done], s.metrics["train_acc"][s.done], rtol=3e-16)


def test_reference_1d_file_still_reads(tmp_path: Path) -> None:
    """The reference's own file: no done, no format_version, -1 = not computed, accuracy in percent."""
    x = np.linspace(-1, 1, 5)
    with h5py.File(tmp_path / "ref.h5", "w") as f:
        f["xcoordinates"] = x
        f["train_loss"] = np.array([2.0, 0.5, 0.1, -1.0, -1.0])
        f["train_acc"] = np.array([40.0, 85.0, 99.5, -1.0, -1.0])
        f["dir_file"] = "ref_dirs.h5"
    s = read_surface(tmp_path / "ref.h5")
    np.testing.assert_array_equal(s.done, [True, True, True, False, False])
    np.testing.assert_allclose(s.metrics["train_acc"][:3], [0.40, 0.85, 0.995])
    np.testing.assert_array_equal(s.metrics["train_loss"][:3], [2.0, 0.5, 0.1])
    assert np.isnan(s.metrics["train_loss"][3:]).all() and np.isnan(s.metrics["train_acc"][3:]).all()


def test_newer_format_is_refused_in_one_line(tmp_path: Path) -> None:
    s = partial_surface()
    write_format_1(tmp_path / "future.h5", s)
    with h5py.File(tmp_path / "future.h5", "a") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(LandscapeError, match=r"surface format 3, this landscape reads formats 1 to 2") as e:
        read_surface(tmp_path / "future.h5")
    assert "\n" not in str(e.value)


def test_merge_compares_as_stored_format_1_with_format_2(tmp_path: Path) -> None:
    """The same computed values in a format-1 file (fractions) and a format-2 file (percent) agree."""
    s = partial_surface()
    write_format_1(tmp_path / "a.h5", s)
    write_surface(tmp_path / "b.h5", partial_surface())
    merged, report = merge_surfaces([tmp_path / "a.h5", tmp_path / "b.h5"])
    assert report.done == 7 and report.total == 12
    np.testing.assert_array_equal(merged.metrics["train_loss"], s.metrics["train_loss"])
    other = partial_surface()
    other.metrics["train_acc"].flat[0] += 1e-3  # a real disagreement is still refused
    write_surface(tmp_path / "c.h5", other)
    with pytest.raises(LandscapeError, match="disagree at 1 point"):
        merge_surfaces([tmp_path / "a.h5", tmp_path / "c.h5"])


def surf_file(folder: Path) -> Path:
    return next(p for p in folder.glob("*.h5") if "dirs" not in p.name)


def raw_values(path: Path) -> dict[str, bytes]:
    """Every array of the file (the exact fractions' group included), as bytes."""
    out: dict[str, bytes] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, v: out.update({k: v[()].tobytes()}) if isinstance(v, h5py.Dataset) and k != "dir_file"
                     else None)
    return out


def test_resume_and_merge_are_bit_for_bit(plot_surface, tmp_path: Path) -> None:
    """A run stopped after 4 points (its file: percent, -1 at the 5 points left) and resumed, shards
    merged, and a format-1 partial file resumed: the same values as one uninterrupted run, bit for bit."""
    grid = ["--x=-1:1:3", "--y=-1:1:3", *SMALL]
    assert plot_surface.main([*grid, "--out", str(tmp_path / "whole")]) == 0
    assert plot_surface.main([*grid, "--out", str(tmp_path / "part"), "--max-points", "4"]) == 0
    part = surf_file(tmp_path / "part")
    with h5py.File(part, "r") as f:
        done = f["done"][:].astype(bool)
        assert done.sum() == 4
        for m in ("train_loss", "train_acc", "train_loss_se", "train_acc_se", "train_n"):
            assert (f[m][:][~done] == -1.0).all(), m
        acc = f["train_acc"][:][done]
        assert (acc > 1.0).any() and (acc <= 100.0).all()  # percent
        counts = acc * 37 / 100  # c/37 in percent: whole sample counts
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-9)
    assert plot_surface.main([*grid, "--out", str(tmp_path / "part")]) == 0
    whole = surf_file(tmp_path / "whole")
    ref, resumed = raw_values(whole), raw_values(part)
    assert ref.keys() == resumed.keys() and {"train_acc_se", "exact/train_acc"} <= ref.keys()
    for k in ref:
        assert resumed[k] == ref[k], k
    a, b = read_surface(whole), read_surface(part)
    for m in a.metrics:
        assert a.metrics[m].tobytes() == b.metrics[m].tobytes(), m

    # shards, merged
    from landscape.storage import merge_surfaces

    for i in (0, 1):
        assert plot_surface.main([*grid, "--out", str(tmp_path / "sh"), "--shard", f"{i}/2"]) == 0
    merged, report = merge_surfaces(sorted((tmp_path / "sh").glob("*.shard-*.h5")))
    assert report.complete
    write_surface(tmp_path / "merged.h5", merged)
    got = raw_values(tmp_path / "merged.h5")
    for k in ref:
        assert got[k] == ref[k], k

    # a partial file of format 1 (as the previous version wrote it) resumes into the same values
    old_dir = tmp_path / "old"
    assert plot_surface.main([*grid, "--out", str(old_dir), "--max-points", "4"]) == 0
    old = surf_file(old_dir)
    with h5py.File(old, "a") as f:  # as the previous version wrote it: the fractions computed, NaN, no `exact`
        done = f["done"][:].astype(bool)
        for m in [k for k in f if k not in ("xcoordinates", "ycoordinates", "done", "dir_file", "exact")]:
            v = f["exact"][m][:] if m in f["exact"] else f[m][:]
            f[m][...] = np.where(done, v, np.nan)
        del f["exact"]
        f.attrs["format_version"] = 1
    before = read_surface(old).metrics["train_acc"][done]
    assert before.tobytes() == read_surface(whole).metrics["train_acc"][done].tobytes()
    assert plot_surface.main([*grid, "--out", str(old_dir)]) == 0
    got = raw_values(old)
    for k in ref:
        assert got[k] == ref[k], k
