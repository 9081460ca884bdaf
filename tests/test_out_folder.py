"""One rule for every script's outputs: `--out FOLDER` is the folder they go to, their names come from
the inputs, `--name STEM` gives another base name, and `--surf_file FILE` names a surface file itself.

Each script runs in-process on tiny inputs (a 7x5 or 5-point synthetic surface, one epoch of training).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from landscape.storage import Surface, read_surface, write_surface

FIGURES_2D = ("2dcontour", "2dcontourf", "2dheat", "3dsurface")


def pngs_and_pdfs(folder: Path, *stems: str) -> set[Path]:
    return {folder / f"{s}.{e}" for s in stems for e in ("png", "pdf")}


def files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def bowl() -> Surface:
    x, y = np.linspace(-1, 1, 7), np.linspace(-1, 1, 5)
    xx, yy = np.meshgrid(x, y)
    loss = xx**2 + yy**2
    return Surface(x=x, y=y, metrics={"train_loss": loss, "train_acc": 1 / (1 + loss)},
                   done=np.ones(loss.shape, dtype=bool))


def parabola() -> Surface:
    x = np.linspace(-1, 1, 5)
    return Surface(x=x, y=None, metrics={"train_loss": x**2 + 0.1, "train_acc": 1 - x**2 / 2},
                   done=np.ones(x.shape, dtype=bool))


def curvature_map() -> Surface:
    x, y = np.linspace(-1, 1, 3), np.linspace(-1, 1, 3)
    shape = (3, 3)
    return Surface(x=x, y=y, metrics={"max_eig": np.full(shape, 4.0), "min_eig": np.full(shape, -1.0)},
                   done=np.ones(shape, dtype=bool))


def partial(done: list[int]) -> Surface:
    s = Surface(x=np.linspace(-1, 1, 4), y=None, attrs={"settings": '{"a": 1}'})
    loss = s.add_metric("train_loss")
    for i in done:
        loss[i] = float(i)
        s.done[i] = True
    return s


def one_line_error(main, argv: list[str], capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_plot_2d_writes_into_out_named_by_name(script, tmp_path, capsys) -> None:
    plot_2d = script("plot_2d")
    surf_file = tmp_path / "in" / "bowl.h5"
    write_surface(surf_file, bowl())
    out = tmp_path / "figs"
    plot_2d.main(["--surf_file", str(surf_file), "--vmax", "3", "--out", str(out)])
    expected = pngs_and_pdfs(out, *(f"bowl_train_loss_{k}" for k in FIGURES_2D))
    assert files(out) == expected
    assert {Path(p) for p in capsys.readouterr().out.split()} == expected
    plot_2d.main(["--surf_file", str(surf_file), "--vmax", "3", "--out", str(out), "--name", "digits_resnet20"])
    assert files(out) - expected == pngs_and_pdfs(out, *(f"digits_resnet20_train_loss_{k}" for k in FIGURES_2D))
    # no --out: beside the surface file, --name still the stem
    plot_2d.main(["--surf_file", str(surf_file), "--vmax", "3", "--name", "b", "--only", "2dheat"])
    assert files(surf_file.parent) == {surf_file, *pngs_and_pdfs(surf_file.parent, "b_train_loss_2dheat")}


def test_plot_1d_writes_into_out_named_by_name(script, tmp_path, capsys) -> None:
    plot_1d = script("plot_1d")
    surf_file = tmp_path / "line.h5"
    write_surface(surf_file, parabola())
    out = tmp_path / "figs"
    plot_1d.main(["--surf_file", str(surf_file), "--log", "--out", str(out)])
    assert files(out) == pngs_and_pdfs(out, "line_1d", "line_1d_log")
    plot_1d.main(["--surf_file", str(surf_file), "--out", str(out), "--name", "small_vs_large_batch"])
    assert files(out) == pngs_and_pdfs(out, "line_1d", "line_1d_log", "small_vs_large_batch_1d")


def test_hessian_compare_writes_into_out_named_by_name(script, tmp_path, capsys) -> None:
    hessian = script("plot_hessian_eig")
    maps = [tmp_path / "maps" / "a_hessian.h5", tmp_path / "maps" / "b_hessian.h5"]
    for m in maps:
        write_surface(m, curvature_map())
    out = tmp_path / "figs"
    assert hessian.main(["--compare", *map(str, maps), "--out", str(out)]) == 0
    assert files(out) == pngs_and_pdfs(out, "a_hessian_compare")
    assert hessian.main(["--compare", *map(str, maps), "--out", str(out), "--name", "ratio"]) == 0
    assert files(out) == pngs_and_pdfs(out, "a_hessian_compare", "ratio")
    # no --out: beside the first map
    assert hessian.main(["--compare", *map(str, maps), "--titles", "A", "B", "--name", "r"]) == 0
    assert files(maps[0].parent) == {*maps, *pngs_and_pdfs(maps[0].parent, "r")}


def test_merge_writes_into_out_named_like_the_shards_or_by_name(merge, tmp_path, capsys) -> None:
    shards = [tmp_path / "s.shard-0-of-2.h5", tmp_path / "s.shard-1-of-2.h5"]
    write_surface(shards[0], partial([0, 2]))
    write_surface(shards[1], partial([1, 3]))
    argv = [str(s) for s in shards]
    out = tmp_path / "merged"
    assert merge.main([*argv, "--out", str(out)]) == 0
    assert f"into {out / 's.h5'}: 4/4 points done" in capsys.readouterr().out
    assert files(out) == {out / "s.h5"} and read_surface(out / "s.h5").done.all()
    assert merge.main([*argv, "--out", str(out), "--name", "whole"]) == 0
    assert files(out) == {out / "s.h5", out / "whole.h5"}
    assert merge.main([*argv, "--name", "beside"]) == 0  # no --out: the shards' folder
    assert (tmp_path / "beside.h5").is_file()
    assert merge.main([*argv, "--surf_file", str(tmp_path / "x" / "m.h5")]) == 0
    assert files(tmp_path / "x") == {tmp_path / "x" / "m.h5"}
    np.testing.assert_array_equal(read_surface(tmp_path / "x" / "m.h5").metrics["train_loss"], [0, 1, 2, 3])


def test_train_writes_into_out_named_by_model_and_data_or_name(script, tmp_path, capsys) -> None:
    train = script("train")
    base = ["--model", "resnet20", "--dataset", "digits", "--epochs", "1", "--no-test", "--batch-size", "256"]
    out = tmp_path / "ckpts"
    train.main([*base, "--out", str(out), "--manifest", str(out / "MANIFEST.json")])
    assert files(out) == {out / "digits_resnet20.pt", out / "MANIFEST.json"}
    train.main([*base, "--out", str(out), "--name", "final", "--manifest", str(out / "MANIFEST.json")])
    assert files(out) == {out / "digits_resnet20.pt", out / "final.pt", out / "MANIFEST.json"}
    import json

    entries = json.loads((out / "MANIFEST.json").read_text())["checkpoints"]
    assert [e["file"] for e in entries] == ["digits_resnet20.pt", "final.pt"]


@pytest.mark.parametrize("name, argv, expected", [
    ("plot_2d", ["--out", "{tmp}/docs/digits_resnet20.png"], "pass --out {tmp}/docs --name digits_resnet20"),
    ("plot_2d", ["--name", "docs/x"], "--name 'docs/x' is a file name stem, not a path; give the folder with --out"),
    ("plot_1d", ["--out", "{tmp}/f.pdf"], "names a file, but --out is the figures' folder"),
    ("plot_hessian_eig", ["--name", "x"], "--name names the --compare/--compare-spectra figures"),
    ("train", ["--model", "resnet20", "--out", "{tmp}/ckpt/digits_resnet20.pt"],
     "pass --out {tmp}/ckpt --name digits_resnet20"),
    ("train", ["--model", "resnet20", "--out", "{tmp}", "--name", "final.pt"], "give the stem: --name final"),
    ("merge_surfaces", ["{tmp}/s.shard-0-of-2.h5", "--out", "{tmp}/merged.h5"],
     "pass --surf_file {tmp}/merged.h5 to name the file"),
    ("merge_surfaces", ["{tmp}/s.shard-0-of-2.h5", "--name", "m.h5"], "give the stem: --name m"),
])
def test_a_file_for_out_or_a_path_for_name_is_one_line_naming_the_fix(script, tmp_path, capsys, name, argv,
                                                                      expected) -> None:
    surf_file = tmp_path / "s.h5"
    write_surface(surf_file, parabola() if name == "plot_1d" else bowl())
    write_surface(tmp_path / "s.shard-0-of-2.h5", partial([0]))
    if name.startswith("plot_") and name != "plot_hessian_eig":
        argv = ["--surf_file", str(surf_file), *argv]
    before = files(tmp_path)
    line = one_line_error(script(name).main, [a.format(tmp=tmp_path) for a in argv], capsys)
    assert expected.format(tmp=tmp_path) in line
    assert files(tmp_path) == before
