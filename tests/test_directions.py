import h5py
import pytest
import torch

from landscape.directions import (DirectionSpec, interpolation_direction, load_directions, make_directions,
                                  random_direction, save_directions, target_tensors)
from landscape.errors import LandscapeError
from landscape.models import get_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = get_model("resnet20", num_classes=10, in_channels=1)
    # non-trivial BN statistics and affine parameters
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_()
    return m


def _weights(model):
    return [w for _, w in target_tensors(model, "weights")]


def test_filter_normalization_matches_weight_filter_norms(model):
    ws = _weights(model)
    ds = random_direction(ws, "filter", "biasbn", torch.Generator().manual_seed(0))
    assert len(ds) == len(ws)
    n_filters = 0
    for d, w in zip(ds, ws):
        assert d.shape == w.shape
        if w.dim() <= 1:
            assert torch.count_nonzero(d) == 0  # biases and BN parameters ignored
            continue
        for di, wi in zip(d, w):
            torch.testing.assert_close(di.double().norm(), wi.double().norm(), rtol=1e-6, atol=0)
            n_filters += 1
    assert n_filters > 100


def test_ignore_none_copies_one_dim_tensors(model):
    ws = _weights(model)
    ds = random_direction(ws, "filter", "none", torch.Generator().manual_seed(0))
    for d, w in zip(ds, ws):
        if w.dim() <= 1:
            assert torch.equal(d, w)


def test_layer_and_unit_norms(model):
    ws = _weights(model)
    layer = random_direction(ws, "layer", "biasbn", torch.Generator().manual_seed(1))
    dlayer = random_direction(ws, "dlayer", "biasbn", torch.Generator().manual_seed(1))
    dfilter = random_direction(ws, "dfilter", "biasbn", torch.Generator().manual_seed(1))
    for w, a, b, c in zip(ws, layer, dlayer, dfilter):
        if w.dim() <= 1:
            continue
        torch.testing.assert_close(a.double().norm(), w.double().norm(), rtol=1e-6, atol=0)
        torch.testing.assert_close(b.double().norm(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-6, atol=0)
        torch.testing.assert_close(c.flatten(1).double().norm(dim=1), torch.ones(len(c), dtype=torch.float64),
                                   rtol=1e-6, atol=0)


def test_weight_norm_and_none_use_the_same_draws(model):
    ws = _weights(model)
    raw = random_direction(ws, "none", "biasbn", torch.Generator().manual_seed(2))
    weighted = random_direction(ws, "weight", "biasbn", torch.Generator().manual_seed(2))
    for w, r, d in zip(ws, raw, weighted):
        if w.dim() > 1:
            torch.testing.assert_close(d, r * w)


def test_same_seed_same_directions_other_seed_other(model):
    tensors = target_tensors(model, "weights")
    a = make_directions(tensors, DirectionSpec(), seed=3)
    b = make_directions(tensors, DirectionSpec(), seed=3)
    c = make_directions(tensors, DirectionSpec(), seed=4)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert all(torch.equal(u, v) for u, v in zip(a.y, b.y))
    assert not all(torch.equal(u, v) for u, v in zip(a.x, a.y) if u.dim() > 1)  # y is not x
    same = make_directions(tensors, DirectionSpec(), seed=3, same_dir=True)
    assert all(torch.equal(u, v) for u, v in zip(same.x, same.y))


def test_states_directions_cover_bn_statistics(model):
    states = target_tensors(model, "states")
    names = [n for n, _ in states]
    assert any(n.endswith("running_mean") for n in names)
    ds = random_direction([t for _, t in states], "filter", "none", torch.Generator().manual_seed(0))
    for (name, t), d in zip(states, ds):
        if not t.is_floating_point():
            assert torch.count_nonzero(d) == 0  # num_batches_tracked never moves
        elif name.endswith("running_var"):
            assert torch.equal(d, t)  # 1-D tensors copy the state without biasbn


def test_direction_file_round_trip_in_reference_layout(model, tmp_path):
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(norm="layer"), seed=5)
    path = tmp_path / "dirs.h5"
    save_directions(path, dirs)
    with h5py.File(path, "r") as f:
        assert set(f.keys()) == {"xdirection", "ydirection"}
        assert sorted(f["xdirection"].keys(), key=int) == [str(i) for i in range(len(tensors))]
    back = load_directions(path)
    assert back.fingerprint() == dirs.fingerprint()
    assert back.names == dirs.names and back.attrs["xnorm"] == "layer" and back.attrs["seed"] == 5
    back.check_against(tensors)


def test_direction_file_of_another_architecture_is_refused(model, tmp_path):
    other = get_model("resnet32", num_classes=10, in_channels=1)
    dirs = make_directions(target_tensors(other, "weights"), DirectionSpec(), seed=0)
    with pytest.raises(LandscapeError, match="tensors but the model has"):
        dirs.check_against(target_tensors(model, "weights"))
    wide = get_model("resnet20", num_classes=7, in_channels=1)
    dirs = make_directions(target_tensors(wide, "weights"), DirectionSpec(), seed=0)
    with pytest.raises(LandscapeError, match="another architecture"):
        dirs.check_against(target_tensors(model, "weights"))


def test_interpolation_direction_reaches_the_second_model(model):
    other = get_model("resnet20", num_classes=10, in_channels=1)
    t1 = [t for _, t in target_tensors(model, "states")]
    t2 = [t for _, t in target_tensors(other, "states")]
    d = interpolation_direction(t1, t2)
    for a, b, di in zip(t1, t2, d):
        if a.is_floating_point():
            torch.testing.assert_close(a + di, b)
        else:
            assert torch.count_nonzero(di) == 0


@pytest.mark.parametrize("kw, flag", [({"norm": "filtr"}, "--xnorm"), ({"ignore": "bias"}, "--xignore"),
                                      ({"dir_type": "params"}, "--dir_type")])
def test_bad_direction_settings(kw, flag):
    """The library names its argument; the command line says the flag."""
    from landscape.errors import as_flags

    (name, value), = kw.items()
    with pytest.raises(LandscapeError, match=f"^{name} must be one of .*, got '{value}'") as e:
        DirectionSpec(**kw)
    assert as_flags(e.value).startswith(f"{flag} must be one of")
