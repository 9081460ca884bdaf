"""Every evaluation mode agrees with the plain fp32 loop; BN folding is exact."""

import os
import resource

import pytest
import torch
import torch.fx

from landscape.directions import DirectionSpec, make_directions, target_tensors
from landscape.engine import EngineOptions, compile_refusal, prepare_engine
from landscape.engine.evaluate import Evaluator, input_layout, use_channels_last
from landscape.errors import LandscapeError
from landscape.engine.fold import fold_batchnorm
from landscape.engine.hardware import is_native

NATIVE_BF16 = is_native("bf16", "cpu")
CPU_COMPILE_REFUSAL = compile_refusal(torch.device("cpu"))
needs_cpu_compile = pytest.mark.skipif(CPU_COMPILE_REFUSAL is not None, reason=str(CPU_COMPILE_REFUSAL))
needs_native_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (the engine refuses it; "
                                       "test_fused_convolutions_compute_what_the_folded_model_computes checks that)")
from landscape.models import get_model

POINTS = [(0.0, 0.0), (0.3, -0.7), (-1.0, 0.5)]


def bn_model(name="resnet20", seed=0, in_channels=1):
    """A model with non-trivial BN statistics and affine parameters (folding must use them all)."""
    torch.manual_seed(seed)
    m = get_model(name, num_classes=10, in_channels=in_channels).eval()
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


def engine_for(model, dirs, opts, x):
    """`prepare_engine` for directions made by make_directions (their dir_type) and inputs x."""
    return prepare_engine(model, dirs.attrs.get("dir_type", "weights"), [dirs.x, dirs.y], opts, example=x,
                          check_points=POINTS[1:])


def losses(model, tensors, dirs, opts, x, y):
    engine = engine_for(model, dirs, opts, x)
    ev = Evaluator(engine.model, engine.inputs(x), y, batch_size=opts.batch_size, precision=engine.precision)
    out = []
    for p in POINTS:
        engine.setter.set(p)
        out.append(ev())
    engine.setter.restore()
    return out, engine.report.notes()


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
    x, y = data()
    folded = fold_batchnorm(model, [n for n, _ in tensors], [dirs.x, dirs.y], x[:2])
    assert folded.model is None and folded.kept
    assert all(why == "its tensors move along the directions" for _, why in folded.kept)
    plain, _ = losses(model, tensors, dirs, EngineOptions(fold_bn=False), x, y)
    fallback, notes = losses(model, tensors, dirs, EngineOptions(fold_bn=True), x, y)
    assert any(n.startswith("BatchNorm not folded: bn1 (its tensors move") for n in notes)
    assert fallback == plain  # the same code path: bit for bit


def test_untraceable_model_falls_back(capfd):
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
    folded = fold_batchnorm(model, [n for n, _ in tensors], [dirs.x, dirs.y], torch.randn(2, 1, 8, 8))
    assert folded.model is None and "could not be captured (torch.fx: TraceError; torch.export" in folded.capture
    # the failed captures print nothing (torch.export prints its partial graph and logs errors otherwise):
    # the reason is in the report
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)


@pytest.mark.parametrize("name,expected", [("resnet20", 19), ("resnet20_b", 19), ("resnet20_noshort", 19),
                                           ("resnet50", 49), ("vgg9", 7)])
def test_fused_convolutions_compute_what_the_folded_model_computes(name, expected):
    """conv + ReLU and conv + residual + ReLU as one oneDNN call each (eager, CPU): the losses equal
    the unfused folded model's to float rounding at every point (so the fused graph reads the moving
    weights), in fp32 and, within bf16 rounding, in bf16; the model's tensors keep their names."""
    model = bn_model(name)
    x, y = data(32)
    if name == "resnet50":
        x = x.repeat(1, 3, 1, 1)  # resnet50 takes 3 channels
        model = get_model(name, num_classes=10, in_channels=3).eval()
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    unfused, notes = losses(model, tensors, dirs, EngineOptions(fuse=False), x, y)
    assert not any(n.startswith("fused") for n in notes)
    fused, notes = losses(model, tensors, dirs, EngineOptions(), x, y)
    assert f"fused {expected} convolutions with the ReLU (and residual addition) after them" in notes
    for (lu, au), (lf, af) in zip(unfused, fused):
        assert lf == pytest.approx(lu, rel=1e-6) and af == au
    assert len({lf for lf, _ in fused}) == len(POINTS)  # the points differ
    # the default packs the weights once per point (a stale copy would give the previous point's
    # loss); without packing oneDNN reorders them in every call
    unpacked, _ = losses(model, tensors, dirs, EngineOptions(prepack=False), x, y)
    for (lf, af), (lp, ap) in zip(fused, unpacked):
        assert lp == pytest.approx(lf, rel=1e-6) and ap == af
    if CPU_COMPILE_REFUSAL is None:
        compiled = engine_for(model, dirs, EngineOptions(compile=True, check=False), x)
        assert not compiled.report.fused  # inductor fuses on its own
    if not NATIVE_BF16:  # no bf16 kernels worth running: refused, nothing more to compare
        with pytest.raises(LandscapeError, match="precision bf16 is not native on this CPU"):
            losses(model, tensors, dirs, EngineOptions(precision="bf16"), x, y)
        return
    low_unfused, _ = losses(model, tensors, dirs, EngineOptions(precision="bf16", fuse=False), x, y)
    low, notes = losses(model, tensors, dirs, EngineOptions(precision="bf16"), x, y)
    assert any(n.startswith("fused") for n in notes)
    for (lu, _), (lf, _) in zip(low_unfused, low):
        assert lf == pytest.approx(lu, rel=2e-2)
    low_unpacked, _ = losses(model, tensors, dirs, EngineOptions(precision="bf16", prepack=False), x, y)
    for (lu, _), (lp, _) in zip(low_unfused, low_unpacked):  # bf16: other blocking, other rounding
        assert lp == pytest.approx(lu, rel=2e-2)


def test_fusion_leaves_other_patterns_alone():
    """Only a convolution whose one user is a ReLU, or an addition of a tensor of its own shape
    followed by a ReLU, is fused; not a broadcasting addition, not `other += conv(x)` (which
    writes `other`), not a subclass of Conv2d or a hooked one."""
    from landscape.engine.fold import conv_add_relu, fuse_conv_activation, propagate_shapes

    class Standardized(torch.nn.Conv2d):  # weight standardization: its forward is not Conv2d's
        def forward(self, x):
            w = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
            return torch.nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(2, 2, 3, padding=1)
            self.b = torch.nn.Conv2d(2, 2, 3, padding="same")
            self.c = torch.nn.Conv2d(2, 2, 1)
            self.d = torch.nn.Conv2d(2, 2, 1)
            self.e = torch.nn.Conv2d(2, 2, 1)
            self.s = Standardized(2, 2, 1)
            self.hooked = torch.nn.Conv2d(2, 2, 1)
            self.hooked.register_forward_hook(lambda m, i, o: o * 2)
            self.bias = torch.nn.Parameter(torch.randn(1, 2, 1, 1))

        def forward(self, x):
            h = self.a(x)
            k = torch.relu(h) + h  # two users: not fused
            g = torch.sigmoid(self.c(k))  # not a ReLU
            broadcast = torch.relu(self.d(g) + self.bias)  # a (1, 2, 1, 1) addition: not fused
            other = g * 1.0
            other += self.e(g)  # writes `other`, which is used again below: not fused
            written = torch.relu(other)
            s = torch.relu(self.s(g)) + torch.relu(self.hooked(g))  # a subclass, a hook: not fused
            # 'same' padding: not fused; c + add + ReLU: fused
            return torch.relu(self.b(g)) + torch.relu(self.c(g) + g) + broadcast + written + other + s

    net = Net().eval()
    x = torch.randn(3, 2, 5, 5)
    gm = propagate_shapes(net, x)
    assert fuse_conv_activation(gm) == 1
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert conv_add_relu in targets
    with torch.no_grad():
        torch.testing.assert_close(gm(x), net(x), rtol=1e-6, atol=1e-6)
    assert fuse_conv_activation(torch.fx.symbolic_trace(net)) == 0  # no shapes: nothing is proven


@needs_native_bf16
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


@needs_native_bf16
@pytest.mark.parametrize("compile_", [False, pytest.param(True, marks=needs_cpu_compile)])
def test_bf16_weights_compute_what_autocast_computes(compile_):
    """With BN folded, a ResNet runs with bf16 weights and no autocast: bit for bit the loss that
    autocast gives on the float32 folded model at every point (compiled: within bf16 rounding, as
    inductor fuses the elementwise ops differently), and restore brings the bf16 weights back."""
    from landscape.engine.evaluate import CastPointSetter, LowPrecisionModel

    model = bn_model()
    x, y = data(64)
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    low, notes = losses(model, tensors, dirs, EngineOptions(precision="bf16", compile=compile_, fuse=False), x, y)
    assert "bf16: weights stored in bf16, run without autocast" in notes
    master = engine_for(model, dirs, EngineOptions(fuse=False), x)  # the fused oneDNN calls do not autocast
    setter = master.setter
    autocast = Evaluator(master.model, master.inputs(x), y, precision="bf16")
    for p, got in zip(POINTS, low):
        setter.set(p)
        expected = autocast()
        assert got == (pytest.approx(expected, rel=2e-3) if compile_ else expected)
    setter.restore()

    engine = engine_for(model, dirs, EngineOptions(precision="bf16"), x)
    eval_model, setter = engine.model, engine.setter
    assert isinstance(eval_model, LowPrecisionModel) and isinstance(setter, CastPointSetter)
    weights = dict(eval_model.inner.named_parameters())
    moved = [n for n, t in weights.items() if t.dim() == 4]
    before = {n: weights[n].clone() for n in moved}
    setter.set(POINTS[1])
    assert all(weights[n].dtype == torch.bfloat16 for n in moved)
    assert not any(torch.equal(before[n], weights[n]) for n in moved)
    setter.restore()
    assert all(torch.equal(before[n], weights[n]) for n in moved)


def test_a_bf16_copy_takes_and_returns_float32_through_tuples_and_dicts():
    from landscape.engine.evaluate import LowPrecisionModel

    class TwoInputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(3, 2), torch.nn.Linear(4, 2)

        def forward(self, u, v, scale=None):
            assert u.dtype == v.dtype == scale.dtype == torch.bfloat16
            return {"out": (self.a(u) + self.b(v)) * scale, "pair": (self.a(u), torch.arange(3))}

    torch.manual_seed(0)
    model = TwoInputs()
    low = LowPrecisionModel(model, torch.bfloat16)
    u, v, scale = torch.randn(5, 3), torch.randn(5, 4), torch.tensor(2.0)
    got = low(u, v, scale=scale)
    assert got["out"].dtype == torch.float32 and got["pair"][0].dtype == torch.float32
    assert got["pair"][1].dtype == torch.int64  # not floating: left alone
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(u.bfloat16(), v.bfloat16(), scale=scale.bfloat16())
    torch.testing.assert_close(got["out"], expected["out"].float(), rtol=0, atol=0)
    assert model.a.weight.dtype == torch.float32  # the original is untouched


@needs_native_bf16
def test_bf16_keeps_autocast_for_models_with_normalization_layers():
    model = bn_model()
    x, y = data(64)
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    unfolded, notes = losses(model, tensors, dirs, EngineOptions(precision="bf16", fold_bn=False), x, y)
    assert not any("bf16" in n for n in notes)  # BN stays: its statistics keep fp32 under autocast
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torch.nn.functional.cross_entropy(model(x), y).item()
    assert unfolded[0][0] == pytest.approx(expected, rel=1e-6)

    torch.manual_seed(0)
    norm = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.LayerNorm(32),
                               torch.nn.Linear(32, 10)).eval()
    from landscape.engine.evaluate import stores_in_low_precision
    assert not stores_in_low_precision(norm)
    assert stores_in_low_precision(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10), torch.nn.ReLU()))


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
    with pytest.raises(LandscapeError, match="precision must be one of fp32, tf32, bf16, fp16, auto"):
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,expected", [("resnet20", 19), ("resnet20_b", 19), ("resnet50", 49)])
def test_cuda_fused_convolutions_compute_what_the_folded_model_computes(name, expected):
    """On CUDA with cuda_fuse, conv + ReLU (+ residual) run as one cuDNN call each: the losses equal
    the unfused folded model's at three points (fp32 with TF32 off, to 1e-5) and within bf16
    rounding in bf16; with cuDNN's benchmark mode too. CIFAR-shaped (3x32x32, channels_last as a
    surface job runs it); only a convolution of fewer than 16 input channels may fall back."""
    from landscape.engine import fold

    model = bn_model(name, in_channels=3).cuda()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 3, 32, 32, generator=g).cuda(), torch.randint(0, 10, (64,), generator=g).cuda()
    if use_channels_last(model, x):
        x = input_layout(x, True)
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    unfused, notes = losses(model, tensors, dirs, EngineOptions(), x, y)
    assert not any(n.startswith("fused") for n in notes)  # opt-in on CUDA
    fused, notes = losses(model, tensors, dirs, EngineOptions(cuda_fuse=True), x, y)
    assert f"fused {expected} convolutions with the ReLU (and residual addition) after them (cuDNN)" in notes
    # cuDNN may lack a fused kernel for the 3-channel stem; the 16-channel and wider ones must run fused
    assert all(key[2][1] < 16 for key in fold.CUDNN_FUSION_FAILED), fold.CUDNN_FUSION_FAILED
    for (lu, au), (lf, af) in zip(unfused, fused):
        assert lf == pytest.approx(lu, rel=1e-5) and af == au
    assert len({lf for lf, _ in fused}) == len(POINTS)
    for opts in (EngineOptions(precision="bf16", cuda_fuse=True),
                 EngineOptions(precision="bf16", cuda_fuse=True, cudnn_benchmark=True)):
        low, notes = losses(model, tensors, dirs, opts, x, y)
        assert any(n.endswith("(cuDNN)") for n in notes)
        assert all(key[2][1] < 16 for key in fold.CUDNN_FUSION_FAILED), fold.CUDNN_FUSION_FAILED
        for (lu, _), (lf, _) in zip(unfused, low):
            assert lf == pytest.approx(lu, rel=2e-2)


def test_a_failed_fused_cudnn_call_falls_back_to_the_unfused_ops(monkeypatch):
    """cuDNN builds fused kernels at run time and may have none for a shape: the first failure of
    a kind of call is warned about once, and that call and later ones of its kind compute
    unfused, while other kinds stay fused."""
    from landscape.engine import fold

    monkeypatch.setattr(fold, "CUDNN_FUSION_FAILED", {})
    calls = []

    def fused():
        calls.append("fused")
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED\nmore detail")

    stem = fold._key("relu", torch.zeros(2, 3, 32, 32), torch.zeros(16, 3, 3, 3), [1, 1], [1, 1])
    assert stem == ("relu", (3, 32, 32), (16, 3, 3, 3), "float32", (1, 1), (1, 1))
    with pytest.warns(RuntimeWarning, match=r"relu, input \(3, 32, 32\).*CUDNN_STATUS_NOT_SUPPORTED.*unfused"):
        assert fold._cudnn_fused(stem, fused, lambda: 1) == 1
    assert fold._cudnn_fused(stem, fused, lambda: 2) == 2
    assert calls == ["fused"] and fold.CUDNN_FUSION_FAILED == {stem: "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"}
    block = fold._key("add_relu", torch.zeros(2, 16, 32, 32), torch.zeros(16, 16, 3, 3), [1, 1], [1, 1])
    assert fold._cudnn_fused(block, lambda: 3, lambda: 4) == 3


def test_cudnn_benchmark_mode_holds_for_the_call_only():
    """CudnnBenchmark runs its module with torch.backends.cudnn.benchmark on and restores the
    process's setting after the call, also when the call raises; the surface is the module's."""
    from landscape.engine.evaluate import CudnnBenchmark, _unwrapped

    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.backends.cudnn.benchmark)
            if x.sum() < 0:
                raise ValueError("negative")
            return 2 * x

    wrapped = CudnnBenchmark(Probe())
    before = torch.backends.cudnn.benchmark
    assert torch.equal(wrapped(torch.ones(3)), torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="negative"):
        wrapped(-torch.ones(3))
    assert seen == [True, True] and torch.backends.cudnn.benchmark == before
    assert isinstance(_unwrapped(wrapped), Probe)
    # on the CPU the option changes nothing and says so
    model = bn_model()
    x, y = data()
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    ref, _ = losses(model, tensors, dirs, EngineOptions(), x, y)
    out, notes = losses(model, tensors, dirs, EngineOptions(cudnn_benchmark=True), x, y)
    assert out == ref and "cuDNN benchmark mode asked for; it has no effect on cpu" in notes


def test_compile_mode_is_checked():
    with pytest.raises(LandscapeError, match="compile_mode must be one of .*max-autotune"):
        EngineOptions(compile=True, compile_mode="fastest")
    with pytest.raises(LandscapeError, match="without compile"):
        EngineOptions(compile_mode="max-autotune-no-cudagraphs")
    assert EngineOptions(compile=True, compile_mode="max-autotune-no-cudagraphs").compile_mode


@needs_cpu_compile
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


class FlattenByView(torch.nn.Module):
    """A conv net that flattens its feature map with .view(): that needs NCHW-contiguous features."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        out = self.conv(x)
        return self.fc(out.view(out.shape[0], -1))


def test_cpu_batch_size_follows_the_activation_budget():
    from landscape.engine.evaluate import (CPU_ACTIVATION_BUDGET, CPU_BATCH_MAX, CPU_BATCH_MAX_BF16, DEFAULT_BATCH,
                                    default_batch_size)

    cifar = get_model("resnet20", num_classes=10, in_channels=3).eval()
    x32 = torch.zeros(1000, 3, 32, 32)
    # the largest activation of a CIFAR ResNet is 16 x 32 x 32 per sample: 2^20 / 2^14 = 64
    assert default_batch_size(cifar, x32) == CPU_ACTIVATION_BUDGET // (16 * 32 * 32) == 64
    assert default_batch_size(cifar, x32[:40]) == 40  # never more than the data
    x8 = torch.zeros(1000, 1, 8, 8)  # 16 x 8 x 8 per sample: the budget allows 1024, capped
    small = get_model("resnet20", num_classes=10, in_channels=1).eval()
    assert default_batch_size(small, x8) == CPU_BATCH_MAX
    x8 = torch.zeros(2000, 1, 8, 8)
    assert default_batch_size(small, x8, "bf16") == CPU_BATCH_MAX_BF16 == 1024  # bf16: a larger cap
    assert default_batch_size(cifar, x32, "bf16") == 64  # the budget decides for larger inputs
    y8 = torch.zeros(1000, dtype=torch.long)
    assert Evaluator(small, x8[:1000], y8, precision="bf16").batch_size == 1000  # never more than the data
    wide = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    wide(x32[:1])  # materialize the lazy layer
    assert default_batch_size(wide, x32) == 16  # 64 x 32 x 32 per sample
    broken = torch.nn.Linear(5, 10)  # does not take these inputs: the fixed default, the error comes later
    assert default_batch_size(broken, x32) == DEFAULT_BATCH
    assert Evaluator(cifar, x32[:200], torch.zeros(200, dtype=torch.long)).batch_size == 64


def test_channels_last_is_used_where_the_model_takes_it_and_changes_nothing_but_rounding():
    from landscape.engine.evaluate import input_layout, use_channels_last

    x, y = data()
    plain = bn_model()
    nhwc = bn_model()
    assert use_channels_last(nhwc, x)
    conv = next(m for m in nhwc.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    xl = input_layout(x, True)
    assert xl.is_contiguous(memory_format=torch.channels_last) and torch.equal(xl, x)
    a = Evaluator(plain, x, y)()
    b = Evaluator(nhwc, xl, y)()
    assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1] == b[1]

    viewer = FlattenByView()
    assert not use_channels_last(viewer, x)  # its .view() fails in channels_last: kept NCHW
    assert viewer.conv.weight.is_contiguous()
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    assert not use_channels_last(mlp, x)  # no convolution: nothing to gain
    assert not use_channels_last(bn_model(), torch.zeros(4, 64))  # not images
    assert input_layout(torch.zeros(4, 64), True).shape == (4, 64)


def test_channels_last_probe_keeps_train_mode():
    from landscape.engine.evaluate import use_channels_last

    model = bn_model().train()
    x, _ = data()
    running = [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert use_channels_last(model, x)
    assert model.training  # restored after the probe, which ran in eval mode
    after = [m.running_mean for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(running, after))  # the probe did not touch BN statistics


def test_keep_freed_memory_stops_refaulting_freed_activations(tmp_path):
    """Batches of activations allocated and freed again, in a fresh process (the way the CLI calls
    it first thing). When glibc returns such buffers to the kernel, every round faults their pages
    in again; whether its default does so varies from run to run here (0 to 102 k faults over the
    same rounds: its mmap threshold moves with what was freed before), so the baseline fixes the
    threshold at glibc's initial 128 KiB, where it always does. After keep_freed_memory() the heap
    keeps them: almost no faults."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "faults.py"
    script.write_text(
        "import ctypes, resource, sys, torch\n"
        "from landscape.engine.evaluate import keep_freed_memory\n"
        "if sys.argv[1] == 'keep':\n"
        "    kept = keep_freed_memory()\n"
        "else:\n"
        "    kept = bool(ctypes.CDLL('libc.so.6').mallopt(-3, 128 * 1024))  # M_MMAP_THRESHOLD, fixed\n"
        "def rounds():\n"
        "    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(10):\n"
        "        a = torch.ones(2 * 2**20); b = torch.ones(3 * 2**20); c = a + 1; del a; d = b * 2; del b, c, d\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0\n"
        "rounds()\n"
        "print(kept, rounds())\n")
    root = str(Path(__file__).resolve().parents[1])

    def faults(mode):
        out = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": root}).stdout.split()
        return out[0], int(out[1])

    pages = 10 * (2 + 3 + 2 + 3) * 2**20 * 4 // resource.getpagesize()  # the pages the rounds write
    kept, after = faults("keep")
    if kept != "True":
        pytest.skip("not glibc: mallopt is not available")
    if after >= pages // 20:  # once in a while the kernel takes pages back anyway (seen once: 10 k): the best of three
        after = min(after, faults("keep")[1], faults("keep")[1])
    returned, before = faults("return")
    assert returned == "True"
    assert before > pages // 2  # the buffers returned to the kernel are faulted in every round
    assert after < pages // 20


def test_out_of_memory_halves_the_batch_and_retries():
    """The CUDA out-of-memory back-off shared by the evaluators and Hessian products: the batch
    size halves until the work fits, and at batch size 1 the error is raised."""
    from types import SimpleNamespace

    from landscape.engine.evaluate import retry_halving_batch

    owner, tried = SimpleNamespace(batch_size=8), []

    def work():
        tried.append(owner.batch_size)
        if owner.batch_size > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return "done"

    assert retry_halving_batch(owner, work) == "done" and tried == [8, 4, 2] and owner.batch_size == 2
    owner.batch_size, tried = 1, []
    with pytest.raises(torch.cuda.OutOfMemoryError):
        retry_halving_batch(owner, lambda: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("still")))


def test_compile_is_refused_on_the_cpu_where_inductor_corrupts_memory(plot_surface, capsys, tmp_path):
    """torch 2.13's inductor CPU code corrupted memory on a compiled folded ResNet-56 (an abort in
    malloc on an AVX-512/AMX CPU; a loss 100 % off in a benchmark with oneDNN capped at AVX2): there
    compile is refused on the CPU, in one line naming the bug and the alternative."""
    if CPU_COMPILE_REFUSAL is None:
        pytest.skip(f"torch {torch.__version__} compiles on the CPU (test_a_compiled_folded_resnet_... runs)")
    model = bn_model()
    x, y = data(16)
    dirs = make_directions(target_tensors(model, "weights"), DirectionSpec(), seed=0)
    with pytest.raises(LandscapeError, match=r"compile is refused on the CPU with torch 2\.13.*#181618"):
        engine_for(model, dirs, EngineOptions(compile=True), x)
    with pytest.raises(SystemExit):
        plot_surface.main(["--compile", "--x=-1:1:3", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --compile is refused on the CPU with torch 2.13")


@needs_cpu_compile
def test_a_compiled_folded_resnet_in_channels_last_runs(tmp_path):
    """A compiled folded ResNet-56 in channels_last on the digits (batches of 256, and a last of 157)
    runs and agrees with eager evaluation, with two threads (torch 2.13's inductor corrupted memory
    there). In a subprocess, so that an abort is a failure here and not the end of the test run."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "run.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
import torch
from landscape.directions import DirectionSpec, make_directions, target_tensors
from landscape.engine import EngineOptions, prepare_engine
from landscape.models import get_model
torch.set_num_threads(2)  # the corruption showed with two threads
torch.manual_seed(0)
model = get_model("resnet56", num_classes=10, in_channels=1).eval()
x, y = torch.randn(1437, 1, 8, 8), torch.randint(0, 10, (1437,))  # the digits' size: a short last batch
dirs = make_directions(target_tensors(model, "weights"), DirectionSpec(), 0)
engine = prepare_engine(model, "weights", [dirs.x, dirs.y], EngineOptions(compile=True), example=x[:256])
assert engine.report.folded and engine.report.channels_last and engine.report.check["max_rel_diff"] < 1e-4
ev = engine.evaluator(x, y, batch_size=256)
for p in [(0.0, 0.0), (0.5, -0.5), (1.0, 1.0)]:
    engine.setter.set(p)
    ev()
print("ok")
""")
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
