"""landscape.sampling.validate and scripts/validate_adaptive.py: one adaptive surface against a full
one, the same surface in several sample orders (coverage pooled per band and per point), the rule's
coverage from saved per-sample values, and the stopping rule's bias."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from landscape.errors import LandscapeError, as_flags
from landscape.sampling import SamplingPlan
from landscape.sampling.validate import (RuleCheck, across_orders, check_surface, check_values, plan_of, pool_bias,
                                         run_order, stopping_bias, summarize)
from landscape.storage import Surface, read_surface, write_surface


@pytest.fixture(scope="module")
def validate(script):
    return script("validate_adaptive")


def surface(path, loss, se=None, seed=None, x=None, y=None, size=1000):
    ny, nx = loss.shape
    s = Surface(x=np.linspace(-1, 1, nx) if x is None else x, y=np.linspace(-1, 1, ny) if y is None else y)
    s.metrics["train_loss"] = loss
    s.attrs["n_samples"] = json.dumps({"train": size})
    if se is not None:
        s.metrics["train_loss_se"] = se
        s.metrics["train_n"] = np.full(loss.shape, 100.0)
        s.attrs["settings"] = json.dumps({"sampling": {"tolerance": 0.125, "z": 2.0, "seed": seed}})
    s.done[:] = True
    write_surface(path, s)
    return path


def test_orders_pool_the_coverage_per_band_and_per_point(validate, tmp_path, capsys) -> None:
    # full loss: column 0 in band 0-1, column 1 in band 1-2, column 2 in band 2-5 (4 rows)
    full = np.repeat([[0.5, 1.5, 3.0]], 4, axis=0)
    ref = surface(tmp_path / "full.h5", full)
    se = np.full(full.shape, 0.05)
    # run 0 misses (|err| = 3 SE) the top row of band 1-2; run 1 misses the whole band 0-1 column;
    # run 2 covers everything; every error elsewhere is 1 SE
    errs = [np.full(full.shape, 0.05) for _ in range(3)]
    errs[0][0, 1] = 0.15
    errs[1][:, 0] = -0.15
    runs = [surface(tmp_path / f"s{k}.h5", full + e, se, seed=k) for k, e in enumerate(errs)]
    out = tmp_path / "v.json"
    validate.main(["--surface", *map(str, runs), "--reference", str(ref), "--json", str(out),
                   "--figure", str(tmp_path / "fig")])
    orders = json.loads(out.read_text())["surfaces"]["orders"]
    assert orders["seeds"] == [0, 1, 2] and orders["points_below_vmax"] == 12
    b01, b12, b25 = (orders["bands"][k] for k in ("0-1", "1-2", "2-5"))
    assert b01["coverage_2se_per_run"] == [1.0, 0.0, 1.0] and b01["coverage_2se_pooled"] == pytest.approx(2 / 3)
    assert b12["coverage_2se_per_run"] == [0.75, 1.0, 1.0] and b12["coverage_2se_pooled"] == pytest.approx(11 / 12)
    assert b12["point_coverage_min"] == pytest.approx(2 / 3) and b01["point_coverage_min"] == pytest.approx(2 / 3)
    assert b25["coverage_2se_pooled"] == 1.0 and b25["within_T_pooled"] == 1.0
    assert b01["within_T_pooled"] == pytest.approx(2 / 3)  # 0.15 > T = 0.125
    assert orders["coverage_2se_pooled_below_vmax"] == pytest.approx(31 / 36)  # 1 + 4 misses
    point = np.array(orders["point_coverage"])
    assert point[0, 1] == pytest.approx(2 / 3) and point[1, 1] == 1.0 and point[2, 0] == pytest.approx(2 / 3)
    assert (tmp_path / "fig.png").exists() and (tmp_path / "fig.pdf").exists()
    assert "loss 1-2: 4 points, coverage pooled 91.7%" in capsys.readouterr().out


def test_a_window_of_the_reference_grid_is_compared_point_by_point(tmp_path) -> None:
    xs = np.linspace(-1, 1, 5)
    X, Y = np.meshgrid(xs, xs)
    ref = surface(tmp_path / "full.h5", 1 + X**2 + Y**2, x=xs, y=xs)
    sub = xs[1:4]
    Xs, Ys = np.meshgrid(sub, sub)
    window = 1 + Xs**2 + Ys**2 + 0.01
    path = surface(tmp_path / "w.h5", window, np.full(window.shape, 0.01), seed=0, x=sub, y=sub)
    one, _ = check_surface(str(path), read_surface(ref), str(ref))
    assert one["points"] == 9 and one["max_err_below_vmax"] == pytest.approx(0.01)
    assert one["coverage_2se_below_vmax"] == 1.0


def test_orders_refuse_a_repeated_seed_and_another_grid(tmp_path) -> None:
    full = np.ones((3, 3))
    ref = surface(tmp_path / "full.h5", full)
    a = surface(tmp_path / "a.h5", full, np.full((3, 3), 0.1), seed=4)
    b = surface(tmp_path / "b.h5", full, np.full((3, 3), 0.1), seed=4)
    runs = [check_surface(str(p), read_surface(ref), str(ref)) for p in (a, b)]
    with pytest.raises(LandscapeError, match="share sample orders") as e:
        across_orders(runs)
    assert as_flags(e.value).endswith("compute each with its own --seed")
    big = surface(tmp_path / "big.h5", np.ones((5, 5)))
    small = surface(tmp_path / "c.h5", np.ones((3, 3)), np.full((3, 3), 0.1), seed=5,
                    x=np.linspace(-1, 1, 5)[1:4], y=np.linspace(-1, 1, 5)[1:4])
    with pytest.raises(LandscapeError, match="not on the grid"):
        check_surface(str(small), read_surface(ref), str(ref))
    a2 = surface(tmp_path / "a2.h5", np.ones((5, 5)), np.full((5, 5), 0.1), seed=6)
    runs = [check_surface(str(p), read_surface(big), str(big)) for p in (a2, small)]
    with pytest.raises(LandscapeError, match="not on the grid of"):
        across_orders(runs)


def test_points_on_the_whole_set_measure_the_references_arithmetic(validate, tmp_path, capsys) -> None:
    """A point evaluated on the whole set has SE 0: its difference from the reference is arithmetic
    (bf16 on another device), and `auto` allows that relative difference everywhere."""
    full = np.array([[2.0, 4.0, 4.0]])
    ref = surface(tmp_path / "full.h5", full)
    se = np.array([[0.0, 0.02, 0.02]])
    est = full + np.array([[0.01, 0.05, 0.09]])  # 5e-3 relative; 2.5 SE; 4.5 SE
    path = surface(tmp_path / "a.h5", est, se, seed=0)
    with h5py.File(path, "r+") as f:
        f["train_n"][0, 0] = 1000  # the whole set (n_samples 1000)
    reference = read_surface(ref)
    out, _ = check_surface(str(path), reference, str(ref))
    assert out["whole_set_points"] == 1 and out["whole_set_rel_diff_max"] == pytest.approx(5e-3)
    assert out["precision_allowance"] == pytest.approx(5e-3)
    assert out["coverage_2se_below_vmax"] == 0.0  # strict: 0.01 > 0, 0.05 > 0.04, 0.09 > 0.04
    assert out["coverage_2se_allowed_below_vmax"] == pytest.approx(2 / 3)  # 0.05 <= 0.04 + 0.02; 0.09 > 0.06
    fixed, _ = check_surface(str(path), reference, str(ref), precision_allowance="0")
    assert fixed["coverage_2se_allowed_below_vmax"] == 0.0
    # a reference over another set (here 2,000 samples): the 1,000 are a subset, their difference is sampling
    other = surface(tmp_path / "full2000.h5", full, size=2000)
    subset, _ = check_surface(str(path), read_surface(other), str(other))
    assert subset["whole_set_points"] == 0 and subset["precision_allowance"] == 0.0
    with pytest.raises(LandscapeError, match="precision_allowance must be 'auto' or a number") as e:
        check_surface(str(path), reference, str(ref), precision_allowance="some")
    assert e.value.argument == "precision_allowance"
    # the script names the flag
    with pytest.raises(SystemExit) as stop:
        validate.main(["--surface", str(path), "--reference", str(ref), "--precision-allowance", "some"])
    assert stop.value.code == 2
    assert "error: --precision-allowance must be 'auto' or a number, got 'some'" in capsys.readouterr().err


def test_values_with_stratified_orders(validate, tmp_path) -> None:
    """Stratified orders (strata, --stratify) as plot_surface.py --stratify reads them: a point whose
    losses the center's explain is estimated far more precisely than in plain random orders (the
    same plain SE, so it is covered more often), and the single run's order is the job's
    (stratified_order with its seed)."""
    import torch

    from landscape.sampling.adaptive import stratified_order

    rng = np.random.default_rng(0)
    center = rng.exponential(size=2000) ** 2  # skewed, as near a minimum
    point = center * 3 + rng.normal(scale=0.3, size=2000)  # what the center explains, and a little more
    values = tmp_path / "v.npz"
    np.savez(values, loss_0_0=center, hits_0_0=np.ones(2000), **{"loss_0.5_0": point, "hits_0.5_0": np.ones(2000)})
    plans = [plan_of(2.0, 0.5, n0=64, low_loss=0.0, vmax=100.0, strata=k) for k in (0, 32)]
    plain, strat = (summarize(list(check_values(str(values), RuleCheck(p, 64, 200, (64,)))), p) for p in plans)
    p_row, s_row = (next(r for r in out["rows"] if r["x"] == 0.5) for out in (plain, strat))
    assert s_row["rule"]["rms_err_over_se"] < 0.5 * p_row["rule"]["rms_err_over_se"]
    assert s_row["rule"]["fixed_n"][64] > p_row["rule"]["fixed_n"][64]
    assert strat["plan"]["strata"] == 32 and "strata" not in plain["plan"]
    order = stratified_order(torch.from_numpy(center), 32, 0).numpy()
    assert np.array_equal(run_order(2000, plans[1], center), order)
    # the script's flags make the same plan
    common = ["--values", str(values), "--tolerance", "2", "--n0", "64", "--low-loss", "0", "--vmax", "100"]
    assert validate.plan_of(validate.parse_args(common + ["--stratify", "32"])) == plans[1]
    default = RuleCheck(plan_of(None, 0.5, strata=256))  # --stratify alone
    np.savez(tmp_path / "short.npz", loss_0_0=center[:100], **{"loss_0.5_0": point})
    with pytest.raises(LandscapeError, match="has 2000 values, the center 100") as e:
        list(check_values(str(tmp_path / "short.npz"), default))
    assert "; --stratify needs the center's losses" in as_flags(e.value)
    np.savez(tmp_path / "nocenter.npz", **{"loss_0.5_0": point})
    with pytest.raises(LandscapeError, match="no center") as e:
        list(check_values(str(tmp_path / "nocenter.npz"), default))
    assert as_flags(e.value).endswith("(loss_0_0): --stratify orders the samples by its losses")


def mixture(n: int, seed: int) -> np.ndarray:
    """Cross-entropy-like per-sample losses: 95 % near 0.05, 5 % (misclassified) near 3."""
    g = np.random.default_rng(seed)
    heavy = g.random(n) < 0.05
    return np.where(heavy, 3 * np.exp(0.3 * g.normal(size=n)), 0.05 * np.exp(0.5 * g.normal(size=n)))


def test_stopping_bias_is_zero_where_the_answer_is_known() -> None:
    values = mixture(1000, 0)
    whole = stopping_bias(values, SamplingPlan(tolerance=None), 64, 20, rng=0)  # every order reads the whole set
    assert whole["bias"] == 0.0 and whole["bias_se"] == 0.0 and whole["err_bias"] == 0.0
    assert whole["coverage"] == 1.0 and whole["mean_n"] == 1000 and whole["rms_se"] == 0.0
    const = stopping_bias(np.full(1000, 0.5), SamplingPlan(tolerance=0.05, n0=64), 64, 20, rng=0)
    assert const["bias"] == 0.0 and const["err_bias"] == 0.0 and const["mean_n"] == 64  # SE 0 at once
    pooled = pool_bias([{**whole, "bias": -1.0, "bias_se": 0.3}, {**whole, "bias": 0.0, "bias_se": 0.4}])
    assert pooled["bias"] == -0.5 and pooled["bias_se"] == pytest.approx(0.25) and pooled["orders"] == 40
    with pytest.raises(LandscapeError, match="reps must be >= 2"):
        stopping_bias(values, SamplingPlan(tolerance=0.05), 64, 1)


def test_the_stopping_rule_reads_low_on_skewed_losses() -> None:
    """A point that stops once z SE <= T stops early where its prefix holds few of the rare large
    losses: low, with a small SE. A fixed prefix is unbiased (its mean error is 0), though its
    (estimate - full) / SE still has a negative mean (mean and SE are correlated); the rule's is
    lower, and its mean error is negative."""
    values = mixture(4000, 0)
    rule = stopping_bias(values, SamplingPlan(tolerance=0.05, n0=64, low_loss=0.0, vmax=None), 64, 1000, rng=1)
    prefix = stopping_bias(values, SamplingPlan(tolerance=math.inf, n0=256, low_loss=0.0, vmax=None, ess_min=0),
                           64, 1000, rng=1)
    assert prefix["mean_n"] == 256 and abs(prefix["err_bias"]) < 3 * prefix["err_bias_se"]
    assert rule["bias"] < 0 and rule["bias"] + 4 * rule["bias_se"] < 0
    assert rule["err_bias"] < 0 and rule["err_bias"] + 4 * rule["err_bias_se"] < 0
    assert rule["bias"] < prefix["bias"] < 0


def test_the_script_reports_the_stopping_bias_beside_the_same_numbers(validate, tmp_path, capsys) -> None:
    values = tmp_path / "v.npz"
    np.savez(values, loss_0_0=mixture(2000, 1) / 10, **{"loss_0.5_0": mixture(2000, 2)})
    common = ["--values", str(values), "--tolerance", "0.05", "--n0", "64", "--batch-size", "64", "--reps", "50",
              "--fixed-n", "64", "--low-loss", "0"]
    validate.main(common + ["--json", str(tmp_path / "a.json")])
    validate.main(common + ["--stopping-bias", "200", "--json", str(tmp_path / "b.json")])
    a, b = (json.loads((tmp_path / f"{k}.json").read_text())["values"] for k in "ab")
    pooled = b.pop("stopping_bias")
    rows = [r.pop("stopping_bias") for r in b["rows"]]
    assert a == b  # the bias has its own generator: every other number is the same
    assert pooled["points"] == 2 and pooled["orders"] == 400
    assert pooled["bias"] == pytest.approx(np.mean([r["bias"] for r in rows]))
    assert rows[1]["bias"] < 0 and rows[1]["orders"] == 200
    out = capsys.readouterr().out
    assert "stopping bias pooled over 2 points" in out and out.count("stopping bias over 200 orders") == 2
    with pytest.raises(SystemExit):
        validate.main(common + ["--stopping-bias", "1"])
    assert "--stopping-bias must be 0 (off) or at least 2 orders" in capsys.readouterr().err
