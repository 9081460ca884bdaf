import numpy as np
import pytest

from landscape.errors import LandscapeError, as_flags
from landscape.grid import Axis, Grid


@pytest.mark.parametrize("spec, expected", [
    ("-1:1:5", [-1, -0.5, 0, 0.5, 1]),
    ("0:1:3", [0, 0.5, 1]),            # a 0 bound is valid
    ("0:0:1", [0]),                    # a single point is valid
    ("-0.5:1.5:1", [-0.5]),
    ("1e-1:2e-1:2", [0.1, 0.2]),
])
def test_axis_parse(spec, expected):
    np.testing.assert_allclose(Axis.parse(spec).coords(), expected)


@pytest.mark.parametrize("spec, words", [
    ("-1:1", "min:max:num"),
    ("-1:1:5:7", "min:max:num"),
    ("a:1:5", "numbers"),
    ("-1:1:2.5", "integer"),
    ("-1:1:0", "at least 1"),
    ("1:-1:5", "swap"),
    ("nan:1:3", "finite"),
])
def test_axis_parse_errors_are_one_line(spec, words):
    with pytest.raises(LandscapeError) as e:
        Axis.parse(spec, "y")
    msg = str(e.value)
    # the library names its argument; the command line shows the flag
    assert words in msg and msg.startswith("y ") and "--" not in msg and "\n" not in msg
    assert e.value.argument == "y" and as_flags(e.value).startswith("--y ")


def test_grid_points_are_in_row_major_yx_order():
    g = Grid(Axis(0, 4, 5), Axis(-1, 1, 3))
    assert g.shape == (3, 5) and g.size == 15 and g.ndim == 2
    pts = g.points()
    assert pts.shape == (15, 2)
    # flat index i -> (iy, ix) = divmod(i, nx): x varies fastest, as in np.meshgrid(x, y)
    for i, (x, y) in enumerate(pts):
        iy, ix = divmod(i, 5)
        assert x == g.x.coords()[ix] and y == g.y.coords()[iy]


def test_grid_1d():
    g = Grid(Axis(-1, 1, 4))
    assert g.shape == (4,) and g.ndim == 1
    np.testing.assert_array_equal(g.points()[:, 0], np.linspace(-1, 1, 4))
