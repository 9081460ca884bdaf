"""Surface statistics on closed forms: curvature sign, local minima, basin radius, masking, 1-D."""

from __future__ import annotations

import json

import numpy as np
import pytest

from landscape.analysis import stats_table_markdown, surface_stats
from landscape.errors import LandscapeError
from landscape.storage import Surface


def grid_surface(f, x: np.ndarray, y: np.ndarray, done: np.ndarray | None = None, acc=None) -> Surface:
    xx, yy = np.meshgrid(x, y)  # (ny, nx) each
    metrics = {"train_loss": f(xx, yy)}
    if acc is not None:
        metrics["train_acc"] = acc(xx, yy)
    done = np.ones(xx.shape, dtype=bool) if done is None else done
    return Surface(x=x, y=y, metrics=metrics, done=done)


X = np.linspace(-1.0, 1.0, 9)


@pytest.mark.parametrize(
    "f, expected",
    [
        (lambda x, y: x**2 + 2 * y**2, 0.0),  # bowl
        (lambda x, y: x**2 - y**2, 1.0),  # saddle
        (lambda x, y: x * y, 1.0),  # rotated saddle: f_xx = f_yy = 0, only the mixed term sees it
        (lambda x, y: x**2, 0.0),  # flat valley: eigenvalue 0 up to rounding is not negative
        (lambda x, y: 0.3 * x - 0.7 * y + 1.0, 0.0),  # plane
        (lambda x, y: -(x**2) - y**2, 1.0),  # cap
    ],
)
def test_neg_curvature_fraction_exact(f, expected: float) -> None:
    stats = surface_stats(grid_surface(f, X, X), threshold=np.inf)
    assert stats["neg_curvature_fraction"] == expected
    assert stats["n_curvature_points"] == 7 * 7  # every interior point


def test_neg_curvature_non_square_grid_uses_actual_spacings() -> None:
    x = np.linspace(-1.0, 1.0, 7)  # hx = 1/3
    y = np.linspace(-0.1, 0.3, 5)  # hy = 0.1, a different step and an off-centre range
    bowl = surface_stats(grid_surface(lambda a, b: a**2 + 2 * b**2, x, y), threshold=np.inf)
    assert bowl["neg_curvature_fraction"] == 0.0
    assert bowl["n_curvature_points"] == 5 * 3
    # a*b + 0.2(a² + b²): eigenvalues 0.4 ± 1, one negative
    assert surface_stats(grid_surface(lambda a, b: a * b + 0.2 * (a**2 + b**2), x, y),
                         threshold=np.inf)["neg_curvature_fraction"] == 1.0
    # unevenly spaced x: a tilted bowl. The uniform formula (f+ - 2 f0 + f-) / h² would see the
    # tilt 5a as curvature (5 (0 - 2(-0.2) - 0.7) < 0 at a = -0.2) and call the bowl a saddle.
    uneven = np.array([-1.0, -0.7, -0.2, 0.0, 0.1, 0.5, 1.0])
    tilted = surface_stats(grid_surface(lambda a, b: a**2 + 5 * a + 3 * b**2, uneven, y), threshold=np.inf)
    assert tilted["neg_curvature_fraction"] == 0.0


def test_neg_curvature_counts_only_below_threshold() -> None:
    # saddle where x < 0 (loss small), bowl where x > 0 (loss large): only the saddle half counts
    x = np.linspace(-1.0, 1.0, 11)
    f = lambda a, b: np.where(a < 0, a**2 - b**2 + 1, a**2 + b**2 + 100)  # noqa: E731
    stats = surface_stats(grid_surface(f, x, x), threshold=10.0)
    assert stats["neg_curvature_fraction"] == 1.0
    assert stats["n_curvature_points"] == 4 * 9  # x = -0.8, -0.6, -0.4, -0.2; x >= 0 is above 10


def test_local_minima_two_wells() -> None:
    x = np.linspace(-1.0, 1.0, 21)  # contains ±0.5
    y = np.linspace(-1.0, 1.0, 11)
    stats = surface_stats(grid_surface(lambda a, b: (a**2 - 0.25) ** 2 + b**2, x, y))
    assert stats["n_local_minima"] == 2


def test_basin_radius_of_bowl() -> None:
    x = np.linspace(-2.0, 2.0, 41)  # spacing 0.1
    y = np.linspace(-1.5, 1.5, 31)
    stats = surface_stats(grid_surface(lambda a, b: a**2 + b**2, x, y))
    b1 = stats["basin_width"]["1"]
    for k in ("+x", "-x", "+y", "-y", "mean"):
        assert 1.0 <= b1[k] <= 1.0 + 0.1 + 1e-12, (k, b1[k])
    assert b1["open"] == []
    b10 = stats["basin_width"]["10"]  # never reached on this grid: lower bounds, to the edges
    assert (b10["+x"], b10["-x"], b10["+y"], b10["-y"]) == pytest.approx((2.0, 2.0, 1.5, 1.5))
    assert b10["open"] == ["+x", "-x", "+y", "-y"]


def test_center_values_and_accuracy() -> None:
    x = np.linspace(-1.0, 1.0, 5)
    y = np.linspace(-0.4, 0.8, 4)  # nearest to 0: y = 0.0 (index 1)
    surf = grid_surface(lambda a, b: a**2 + b**2 + 0.5, x, y, acc=lambda a, b: 1.0 - 0.1 * (a**2 + b**2))
    stats = surface_stats(surf)
    assert stats["center"] == pytest.approx([0.0, 0.0])
    assert stats["center_loss"] == pytest.approx(0.5)
    assert stats["center_acc"] == pytest.approx(1.0)
    assert stats["basin_width"]["1"]["+y"] == pytest.approx(0.8)  # 0.4² + 0.5 < 1, 0.8² + 0.5 >= 1
    json.dumps(stats)  # plain Python values only
    no_acc = Surface(x=x, y=y, metrics={"train_loss": surf.metrics["train_loss"]}, done=surf.done)
    assert surface_stats(no_acc)["center_acc"] is None


def test_not_done_points_are_excluded() -> None:
    x = np.linspace(-1.0, 1.0, 9)
    done = np.ones((9, 9), dtype=bool)
    done[2, 2] = False  # a hole in the bowl
    surf = grid_surface(lambda a, b: a**2 + b**2, x, x, done=done)
    surf.metrics["train_loss"][2, 2] = -5.0  # a stale value there must not count
    stats = surface_stats(surf, threshold=np.inf)
    assert stats["n_local_minima"] == 1
    assert stats["neg_curvature_fraction"] == 0.0
    assert stats["n_curvature_points"] == 49 - 9  # every stencil touching (2, 2)
    assert stats["n_done"] == 80
    done[4, 4] = False  # the centre itself
    stats = surface_stats(grid_surface(lambda a, b: a**2 + b**2, x, x, done=done))
    assert stats["center_loss"] is None and stats["basin_width"]["1"]["mean"] is None


@pytest.mark.parametrize("bad", [np.inf, np.nan, -np.inf])
def test_non_finite_values_count_as_high(bad: float) -> None:
    x = np.linspace(-1.0, 1.0, 9)
    surf = grid_surface(lambda a, b: a**2 + b**2, x, x)
    surf.metrics["train_loss"][4, 6] = bad  # on the +x half-line at x = 0.5
    surf.metrics["train_loss"][0, 0] = bad  # a corner
    stats = surface_stats(surf, threshold=np.inf)
    assert stats["basin_width"]["1"]["+x"] == pytest.approx(0.5)  # the diverged point ends the basin
    assert stats["n_local_minima"] == 1
    assert stats["n_curvature_points"] == 49 - 9 - 1
    assert stats["neg_curvature_fraction"] == 0.0


def test_one_dimensional_surface() -> None:
    x = np.linspace(-1.0, 1.0, 21)  # spacing 0.1
    f = (x**2 - 0.25) ** 2 + 0.9  # two wells at ±0.5, a bump at 0; center loss 0.9625
    surf = Surface(x=x, y=None, metrics={"train_loss": f, "train_acc": 1 - f / 10}, done=np.ones(21, dtype=bool))
    stats = surface_stats(surf, threshold=np.inf)
    assert stats["center"] == [0.0]
    assert stats["center_loss"] == pytest.approx(0.9625)
    assert stats["center_acc"] == pytest.approx(1 - 0.09625)
    assert stats["n_local_minima"] == 2
    # f'' = 12x² - 1 < 0 for |x| < 0.289: interior points -0.2..0.2 of 19
    assert stats["n_curvature_points"] == 19
    assert stats["neg_curvature_fraction"] == pytest.approx(5 / 19)
    b = stats["basin_width"]["1"]  # f >= 1 first at |x| = 0.8 (f(0.7) = 0.9576, f(0.8) = 1.0521)
    assert set(b) == {"+x", "-x", "mean", "open"}
    assert (b["+x"], b["-x"]) == pytest.approx((0.8, 0.8))


def test_bad_input() -> None:
    surf = grid_surface(lambda a, b: a + b, X, X)
    with pytest.raises(LandscapeError, match="test_loss"):
        surface_stats(surf, metric="test_loss")
    with pytest.raises(ValueError, match="threshold"):
        surface_stats(surf, threshold=np.nan)


def test_markdown_table() -> None:
    x = np.linspace(-2.0, 2.0, 9)
    rows = [
        {"model": "bowl", **surface_stats(grid_surface(lambda a, b: a**2 + b**2, x, x, acc=lambda a, b: 0 * a + 0.999))},
        {"model": "saddle", **surface_stats(grid_surface(lambda a, b: a**2 - b**2 + 0.5, x, x))},
    ]
    md = stats_table_markdown(rows)
    lines = md.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| model |")
    assert "basin radius (loss < 1)" in lines[0] and "basin radius (loss < 10)" in lines[0]
    assert lines[2].startswith("| bowl | 0 | 99.9 % | 0.000 | 1 |")
    assert "≥2.00" in lines[2]  # loss < 10 on the whole grid: a lower bound
    assert lines[3].startswith("| saddle | 0.5 | n/a | ")
