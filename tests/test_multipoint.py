"""K grid points per launch (landscape.engine.multipoint) give the one-point loop's values."""

import pytest
import torch

from landscape.directions import DirectionSpec, make_directions, target_tensors
from landscape.errors import LandscapeError
from landscape.engine import EngineOptions, prepare_engine
from landscape.engine.evaluate import Evaluator
from landscape.losses import get_loss
from landscape.engine.multipoint import MultiPointEvaluator
from test_engine import POINTS, bn_model, data

MORE = [(0.1, 0.1), (0.0, -0.4)]  # five points: two passes of three


def folded(model, x, **opts):
    """(the folded, unfused copy of `model` that K points per launch evaluate, its setter, notes)."""
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    engine = prepare_engine(model, "weights", [dirs.x, dirs.y], EngineOptions(fuse=False, channels_last=False, **opts),
                            example=x)
    return engine.model, engine.setter, engine.report.notes()


def one_at_a_time(setter, evaluator, points):
    """The one-point loop's values at each point (the setter left at theta0)."""
    out = []
    for p in points:
        setter.set(p)
        out.append(evaluator())
    setter.restore()
    return out


@pytest.mark.parametrize("name", ["resnet20", "resnet20_b", "vgg9"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_k_points_per_launch_equal_one_point_at_a_time(name, precision):
    """Folded models (ResNet-20 with the channel-padding shortcut A, with projection shortcuts,
    VGG-9): the points three per pass, all of them in each vmapped forward pass, give each point's
    loss and accuracy as the one-point loop does (fp32: 1e-5 relative; bf16 autocast: within its
    rounding), whatever the order; the model's tensors are not touched."""
    model = bn_model(name)
    x, y = data(40)
    eval_model, setter, notes = folded(model, x)
    assert notes[0].startswith("folded")
    points = POINTS + MORE
    one = Evaluator(eval_model, x, y, batch_size=16, precision=precision)
    ref = one_at_a_time(setter, one, points)
    before = [t.clone() for t in setter.live]
    multi = MultiPointEvaluator(eval_model, x, y, batch_size=16, precision=precision, points_per_pass=3)
    got = multi.block(setter, points)
    assert multi.block(setter, points[::-1]) == got[::-1]  # a point's values do not depend on the others
    assert all(torch.equal(a, b) for a, b in zip(before, setter.live))
    rel = 1e-5 if precision == "fp32" else 2e-2
    for (lr, ar), (lg, ag) in zip(ref, got):
        assert lg == pytest.approx(lr, rel=rel)
        if precision == "fp32":
            assert ag == ar
    assert len({lg for lg, _ in got}) == len(points)
    assert multi.block(setter, []) == []
    assert multi() == one()  # called without points: the current weights (theta0), as an Evaluator


def test_other_losses_and_metrics_per_point():
    """The loss and metrics are the Evaluator's: MSE on softmax outputs plus a custom metric."""
    model = bn_model()
    x, y = data(24)
    eval_model, setter, _ = folded(model, x)
    metrics = {"top_logit": lambda out, t: out.max(dim=1).values}
    one = Evaluator(eval_model, x, y, get_loss("mse"), batch_size=8, metrics=metrics)
    multi = MultiPointEvaluator(eval_model, x, y, get_loss("mse"), batch_size=8, metrics=metrics, points_per_pass=2)
    assert multi.metric_names == one.metric_names == ("loss", "top_logit")
    for row, ref in zip(multi.block(setter, POINTS), one_at_a_time(setter, one, POINTS)):
        assert row == pytest.approx(list(ref), rel=1e-5)


def test_the_setter_must_move_the_evaluated_model():
    model = bn_model()
    x, y = data(8)
    _, setter, _ = folded(model, x)  # moves the folded copy, not `model`
    with pytest.raises(LandscapeError, match="not tensors of the evaluated model"):
        MultiPointEvaluator(model, x, y).block(setter, POINTS)
    with pytest.raises(LandscapeError, match="points_per_launch must be >= 1"):
        MultiPointEvaluator(model, x, y, points_per_pass=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cudnn_benchmark", [False, True])
def test_cuda_k_points_per_launch_equal_one_point_at_a_time(cudnn_benchmark):
    """On CUDA (3x32x32, channels_last as a surface job runs it), K points per launch give the
    one-point loop's values: fp32 with TF32 off to 1e-5, bf16 within its rounding; in cuDNN's
    benchmark mode too, and the process's benchmark setting is left as it was."""
    from landscape.engine.evaluate import input_layout, use_channels_last

    model = bn_model("resnet20", in_channels=3).cuda()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, 32, 32, generator=g).cuda(), torch.randint(0, 10, (64,), generator=g).cuda()
    x = input_layout(x, use_channels_last(model, x))
    eval_model, setter, _ = folded(model, x, cudnn_benchmark=cudnn_benchmark)
    points = POINTS + MORE
    before = torch.backends.cudnn.benchmark
    for precision, rel in (("fp32", 1e-5), ("bf16", 2e-2)):
        ref = one_at_a_time(setter, Evaluator(eval_model, x, y, batch_size=32, precision=precision), points)
        got = MultiPointEvaluator(eval_model, x, y, batch_size=32, precision=precision, points_per_pass=3).block(
            setter, points)
        for (lr, _), (lg, _) in zip(ref, got):
            assert lg == pytest.approx(lr, rel=rel)
    assert torch.backends.cudnn.benchmark == before
