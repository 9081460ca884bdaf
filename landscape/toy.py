"""Optimizers on small functions whose answers are known in closed form, and their figures.

Four lessons, each exact:

* Gradient ascent on f(x) = 25 sin x - x^2 from x0 = -2 climbs to the nearest local
  maximum (x ~ -4.356, f ~ 4.45), not the global one (x ~ 1.454, f ~ 22.7): both are roots
  of f'(x) = 25 cos x - 2x, found with brentq.
* Gradient descent on f(x) = x + sin x. Here f'(x) = 1 + cos x >= 0: f never decreases
  to the right, has no minimum at all, and its critical points x = (2k+1)pi are
  inflection points (f'' = -sin x = 0 there). Every step moves left, so the iterates fall
  monotonically, for any learning rate, and from x0 = 2.5 they stop at -pi (with lr <= 1
  a step never passes it: e - lr(1 - cos e) > 0 for e > 0). Near -pi the gradient is
  1 - cos e ~ e^2/2 for e = x + pi, so e_{t+1} ~ e_t - lr e_t^2/2 and e_t ~ 2/(lr t):
  lr = 1 is fastest, 0.1 ten times slower, 0.01 crawls. No learning rate oscillates.
* The classic "too large a step oscillates" needs curvature: on f(x) = x^2, descent gives
  x_t = (1 - 2 lr)^t x0 exactly, so lr = 1 flips between x0 and -x0 forever (a 2-cycle),
  lr = 0.1 converges (0.8^t) and lr = 0.01 crawls (0.98^t).
* AdaGrad divides the step by the root of the accumulated squared gradients,
  lr / sqrt(sum g^2 + eps): that divisor only grows, so its steps only shrink.
* On f(x, y) = x^2/2 + 5 y^2 descent gives x_t = (1 - lr)^t x0, y_t = (1 - 10 lr)^t y0:
  with lr = 0.18 the steep axis zig-zags (factor -0.8) while the shallow one creeps (0.82).

And the optimizers of the real comparison (scripts/compare_optimizers.py) on 2-D problems, animated
(`TOY_PROBLEMS`, `toy_animation`): `optimize` applies torch's update rules for SGD (+momentum),
AdaGrad, RMSprop, Adam, RAdam and landscape.optim's CalibratedAdam to a closed-form gradient.

Numerics are NumPy; figures are `matplotlib.figure.Figure` objects (no pyplot state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import brentq

from landscape.errors import LandscapeError
from landscape.plot.animate import Path2D, PathAnimation

Array = np.ndarray


@dataclass(frozen=True)
class Function1D:
    """A scalar function with its derivative, both vectorized over NumPy arrays."""

    name: str
    f: Callable[[Array], Array]
    df: Callable[[Array], Array]


SINE_PARABOLA = Function1D("25 sin x - x^2", lambda x: 25 * np.sin(x) - x ** 2, lambda x: 25 * np.cos(x) - 2 * x)
X_PLUS_SIN = Function1D("x + sin x", lambda x: x + np.sin(x), lambda x: 1 + np.cos(x))
SQUARE = Function1D("x^2", lambda x: x ** 2, lambda x: 2 * x)

VALLEY_CURVATURE = (1.0, 10.0)  # f(x, y) = (a x^2 + b y^2) / 2


def valley(x: Array, y: Array) -> Array:
    """f(x, y) = x^2/2 + 5 y^2: an elongated bowl (condition number 10)."""
    a, b = VALLEY_CURVATURE
    return 0.5 * (a * x ** 2 + b * y ** 2)


def valley_grad(p: Array) -> Array:
    """Gradient of `valley` at points p (..., 2)."""
    return p * np.asarray(VALLEY_CURVATURE)


def gradient_descent(grad: Callable[[Array], Array], x0: float | Array, lr: float, steps: int,
                     ascent: bool = False) -> Array:
    """Iterates x_{t+1} = x_t -/+ lr * grad(x_t); returns (steps + 1, *shape of x0), x0 first."""
    if steps < 0 or not lr > 0:
        raise LandscapeError(f"steps must be >= 0 and lr > 0, got steps={steps}, lr={lr}")
    x = np.asarray(x0, dtype=np.float64)
    out = np.empty((steps + 1, *x.shape))
    out[0] = x
    sign = 1.0 if ascent else -1.0
    for t in range(steps):
        x = x + sign * lr * grad(x)
        out[t + 1] = x
    return out


def adagrad(grad: Callable[[Array], Array], x0: float | Array, lr: float, steps: int,
            eps: float = 1e-10) -> tuple[Array, Array]:
    """AdaGrad: G_t = G_{t-1} + g_t^2, x_{t+1} = x_t - lr g_t / sqrt(G_t + eps).

    Returns (iterates (steps + 1, ...), effective learning rates lr / sqrt(G_t + eps) (steps, ...)).
    """
    if steps < 0 or not lr > 0:
        raise LandscapeError(f"steps must be >= 0 and lr > 0, got steps={steps}, lr={lr}")
    x = np.asarray(x0, dtype=np.float64)
    acc = np.zeros_like(x)
    xs = np.empty((steps + 1, *x.shape))
    rates = np.empty((steps, *x.shape))
    xs[0] = x
    for t in range(steps):
        g = grad(x)
        acc = acc + g * g
        rates[t] = lr / np.sqrt(acc + eps)
        x = x - rates[t] * g
        xs[t + 1] = x
    return xs, rates


def critical_points(df: Callable[[Array], Array], lo: float, hi: float, n: int = 4001) -> Array:
    """Every root of df in [lo, hi] where df changes sign (on an n-point scan), refined with brentq."""
    xs = np.linspace(lo, hi, n)
    v = df(xs)
    roots = [brentq(df, a, b, xtol=1e-14) for a, b, fa, fb in zip(xs[:-1], xs[1:], v[:-1], v[1:])
             if np.sign(fa) != np.sign(fb)]
    return np.array(roots)


def sine_parabola_maxima() -> tuple[float, float]:
    """(the local maximum nearest x0 = -2 on its left, the global maximum) of 25 sin x - x^2.

    f'(-2) < 0, so ascent from -2 moves left; the first root of f' there with f'' < 0 is
    the local maximum. Beyond |x| = 6, -x^2 outweighs 25 sin x: the global maximum is
    among the roots in [-6, 6].
    """
    roots = critical_points(SINE_PARABOLA.df, -6.0, 6.0)
    maxima = roots[-25 * np.sin(roots) - 2 < 0]  # f'' < 0
    local = maxima[maxima < -2.0].max()
    best = maxima[np.argmax(SINE_PARABOLA.f(maxima))]
    return float(local), float(best)


# ---------------------------------------------------------------------------- figures

LEARNING_RATES = (1.0, 0.1, 0.01)
_COLORS = ("tab:red", "tab:green", "tab:blue")


def _curve(ax, fn: Function1D, lo: float, hi: float) -> None:
    xs = np.linspace(lo, hi, 800)
    ax.plot(xs, fn.f(xs), color="0.6", lw=1.2, zorder=1)
    ax.set_xlabel("x")
    ax.set_ylabel("f(x)")


def ascent_figure(lr: float = 0.01, steps: int = 300, x0: float = -2.0) -> Figure:
    """Gradient ascent on 25 sin x - x^2 from x0: it stops at a local maximum; the global one is marked."""
    xs = gradient_descent(SINE_PARABOLA.df, x0, lr, steps, ascent=True)
    local, best = sine_parabola_maxima()
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    _curve(ax, SINE_PARABOLA, -7, 5)
    ax.plot(xs, SINE_PARABOLA.f(xs), "o-", ms=3, lw=0.8, color="tab:blue", label=f"ascent, lr={lr:g}, {steps} steps")
    ax.plot([x0], [SINE_PARABOLA.f(x0)], "ks", label=f"start x0={x0:g}")
    ax.plot([local], [SINE_PARABOLA.f(local)], "v", color="tab:orange", ms=10,
            label=f"local max x={local:.3f}, f={SINE_PARABOLA.f(local):.2f} (reached)")
    ax.plot([best], [SINE_PARABOLA.f(best)], "*", color="tab:red", ms=14,
            label=f"global max x={best:.3f}, f={SINE_PARABOLA.f(best):.2f} (missed)")
    ax.set_title("gradient ascent on f(x) = 25 sin x - x²")
    ax.legend(fontsize=8, loc="lower center")
    return fig


def learning_rate_figure(steps: int = 30, x0: float = 2.5, x0_square: float = 1.0) -> Figure:
    """Descent with lr 1, 0.1, 0.01: on x + sin x (all fall monotonically to the inflection point -pi)
    and on x^2 (1 oscillates between +-x0, 0.1 converges, 0.01 crawls); iterates against steps."""
    fig = Figure(figsize=(12, 7.6), layout="constrained")
    axes = fig.subplots(2, 2)
    ax_f, ax_t = axes[0]
    _curve(ax_f, X_PLUS_SIN, -4.5, 3.5)
    ax_f.axvline(-np.pi, color="0.7", ls=":", lw=1)
    ax_f.annotate("x = -π: f' = 0, f'' = 0\n(inflection, no minimum)", (-np.pi, X_PLUS_SIN.f(-np.pi)),
                  xytext=(-2.2, -3.5), fontsize=8, arrowprops={"arrowstyle": "->", "color": "0.4"})
    for lr, c in zip(LEARNING_RATES, _COLORS):
        xs = gradient_descent(X_PLUS_SIN.df, x0, lr, steps)
        ax_f.plot(xs, X_PLUS_SIN.f(xs), "o-", ms=3, lw=0.8, color=c, label=f"lr={lr:g}")
        ax_t.plot(np.arange(steps + 1), xs, "o-", ms=3, lw=0.8, color=c, label=f"lr={lr:g}")
    ax_f.set_title(f"descent on f(x) = x + sin x from x0={x0:g}, {steps} steps")
    ax_f.legend(fontsize=8)
    ax_t.axhline(-np.pi, color="0.7", ls=":", lw=1)
    ax_t.set_xlabel("step t")
    ax_t.set_ylabel("x_t")
    ax_t.set_title("x + sin x: every rate falls monotonically to -π (error ~ 2/(lr·t))")
    ax_t.legend(fontsize=8)
    ax_q, ax_qt = axes[1]
    _curve(ax_q, SQUARE, -1.2, 1.2)
    for lr, c in zip(LEARNING_RATES, _COLORS):
        xs = gradient_descent(SQUARE.df, x0_square, lr, steps)
        ax_q.plot(xs, SQUARE.f(xs), "o-", ms=3, lw=0.8, color=c,
                  label=f"lr={lr:g}: x_t = ({1 - 2 * lr:g})^t x0")
        ax_qt.plot(np.arange(steps + 1), xs, "o-", ms=3, lw=0.8, color=c, label=f"lr={lr:g}")
    ax_q.set_title(f"descent on f(x) = x² from x0={x0_square:g}")
    ax_q.legend(fontsize=8)
    ax_qt.axhline(0, color="0.7", ls=":", lw=1)
    ax_qt.set_xlabel("step t")
    ax_qt.set_ylabel("x_t")
    ax_qt.set_title("x²: lr=1 oscillates between ±x0, 0.1 converges, 0.01 crawls")
    ax_qt.legend(fontsize=8)
    return fig


def adagrad_figure(lr: float = 1.0, steps: int = 60, x0: float = 2.5) -> Figure:
    """AdaGrad on x + sin x next to plain descent with the same lr: iterates and the per-step rate."""
    xs_gd = gradient_descent(X_PLUS_SIN.df, x0, lr, steps)
    xs, rates = adagrad(X_PLUS_SIN.df, x0, lr, steps)
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax_x, ax_r = fig.subplots(1, 2)
    t = np.arange(steps + 1)
    ax_x.plot(t, xs_gd, "o-", ms=2.5, lw=0.8, color="tab:red", label=f"gradient descent, lr={lr:g}")
    ax_x.plot(t, xs, "o-", ms=2.5, lw=0.8, color="tab:purple", label=f"AdaGrad, lr={lr:g}")
    ax_x.axhline(-np.pi, color="0.7", ls=":", lw=1)
    ax_x.set_xlabel("step t")
    ax_x.set_ylabel("x_t")
    ax_x.set_title(f"f(x) = x + sin x from x0={x0:g}")
    ax_x.legend(fontsize=8)
    ax_r.semilogy(np.arange(1, steps + 1), rates, "o-", ms=2.5, lw=0.8, color="tab:purple",
                  label="AdaGrad: lr / sqrt(Σ g²)")
    ax_r.axhline(lr, color="tab:red", lw=1, label="gradient descent: lr")
    ax_r.set_xlabel("step t")
    ax_r.set_ylabel("effective learning rate")
    ax_r.set_title("accumulated squared gradients only grow: the step only shrinks")
    ax_r.legend(fontsize=8)
    return fig


def field_figure(lr: float = 0.18, steps: int = 20, start: tuple[float, float] = (-4.0, 1.8)) -> Figure:
    """f(x, y) = x²/2 + 5y²: contours, the (negative) gradient field and a descent path."""
    xs = gradient_descent(valley_grad, np.array(start), lr, steps)  # (steps + 1, 2)
    fig = Figure(figsize=(7.6, 4.6), layout="constrained")
    ax = fig.add_subplot()
    gx, gy = np.meshgrid(np.linspace(-5, 5, 201), np.linspace(-2.5, 2.5, 101))
    cs = ax.contour(gx, gy, valley(gx, gy), levels=[0.25, 1, 2.5, 5, 10, 20, 40], cmap="viridis", linewidths=0.8)
    ax.clabel(cs, fontsize=7)
    qx, qy = np.meshgrid(np.linspace(-5, 5, 21), np.linspace(-2.5, 2.5, 11))
    g = valley_grad(np.stack([qx, qy], axis=-1))  # (11, 21, 2)
    ax.quiver(qx, qy, -g[..., 0], -g[..., 1], color="0.6", angles="xy", scale=400, width=0.0022)
    ax.plot(xs[:, 0], xs[:, 1], "o-", color="tab:red", ms=3.5, lw=1,
            label=f"descent, lr={lr:g}: x·({1 - lr:g})^t, y·({1 - 10 * lr:g})^t")
    ax.plot(*xs[0], "ks", label="start")
    ax.set_aspect("equal")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title("f(x, y) = x²/2 + 5y² with its negative gradient field")
    ax.legend(fontsize=8, loc="lower right")
    return fig


FIGURES: dict[str, Callable[[], Figure]] = {
    "toy_ascent": ascent_figure,
    "toy_learning_rates": learning_rate_figure,
    "toy_adagrad": adagrad_figure,
    "toy_gradient_field": field_figure,
}


# ---------------------------------------------------------------------------- optimizers on 2-D problems

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam", "radam", "sadam")  # as scripts/train.py --optimizer


def optimize(grad: Callable[[Array], Array], x0: float | Array, optimizer: str, lr: float, steps: int,
             momentum: float = 0.0, betas: tuple[float, float] = (0.9, 0.999), beta: float = 50.0) -> Array:
    """Iterates (steps + 1, *shape of x0) of one of scripts/train.py's optimizers on a closed-form gradient.

    The update rules are torch's (SGD with momentum buffer, Adagrad eps 1e-10, RMSprop alpha 0.99
    eps 1e-8, Adam and RAdam eps 1e-8) and landscape.optim.CalibratedAdam's ("sadam", softplus
    `beta`), with a constant learning rate and no weight decay.
    """
    if optimizer not in OPTIMIZERS:
        raise LandscapeError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if steps < 0 or not lr > 0:
        raise LandscapeError(f"steps must be >= 0 and lr > 0, got steps={steps}, lr={lr}")
    b1, b2 = betas
    x = np.array(x0, dtype=np.float64)
    out = np.empty((steps + 1, *x.shape))
    out[0] = x
    m, v, buf = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    rho_inf = 2 / (1 - b2) - 1
    for t in range(1, steps + 1):
        g = grad(x)
        if optimizer == "sgd":
            buf = momentum * buf + g if momentum else g
            x = x - lr * buf
        elif optimizer == "adagrad":
            v = v + g * g
            x = x - lr * g / (np.sqrt(v) + 1e-10)
        elif optimizer == "rmsprop":
            v = 0.99 * v + 0.01 * g * g
            step = g / (np.sqrt(v) + 1e-8)
            buf = momentum * buf + step if momentum else step
            x = x - lr * buf
        else:
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
            if optimizer == "adam":
                x = x - (lr / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + 1e-8)
            elif optimizer == "radam":
                rho = rho_inf - 2 * t * b2 ** t / bc2  # length of the approximated SMA
                if rho > 5:
                    rect = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                    x = x - (m / bc1) * lr * (np.sqrt(bc2) / (np.sqrt(v) + 1e-8)) * rect
                else:  # the first steps: momentum SGD, no adaptive denominator
                    x = x - (m / bc1) * lr
            else:  # sadam: Adam with softplus_beta(sqrt(v_hat)) as the denominator
                x = x - lr * (m / bc1) / (np.logaddexp(beta * np.sqrt(v / bc2), 0.0) / beta)
        out[t] = x
    return out


@dataclass(frozen=True)
class ToyRun:
    """One optimizer on a toy problem: its label, `optimize` name, learning rate and momentum."""

    label: str
    optimizer: str
    lr: float
    momentum: float = 0.0


@dataclass(frozen=True)
class Problem2D:
    """A 2-D function with its gradient, a start, the optimizers to run on it, and how to draw it."""

    name: str
    formula: str
    f: Callable[[Array, Array], Array]
    grad: Callable[[Array], Array]  # points (..., 2) -> gradients (..., 2)
    start: tuple[float, float]
    steps: int
    runs: tuple[ToyRun, ...]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    levels: tuple[float, ...]
    minima: tuple[tuple[float, float], ...]

    def paths(self) -> list[Path2D]:
        """Each run's iterates with f at every one of them (exact: the plane is the function's own)."""
        out = []
        for r in self.runs:
            xs = optimize(self.grad, np.array(self.start), r.optimizer, r.lr, self.steps, r.momentum)  # (steps + 1, 2)
            label = f"{r.label}, lr {r.lr:g}" + (f", momentum {r.momentum:g}" if r.momentum else "")
            out.append(Path2D(xs, label, losses=self.f(xs[:, 0], xs[:, 1]), name=r.label))
        return out


def rosenbrock(x: Array, y: Array) -> Array:
    """(1 - x)^2 + 100 (y - x^2)^2: a curved, flat-bottomed valley; minimum 0 at (1, 1)."""
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


def rosenbrock_grad(p: Array) -> Array:
    x, y = p[..., 0], p[..., 1]
    return np.stack([-2 * (1 - x) - 400 * x * (y - x ** 2), 200 * (y - x ** 2)], axis=-1)


def double_well(x: Array, y: Array) -> Array:
    """x^2/2 + (y^2 - 1)^2/4: minima 0 at (0, +-1), a saddle (f = 1/4) at the origin."""
    return 0.5 * x ** 2 + 0.25 * (y ** 2 - 1) ** 2


def double_well_grad(p: Array) -> Array:
    x, y = p[..., 0], p[..., 1]
    return np.stack([x, y ** 3 - y], axis=-1)


def _runs(sgd: float, momentum: float, adagrad: float, adam: float, radam: float) -> tuple[ToyRun, ...]:
    """The seed article's optimizers and SGD+momentum; Adam and CalibratedAdam share a learning rate."""
    return (ToyRun("SGD", "sgd", sgd), ToyRun("SGD+momentum", "sgd", momentum, 0.9),
            ToyRun("AdaGrad", "adagrad", adagrad), ToyRun("Adam", "adam", adam), ToyRun("RAdam", "radam", radam),
            ToyRun("CalibratedAdam", "sadam", adam))


TOY_PROBLEMS: dict[str, Problem2D] = {
    "valley": Problem2D("valley", "f(x, y) = x²/2 + 5y²", valley, valley_grad, (-4.0, 1.8), 60,
                        _runs(0.18, 0.03, 1.0, 0.3, 0.1), (-5.0, 2.0), (-2.0, 2.0),
                        (0.05, 0.25, 1, 2.5, 5, 10, 20, 40), ((0.0, 0.0),)),
    "rosenbrock": Problem2D("rosenbrock", "f(x, y) = (1 - x)² + 100 (y - x²)²", rosenbrock, rosenbrock_grad,
                            (-1.2, 1.0), 1000, _runs(1e-3, 2e-4, 0.5, 0.05, 0.005), (-1.5, 1.5), (-0.5, 1.75),
                            tuple(np.geomspace(0.05, 2000, 14).round(3)), ((1.0, 1.0),)),
    "saddle": Problem2D("saddle", "f(x, y) = x²/2 + (y² - 1)²/4", double_well, double_well_grad, (-2.5, 0.001), 120,
                        _runs(0.1, 0.02, 0.3, 0.1, 0.1), (-3.0, 1.0), (-1.6, 1.6),
                        tuple(np.geomspace(0.01, 4, 12).round(4)), ((0.0, -1.0), (0.0, 1.0))),
}


def toy_animation(problem: Problem2D, frames: int | None = None) -> PathAnimation:
    """The problem's optimizers moving together over its contours, f at each current point in the title."""
    gx, gy = np.meshgrid(np.linspace(*problem.xlim, 241), np.linspace(*problem.ylim, 241))  # (241, 241)
    aspect = (problem.ylim[1] - problem.ylim[0]) / (problem.xlim[1] - problem.xlim[0])
    return PathAnimation(problem.paths(), gx[0], gy[:, 0], problem.f(gx, gy), frames=frames,
                         title=f"{problem.formula}, from {problem.start}", loss_name="f at the current point",
                         levels=problem.levels, surface_label="f(x, y)", marks=problem.minima, equal_aspect=True,
                         figsize=(7.2, 1.7 + 5.0 * aspect))
