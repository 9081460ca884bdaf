"""The Python API: same surface as the command line, custom losses and metrics as given, directions."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import landscape as ll
from landscape.sources.checkpoint import build_model, load_checkpoint
from landscape.sources.data import DEFAULT_NORMALIZATION, load_dataset
from landscape.directions import DirectionSpec, make_directions, target_tensors
from landscape.errors import LandscapeError
from landscape.storage import read_surface

QUIET = ll.RunOptions(progress=False)


def test_api_equals_cli_on_the_bundled_architecture(plot_surface, digits_ckpt: Path, tmp_path: Path) -> None:
    argv = ["--ckpt", str(digits_ckpt), "--x=-1:1:3", "--y=-1:1:2", "--n-samples", "64", "--out", str(tmp_path),
            "--surf_file", str(tmp_path / "cli.h5"), "--no-progress"]
    assert plot_surface.main(argv) == 0
    cli = read_surface(tmp_path / "cli.h5")
    model, _, _ = build_model(load_checkpoint(digits_ckpt))
    d = load_dataset("digits", "train", n_samples=64, seed=0)
    api = ll.compute_surface(model, (DEFAULT_NORMALIZATION["digits"].apply(d.x), d.y),
                             metrics={"acc": ll.metrics.accuracy}, x=ll.Axis(-1, 1, 3), y=ll.Axis(-1, 1, 2),
                             seed=0, out=tmp_path / "api.h5", run=QUIET)
    assert api.done.all()
    for m in ("train_loss", "train_acc"):
        assert np.array_equal(api.metrics[m], cli.metrics[m]), m


def linear(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def test_custom_per_sample_loss_and_metric_equal_a_hand_computation(tmp_path: Path) -> None:
    model = linear()
    W0, b0 = model.weight.detach().double().numpy().copy(), model.bias.detach().double().numpy().copy()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(20, 3, generator=g), torch.randn(20, 2, generator=g)
    l1 = lambda out, t: (out - t).abs().sum(dim=1)  # noqa: E731 - per-sample L1 error, (N,)
    big = lambda out, t: (out[:, 0] > 0.5).float() * 7.0  # noqa: E731 - a metric that is not an accuracy
    d = ll.directions.random(model, generator=torch.Generator().manual_seed(5))
    surf = ll.compute_surface(model, (x, y), loss=l1, metrics={"big": big}, x=ll.Axis(-2, 2, 5), y=None,
                              directions=[d], out=tmp_path / "s.h5", run=QUIET, batch_size=7)
    assert set(surf.metrics) == {"train_loss", "train_big"}
    D = d[0].double().numpy()
    assert not d[1].any()  # the bias is ignored (biasbn)
    xs, ys = x.double().numpy(), y.double().numpy()
    for i, c in enumerate(surf.x):
        out = xs @ (W0 + c * D).T + b0  # (20, 2)
        assert surf.metrics["train_loss"][i] == pytest.approx(np.abs(out - ys).sum(1).mean(), rel=1e-6)
        assert surf.metrics["train_big"][i] == pytest.approx(7.0 * (out[:, 0] > 0.5).mean(), abs=1e-12)
    assert model.training  # the model's mode comes back


def test_api_directions_are_the_cli_ones_and_can_be_passed(tmp_path: Path) -> None:
    model = linear()
    dirs = make_directions(target_tensors(model, "weights"), DirectionSpec(), seed=4)
    g = torch.Generator().manual_seed(4)
    dx, dy = ll.directions.random(model, generator=g), ll.directions.random(model, generator=g)
    assert all(torch.equal(a, b) for a, b in zip(dx + dy, dirs.x + dirs.y))
    data = (torch.randn(10, 3), torch.randint(0, 2, (10,)))
    kw = {"x": ll.Axis(-1, 1, 3), "y": ll.Axis(-1, 1, 3), "run": QUIET}
    a = ll.compute_surface(model, data, seed=4, out=tmp_path / "a.h5", **kw)
    b = ll.compute_surface(model, data, directions=[dx, dy], out=tmp_path / "b.h5", **kw)
    c = ll.compute_surface(model, data, directions=tmp_path / "a_dirs.h5", out=tmp_path / "c.h5", **kw)
    assert np.array_equal(a.metrics["train_loss"], b.metrics["train_loss"])
    assert np.array_equal(a.metrics["train_loss"], c.metrics["train_loss"])
    other = linear(seed=1)
    interp = ll.directions.interpolation(model, other)
    assert torch.equal(interp[0], other.weight.detach() - model.weight.detach())


def test_dict_outputs_splits_and_plotting(tmp_path: Path) -> None:
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 3)

        def forward(self, x):
            return {"logits": self.body(x), "aux": x.sum(1)}

    torch.manual_seed(0)
    model = TwoHeads()
    ce = lambda out, t: ll.losses.cross_entropy(out["logits"], t)  # noqa: E731
    acc = lambda out, t: ll.metrics.accuracy(out["logits"], t)  # noqa: E731
    train = (torch.randn(30, 4), torch.randint(0, 3, (30,)))
    test = (torch.randn(12, 4), torch.randint(0, 3, (12,)))
    surf = ll.compute_surface(model, {"train": train, "test": test}, ce, {"acc": acc}, x=ll.Axis(-1, 1, 3),
                              y=ll.Axis(-1, 1, 3), run=QUIET)
    assert set(surf.metrics) == {"train_loss", "train_acc", "test_loss", "test_acc"} and surf.done.all()
    assert surf.dir_file is None  # out=None: a temporary file, gone
    from matplotlib.figure import Figure

    cs = surf.plot_contour(ax=Figure().add_subplot())
    assert len(cs.levels) > 5


def test_bad_api_inputs_are_one_line_errors() -> None:
    model = linear()
    for data, match in [((torch.randn(3, 3), torch.randn(4)), r"x has shape \(3, 3\) and y \(4,\)"),
                        ("abc", "data must be a pair of tensors"),
                        (42, "data must be a pair of tensors")]:
        with pytest.raises(LandscapeError, match=match):
            ll.compute_surface(model, data, x=ll.Axis(0, 1, 2), y=None, run=QUIET)
    with pytest.raises(LandscapeError, match="metric names"):
        ll.compute_surface(model, (torch.randn(3, 3), torch.randn(3)), metrics={"loss": len}, run=QUIET)
    with pytest.raises(LandscapeError, match="a 2-D grid needs 2 directions"):
        ll.compute_surface(model, (torch.randn(3, 3), torch.randn(3)), directions=[ll.directions.random(model)],
                           run=QUIET)


def test_help_describes_the_api() -> None:
    assert "compute_surface" in ll.__doc__ and "metrics" in ll.compute_surface.__doc__
    assert ll.plot.contour is not None and ll.Axis(-1, 1, 3).num == 3


def test_api_sampling_equals_the_cli_and_on_streamed_data(plot_surface, digits_ckpt: Path, tmp_path: Path) -> None:
    """`sampling=` gives the CLI's adaptive (and coarse-to-fine) surface bit for bit."""
    model, _, _ = build_model(load_checkpoint(digits_ckpt))
    d = load_dataset("digits", "train", n_samples=128, seed=0)
    data = (DEFAULT_NORMALIZATION["digits"].apply(d.x), d.y)
    for extra, multilevel, strata in (([], False, 0), (["--multilevel"], True, 0),
                                      (["--multilevel", "--stratify", "8"], True, 8)):
        cli_file = tmp_path / f"cli{multilevel}{strata}.h5"
        argv = ["--ckpt", str(digits_ckpt), "--x=-1:1:5", "--y=-1:1:3", "--n-samples", "128", "--tolerance", "0.4",
                "--n0", "32", "--out", str(tmp_path), "--surf_file", str(cli_file), "--no-progress", *extra]
        assert plot_surface.main(argv) == 0
        cli = read_surface(cli_file)
        plan = ll.SamplingPlan(tolerance=0.4, n0=32, vmax=10.0, multilevel=multilevel, strata=strata)
        # the 128 samples stand for the whole split (their standard errors are against it)
        api = ll.compute_surface(model, data, metrics={"acc": ll.metrics.accuracy}, x=ll.Axis(-1, 1, 5),
                                 y=ll.Axis(-1, 1, 3), out=tmp_path / f"api{multilevel}{strata}.h5", run=QUIET,
                                 sampling=plan, populations={"train": d.population})
        assert api.settings == cli.settings
        assert api.settings["sampling"]["tolerance"] == 0.4
        assert api.settings["sampling"].get("order") == cli.settings["sampling"].get("order")  # the same order
        for m in cli.metrics:
            assert np.array_equal(api.metrics[m], cli.metrics[m]), (multilevel, m)
    # streamed data (a DataLoader over the same samples) gets the same error bars and adaptive sampling
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=32)
    plan = ll.SamplingPlan(tolerance=0.4, n0=32, vmax=10.0)
    kw = dict(metrics={"acc": ll.metrics.accuracy}, x=ll.Axis(-1, 1, 5), y=ll.Axis(-1, 1, 3), run=QUIET, sampling=plan)
    resident = ll.compute_surface(model, data, out=tmp_path / "resident.h5", **kw)
    streamed = ll.compute_surface(model, loader, out=tmp_path / "streamed.h5", **kw)
    assert streamed.attrs["evaluation"] == {"train": "stream"} and streamed.settings == resident.settings
    for m in resident.metrics:
        assert np.array_equal(streamed.metrics[m], resident.metrics[m]), m
    with pytest.raises(LandscapeError, match="multilevel needs the data resident"):
        ll.compute_surface(model, loader, x=ll.Axis(-1, 1, 3), y=None, run=QUIET,
                           sampling=ll.SamplingPlan(tolerance=0.4, multilevel=True))


def test_points_per_launch_gives_the_one_point_surface(digits_ckpt: Path, tmp_path: Path) -> None:
    """compute_surface(engine=EngineOptions(points_per_launch=3)): the values of the one-point loop (1e-6 relative,
    accuracy equal); with resident data only."""
    model, _, _ = build_model(load_checkpoint(digits_ckpt))
    d = load_dataset("digits", "train", n_samples=48, seed=0)
    data = (DEFAULT_NORMALIZATION["digits"].apply(d.x), d.y)
    kw = dict(metrics={"acc": ll.metrics.accuracy}, x=ll.Axis(-1, 1, 4), y=ll.Axis(-1, 1, 2), run=QUIET)
    one = ll.compute_surface(model, data, out=tmp_path / "one.h5", **kw)
    three = ll.compute_surface(model, data, out=tmp_path / "three.h5", engine=ll.EngineOptions(points_per_launch=3),
                               **kw)
    np.testing.assert_allclose(three.metrics["train_loss"], one.metrics["train_loss"], rtol=1e-6)
    np.testing.assert_array_equal(three.metrics["train_acc"], one.metrics["train_acc"])
    with pytest.raises(LandscapeError, match="points_per_launch > 1 does not combine with compile"):
        ll.compute_surface(model, data, out=tmp_path / "c.h5", engine=ll.EngineOptions(points_per_launch=3, compile=True),
                           **kw)
