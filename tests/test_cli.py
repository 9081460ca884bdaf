"""scripts/plot_surface.py: bad input is one `error:` line and exit 2; the reference code's flags work.

`main(argv)` runs in-process (a subprocess pays ~3 s to import torch); one subprocess test
checks what a shell sees.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from landscape.directions import DirectionSpec, make_directions, save_directions, target_tensors
from landscape.models import get_model
from landscape.storage import read_surface

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--n-samples", "16", "--no-progress"]


def run_error(plot_surface, capsys, argv: list[str]) -> str:
    """Run main, expecting exit 2 and one `error:` line on stderr; return that line."""
    with pytest.raises(SystemExit) as e:
        plot_surface.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(("spec", "expected"), [
    ("-1:1", "--x must be min:max:num like -1:1:51, got '-1:1'"),
    ("a:1:5", "--x bounds must be numbers"),
    ("-1:1:0", "an axis needs at least 1 point, got num=0"),
    ("1:-1:5", "axis max must be >= min, got 1:-1"),
    ("-1:1:2.5", "--x point count must be an integer"),
])
def test_bad_grid_spec(plot_surface, capsys, tmp_path: Path, spec: str, expected: str) -> None:
    line = run_error(plot_surface, capsys, [f"--x={spec}", "--out", str(tmp_path), *SMALL])
    assert expected in line
    assert not any(tmp_path.iterdir())  # nothing was computed or written


def test_bad_compile_mode(plot_surface, capsys, tmp_path: Path) -> None:
    line = run_error(plot_surface, capsys, ["--compile-mode", "fastest", "--x=-1:1:3", "--out", str(tmp_path), *SMALL])
    assert "--compile-mode must be one of" in line and "max-autotune-no-cudagraphs" in line and "'fastest'" in line
    assert not any(tmp_path.iterdir())


def test_gpu_levers_on_the_cpu_change_nothing_and_say_so(plot_surface, tmp_path: Path, capsys) -> None:
    """--cuda-fuse and --cudnn-benchmark change nothing on the CPU: the values equal a run without
    them, the notes say so, and the file's engine settings do not claim them."""
    plot_surface.main(["--x=-1:1:3", "--out", str(tmp_path / "a"), *SMALL])
    plot_surface.main(["--x=-1:1:3", "--out", str(tmp_path / "b"), "--cuda-fuse", "--cudnn-benchmark", *SMALL])
    out = capsys.readouterr().out
    assert "cuDNN fusion asked for; it has no effect on cpu" in out
    assert "cuDNN benchmark mode asked for; it has no effect on cpu" in out
    a, b = (next((tmp_path / d).glob("*x-1_1_3.h5")) for d in "ab")
    assert np.array_equal(read_surface(a).metrics["train_loss"], read_surface(b).metrics["train_loss"])
    with h5py.File(b) as h:
        engine = json.loads(h.attrs["engine"])
    assert "cuda_fuse" not in engine and "cudnn_benchmark" not in engine  # recorded on CUDA only


def test_y_without_x(plot_surface, capsys, tmp_path: Path) -> None:
    line = run_error(plot_surface, capsys, ["--y=-1:1:3", "--out", str(tmp_path), *SMALL])
    assert "--y needs --x too" in line


def test_missing_checkpoint(plot_surface, capsys, tmp_path: Path) -> None:
    missing = tmp_path / "no_such.pt"
    line = run_error(plot_surface, capsys, ["--ckpt", str(missing), "--x=-1:1:3", "--out", str(tmp_path), *SMALL])
    assert str(missing) in line and "does not exist" in line


def test_checkpoint_of_another_architecture(plot_surface, capsys, digits_ckpt: Path, tmp_path: Path) -> None:
    line = run_error(plot_surface, capsys, ["--model", "resnet32", "--model_file", str(digits_ckpt),
                                            "--x=-1:1:3", "--out", str(tmp_path), *SMALL])
    assert "does not fit resnet32" in line
    assert "missing keys" in line and "closest architectures" in line


def test_missing_dataset_folder(plot_surface, capsys, digits_ckpt: Path, tmp_path: Path) -> None:
    line = run_error(plot_surface, capsys, ["--ckpt", str(digits_ckpt), "--dataset", "cifar10",
                                            "--data-root", "/nonexistent", "--x=-1:1:3", "--out", str(tmp_path), *SMALL])
    assert "cifar10 train files not found" in line
    assert "/nonexistent/data_batch_1" in line and "'cifar-10-batches-py'" in line


def test_direction_file_of_another_architecture(plot_surface, capsys, digits_ckpt: Path, tmp_path: Path) -> None:
    other = get_model("resnet32", num_classes=10, in_channels=1)
    dirs = make_directions(target_tensors(other, "weights"), DirectionSpec(), seed=0, ndim=2)
    dirs.attrs["arch"] = "resnet32"
    dir_file = tmp_path / "resnet32_dirs.h5"
    save_directions(dir_file, dirs)
    line = run_error(plot_surface, capsys, ["--ckpt", str(digits_ckpt), "--dir_file", str(dir_file),
                                            "--x=-1:1:2", "--y=-1:1:2", "--out", str(tmp_path), *SMALL])
    assert f"direction file {dir_file}" in line
    assert "made for resnet32" in line
    n32, n20 = len(target_tensors(other, "weights")), len(list(get_model("resnet20", in_channels=1).parameters()))
    assert f"has {n32} tensors but the model has {n20}" in line


def test_surface_file_of_another_run(plot_surface, capsys, digits_ckpt: Path, tmp_path: Path) -> None:
    surf_file = tmp_path / "surface.h5"
    base = ["--ckpt", str(digits_ckpt), "--x=-1:1:2", "--y=-1:1:2", "--surf_file", str(surf_file),
            "--out", str(tmp_path), *SMALL]
    assert plot_surface.main([*base, "--seed", "0"]) == 0
    first = read_surface(surf_file)
    assert first.done.all() and first.attrs["sample_seed"] == 0
    capsys.readouterr()

    line = run_error(plot_surface, capsys, [*base, "--seed", "1"])  # another subset and other directions
    assert f"{surf_file} was computed with other settings" in line
    assert "data.train.sha256: " in line and "directions_sha256: " in line
    assert "--overwrite" in line
    unchanged = read_surface(surf_file)  # the refused run left the file alone
    assert np.array_equal(unchanged.metrics["train_loss"], first.metrics["train_loss"])

    assert plot_surface.main([*base, "--seed", "1", "--overwrite"]) == 0
    second = read_surface(surf_file)
    assert second.done.all() and second.attrs["sample_seed"] == 1
    assert second.settings["directions_sha256"] != first.settings["directions_sha256"]
    # the center is theta0 for both runs; different samples give a different loss there
    assert not np.array_equal(second.metrics["train_loss"], first.metrics["train_loss"])


def test_reference_flags(plot_surface, capsys, digits_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--model", "resnet20", "--model_file", str(digits_ckpt), "--x=-1:1:3", "--y=-1:1:3",
            "--dir_type", "weights", "--xnorm", "filter", "--xignore", "biasbn", "--ynorm", "filter",
            "--yignore", "biasbn", "--plot", "--vmin", "0.1", "--vmax", "10", "--vlevel", "0.5",
            "--n-samples", "32", "--out", str(out), "--no-progress"]
    assert plot_surface.main(argv) == 0
    stdout = capsys.readouterr().out
    h5s = sorted(out.glob("*.h5"))
    surf_file = next(p for p in h5s if "dirs" not in p.name)
    assert f"surface:    {surf_file}  (9/9 points done)" in stdout
    with h5py.File(surf_file, "r") as f:
        assert f["train_loss"].shape == (3, 3)
        assert f["done"][:].all()
        assert np.isfinite(f["train_loss"][:]).all()
        assert f.attrs["model"] == "resnet20"
        assert json.loads(f.attrs["n_samples"]) == {"train": 32}
    pngs, pdfs = sorted(out.glob("*.png")), sorted(out.glob("*.pdf"))
    kinds = {p.stem.rsplit("_", 1)[-1] for p in pngs}
    # --n-samples stores standard errors, so the error heat map (contour beside 2 SE) is drawn too
    assert kinds == {"2dcontour", "2dcontourf", "2dheat", "3dsurface", "2derror"}
    assert [p.with_suffix("") for p in pngs] == [p.with_suffix("") for p in pdfs]
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(p) in stdout
    for p in pdfs:
        assert p.read_bytes()[:5] == b"%PDF-"


def test_subprocess_error_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_surface.py"), "--x=-1:1",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --x must be min:max:num"), proc.stderr


def test_bn_recompute_is_wired_through_the_cli(plot_surface, capsys, digits_ckpt: Path,
                                                                tmp_path: Path) -> None:
    """--bn-recompute is wired through: recorded in the settings, noted, and it changes the values."""
    from landscape.sources.checkpoint import load_checkpoint, save_checkpoint, build_model

    model, _, _ = build_model(load_checkpoint(digits_ckpt))
    torch.manual_seed(5)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    other = tmp_path / "other.pt"
    save_checkpoint(other, model, load_checkpoint(digits_ckpt).meta)
    common = ["--ckpt", str(digits_ckpt), "--model_file2", str(other), "--x=0:1:3", "--n-samples", "64",
              "--out", str(tmp_path), "--no-progress"]
    assert plot_surface.main(common + ["--surf_file", str(tmp_path / "plain.h5")]) == 0
    assert plot_surface.main(common + ["--surf_file", str(tmp_path / "bn.h5"), "--bn-recompute"]) == 0
    out = capsys.readouterr().out
    assert "BatchNorm statistics re-estimated at every point from 64 training samples" in out
    plain, bn = read_surface(tmp_path / "plain.h5"), read_surface(tmp_path / "bn.h5")
    assert bn.settings["bn_recompute"]["samples"] == 64 and "bn_recompute" not in plain.settings
    assert not np.array_equal(plain.metrics["train_loss"], bn.metrics["train_loss"])
    assert bn.done.all() and np.isfinite(bn.metrics["train_loss"]).all()


def test_plane_through_three_checkpoints(plot_surface, digits_ckpt: Path, tmp_path: Path) -> None:
    """--model_file2/3: (0,0), (1,0) and (0,1) are the three checkpoints themselves."""
    from landscape.sources.checkpoint import build_model, load_checkpoint, save_checkpoint
    from landscape.sources.data import DEFAULT_NORMALIZATION, load_dataset
    from landscape.engine.evaluate import Evaluator

    base = load_checkpoint(digits_ckpt)
    paths = [digits_ckpt]
    for seed in (1, 2):
        model, _, _ = build_model(base)
        torch.manual_seed(seed)
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(0.05 * torch.randn_like(t).abs())  # abs: running_var stays positive
        paths.append(tmp_path / f"m{seed}.pt")
        save_checkpoint(paths[-1], model, base.meta)
    argv = ["--ckpt", str(paths[0]), "--model_file2", str(paths[1]), "--model_file3", str(paths[2]),
            "--x=0:1:2", "--y=0:1:2", "--n-samples", "64", "--out", str(tmp_path), "--no-progress",
            "--surf_file", str(tmp_path / "plane.h5")]
    assert plot_surface.main(argv) == 0
    surf = read_surface(tmp_path / "plane.h5")
    data = load_dataset("digits", "train", n_samples=64, seed=0)
    x = DEFAULT_NORMALIZATION["digits"].apply(data.x)
    for (iy, ix), path in zip([(0, 0), (0, 1), (1, 0)], paths):
        model, _, _ = build_model(load_checkpoint(path))
        loss, acc = Evaluator(model, x, data.y)()
        assert surf.metrics["train_loss"][iy, ix] == pytest.approx(loss, rel=1e-5)
        assert surf.metrics["train_acc"][iy, ix] == acc


def test_each_run_records_its_points_and_seconds(plot_surface, tmp_path: Path, capsys) -> None:
    """A run stopped by --max-points and its resumption each append {points, seconds} to the
    file's `runs`; a run with nothing left to do appends nothing; the note gives the cost a point."""
    args = ["--x=-1:1:5", "--out", str(tmp_path), *SMALL]
    plot_surface.main([*args, "--max-points", "2"])
    assert "this run computed 2 points in" in capsys.readouterr().out
    plot_surface.main(args)
    assert "this run computed 3 points in" in capsys.readouterr().out
    plot_surface.main(args)
    assert "this run computed" not in capsys.readouterr().out
    with h5py.File(next(tmp_path.glob("*x-1_1_5.h5"))) as h:
        runs = json.loads(h.attrs["runs"])
    assert [r["points"] for r in runs] == [2, 3] and all(r["seconds"] > 0 and r["ranks"] == 1 for r in runs)


def test_points_per_launch_gives_the_one_point_surface_and_resumes(plot_surface, tmp_path: Path) -> None:
    """--points-per-launch 3 on a 5x3 grid with --n-samples (loss, accuracy, SE, n): the values of
    the one-point loop (1e-6 relative; accuracy and n equal); stopped after 4 points and resumed,
    the same surface as uninterrupted."""
    grid = ["--x=-1:1:5", "--y=-1:1:3", *SMALL]
    plot_surface.main([*grid, "--out", str(tmp_path / "one")])
    plot_surface.main([*grid, "--out", str(tmp_path / "three"), "--points-per-launch", "3"])
    plot_surface.main([*grid, "--out", str(tmp_path / "resumed"), "--points-per-launch", "3", "--max-points", "4"])
    part = read_surface(next((tmp_path / "resumed").glob("*y-1_1_3.h5")))
    assert int(part.done.sum()) == 4
    plot_surface.main([*grid, "--out", str(tmp_path / "resumed"), "--points-per-launch", "3"])
    one, three, resumed = (read_surface(next((tmp_path / d).glob("*y-1_1_3.h5"))) for d in ("one", "three", "resumed"))
    assert three.done.all() and resumed.done.all()
    for name in ("train_loss", "train_loss_se"):
        np.testing.assert_allclose(three.metrics[name], one.metrics[name], rtol=1e-6)
    for name in ("train_acc", "train_n"):
        np.testing.assert_array_equal(three.metrics[name], one.metrics[name])
    for name in three.metrics:
        np.testing.assert_array_equal(resumed.metrics[name], three.metrics[name])
    assert three.attrs["engine"]["points_per_launch"] == 3


@pytest.mark.parametrize(("flags", "expected"), [
    (["--points-per-launch", "0"], "--points-per-launch must be >= 1, got 0"),
    (["--points-per-launch", "2", "--tolerance", "0.5"], "--points-per-launch > 1 does not combine with --tolerance"),
    (["--points-per-launch", "2", "--compile"], "--points-per-launch > 1 does not combine with --compile"),
    (["--points-per-launch", "2", "--stream"], "--points-per-launch > 1 does not combine with --stream (streamed data "
                                               "is evaluated --points-per-pass points at a time)"),
])
def test_points_per_launch_bad_combinations(plot_surface, capsys, tmp_path: Path, flags, expected) -> None:
    line = run_error(plot_surface, capsys, ["--x=-1:1:3", "--out", str(tmp_path), *flags, *SMALL])
    assert expected in line


@pytest.mark.parametrize(("argv", "draws"), [
    ([], True),  # the embedded default
    (["--out", "elsewhere", "--n-samples", "64"], True),  # still the embedded model and grid
    (["--no-plot"], False),
    (["--x=-1:1:3", "--y=-1:1:3"], False),
    (["--x=-1:1:3", "--y=-1:1:3", "--plot"], True),
    (["--ckpt", "a.pt"], False),
    (["--ckpt", "a.pt", "--model_file2", "b.pt", "--plot"], True),
    (["--model-def", "m.py:make"], False),
])
def test_one_rule_for_drawing(plot_surface, argv: list[str], draws: bool) -> None:
    assert plot_surface.draws(plot_surface.parse_args(argv)) is draws


def test_help_states_the_drawing_rule_and_the_plot_flags(plot_surface, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        plot_surface.parse_args(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert ("Rule: a run draws with --plot; the embedded default (no --ckpt, --model-def, --model_file2, --x or --y) "
            "draws without it too, unless --no-plot") in text
    assert "--plot, --no-plot" in text
    assert "lowest contour level and colour (default: chosen from the data)" in text
    assert "log-spaced contour levels, log colours and a log z axis in 3-D" in text


def test_sampling_keeps_its_vmax_and_vlevel_when_the_plots_choose_theirs(plot_surface) -> None:
    plan = plot_surface.sampling_plan(plot_surface.parse_args(["--tolerance"]))
    assert plan.tolerance == 0.125 and plan.vmax == 10.0  # vlevel 0.5 / 4, vmax 10: as before
    plan = plot_surface.sampling_plan(plot_surface.parse_args(["--tolerance", "--vlevel", "0.2", "--vmax", "4"]))
    assert plan.tolerance == 0.05 and plan.vmax == 4.0


def test_plot_draws_every_split_and_only_when_asked(plot_surface, capsys, tmp_path: Path) -> None:
    """--split train,test: no figure without --plot; with --plot (and --log) both losses' figures."""
    argv = ["--x=-1:1:3", "--y=-1:1:3", "--split", "train,test", "--out", str(tmp_path), *SMALL]
    assert plot_surface.main(argv) == 0
    assert not list(tmp_path.glob("*.png")) and "figures:" not in capsys.readouterr().out
    assert plot_surface.main([*argv, "--plot", "--log"]) == 0  # nothing to compute: the figures only
    out = capsys.readouterr().out
    surf = read_surface(next(p for p in tmp_path.glob("*.h5") if "dirs" not in p.name))
    assert {"train_loss", "test_loss"} <= set(surf.metrics)
    stems = {p.stem.split("_y-1_1_3_", 1)[1] for p in tmp_path.glob("*.png")}
    kinds = ("2dcontour", "2dcontourf", "2dheat", "3dsurface", "2derror")  # --n-samples: error bars too
    assert stems == {f"{m}_{k}" for m in ("train_loss", "test_loss") for k in kinds}
    for p in tmp_path.glob("*.p*"):
        assert str(p) in out


@pytest.mark.parametrize(("flags", "expected"), [
    (["--vmin", "5", "--vmax", "1"], "--vmin must be below --vmax, got --vmin 5.0 and --vmax 1.0"),
    (["--vlevel", "0"], "--vlevel must be positive, got 0.0"),
    (["--log", "--vmin", "0"], "--log needs a positive --vmin and --zlim"),
])
def test_plot_flags_are_checked_before_computing(plot_surface, capsys, tmp_path: Path, flags, expected) -> None:
    line = run_error(plot_surface, capsys, ["--x=-1:1:3", "--plot", *flags, "--out", str(tmp_path), *SMALL])
    assert expected in line
    assert not any(tmp_path.iterdir())
