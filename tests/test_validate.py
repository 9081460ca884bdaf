"""scripts/validate_adaptive.py on surface files: one adaptive surface against a full one, and the
same surface in several sample orders (coverage pooled per band and per point)."""

import json

import h5py
import numpy as np
import pytest

from landscape.errors import LandscapeError
from landscape.storage import Surface, write_surface



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


def test_a_window_of_the_reference_grid_is_compared_point_by_point(validate, tmp_path) -> None:
    xs = np.linspace(-1, 1, 5)
    X, Y = np.meshgrid(xs, xs)
    ref = surface(tmp_path / "full.h5", 1 + X**2 + Y**2, x=xs, y=xs)
    sub = xs[1:4]
    Xs, Ys = np.meshgrid(sub, sub)
    window = 1 + Xs**2 + Ys**2 + 0.01
    path = surface(tmp_path / "w.h5", window, np.full(window.shape, 0.01), seed=0, x=sub, y=sub)
    one = validate.check_surfaces(validate.parse_args(["--surface", str(path), "--reference", str(ref)]))
    assert one["points"] == 9 and one["max_err_below_vmax"] == pytest.approx(0.01)
    assert one["coverage_2se_below_vmax"] == 1.0


def test_orders_refuse_a_repeated_seed_and_another_grid(validate, tmp_path) -> None:
    full = np.ones((3, 3))
    ref = surface(tmp_path / "full.h5", full)
    a = surface(tmp_path / "a.h5", full, np.full((3, 3), 0.1), seed=4)
    b = surface(tmp_path / "b.h5", full, np.full((3, 3), 0.1), seed=4)
    with pytest.raises(LandscapeError, match="share sample orders"):
        validate.check_surfaces(validate.parse_args(["--surface", str(a), str(b), "--reference", str(ref)]))
    big = surface(tmp_path / "big.h5", np.ones((5, 5)))
    small = surface(tmp_path / "c.h5", np.ones((3, 3)), np.full((3, 3), 0.1), seed=5,
                    x=np.linspace(-1, 1, 5)[1:4], y=np.linspace(-1, 1, 5)[1:4])
    with pytest.raises(LandscapeError, match="not on the grid"):
        validate.check_surfaces(validate.parse_args(["--surface", str(small), "--reference", str(ref)]))
    a2 = surface(tmp_path / "a2.h5", np.ones((5, 5)), np.full((5, 5), 0.1), seed=6)
    with pytest.raises(LandscapeError, match="not on the grid of"):
        validate.check_surfaces(validate.parse_args(["--surface", str(a2), str(small), "--reference", str(big)]))


def test_points_on_the_whole_set_measure_the_references_arithmetic(validate, tmp_path) -> None:
    """A point evaluated on the whole set has SE 0: its difference from the reference is arithmetic
    (bf16 on another device), and `auto` allows that relative difference everywhere."""
    full = np.array([[2.0, 4.0, 4.0]])
    ref = surface(tmp_path / "full.h5", full)
    se = np.array([[0.0, 0.02, 0.02]])
    est = full + np.array([[0.01, 0.05, 0.09]])  # 5e-3 relative; 2.5 SE; 4.5 SE
    path = surface(tmp_path / "a.h5", est, se, seed=0)
    with h5py.File(path, "r+") as f:
        f["train_n"][0, 0] = 1000  # the whole set (n_samples 1000)
    out = validate.check_surfaces(validate.parse_args(["--surface", str(path), "--reference", str(ref)]))
    assert out["whole_set_points"] == 1 and out["whole_set_rel_diff_max"] == pytest.approx(5e-3)
    assert out["precision_allowance"] == pytest.approx(5e-3)
    assert out["coverage_2se_below_vmax"] == 0.0  # strict: 0.01 > 0, 0.05 > 0.04, 0.09 > 0.04
    assert out["coverage_2se_allowed_below_vmax"] == pytest.approx(2 / 3)  # 0.05 <= 0.04 + 0.02; 0.09 > 0.06
    fixed = validate.check_surfaces(validate.parse_args(["--surface", str(path), "--reference", str(ref),
                                                         "--precision-allowance", "0"]))
    assert fixed["coverage_2se_allowed_below_vmax"] == 0.0
    # a reference over another set (here 2,000 samples): the 1,000 are a subset, their difference is sampling
    other = surface(tmp_path / "full2000.h5", full, size=2000)
    subset = validate.check_surfaces(validate.parse_args(["--surface", str(path), "--reference", str(other)]))
    assert subset["whole_set_points"] == 0 and subset["precision_allowance"] == 0.0
    with pytest.raises(LandscapeError, match="--precision-allowance"):
        validate.check_surfaces(validate.parse_args(["--surface", str(path), "--reference", str(ref),
                                                     "--precision-allowance", "some"]))


def test_values_with_stratified_orders(validate, tmp_path) -> None:
    """--stratify draws the orders plot_surface.py --stratify reads: a point whose losses the center's
    explain is estimated far more precisely than in plain random orders (the same plain SE, so it is
    covered more often), and the single run's order is the job's (stratified_order with its seed)."""
    import torch

    from landscape.sampling.adaptive import stratified_order

    rng = np.random.default_rng(0)
    center = rng.exponential(size=2000) ** 2  # skewed, as near a minimum
    point = center * 3 + rng.normal(scale=0.3, size=2000)  # what the center explains, and a little more
    values = tmp_path / "v.npz"
    np.savez(values, loss_0_0=center, hits_0_0=np.ones(2000), **{"loss_0.5_0": point, "hits_0.5_0": np.ones(2000)})
    common = ["--values", str(values), "--tolerance", "2", "--n0", "64", "--batch-size", "64", "--reps", "200",
              "--fixed-n", "64", "--low-loss", "0", "--vmax", "100"]
    plain = validate.check_values(validate.parse_args(common))
    strat = validate.check_values(validate.parse_args(common + ["--stratify", "32"]))
    p_row, s_row = (next(r for r in out["rows"] if r["x"] == 0.5) for out in (plain, strat))
    assert s_row["rule"]["rms_err_over_se"] < 0.5 * p_row["rule"]["rms_err_over_se"]
    assert s_row["rule"]["fixed_n"][64] > p_row["rule"]["fixed_n"][64]
    assert strat["plan"]["strata"] == 32 and "strata" not in plain["plan"]
    order = stratified_order(torch.from_numpy(center), 32, 0).numpy()
    assert np.array_equal(validate.run_order(2000, validate.plan_of(validate.parse_args(common + ["--stratify", "32"])),
                                             center), order)
    np.savez(tmp_path / "short.npz", loss_0_0=center[:100], **{"loss_0.5_0": point})
    with pytest.raises(LandscapeError, match="has 2000 values, the center 100"):
        validate.check_values(validate.parse_args(["--values", str(tmp_path / "short.npz"), "--stratify"]))
    np.savez(tmp_path / "nocenter.npz", **{"loss_0.5_0": point})
    with pytest.raises(LandscapeError, match="no center"):
        validate.check_values(validate.parse_args(["--values", str(tmp_path / "nocenter.npz"), "--stratify"]))
