"""The surface loop against closed forms and against itself (resume, single points)."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from landscape.sources.data import DEFAULT_NORMALIZATION, load_dataset
from landscape.directions import DirectionSpec, make_directions, target_tensors
from landscape.errors import LandscapeError, as_flags
from landscape.engine.evaluate import Evaluator, PointSetter, cross_entropy
from landscape.grid import Axis, Grid
from landscape.storage import read_surface
from landscape.config import RunOptions
from landscape.sweep import sweep


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits", "train", n_samples=300, seed=0)
    return DEFAULT_NORMALIZATION["digits"].apply(d.x), d.y


def linear_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def setup(model, digits, seed=1, batch_size=None, loss_fn=cross_entropy, ndim=2):
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=seed, ndim=ndim)
    setter = PointSetter([t for _, t in tensors], [dirs.x, dirs.y][:ndim])
    ev = Evaluator(model, *digits, loss_fn=loss_fn, batch_size=batch_size)
    return dirs, setter, {"train": ev}


def closed_form(W, b, x, y):
    """Cross-entropy and accuracy of logits = x W^T + b, in float64 by hand."""
    logits = x @ W.T + b  # (N, 10)
    m = logits.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))
    loss = (lse - logits[np.arange(len(y)), y]).mean()
    acc = (logits.argmax(axis=1) == y).mean()
    return loss, acc


def test_linear_model_surface_equals_closed_form_on_non_square_grid(digits, tmp_path):
    model = linear_model()
    W0 = model[1].weight.detach().double().numpy().copy()
    b0 = model[1].bias.detach().double().numpy().copy()
    dirs, setter, evs = setup(model, digits)
    Dx, Dy = dirs.x[0].double().numpy(), dirs.y[0].double().numpy()
    assert np.count_nonzero(dirs.x[1].numpy()) == 0  # bias ignored (biasbn)
    grid = Grid(Axis(-1, 1, 5), Axis(-0.5, 0.5, 3))  # 5 x-points, 3 y-points
    surf = sweep(setter, evs, grid, tmp_path / "s.h5", {"t": 1}, run=RunOptions(progress=False))
    assert surf.metrics["train_loss"].shape == (3, 5) and surf.done.all()
    x = digits[0].flatten(1).double().numpy()
    y = digits[1].numpy()
    for iy, cy in enumerate(grid.y.coords()):
        for ix, cx in enumerate(grid.x.coords()):
            loss, acc = closed_form(W0 + cx * Dx + cy * Dy, b0, x, y)
            assert surf.metrics["train_loss"][iy, ix] == pytest.approx(loss, rel=2e-6)
            assert surf.metrics["train_acc"][iy, ix] == pytest.approx(acc, abs=1e-12)
    back = read_surface(tmp_path / "s.h5")
    np.testing.assert_array_equal(back.metrics["train_loss"], surf.metrics["train_loss"])
    np.testing.assert_array_equal(back.x, grid.x.coords())
    np.testing.assert_array_equal(back.y, grid.y.coords())


def test_center_equals_direct_evaluation_and_theta0_is_restored_bit_exactly(digits, tmp_path):
    from landscape.models import get_model

    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10, in_channels=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    direct = Evaluator(model, *digits)()
    _, setter, evs = setup(model, digits)
    surf = sweep(setter, evs, Grid(Axis(-1, 1, 3), Axis(-1, 1, 3)), tmp_path / "c.h5", {}, run=RunOptions(progress=False))
    assert surf.metrics["train_loss"][1, 1] == direct[0]
    assert surf.metrics["train_acc"][1, 1] == direct[1]
    assert surf.metrics["train_loss"][0, 0] != direct[0]
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_each_value_lands_at_its_own_xy(digits, tmp_path):
    model = linear_model(3)
    _, setter, evs = setup(model, digits, seed=2)
    grid = Grid(Axis(0, 0.8, 5), Axis(-0.3, 0.3, 3))
    surf = sweep(setter, evs, grid, tmp_path / "p.h5", {}, run=RunOptions(progress=False))
    for iy, cy in enumerate(grid.y.coords()):
        for ix, cx in enumerate(grid.x.coords()):
            setter.set((cx, cy))
            assert evs["train"]() == (surf.metrics["train_loss"][iy, ix], surf.metrics["train_acc"][iy, ix])
    setter.restore()


def test_batched_equals_one_batch(digits, tmp_path):
    model = linear_model(4)
    _, setter, evs = setup(model, digits, batch_size=7)
    grid = Grid(Axis(-1, 1, 3), Axis(-1, 1, 3))
    small = sweep(setter, evs, grid, tmp_path / "a.h5", {}, run=RunOptions(progress=False))
    _, setter, evs = setup(model, digits, batch_size=None)
    whole = sweep(setter, evs, grid, tmp_path / "b.h5", {}, run=RunOptions(progress=False))
    np.testing.assert_allclose(small.metrics["train_loss"], whole.metrics["train_loss"], rtol=1e-6)
    np.testing.assert_array_equal(small.metrics["train_acc"], whole.metrics["train_acc"])


def test_resumed_equals_uninterrupted_bit_for_bit(digits, tmp_path):
    from landscape.models import get_model

    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10, in_channels=1).eval()
    grid = Grid(Axis(-1, 1, 4), Axis(-1, 1, 3))
    _, setter, evs = setup(model, digits)
    full = sweep(setter, evs, grid, tmp_path / "full.h5", {"a": 1}, run=RunOptions(progress=False))

    part = tmp_path / "part.h5"
    s1 = sweep(setter, evs, grid, part, {"a": 1}, run=RunOptions(max_points=5, progress=False))
    assert int(s1.done.sum()) == 5
    assert int(read_surface(part).done.sum()) == 5
    resumed = sweep(setter, evs, grid, part, {"a": 1}, run=RunOptions(progress=False))
    assert resumed.done.all()
    for m in ("train_loss", "train_acc"):
        np.testing.assert_array_equal(resumed.metrics[m], full.metrics[m])


def test_interrupted_run_keeps_every_computed_point(digits, tmp_path):
    model = linear_model(5)
    calls = {"n": 0}

    def flaky_loss(out, target):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # as Ctrl-C or SIGTERM would, mid-run
        return cross_entropy(out, target)

    grid = Grid(Axis(-1, 1, 3), Axis(-1, 1, 3))
    _, setter, evs = setup(model, digits, loss_fn=flaky_loss, batch_size=len(digits[1]))  # one call a point
    path = tmp_path / "i.h5"
    with pytest.raises(KeyboardInterrupt):
        sweep(setter, evs, grid, path, {}, run=RunOptions(flush_seconds=1e9, progress=False))
    saved = read_surface(path)
    assert int(saved.done.sum()) == 5  # flushed on the way out
    assert np.isnan(saved.metrics["train_loss"][~saved.done]).all()
    resumed = sweep(setter, evs, grid, path, {}, run=RunOptions(progress=False))
    _, setter2, evs2 = setup(model, digits)
    full = sweep(setter2, evs2, grid, tmp_path / "f.h5", {}, run=RunOptions(progress=False))
    np.testing.assert_array_equal(resumed.metrics["train_loss"], full.metrics["train_loss"])


def test_non_finite_losses_are_stored_as_computed(digits, tmp_path):
    model = linear_model(6)

    def diverging(out, target):
        return torch.full((len(target),), float("inf"))

    _, setter, evs = setup(model, digits, loss_fn=diverging, ndim=1)
    surf = sweep(setter, evs, Grid(Axis(-1, 1, 3)), tmp_path / "n.h5", {}, run=RunOptions(progress=False))
    back = read_surface(tmp_path / "n.h5")
    assert back.done.all() and np.isinf(back.metrics["train_loss"]).all()
    assert surf.ndim == 1 and back.shape == (3,)


def test_other_settings_on_the_same_file_are_refused(digits, tmp_path):
    model = linear_model(7)
    _, setter, evs = setup(model, digits, ndim=1)
    grid = Grid(Axis(-1, 1, 3))
    path = tmp_path / "x.h5"
    sweep(setter, evs, grid, path, {"seed": 0}, run=RunOptions(progress=False))
    with pytest.raises(LandscapeError, match="pass overwrite to replace it") as e:
        sweep(setter, evs, grid, path, {"seed": 1}, run=RunOptions(progress=False))
    assert "seed: 0 -> 1" in str(e.value)
    assert as_flags(e.value).endswith("pass --overwrite to replace it, or another --surf_file to write a new file")
    sweep(setter, evs, grid, path, {"seed": 1}, run=RunOptions(overwrite=True, progress=False))
    assert read_surface(path).settings == {"seed": 1}


def test_point_setter_skips_nothing_that_moves(digits):
    model = linear_model(8)
    _, setter, _ = setup(model, digits)
    assert len(setter.live) == 1  # the weight moves; the bias (zero direction) is left alone
    w0 = model[1].weight.detach().clone()
    setter.set((0.5, -0.25))
    expected = w0 + 0.5 * setter.dirs[0][0] + -0.25 * setter.dirs[1][0]
    torch.testing.assert_close(model[1].weight.detach(), expected, rtol=0, atol=1e-7)
    setter.restore()
    assert torch.equal(model[1].weight.detach(), w0)


def test_grid_and_directions_must_agree(digits, tmp_path):
    _, setter, evs = setup(linear_model(9), digits, ndim=2)
    with pytest.raises(ValueError, match="2 directions"):
        sweep(setter, evs, Grid(Axis(-1, 1, 3)), tmp_path / "d.h5", {}, run=RunOptions(progress=False))


def test_mse_loss_matches_the_reference_definition(digits):
    """--loss_name mse: mean over classes of (softmax(logits) - onehot)^2, averaged over samples."""
    from landscape.engine.evaluate import get_loss

    model = linear_model(10)
    loss, acc = Evaluator(model, *digits, loss_fn=get_loss("mse"))()
    W = model[1].weight.detach().double().numpy()
    b = model[1].bias.detach().double().numpy()
    logits = digits[0].flatten(1).double().numpy() @ W.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(10)[digits[1].numpy()]
    assert loss == pytest.approx(((p - onehot) ** 2).mean(), rel=1e-6)
    with pytest.raises(LandscapeError, match="^loss must be one of cross_entropy, mse, got 'hinge'") as e:
        get_loss("hinge")
    assert as_flags(e.value).startswith("--loss_name must be one of")
