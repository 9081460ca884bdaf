"""CalibratedAdam: Adam with a softplus-calibrated denominator (Tong, Liang and Bi, 2019, "Sadam").

Adam divides the bias-corrected momentum by sqrt(v_hat) + eps. Where v_hat is tiny the
quotient explodes and eps decides the step; Tong, Liang and Bi ("Calibrating the Adaptive
Learning Rate to Improve Convergence of ADAM", arXiv:1908.00700) replace the denominator by

    softplus_beta(sqrt(v_hat)) = log(1 + exp(beta * sqrt(v_hat))) / beta,

which is at least log(2) / beta (a smooth floor instead of eps) and tends to sqrt(v_hat) as
beta grows: the method is Adam without eps in the limit. The paper recommends beta = 50.
softplus_beta(s) - s = log(1 + exp(-beta s)) / beta lies in (0, log(2) / beta].
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch

from landscape.errors import LandscapeError


def softplus_beta(s: torch.Tensor, beta: float) -> torch.Tensor:
    """log(1 + exp(beta s)) / beta, without overflow (logaddexp) and without a cut-off threshold."""
    return torch.logaddexp(beta * s, torch.zeros_like(s)) / beta


class CalibratedAdam(torch.optim.Optimizer):
    """Adam whose denominator is softplus_beta(sqrt(v_hat)); `weight_decay` is L2 added to the gradient, as Adam's."""

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 beta: float = 50.0, weight_decay: float = 0.0):
        if not lr > 0:
            raise LandscapeError(f"CalibratedAdam lr must be > 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise LandscapeError(f"CalibratedAdam betas must lie in [0, 1), got {betas}")
        if not (beta > 0 and math.isfinite(beta)):
            raise LandscapeError(f"CalibratedAdam softplus beta must be a positive finite number, got {beta}")
        if not weight_decay >= 0:
            raise LandscapeError(f"CalibratedAdam weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "beta": beta, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise LandscapeError("CalibratedAdam does not support sparse gradients")
                if group["weight_decay"]:
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - b1)  # m = b1 m + (1 - b1) g
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = m / (1 - b1 ** t)
                v_hat = v / (1 - b2 ** t)
                p.addcdiv_(m_hat, softplus_beta(v_hat.sqrt(), group["beta"]), value=-group["lr"])
        return loss
