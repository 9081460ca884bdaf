"""Grid axes ("-1:1:51") and the grid's points in storage order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from landscape.errors import LandscapeError


@dataclass(frozen=True)
class Axis:
    """Evenly spaced coordinates from `min` to `max` inclusive, `num` of them."""

    min: float
    max: float
    num: int

    def __post_init__(self) -> None:
        if not isinstance(self.num, (int, np.integer)) or self.num < 1:
            raise LandscapeError(f"an axis needs at least 1 point, got num={self.num!r}")
        if not (np.isfinite(self.min) and np.isfinite(self.max)):
            raise LandscapeError(f"axis bounds must be finite numbers, got {self.min!r}:{self.max!r}")
        if self.num > 1 and self.max < self.min:
            raise LandscapeError(f"axis max must be >= min, got {self.min:g}:{self.max:g}; swap them")

    @classmethod
    def parse(cls, spec: str, name: str = "x") -> Axis:
        """Parse "min:max:num", e.g. "-1:1:51" (the reference code's syntax)."""
        parts = str(spec).split(":")
        if len(parts) != 3:
            raise LandscapeError(f"{name} must be min:max:num like -1:1:51, got {spec!r}", name)
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise LandscapeError(f"{name} bounds must be numbers (min:max:num like -1:1:51), got {spec!r}", name) from None
        try:
            num = int(parts[2])
        except ValueError:
            raise LandscapeError(f"{name} point count must be an integer (min:max:num like -1:1:51), got {spec!r}", name) from None
        try:
            return cls(lo, hi, num)
        except LandscapeError as e:
            raise LandscapeError(f"{name} {spec!r}: {e}", name) from None

    def coords(self) -> np.ndarray:
        """The coordinates, float64, shape (num,)."""
        return np.linspace(self.min, self.max, self.num)

    def spec(self) -> str:
        return f"{self.min:g}:{self.max:g}:{self.num}"


@dataclass(frozen=True)
class Grid:
    """A 1-D (y is None) or 2-D grid. 2-D arrays are (ny, nx): row = y, column = x."""

    x: Axis
    y: Axis | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.x.num,) if self.y is None else (self.y.num, self.x.num)

    @property
    def ndim(self) -> int:
        return 1 if self.y is None else 2

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def points(self) -> np.ndarray:
        """Every point's coefficients in flat storage order, shape (size, ndim)."""
        if self.y is None:
            return self.x.coords()[:, None]
        xx, yy = np.meshgrid(self.x.coords(), self.y.coords())  # (ny, nx) each
        return np.stack([xx.ravel(), yy.ravel()], axis=1)

    def corners(self) -> list[tuple[float, ...]]:
        """The grid's first and last points (opposite corners of a 2-D grid, the ends of a 1-D one):
        where the engine is checked against plain evaluation, with the center."""
        pts = self.points()
        return [tuple(float(c) for c in pts[0]), tuple(float(c) for c in pts[-1])]
