"""CalibratedAdam (landscape/optim.py) against closed forms and against torch's Adam."""

from __future__ import annotations

import math

import pytest
import torch

from landscape.errors import LandscapeError
from landscape.optim import CalibratedAdam, softplus_beta


def one_step(opt_cls, grad: torch.Tensor, p0: torch.Tensor, **kw) -> torch.Tensor:
    p = torch.nn.Parameter(p0.clone())
    opt = opt_cls([p], **kw)
    p.grad = grad.clone()
    opt.step()
    return p.detach()


def test_first_step_is_lr_g_over_softplus_of_abs_g():
    # step 1: m_hat = g, v_hat = g^2, so the update is -lr g / (log(1 + exp(beta |g|)) / beta)
    g = torch.tensor([3.0, -0.5, 1e-3, 0.0, -40.0], dtype=torch.float64)
    p0 = torch.linspace(-1, 1, 5, dtype=torch.float64)
    lr, beta = 0.01, 7.0
    got = one_step(CalibratedAdam, g, p0, lr=lr, beta=beta)
    expected = [float(p) - lr * float(x) * beta / math.log1p(math.exp(beta * abs(float(x)))) for p, x in zip(p0, g)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-13, atol=1e-15)


def test_softplus_floor_bounds_the_step_where_adam_takes_a_full_one():
    g = torch.tensor([1e-8], dtype=torch.float64)
    p0 = torch.zeros(1, dtype=torch.float64)
    adam = one_step(torch.optim.Adam, g, p0, lr=0.1)  # eps = 1e-8: step lr * g / (|g| + eps) = lr / 2
    cal = one_step(CalibratedAdam, g, p0, lr=0.1, beta=50.0)  # denominator >= log(2) / beta
    assert float(adam) == pytest.approx(-0.05)
    assert float(cal) == pytest.approx(-0.1 * 1e-8 * 50 / math.log(2), rel=1e-6)


def test_softplus_beta_is_within_log2_over_beta_of_its_argument():
    s = torch.tensor([0.0, 1e-4, 0.3, 5.0, 1e3], dtype=torch.float64)
    for beta in (1.0, 50.0, 1e4):
        gap = softplus_beta(s, beta) - s
        assert (gap >= 0).all() and (gap <= math.log(2) / beta + 1e-15).all()  # 0 only by underflow (s = 1e3)
    assert float(softplus_beta(torch.tensor(0.0), 50.0)) == pytest.approx(math.log(2) / 50)


def _trajectory(make_opt, steps: int = 60) -> torch.Tensor:
    """Parameters of a small least-squares fit after `steps` full-batch steps (float64)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 6, generator=g, dtype=torch.float64)
    b = torch.randn(32, generator=g, dtype=torch.float64)
    w = torch.nn.Parameter(torch.randn(6, generator=g, dtype=torch.float64))
    opt = make_opt([w])
    for _ in range(steps):
        opt.zero_grad()
        ((a @ w - b) ** 2).mean().backward()
        opt.step()
    return w.detach()


def test_approaches_adam_as_beta_grows():
    adam = _trajectory(lambda p: torch.optim.Adam(p, lr=0.01, eps=0.0))
    gaps = [float((_trajectory(lambda p: CalibratedAdam(p, lr=0.01, beta=beta)) - adam).abs().max())
            for beta in (1.0, 10.0, 100.0, 1e4)]
    assert all(a > b for a, b in zip(gaps, gaps[1:]))  # monotone in beta
    assert gaps[0] > 1e-3 and gaps[-1] < 1e-6


def test_weight_decay_is_l2_added_to_the_gradient():
    g = torch.tensor([0.4, -1.2], dtype=torch.float64)
    p0 = torch.tensor([2.0, -3.0], dtype=torch.float64)
    with_wd = one_step(CalibratedAdam, g, p0, lr=0.05, weight_decay=0.1)
    by_hand = one_step(CalibratedAdam, g + 0.1 * p0, p0, lr=0.05)
    torch.testing.assert_close(with_wd, by_hand, rtol=0, atol=0)


def test_trains_a_digits_classifier_from_the_training_loop():
    from landscape.sources.data import DEFAULT_NORMALIZATION, load_dataset
    from landscape.train import TrainConfig, train
    tr = load_dataset("digits", "train", n_samples=256, seed=0)
    norm = DEFAULT_NORMALIZATION["digits"]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    before = torch.nn.functional.cross_entropy(model(norm.apply(tr.x)), tr.y).item()
    result = train(model, tr, norm, TrainConfig(epochs=4, lr=0.01, optimizer="sadam", batch_size=32), progress=False)
    assert result["final"]["train_loss"] < before * 0.5


@pytest.mark.parametrize("kw, match", [({"lr": 0.0}, "lr"), ({"beta": 0.0}, "beta"), ({"betas": (1.0, 0.9)}, "betas"),
                                       ({"weight_decay": -1.0}, "weight_decay")])
def test_bad_hyperparameters_are_one_line_errors(kw, match):
    with pytest.raises(LandscapeError, match=match):
        CalibratedAdam([torch.nn.Parameter(torch.zeros(1))], **kw)
