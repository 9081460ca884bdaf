"""The differential harness (tests/exactness_zoo.py): every engine path on models the engine was not
written for equals plain evaluation written in the test (1e-6 relative in fp32, bf16 within its
rounding), or is refused with a clear message; and BatchNorm folds exactly where it is proven."""

import copy
import json

import pytest
import torch

import landscape as ll
from exactness_zoo import (BATCH, BF16_REL, CASES, COMPILED, PATHS, REL, ZOO, Case, build, plain_losses,
                           randomize_bn_, run_path)
from landscape.config import RunOptions
from landscape.engine import compile_refusal
from landscape.errors import LandscapeError
from landscape.grid import Grid
from landscape.engine.hardware import is_native

NATIVE_BF16 = is_native("bf16", "cpu")
# the refusals the harness expects: (model, path) -> a part of the message; any other refusal fails
BATCHED = [p for p, kw in PATHS.items() if p != "default"]  # paths that give batch_size=16 (< 37 samples)
EXPECTED = {("lstm", "K=3"): "points_per_launch=3 does not compute this model exactly (within its rounding): with 3 "
                             "points per launch it failed (RuntimeError: Batching rule not implemented",
            **{("bn_batch_statistics", p): "normalizes with batch statistics" for p in BATCHED}}


@pytest.mark.parametrize("path", [p for p in PATHS if p != "compile"])
@pytest.mark.parametrize("name", list(CASES))
def test_every_path_is_exact_or_refused(name, path):
    case = CASES[name]
    out = run_path(case, path)
    expected = EXPECTED.get((name, path))
    if path == "bf16" and not NATIVE_BF16:  # refused before anything else
        expected = "precision bf16 is not native on this CPU"
    if expected is not None:
        assert out.refused is not None and expected in out.refused, out
        assert "\n" not in out.refused  # one line
        return
    assert out.refused is None, out.refused
    assert out.rel <= (BF16_REL if path == "bf16" else REL), (name, path, out.rel)
    if path == "bf16":
        assert out.rel > 0  # it really ran in bf16
    check = out.report.get("check")  # absent where nothing was rewritten
    assert check is None or check["max_rel_diff"] <= check["rtol"]


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_paths_are_exact_or_refused(name):
    """compile equals plain evaluation; with torch 2.13 on the CPU it is refused (its inductor code
    corrupts memory: engine.compile_refusal)."""
    out = run_path(CASES[name], "compile")
    if compile_refusal(torch.device("cpu")) is not None:
        assert out.refused is not None and "compile is refused on the CPU" in out.refused
        return
    assert out.refused is None and out.rel <= REL, out


@pytest.mark.parametrize("name", list(CASES))
def test_batchnorm_folds_exactly_where_proven(name):
    """Each model folds the BatchNorms it must, keeps the others for the reason it must, and on the
    default path (fold, fusion, channels_last) still equals plain evaluation."""
    case = CASES[name]
    out = run_path(case, "default")
    assert out.refused is None and out.rel <= REL, out
    report = out.report
    assert report["folded"] == case.folds
    kept = report.get("not_folded", {})
    for bn, why in case.kept.items():
        assert why in kept.get(bn, ""), (bn, kept)
    if case.folds:
        assert report["capture"] == case.capture


def test_the_zoo_covers_what_was_asked():
    assert len(ZOO) >= 15
    kinds = {type(m) for c in ZOO for m in build(c).modules()}
    for needed in (torch.nn.ConvTranspose2d, torch.nn.Conv1d, torch.nn.Conv3d, torch.nn.GroupNorm, torch.nn.LayerNorm,
                   torch.nn.InstanceNorm2d, torch.nn.Embedding, torch.nn.MultiheadAttention, torch.nn.LSTM):
        assert needed in kinds, needed


def test_the_seen_cases_were_wrong_before_and_are_exact_now():
    """The issue's numbers came from folding at every call site without proof (one fold per site, as
    the earlier engine did): that is far off plain evaluation on these models; the engine is exact."""
    from landscape.engine.fold import scale_out_channels

    def blind_fold(model, sites):
        with torch.no_grad():
            for layer, bn in sites:
                l, b = model.get_submodule(layer), model.get_submodule(bn)
                s = b.weight.double() / torch.sqrt(b.running_var.double() + b.eps)
                l.weight.copy_(scale_out_channels(l.weight, s, l).float())
                l.bias.copy_((s * (l.bias.double() - b.running_mean) + b.bias).float())
            for _, bn in sites:
                parent, _, child = bn.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, torch.nn.Identity())
        return model

    for name, sites in (("conv_twice", [("conv", "bn1"), ("conv", "bn2")]), ("linear_last_dim", [("fc", "bn")]),
                        ("shared_block", [("block.0", "block.1")] * 2)):
        case = CASES[name]
        model = build(case)
        blind = blind_fold(copy.deepcopy(model), sites)
        x, y = case.data()
        with torch.no_grad():
            plain = case.loss(model(x), y).double().mean()
            wrong = case.loss(blind(x), y).double().mean()
        assert abs(wrong - plain) > 1e-2 * abs(plain), name
        assert run_path(case, "default").rel <= REL


def test_a_training_mode_batchnorm_is_never_folded():
    from landscape.engine.fold import capture_calls, plan_folds

    model = build(CASES["tuple_output"])
    model.bn2.train()
    x, _ = CASES["tuple_output"].data()
    cap, _ = capture_calls(model, x[:2])
    pairs, kept = plan_folds(model, cap, set())
    assert pairs == [("conv1", "bn1")] and dict(kept) == {"bn2": "it is in training mode (batch statistics)"}


def test_a_batch_mean_loss_gives_the_per_sample_surface():
    """A loss returning a 0-dim batch mean is weighted by its batch size: with batches of 16, 16 and
    5 it gives the per-sample loss's surface (and its plain evaluation)."""
    case = CASES["tuple_output"]
    model = build(case)
    x, y = case.data()
    dirs = [ll.directions.random(model, generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    kw = dict(metrics={}, x=ll.Axis(-0.5, 0.5, 3), y=ll.Axis(-0.4, 0.4, 2), directions=dirs, batch_size=BATCH,
              run=RunOptions(progress=False))
    mean_loss = lambda out, t: case.loss(out, t).mean()  # noqa: E731 - a 0-dim batch mean
    per = ll.compute_surface(model, (x, y), loss=case.loss, **kw).metrics["train_loss"]
    mean = ll.compute_surface(model, (x, y), loss=mean_loss, **kw).metrics["train_loss"]
    torch.testing.assert_close(torch.from_numpy(mean), torch.from_numpy(per), rtol=1e-12, atol=0)


def test_batch_statistics_are_evaluated_in_one_batch_or_refused():
    case = CASES["bn_batch_statistics"]
    model = build(case)
    x, y = case.data()
    kw = dict(metrics={}, x=ll.Axis(-0.5, 0.5, 3), y=None, run=RunOptions(progress=False), loss=case.loss)
    notes = []
    surf = ll.compute_surface(model, (x, y), notes=notes, **kw)
    assert any("each set evaluated as one batch" in n for n in notes)
    with pytest.raises(LandscapeError, match=r"bn normalizes with batch statistics .* \(batch_size=37"):
        ll.compute_surface(model, (x, y), batch_size=16, **kw)
    with pytest.raises(LandscapeError, match="streamed in batches"):
        ll.compute_surface(model, [(x[:20], y[:20]), (x[20:], y[20:])], **kw)
    assert surf.done.all()


def test_transformers_models_fold_through_torch_export():
    """transformers' ResNet and MobileNetV2 (tiny configs) check their inputs in Python, so torch.fx
    cannot trace them; their BatchNorms fold through torch.export, and the surface equals plain
    evaluation. (transformers is not a dependency: this runs where it is installed.)"""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    models = {
        "resnet": transformers.ResNetForImageClassification(transformers.ResNetConfig(
            num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5)),
        "mobilenet_v2": transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config(
            num_channels=3, image_size=32, depth_multiplier=0.25, num_labels=5)),
    }
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 3, 32, 32, generator=g), torch.randint(0, 5, (12,), generator=g)
    xa, ya = ll.Axis(-0.5, 0.5, 3), ll.Axis(-0.4, 0.4, 2)

    def loss(out, t):
        return torch.nn.functional.cross_entropy(10 * out.logits.double(), t, reduction="none")

    for name, model in models.items():
        model = randomize_bn_(model).eval()
        case = Case(name, lambda: model, lambda: (x, y), loss)
        dirs = [ll.directions.random(model, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
        surf = ll.compute_surface(copy.deepcopy(model), (x, y), loss=loss, metrics={}, x=xa, y=ya, directions=dirs,
                                  run=RunOptions(progress=False))
        engine = surf.attrs["engine"]
        engine = json.loads(engine) if isinstance(engine, str) else engine
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert engine["capture"] == "torch.export" and engine["folded"] == n_bn, (name, engine)
        ref = plain_losses(case, model, "weights", dirs, [tuple(p) for p in Grid(xa, ya).points()])
        got = surf.metrics["train_loss"].reshape(-1)
        assert max(abs(a - b) / abs(b) for a, b in zip(got, ref)) <= REL, name
