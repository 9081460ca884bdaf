"""Adaptive sampling with error bars: closed-form SEs, the stopping rule, exactness at T=0,
common random numbers, and resume through the CLI job."""

import json
import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn

from landscape.sampling.adaptive import (SampledMeasure, SamplingPlan, estimate, forwards_used, mean_se, order_path,
                                sample_order)
from landscape.sources.data import DEFAULT_NORMALIZATION, load_dataset
from landscape.errors import LandscapeError, as_flags
from landscape.engine.evaluate import Evaluator, PointSetter
from landscape.grid import Axis
from conftest import surface_job
from landscape.surface import run_job


class Shift(nn.Module):
    """output = x + b: with the loss `output[:, 0]` the per-sample losses are known exactly."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, x):
        return x + self.b


def first_column(output, target):
    return output[:, 0]


def known_set(n=1000, seed=0, scale=1.0):
    """Per-sample losses v (exponential: skewed), labels y; x[:, 0] = v, x[:, 1] = 0."""
    g = torch.Generator().manual_seed(seed)
    v = scale * torch.empty(n, dtype=torch.float64).exponential_(generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.stack([v, torch.zeros_like(v)], dim=1)  # (n, 2); argmax = 0 wherever v > 0
    return x, y, v


def shifted(x, y, order, batch):
    model = Shift()
    ev = Evaluator(model, x[order], y[order], loss_fn=first_column, batch_size=batch)
    setter = PointSetter([model.b], [[torch.tensor([1.0, 0.0], dtype=torch.float64)]])
    return ev, setter


def test_fixed_sample_se_is_the_closed_form() -> None:
    x, y, v = known_set(500)
    ev, _ = shifted(x, y, torch.arange(500), batch=64)
    loss, loss_se, acc, acc_se, n = SampledMeasure(ev, SamplingPlan(), population=math.inf)()
    vv, p = v.numpy(), float((y == 0).double().mean())
    assert n == 500
    assert loss == pytest.approx(vv.mean(), rel=1e-12)
    assert loss_se == pytest.approx(vv.std(ddof=1) / math.sqrt(500), rel=1e-10)
    assert acc == pytest.approx(p, rel=1e-12)
    assert acc_se == pytest.approx(math.sqrt(p * (1 - p) / 499), rel=1e-10)  # binomial
    # the whole set (not a subset of a larger one): exact, SE 0
    assert SampledMeasure(ev, SamplingPlan())()[1] == 0.0


def test_adaptive_loop_stops_at_the_tolerance_with_the_prefix_statistics() -> None:
    x, y, v = known_set(4000, scale=2.0)
    order = sample_order(4000, seed=3)
    ev, _ = shifted(x, y, order, batch=32)
    plan = SamplingPlan(tolerance=0.15, n0=64, low_loss=0.0, seed=3)
    est = estimate(ev.sums, len(ev), ev.batch_size, plan)
    assert est.n < 4000 and est.n % 32 == 0
    assert plan.z * est.loss_se <= plan.tolerance
    assert all(plan.z * se > plan.tolerance for _, _, se in est.steps[:-1])  # no earlier stop was possible
    prefix = v[order][:est.n].numpy()
    assert est.loss == pytest.approx(prefix.mean(), rel=1e-12)
    assert est.loss_se == pytest.approx(prefix.std(ddof=1) / math.sqrt(est.n), rel=1e-9)


def test_points_above_vmax_and_low_loss_points() -> None:
    x, y, _ = known_set(3000)
    ev, setter = shifted(x, y, sample_order(3000, 0), batch=32)
    plan = SamplingPlan(tolerance=0.01, n0=64, vmax=10.0, low_loss=0.5, n_low=1024)
    setter.set([50.0])  # mean ~51, SE ~0.13: confidently above vmax at once
    assert estimate(ev.sums, len(ev), 32, plan).n == 64
    setter.set([-0.9])  # mean ~0.1 < low_loss: at least n_low samples whatever the SE
    assert estimate(ev.sums, len(ev), 32, SamplingPlan(tolerance=10.0, n0=64, low_loss=0.5, n_low=1024)).n == 1024


def test_the_vmax_rule_asks_for_z_vmax_standard_errors() -> None:
    """A point whose first chunk lies 2-3.5 SE above vmax stops there with z_vmax = 2 and goes on
    with the default 3.5 until its loss minus 3.5 SE clears vmax (or its bound meets T)."""
    x, y, _ = known_set(3000)
    ev, setter = shifted(x, y, sample_order(3000, 0), batch=32)
    plan = SamplingPlan(tolerance=0.001, n0=64, vmax=10.0, low_loss=0.0)
    assert plan.z_vmax == 3.5
    setter.set([0.0])
    first = estimate(ev.sums, len(ev), 32, SamplingPlan(tolerance=1e9, n0=64, low_loss=0.0))
    assert first.n == 64
    loss, se = first.loss, first.loss_se
    # shift the losses so that the first chunk reads 2.75 SE above vmax (a shift moves no SE)
    setter.set([10.0 + 2.75 * se - loss])
    lax = estimate(ev.sums, len(ev), 32, SamplingPlan(tolerance=0.001, n0=64, vmax=10.0, low_loss=0.0, z_vmax=2.0))
    assert lax.n == 64 and lax.loss - 2 * lax.loss_se > 10.0
    strict = estimate(ev.sums, len(ev), 32, plan)
    assert strict.n > 64 and strict.steps[0][1] == pytest.approx(lax.loss, rel=1e-12)
    assert all(m - 3.5 * e <= 10.0 for _, m, e in strict.steps[:-1])  # no earlier stop was allowed
    assert strict.loss - 3.5 * strict.loss_se > 10.0 or 2 * strict.loss_se <= plan.tolerance or strict.n == len(ev)
    with pytest.raises(LandscapeError, match="z_vmax must be > 0") as e:
        SamplingPlan(tolerance=0.1, z_vmax=0.0)
    assert as_flags(e.value).startswith("--z-vmax must be > 0")  # the command line's words


def test_common_random_numbers_neighbouring_points_read_the_same_samples() -> None:
    x, y, _ = known_set(3000)
    ev, setter = shifted(x, y, sample_order(3000, 7), batch=32)
    plan = SamplingPlan(tolerance=0.08, n0=64, low_loss=0.0)
    ests = []
    for c in (0.0, 0.25):
        setter.set([c])
        ests.append(estimate(ev.sums, len(ev), 32, plan))
    a, b = ests
    # the per-sample losses differ by the constant 0.25: same samples => same SE, same n, mean + 0.25
    assert [s[0] for s in a.steps] == [s[0] for s in b.steps]
    assert b.loss - a.loss == pytest.approx(0.25, abs=1e-12)
    assert b.loss_se == pytest.approx(a.loss_se, rel=1e-9)


@pytest.fixture(scope="module")
def digits300():
    d = load_dataset("digits", "train", n_samples=300, seed=0)
    return DEFAULT_NORMALIZATION["digits"].apply(d.x), d.y


def test_tolerance_zero_equals_the_exact_evaluation_bit_for_bit(digits_ckpt, digits300) -> None:
    from landscape.sources.checkpoint import build_model, load_checkpoint

    model, _, _ = build_model(load_checkpoint(digits_ckpt))
    x, y = digits300
    order = sample_order(len(y), 0)
    x, y = x[order], y[order]
    ev = Evaluator(model, x, y, batch_size=32)
    sampled = SampledMeasure(ev, SamplingPlan(tolerance=0.0, n0=32, low_loss=0.0))()
    exact = Evaluator(model, x, y, batch_size=32)()
    assert sampled[4] == 300 and sampled[1] == 0.0
    assert (sampled[0], sampled[2]) == exact  # bit for bit


def job(ckpt, out, **kw):
    kw.setdefault("sampling", SamplingPlan(tolerance=0.5, n0=32, vmax=10.0))
    return surface_job(ckpt=str(ckpt), n_samples=128, device="cpu", x=Axis(-1, 1, 3), y=Axis(-1, 1, 3), out=str(out),
                       progress=False, **kw)


def test_adaptive_job_resumes_bit_for_bit_and_checks_its_settings(digits_ckpt, tmp_path) -> None:
    whole = run_job(job(digits_ckpt, tmp_path / "a")).surface
    assert {"train_loss_se", "train_acc_se", "train_n"} <= set(whole.metrics) and whole.done.all()
    assert whole.settings["sampling"]["tolerance"] == 0.5
    run_job(job(digits_ckpt, tmp_path / "b", max_points=4))
    resumed = run_job(job(digits_ckpt, tmp_path / "b")).surface
    for m in whole.metrics:
        np.testing.assert_array_equal(resumed.metrics[m], whole.metrics[m], err_msg=m)
    used, full = forwards_used(whole)
    assert used == whole.metrics["train_n"].sum() and full == 9 * 128
    # a point grows in whole batches, so the default batch is capped at n0 (in bf16 the CPU cap is
    # 1024): points that stop after their first chunk used 32 samples, not the whole 128 (auto: bf16
    # where this CPU has it natively, else fp32)
    low = run_job(job(digits_ckpt, tmp_path / "bf16", precision="auto")).surface
    assert low.metrics["train_n"].min() == whole.metrics["train_n"].min() == 32
    with pytest.raises(LandscapeError, match="other settings"):
        run_job(job(digits_ckpt, tmp_path / "b", sampling=SamplingPlan(tolerance=0.25, n0=32, vmax=10.0)))


def test_adaptive_shards_merge_into_the_whole_surface(digits_ckpt, tmp_path) -> None:
    from landscape.distributed import Shard
    from landscape.storage import merge_surfaces

    for strata in (0, 8):  # a stratified order: each shard computes the same one
        plan = SamplingPlan(tolerance=0.5, n0=32, vmax=10.0, strata=strata)
        whole = run_job(job(digits_ckpt, tmp_path / f"w{strata}", sampling=plan)).surface
        paths = [run_job(job(digits_ckpt, tmp_path / f"s{strata}", shard=Shard(i, 2), sampling=plan)).surf_file
                 for i in range(2)]
        merged, _ = merge_surfaces(paths)
        assert merged.done.all() and merged.settings == whole.settings
        for m in whole.metrics:
            np.testing.assert_array_equal(merged.metrics[m], whole.metrics[m], err_msg=m)


def test_cli_tolerance_defaults_to_a_quarter_of_vlevel(plot_surface) -> None:
    plan = plot_surface.build_job(plot_surface.parse_args(["--tolerance", "--vlevel", "0.4"])).sampling
    assert plan.tolerance == pytest.approx(0.1) and plan.vmax == 10.0
    plan = plot_surface.build_job(plot_surface.parse_args(["--tolerance", "0.2", "--n0", "64"])).sampling
    assert (plan.tolerance, plan.n0) == (0.2, 64)
    fixed = plot_surface.build_job(plot_surface.parse_args(["--n-samples", "100"])).sampling
    assert fixed.tolerance is None
    assert plot_surface.build_job(plot_surface.parse_args([])).sampling is None
    with pytest.raises(LandscapeError, match="--tolerance"):
        plot_surface.build_job(plot_surface.parse_args(["--tolerance=abc"]))


def test_mean_se_edge_cases() -> None:
    assert math.isnan(mean_se([3.0, 9.0], 1)[1])  # one sample: no SE
    assert mean_se([6.0, 20.0], 2) == (3.0, 1.0)  # values 2 and 4: s = sqrt(2), SE = 1
    with pytest.raises(LandscapeError, match="tolerance must be >= 0"):
        SamplingPlan(tolerance=-1.0)


def test_sampled_surface_figures(tmp_path) -> None:
    from landscape.plot.surface import plot_surface_figures
    from landscape.storage import Surface

    surf = Surface(x=np.linspace(-1, 1, 5), y=np.linspace(-1, 1, 4))
    X, Y = np.meshgrid(surf.x, surf.y)
    surf.metrics.update(train_loss=1 + 4 * (X**2 + Y**2), train_loss_se=0.05 + 0 * X, train_n=256 + 0 * X)
    surf.done[:] = True
    surf.attrs.update(n_samples=json.dumps({"train": 1000}),
                      settings=json.dumps({"sampling": {"tolerance": 0.125, "z": 2.0}}))
    paths = plot_surface_figures(surf, tmp_path / "s", vmin=0.5, vmax=5, vlevel=0.5)
    assert (tmp_path / "s_train_loss_2derror.png").exists() and len(paths) == 10
    line = Surface(x=np.linspace(-1, 1, 7), y=None)
    line.metrics.update(train_loss=np.linspace(1, 2, 7), train_loss_se=np.full(7, 0.1),
                        train_acc=np.full(7, 0.5), train_acc_se=np.full(7, 0.01), train_n=np.full(7, 64.0))
    line.done[:] = True
    assert len(plot_surface_figures(line, tmp_path / "l", log=True)) == 4


def test_a_few_heavy_samples_keep_the_point_going() -> None:
    """Losses that are 0 except a rare 10 (a few misclassified images carry the mean): the first
    chunk holds one heavy sample, its SE looks small enough, but its effective sample size
    (sum l)^2 / sum l^2 = 1 is below ess_min, so the point goes on."""
    n = 4096
    v = torch.zeros(n, dtype=torch.float64)
    v[torch.arange(0, n, 200)] = 10.0  # one in 200; sample 0 is heavy
    x, y = torch.stack([v, torch.zeros_like(v)], dim=1), torch.zeros(n, dtype=torch.int64)
    ev, _ = shifted(x, y, torch.arange(n), batch=32)
    loose = SamplingPlan(tolerance=2.0, n0=32, low_loss=0.0, ess_min=0.0)
    assert estimate(ev.sums, n, 32, loose).n == 32  # 2 SE = 0.63 <= 2 at once
    guarded = estimate(ev.sums, n, 32, SamplingPlan(tolerance=2.0, n0=32, low_loss=0.0, ess_min=10.0))
    s = v[:guarded.n]
    assert float(s.sum() ** 2 / s.square().sum()) >= 10 and guarded.n >= 1800


def test_stratified_order_holds_every_stratum_in_every_round() -> None:
    from landscape.sampling.adaptive import stratified_order

    key = torch.randn(1003, generator=torch.Generator().manual_seed(1))
    k = 16
    order = stratified_order(key, k, seed=0)
    assert sorted(order.tolist()) == list(range(1003))  # a permutation
    m = 1003 // k  # 62 samples per stratum, 11 left over
    rank = torch.empty(1003, dtype=torch.long)
    rank[torch.argsort(key)] = torch.arange(1003)
    # the leftover samples are a random subset and come last; the others, ranked among themselves,
    # fall into blocks of m: every round of k positions holds one sample of each block
    body = order[: k * m]
    block = torch.argsort(torch.argsort(rank[body])) // m
    for t in range(m):
        assert sorted(block[t * k:(t + 1) * k].tolist()) == list(range(k))
    assert torch.equal(stratified_order(key, k, seed=0), order)
    assert not torch.equal(stratified_order(key, k, seed=1), order)
    assert torch.equal(stratified_order(key[:3], 16, seed=0).sort().values, torch.arange(3))  # too few: random


def test_stratified_order_is_unbiased_and_its_prefixes_vary_less() -> None:
    """Every sample is equally likely at every position (chi-square over 4,000 seeded orders), so a
    prefix mean is unbiased; with a key that explains the values its variance falls."""
    from landscape.sampling.adaptive import stratified_order

    n, k, reps = 22, 4, 4000  # 5 per stratum, 2 left over
    key = torch.arange(n, dtype=torch.float64)
    counts = torch.zeros(n, n)
    for s in range(reps):
        counts[stratified_order(key, k, s), torch.arange(n)] += 1
    expected = reps / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = (n - 1) ** 2
    assert abs(chi2 - dof) < 4 * math.sqrt(2 * dof), chi2  # a biased rule (e.g. the leftovers by rank) fails

    values = key ** 2  # what the key explains
    strat = torch.stack([values[stratified_order(key, k, s)[:8]].mean() for s in range(reps)])
    plain = torch.stack([values[sample_order(n, s)[:8]].mean() for s in range(reps)])
    assert abs(float(strat.mean()) - float(values.mean())) < 4 * float(strat.std()) / math.sqrt(reps)
    assert float(strat.var()) < 0.2 * float(plain.var())


def test_stratified_job_records_its_order_and_resumes_bit_for_bit(digits_ckpt, tmp_path) -> None:
    plan = SamplingPlan(tolerance=0.5, n0=32, vmax=10.0, strata=8)
    whole = run_job(job(digits_ckpt, tmp_path / "a", sampling=plan))
    order = whole.surface.settings["sampling"]["order"]
    assert set(order) == {"train"} and whole.surface.settings["sampling"]["strata"] == 8
    assert any("stratified into 8 strata" in n for n in whole.notes)
    plain = run_job(job(digits_ckpt, tmp_path / "p")).surface
    assert "order" not in plain.settings["sampling"] and "strata" not in plain.settings["sampling"]
    assert not np.array_equal(plain.metrics["train_loss"], whole.surface.metrics["train_loss"])  # another order
    part = run_job(job(digits_ckpt, tmp_path / "b", sampling=plan, max_points=4))
    assert order_path(part.surf_file).exists()
    resumed = run_job(job(digits_ckpt, tmp_path / "b", sampling=plan))
    assert any(f"read from {order_path(part.surf_file)}" in n for n in resumed.notes)  # not computed again
    for m in whole.surface.metrics:
        np.testing.assert_array_equal(resumed.surface.metrics[m], whole.surface.metrics[m], err_msg=m)
    with pytest.raises(LandscapeError, match="other settings"):
        run_job(job(digits_ckpt, tmp_path / "b", sampling=SamplingPlan(tolerance=0.5, n0=32, vmax=10.0, strata=4)))
    # the stored order is what a resumed run reads: another one there is refused by the settings check
    with h5py.File(order_path(part.surf_file), "a") as f:
        f["train"][...] = f["train"][()][::-1]
    with pytest.raises(LandscapeError, match="other settings.*order"):
        run_job(job(digits_ckpt, tmp_path / "b", sampling=plan))
    # --overwrite computes it again
    again = run_job(job(digits_ckpt, tmp_path / "b", sampling=plan, overwrite=True))
    assert again.surface.settings == whole.surface.settings


def test_stratified_tolerance_zero_is_the_exact_mean_of_the_reordered_set(digits_ckpt, digits300) -> None:
    from landscape.sampling.adaptive import center_values, stratify
    from landscape.sources.checkpoint import build_model, load_checkpoint

    model, _, _ = build_model(load_checkpoint(digits_ckpt))
    x, y = digits300
    ev = Evaluator(model, x, y, batch_size=32)
    w = next(model.parameters())
    setter = PointSetter([w], [[torch.randn_like(w)]])
    before = center_values(ev, setter)
    order = stratify(ev, setter, SamplingPlan(tolerance=0.0, n0=32, low_loss=0.0, strata=16))
    assert torch.equal(ev.y, y[order]) and torch.equal(center_values(ev, setter), before[order])
    sampled = SampledMeasure(ev, SamplingPlan(tolerance=0.0, n0=32, low_loss=0.0))()
    assert sampled[4] == 300 and sampled[1] == 0.0
    assert (sampled[0], sampled[2]) == Evaluator(model, x[order], y[order], batch_size=32)()  # bit for bit
    assert sampled[0] == pytest.approx(float(before.mean()), rel=1e-6)
    assert stratify(ev, setter, SamplingPlan(tolerance=0.0)) is None  # strata 0: unchanged


def test_cli_stratify(plot_surface) -> None:
    plan = plot_surface.build_job(plot_surface.parse_args(["--tolerance", "--stratify"])).sampling
    assert plan.strata == 256
    plan = plot_surface.build_job(plot_surface.parse_args(["--tolerance", "0.1", "--stratify", "64"])).sampling
    assert plan.strata == 64
    with pytest.raises(LandscapeError, match="--stratify needs --tolerance"):
        plot_surface.build_job(plot_surface.parse_args(["--n-samples", "100", "--stratify"]))
    with pytest.raises(LandscapeError, match="strata must be 0 or at least 2") as e:
        SamplingPlan(tolerance=0.1, strata=1)
    assert as_flags(e.value).startswith("--stratify must be 0 or at least 2")
