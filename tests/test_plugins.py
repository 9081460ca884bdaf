"""--model-def / --data-def / --loss-def / --metric-def from a file written here; bad specs are one line."""

from pathlib import Path

import numpy as np
import pytest
import torch

import landscape as ll
from landscape.errors import LandscapeError
from landscape.sources.plugins import build_model, load_symbol, parse_kwargs
from landscape.storage import read_surface

DEFS = '''
import torch
import torch.nn as nn

def make_model(width=4):
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 1))

def make_data(split):
    g = torch.Generator().manual_seed({"train": 0, "test": 1}[split])
    x = torch.randn(40, 3, generator=g)
    return x, x.sum(1, keepdim=True)

def make_loader():
    x, y = make_data("train")
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)

def half_sq(out, y):
    return 0.5 * (out - y).pow(2).squeeze(1)

def within(out, y):
    return ((out - y).abs() < 1.0).float().squeeze(1)

NOT_CALLABLE = 3

def not_a_model():
    return "model"
'''


@pytest.fixture()
def defs(tmp_path: Path) -> Path:
    path = tmp_path / "mydefs.py"
    path.write_text(DEFS)
    return path


def test_cli_plugins_equal_the_api(plot_surface, defs: Path, tmp_path: Path) -> None:
    argv = ["--model-def", f"{defs}:make_model", "--model-kwargs", '{"width": 5}', "--data-def", f"{defs}:make_data",
            "--loss-def", f"{defs}:half_sq", "--metric-def", f"within={defs}:within", "--split", "train,test",
            "--x=-1:1:3", "--y=-1:1:3", "--seed", "2", "--surf_file", str(tmp_path / "cli.h5"), "--no-progress"]
    assert plot_surface.main(argv) == 0
    cli = read_surface(tmp_path / "cli.h5")
    assert set(cli.metrics) == {"train_loss", "train_within", "test_loss", "test_within"}

    import importlib.util

    spec = importlib.util.spec_from_file_location("mydefs_for_test", defs)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(2)  # the CLI seeds the factory's initial weights with --seed
    model = mod.make_model(width=5)
    api = ll.compute_surface(model, {s: mod.make_data(s) for s in ("train", "test")}, mod.half_sq,
                             {"within": mod.within}, x=ll.Axis(-1, 1, 3), y=ll.Axis(-1, 1, 3), seed=2,
                             out=tmp_path / "api.h5", run=ll.RunOptions(progress=False))
    assert api.settings == cli.settings  # the same job through both doors: the same settings
    for m in cli.metrics:
        assert np.array_equal(api.metrics[m], cli.metrics[m]), m
    # a DataLoader from --data-def streams, K points per pass, to the same values
    argv = ["--model-def", f"{defs}:make_model", "--model-kwargs", '{"width": 5}', "--data-def", f"{defs}:make_loader",
            "--loss-def", f"{defs}:half_sq", "--points-per-pass", "4", "--x=-1:1:3", "--y=-1:1:3", "--seed", "2",
            "--surf_file", str(tmp_path / "stream.h5"), "--no-progress"]
    assert plot_surface.main(argv) == 0
    streamed = read_surface(tmp_path / "stream.h5")
    assert streamed.attrs["evaluation"] == {"train": "stream"}
    np.testing.assert_allclose(streamed.metrics["train_loss"], cli.metrics["train_loss"], rtol=1e-6)


def test_module_specs_load() -> None:
    assert load_symbol("landscape.metrics:accuracy", "--metric-def", "a metric") is ll.metrics.accuracy


@pytest.mark.parametrize("spec, kwargs, expected", [
    ("{d}", None, r"expected FILE.py:NAME or package.module:NAME"),
    ("{d}:nope", None, r"has no 'nope' \(it defines make_model, make_data"),
    ("{d}:NOT_CALLABLE", None, r"NOT_CALLABLE in .* is a int, expected"),
    ("{d}:not_a_model", None, r"returned a str, expected a torch.nn.Module"),
    ("{d}:make_model", '{"depth": 3}', r"calling it with \{'depth': 3\} failed \(TypeError"),
    ("{d}:make_model", "width=3", r"is not JSON"),
    ("missing/defs.py:f", None, r"the file 'missing/defs.py' does not exist"),
    ("no_such_module_xyz:f", None, r"cannot import module 'no_such_module_xyz'"),
    ("{bad}:f", None, r"running .*broken.py failed \(SyntaxError"),
])
def test_bad_model_defs_are_one_line_errors(defs: Path, spec: str, kwargs, expected: str) -> None:
    broken = defs.with_name("broken.py")
    broken.write_text("def f(:\n")
    with pytest.raises(LandscapeError, match=expected) as e:
        build_model(spec.format(d=defs, bad=broken), parse_kwargs(kwargs))
    assert "\n" not in str(e.value)


def test_bad_plugin_flags_through_the_cli(plot_surface, capsys, defs: Path, tmp_path: Path) -> None:
    base = ["--model-def", f"{defs}:make_model", "--x=-1:1:3", "--out", str(tmp_path), "--no-progress"]
    for extra, expected in [
        (["--data-def", f"{defs}:make_data", "--loss-def", f"{defs}:nope"], "--loss-def"),
        (["--data-def", f"{defs}:make_data", "--metric-def", f"{defs}:within"], "expected NAME=FILE.py:fn"),
        ([], "does not say which data it was trained on; pass --dataset (or --data-def)"),
        (["--data-def", f"{defs}:make_data", "--points-per-pass", "0"], "--points-per-pass must be >= 1"),
    ]:
        with pytest.raises(SystemExit) as e:
            plot_surface.main(base + extra)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err


def test_two_ranks_streaming_equal_one_process(plot_surface, defs: Path, tmp_path: Path) -> None:
    from test_distributed import ROOT, assert_same_surface, torchrun

    args = ["--model-def", f"{defs}:make_model", "--data-def", f"{defs}:make_loader", "--loss-def", f"{defs}:half_sq",
            "--points-per-pass", "3", "--x=-1:1:5", "--y=-1:1:3", "--threads", "1", "--no-progress"]
    assert plot_surface.main([*args, "--surf_file", str(tmp_path / "one.h5")]) == 0
    proc = torchrun(2, ROOT / "scripts" / "plot_surface.py", [*args, "--surf_file", str(tmp_path / "two.h5")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert_same_surface(read_surface(tmp_path / "two.h5"), read_surface(tmp_path / "one.h5"))


def test_model_def_with_checkpoint_and_cli_resume(plot_surface, capsys, defs: Path, tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("mydefs_ckpt", defs)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(7)
    model = mod.make_model(width=3)
    torch.save(model.state_dict(), tmp_path / "trained.pt")  # a bare state_dict
    args = ["--model-def", f"{defs}:make_model", "--model-kwargs", '{"width": 3}',
            "--ckpt", str(tmp_path / "trained.pt"), "--data-def", f"{defs}:make_data", "--loss-def", f"{defs}:half_sq", "--x=-1:1:4", "--y=-1:1:3",
            "--surf_file", str(tmp_path / "s.h5"), "--no-progress"]
    assert plot_surface.main([*args, "--max-points", "5"]) == 0
    assert int(read_surface(tmp_path / "s.h5").done.sum()) == 5
    assert plot_surface.main(args) == 0  # resumes: the other 7 points
    cli = read_surface(tmp_path / "s.h5")
    api = ll.compute_surface(model, mod.make_data("train"), mod.half_sq, x=ll.Axis(-1, 1, 4), y=ll.Axis(-1, 1, 3),
                             run=ll.RunOptions(progress=False))
    assert cli.done.all() and np.array_equal(cli.metrics["train_loss"], api.metrics["train_loss"])
    with pytest.raises(SystemExit):  # a checkpoint of another width
        plot_surface.main([*args[:3], '{"width": 4}', *args[4:]])  # args[3] is the kwargs
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --ckpt {tmp_path / 'trained.pt'} does not fit the --model-def model: ")
    assert "shape" in err and "\n" not in err
