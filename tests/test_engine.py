"""Every evaluation mode agrees with the plain fp32 loop; BN folding is exact."""

import pytest
import torch

from landscape.directions import DirectionSpec, make_directions, target_tensors
from landscape.evaluate import EngineOptions, Evaluator, prepare_engine
from landscape.errors import LandscapeError
from landscape.fold import fold_batchnorm
from landscape.models import get_model

POINTS = [(0.0, 0.0), (0.3, -0.7), (-1.0, 0.5)]


def bn_model(name="resnet20", seed=0):
    """A model with non-trivial BN statistics and affine parameters (folding must use them all)."""
    torch.manual_seed(seed)
    m = get_model(name, num_classes=10, in_channels=1).eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_()
    return m


def data(n=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def losses(model, tensors, dirs, opts, x, y):
    names = [n for n, _ in tensors]
    eval_model, setter, notes = prepare_engine(model, names, [t for _, t in tensors], [dirs.x, dirs.y], opts)
    ev = Evaluator(eval_model, x, y, batch_size=opts.batch_size, precision=opts.precision)
    out = []
    for p in POINTS:
        setter.set(p)
        out.append(ev())
    setter.restore()
    return out, notes


@pytest.mark.parametrize("name", ["resnet20", "resnet20_b", "vgg9"])
@pytest.mark.parametrize("dir_type", ["weights", "states"])
def test_bn_folding_is_exact(name, dir_type):
    model = bn_model(name)
    x, y = data()
    tensors = target_tensors(model, dir_type)
    dirs = make_directions(tensors, DirectionSpec(dir_type=dir_type), seed=0)
    plain, _ = losses(model, tensors, dirs, EngineOptions(fold_bn=False), x, y)
    folded, notes = losses(model, tensors, dirs, EngineOptions(fold_bn=True), x, y)
    assert notes and notes[0].startswith("folded")
    for (lp, ap), (lf, af) in zip(plain, folded):
        assert lf == pytest.approx(lp, rel=1e-5)
        assert af == ap


def test_folding_leaves_the_original_model_untouched():
    model = bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    x, y = data()
    losses(model, tensors, dirs, EngineOptions(), x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_folding_is_refused_when_bn_moves():
    model = bn_model()
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(ignore="none"), seed=0)  # BN gamma/beta move
    folded, why = fold_batchnorm(model, [n for n, _ in tensors], [dirs.x, dirs.y])
    assert folded is None and "BatchNorm tensors move" in why
    x, y = data()
    plain, _ = losses(model, tensors, dirs, EngineOptions(fold_bn=False), x, y)
    fallback, notes = losses(model, tensors, dirs, EngineOptions(fold_bn=True), x, y)
    assert "not folded" in notes[0]
    assert fallback == plain  # the same code path: bit for bit


def test_untraceable_model_falls_back():
    class Dynamic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3)
            self.bn = torch.nn.BatchNorm2d(4)
            self.fc = torch.nn.Linear(4, 10)

        def forward(self, x):
            h = self.bn(self.conv(x))
            if h.sum() > 0:  # data-dependent control flow: not traceable by torch.fx
                h = h * 2
            return self.fc(h.mean((2, 3)))

    model = Dynamic().eval()
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    folded, why = fold_batchnorm(model, [n for n, _ in tensors], [dirs.x, dirs.y])
    assert folded is None and "torch.fx" in why


def test_bf16_is_close_to_fp32_and_reported_error_is_honest():
    model = bn_model()
    x, y = data(64)
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    ref, _ = losses(model, tensors, dirs, EngineOptions(fold_bn=False), x, y)
    low, _ = losses(model, tensors, dirs, EngineOptions(precision="bf16"), x, y)
    for (lr, _), (lb, _) in zip(ref, low):
        assert lb != lr  # it really ran in bf16
        assert lb == pytest.approx(lr, rel=0.05)


def test_batch_size_does_not_change_results_beyond_rounding():
    model = bn_model()
    x, y = data(50)
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    a, _ = losses(model, tensors, dirs, EngineOptions(batch_size=7), x, y)
    b, _ = losses(model, tensors, dirs, EngineOptions(), x, y)
    for (la, aa), (lb, ab) in zip(a, b):
        assert la == pytest.approx(lb, rel=1e-6) and aa == ab


def test_bad_precision():
    with pytest.raises(LandscapeError, match="--precision"):
        EngineOptions(precision="int8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = bn_model()
    x, y = data()
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    cpu, _ = losses(model, tensors, dirs, EngineOptions(), x, y)
    model.cuda()
    tensors = target_tensors(model, "weights")
    gpu, _ = losses(model, tensors, dirs, EngineOptions(), x.cuda(), y.cuda())
    for (lc, _), (lg, _) in zip(cpu, gpu):
        assert lg == pytest.approx(lc, rel=1e-4)


def test_compiled_model_sees_in_place_weight_updates():
    """torch.compile must not bake the weights in: every point has to differ, and match eager."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 10)).eval()
    model[1].running_mean.normal_()
    x, y = data(16)
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    eager, _ = losses(model, tensors, dirs, EngineOptions(), x, y)
    compiled, _ = losses(model, tensors, dirs, EngineOptions(compile=True), x, y)
    assert len({round(l, 6) for l, _ in compiled}) == len(POINTS)
    for (le, ae), (lc, ac) in zip(eager, compiled):
        assert lc == pytest.approx(le, rel=1e-5) and ac == ae


def test_sums_over_ranges_add_up_and_give_the_mean():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).double()
    x = torch.randn(37, 3, 2, 2, dtype=torch.float64)
    y = torch.randint(0, 4, (37,))
    ev = Evaluator(model, x, y, batch_size=5)
    whole = ev.sums()
    parts = ev.sums(0, 11) + ev.sums(11, 30) + ev.sums(30, 37)
    torch.testing.assert_close(parts, whole, rtol=1e-12, atol=0)
    with torch.no_grad():
        per = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
        hits = (model(x).argmax(1) == y).double()
    torch.testing.assert_close(whole, torch.stack([torch.stack([per.sum(), per.square().sum()]),
                                                   torch.stack([hits.sum(), hits.sum()])]), rtol=1e-6, atol=0)
    loss, acc = ev()  # per-sample losses are fp32 (cross_entropy casts the scores), sums fp64
    assert loss == pytest.approx(per.mean().item(), rel=1e-6) and acc == pytest.approx(hits.mean().item())
    assert ev.sums(5, 5).abs().sum() == 0
    with pytest.raises(ValueError, match="outside"):
        ev.sums(30, 38)
