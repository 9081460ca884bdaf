"""Toy optimizers against closed forms (landscape/toy.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from landscape.errors import LandscapeError
from landscape.toy import (FIGURES, SINE_PARABOLA, SQUARE, X_PLUS_SIN, adagrad, gradient_descent,
                           sine_parabola_maxima, valley_grad)


def test_ascent_from_minus_two_stops_at_the_local_not_the_global_maximum():
    xs = gradient_descent(SINE_PARABOLA.df, -2.0, 0.01, 400, ascent=True)
    local = brentq(SINE_PARABOLA.df, -5.0, -4.0)  # f'(x) = 25 cos x - 2x = 0 left of -2
    best = brentq(SINE_PARABOLA.df, 1.0, 2.0)
    assert xs[-1] == pytest.approx(local, abs=1e-10)
    assert local == pytest.approx(-4.3564, abs=1e-4) and best == pytest.approx(1.4542, abs=1e-4)
    assert -25 * np.sin(local) - 2 < 0  # f'' < 0: a maximum
    assert np.all(np.diff(SINE_PARABOLA.f(xs)) >= -1e-12)  # every ascent step climbs (to rounding)
    grid = np.linspace(-20, 20, 400001)  # the global maximum, by brute force
    assert grid[np.argmax(SINE_PARABOLA.f(grid))] == pytest.approx(best, abs=1e-3)
    assert SINE_PARABOLA.f(best) > SINE_PARABOLA.f(local) + 18
    assert sine_parabola_maxima() == pytest.approx((local, best), abs=1e-12)


@pytest.mark.parametrize("lr", [1.0, 0.1, 0.01])
def test_x_plus_sin_descent_falls_monotonically_to_minus_pi_at_rate_2_over_lr_t(lr):
    # f'(x) = 1 + cos x >= 0: every step moves left; near -pi, e_{t+1} = e_t - lr(1 - cos e_t) ~ e_t - lr e_t^2/2
    steps = 200_000
    xs = gradient_descent(X_PLUS_SIN.df, 2.5, lr, steps)
    assert np.all(np.diff(xs) <= 0)
    e = xs + np.pi
    assert np.all(e > 0)  # never passes the inflection point -pi
    assert e[-1] * lr * steps / 2 == pytest.approx(1.0, rel=0.02)  # e_t ~ 2/(lr t)
    assert X_PLUS_SIN.df(-np.pi) == pytest.approx(0, abs=1e-15) and -np.sin(-np.pi) == pytest.approx(0, abs=1e-15)


def test_no_learning_rate_cycles_on_x_plus_sin():
    # a 2-cycle a -> b -> a would need (1 + cos a) + (1 + cos b) = 0, i.e. both fixed points
    for lr in (1.0, 1.5, 3.0):
        xs = gradient_descent(X_PLUS_SIN.df, 2.5, lr, 500)
        assert np.all(np.diff(xs) <= 0)


def test_square_descent_is_geometric_and_lr_one_is_an_exact_two_cycle():
    for lr in (1.0, 0.1, 0.01):
        xs = gradient_descent(SQUARE.df, 1.0, lr, 50)
        np.testing.assert_allclose(xs, (1 - 2 * lr) ** np.arange(51), rtol=1e-12, atol=0)
    xs = gradient_descent(SQUARE.df, 1.0, 1.0, 6)
    assert xs.tolist() == [1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0]


def test_adagrad_rate_is_lr_over_root_of_accumulated_squares_and_only_shrinks():
    xs, rates = adagrad(X_PLUS_SIN.df, 2.5, 1.0, 80, eps=0.0)
    g = X_PLUS_SIN.df(xs[:-1])
    np.testing.assert_allclose(rates, 1.0 / np.sqrt(np.cumsum(g ** 2)), rtol=1e-12)
    np.testing.assert_allclose(np.diff(xs), -rates * g, rtol=1e-12, atol=1e-15)
    assert np.all(np.diff(rates) <= 0)
    assert rates[0] == pytest.approx(1.0 / abs(1 + np.cos(2.5)))


def test_valley_descent_matches_its_closed_form():
    lr, start = 0.18, np.array([-4.0, 1.8])
    xs = gradient_descent(valley_grad, start, lr, 20)
    t = np.arange(21)
    np.testing.assert_allclose(xs[:, 0], start[0] * (1 - lr) ** t, rtol=1e-12)
    np.testing.assert_allclose(xs[:, 1], start[1] * (1 - 10 * lr) ** t, rtol=1e-12)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(LandscapeError, match="lr > 0"):
        gradient_descent(SQUARE.df, 1.0, 0.0, 5)
    with pytest.raises(LandscapeError, match="steps must be >= 0"):
        adagrad(SQUARE.df, 1.0, 0.1, -1)


def test_toy_script_writes_every_figure(tmp_path):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location(
        "toy_optimizers", Path(__file__).resolve().parents[1] / "scripts" / "toy_optimizers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--out", str(tmp_path)])
    for name in FIGURES:
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
        assert (tmp_path / f"{name}.pdf").is_file()
