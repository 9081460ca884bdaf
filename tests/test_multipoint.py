"""K grid points per launch (landscape.multipoint) give the one-point loop's values."""

import pytest
import torch

from landscape.directions import DirectionSpec, make_directions, target_tensors
from landscape.evaluate import EngineOptions, Evaluator, prepare_engine
from landscape.multipoint import MultiPointEvaluator
from test_engine import POINTS, bn_model, data


@pytest.mark.parametrize("name", ["resnet20", "resnet20_b", "vgg9"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_k_points_per_launch_equal_one_point_at_a_time(name, precision):
    """Folded models (ResNet-20 with the channel-padding shortcut A, with projection shortcuts,
    VGG-9): all points in one vmapped pass per batch give each point's loss and accuracy as the
    one-point loop does (fp32: 1e-5 relative; bf16 autocast: within its rounding), in any order,
    and the model is left at theta0."""
    model = bn_model(name)
    x, y = data(40)
    tensors = target_tensors(model, "weights")
    names = [n for n, _ in tensors]
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    opts = EngineOptions(precision=precision, fuse=False)
    eval_model, setter, notes = prepare_engine(model, names, [t for _, t in tensors], [dirs.x, dirs.y],
                                               EngineOptions(fuse=False))
    assert notes[0].startswith("folded")
    one = Evaluator(eval_model, x, y, batch_size=16, precision=opts.precision)
    ref = []
    for p in POINTS:
        setter.set(p)
        ref.append(one())
    setter.restore()
    before = [t.clone() for t in setter.live]
    multi = MultiPointEvaluator(eval_model, setter, x, y, batch_size=16, precision=precision)
    got = multi(POINTS)
    assert multi(POINTS[::-1]) == got[::-1]  # a point's values do not depend on the others
    assert all(torch.equal(a, b) for a, b in zip(before, setter.live))
    rel = 1e-5 if precision == "fp32" else 2e-2
    for (lr, ar), (lg, ag) in zip(ref, got):
        assert lg == pytest.approx(lr, rel=rel)
        if precision == "fp32":
            assert ag == ar
    assert len({lg for lg, _ in got}) == len(POINTS)
    assert multi([]) == []


def test_the_setter_must_move_this_model():
    model = bn_model()
    x, y = data(8)
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    _, setter, _ = prepare_engine(model, [n for n, _ in tensors], [t for _, t in tensors], [dirs.x, dirs.y],
                                  EngineOptions(fuse=False))  # moves the folded copy, not `model`
    with pytest.raises(ValueError, match="not tensors of the model"):
        MultiPointEvaluator(model, setter, x, y)
