"""Curvature against closed forms and dense Hessians: a quadratic with a known spectrum, a tiny MLP
whose Hessian torch.func builds densely, the two HVP paths against each other, and the map's resume."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, hessian

from landscape.directions import DirectionSpec, make_directions, target_tensors
from landscape.engine.evaluate import PointSetter
from landscape.grid import Axis, Grid
from landscape.hessian.operator import (CurvatureMeasure, HessianOperator, compute_spectrum, curvature_directions, eig_ratio,
                               extreme_eigs, hutchinson_trace, lanczos, spectral_density, vflatten, vunflatten)
from landscape.storage import read_surface
from landscape.config import RunOptions
from landscape.sweep import sweep

EIGS = np.array([-0.7, -0.2, 0.0, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0])  # the quadratic's spectrum


def ce64(out, target):
    """Per-sample cross-entropy in the output's own precision (evaluate's losses compute in fp32)."""
    return F.cross_entropy(out, target, reduction="none")


class Quadratic(nn.Module):
    """loss(w) = 1/2 (w - c)ᵀ A (w - c) for every sample, with w a (3, 4) matrix flattened: Hessian A."""

    def __init__(self, A: torch.Tensor, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))
        self.register_buffer("A", A)
        self.register_buffer("c", torch.randn(12, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.w.reshape(-1) - self.c
        return (0.5 * d @ self.A @ d).expand(len(x))  # (N,): the same value per sample


def known_hessian(eigs=EIGS, seed=1):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.as_tensor(eigs)) @ Q.T, Q  # (12, 12), eigenvectors in Q's columns


def quadratic_op(A, method="auto"):
    model = Quadratic(A)
    x, y = torch.zeros(5, 1, dtype=torch.float64), torch.zeros(5, dtype=torch.long)
    return model, HessianOperator(model, x, y, loss_fn=lambda out, t: out, method=method, batch_size=2)


# ---------------------------------------------------------------------------- quadratic: closed forms


@pytest.mark.parametrize("solver", ["lanczos", "arpack"])
def test_quadratic_extreme_eigenvalues_and_vectors(solver):
    A, Q = known_hessian()
    _, op = quadratic_op(A)
    e = extreme_eigs(op, k_top=3, k_bottom=2, tol=1e-10, max_iter=200, vectors=True,
                     generator=torch.Generator().manual_seed(0), solver=solver)
    np.testing.assert_allclose(e.top, [4.0, 3.0, 2.0], atol=1e-8)
    np.testing.assert_allclose(e.bottom, [-0.7, -0.2], atol=1e-8)
    assert e.converged and e.max == pytest.approx(4.0) and e.min == pytest.approx(-0.7)
    for lam, v in zip([*e.top, *e.bottom], [*e.top_vectors, *e.bottom_vectors]):
        flat = vflatten(v)
        assert float(flat.norm()) == pytest.approx(1.0, abs=1e-8)
        assert float((A @ flat - lam * flat).norm()) < 1e-7


def test_quadratic_trace_hutchinson():
    A, _ = known_hessian()
    _, op = quadratic_op(A)
    est = hutchinson_trace(op, n_samples=400, generator=torch.Generator().manual_seed(0))
    assert abs(est.mean - EIGS.sum()) < 4 * est.stderr
    var = 2 * (float((A ** 2).sum()) - float((torch.diagonal(A) ** 2).sum()))  # Var zᵀAz, Rademacher z
    assert est.stderr == pytest.approx(np.sqrt(var / 400), rel=0.2)
    # a diagonal Hessian: zᵀAz = tr(A) for every Rademacher z, so one sample is exact
    _, op_diag = quadratic_op(torch.diag(torch.as_tensor(EIGS)))
    one = hutchinson_trace(op_diag, n_samples=1, generator=torch.Generator().manual_seed(0))
    assert one.mean == pytest.approx(EIGS.sum(), abs=1e-12) and one.samples == 1


def test_quadratic_spectral_density():
    A, _ = known_hessian()
    _, op = quadratic_op(A)
    sd = spectral_density(op, n_iter=len(EIGS), n_runs=200, generator=torch.Generator().manual_seed(0))
    assert sd.nodes.shape == sd.weights.shape == (200, len(EIGS))
    np.testing.assert_allclose(sd.nodes, np.broadcast_to(EIGS, sd.nodes.shape), atol=1e-8)  # full Krylov space
    np.testing.assert_allclose(sd.weights.sum(axis=1), 1.0, atol=1e-10)
    np.testing.assert_allclose(sd.weights.mean(axis=0), 1 / len(EIGS), atol=0.02)  # E[weight] = 1/n
    assert sd.mean_eigenvalue() == pytest.approx(EIGS.mean(), abs=0.1)
    sigma = 0.05
    lam = sd.grid(4000, sigma)
    rho = sd.density(lam, sigma)
    assert np.trapezoid(rho, lam) == pytest.approx(1.0, abs=1e-6)
    exact = np.exp(-0.5 * ((lam[:, None] - EIGS[None, :]) / sigma) ** 2).sum(1) / (len(EIGS) * sigma * np.sqrt(2 * np.pi))
    assert np.abs(rho - exact).max() < 0.25 * exact.max()


def test_quadratic_ratio_map_is_constant(tmp_path):
    A, _ = known_hessian()
    model, op = quadratic_op(A)
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0, ndim=2)
    setter = PointSetter([t for _, t in tensors], [dirs.x, dirs.y])
    measure = CurvatureMeasure(op, tol=1e-8, max_iter=50, seed=0)
    surf = sweep(setter, {"": measure}, Grid(Axis(-1, 1, 3), Axis(-1, 1, 3)), tmp_path / "q.h5", {"quadratic": 1}, run=RunOptions(progress=False))
    assert set(surf.metrics) == {"max_eig", "min_eig"} and surf.done.all()
    np.testing.assert_allclose(surf.metrics["max_eig"], 4.0, atol=1e-8)
    np.testing.assert_allclose(surf.metrics["min_eig"], -0.7, atol=1e-8)
    np.testing.assert_allclose(eig_ratio(surf.metrics["min_eig"], surf.metrics["max_eig"]), 0.7 / 4.0, atol=1e-8)


def test_hessian_directions_are_the_eigenvectors():
    A, Q = known_hessian()
    model, op = quadratic_op(A)
    dirs = curvature_directions(model, ["hessian", "hessian_min"], op, tol=1e-10, scale="unit")
    x, y = dirs.x[0].reshape(-1), dirs.y[0].reshape(-1)
    assert abs(float(x @ Q[:, -1])) == pytest.approx(1.0, abs=1e-8)  # top eigenvector (4.0)
    assert abs(float(y @ Q[:, 0])) == pytest.approx(1.0, abs=1e-8)  # bottom eigenvector (-0.7)
    assert dirs.attrs["eigenvalues"] == pytest.approx([4.0, -0.7])
    top2 = curvature_directions(model, ["hessian", "hessian"], op, tol=1e-10, scale="weights")
    w = float(model.w.detach().norm())
    assert float(top2.x[0].norm()) == pytest.approx(w) and float(top2.y[0].norm()) == pytest.approx(w)
    assert abs(float(top2.y[0].reshape(-1) @ Q[:, -2])) / w == pytest.approx(1.0, abs=1e-8)  # second (3.0)
    # two random axes are plot_surface's directions for the same seed
    rnd = curvature_directions(model, ["random", "random"], seed=3)
    assert rnd.fingerprint() == make_directions(target_tensors(model, "weights"), DirectionSpec(), 3, 2).fingerprint()


# ---------------------------------------------------------------------------- a tiny MLP: dense Hessian


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)  # eval mode must use these, not the batch's statistics
    bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(50, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (50,))
    return model.eval(), x, y


def dense_hessian(model, x, y, names):
    params = {n: p.detach() for n, p in model.named_parameters()}
    shapes = [params[n] for n in names]

    def loss(flat):
        ps = dict(zip(names, vunflatten(flat, shapes)))
        return ce64(functional_call(model, {**params, **ps}, (x,)), y).mean()

    return hessian(loss)(vflatten(shapes))  # (dim, dim)


@pytest.mark.parametrize("ignore", ["biasbn", "none"])
def test_tiny_mlp_lanczos_matches_dense_eigvalsh(ignore):
    model, x, y = tiny_mlp()
    op = HessianOperator(model, x, y, loss_fn=ce64, ignore=ignore, batch_size=16)
    expected_dim = 6 * 8 + 8 * 3 if ignore == "biasbn" else sum(p.numel() for p in model.parameters())
    assert op.dim == expected_dim
    H = dense_hessian(model, x, y, op.names)
    ev = torch.linalg.eigvalsh(H).numpy()
    assert ev[0] < -1e-3  # a real saddle direction: the test sees both ends
    e = extreme_eigs(op, 2, 2, tol=1e-9, max_iter=op.dim, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(e.top, ev[::-1][:2], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(e.bottom, ev[:2], rtol=1e-7, atol=1e-9)
    assert e.products < op.dim  # stopped on the tolerance, before the whole space


def test_tiny_mlp_hvp_paths_agree_with_each_other_and_the_dense_hessian():
    model, x, y = tiny_mlp()
    ops = {m: HessianOperator(model, x, y, loss_fn=ce64, method=m, batch_size=16) for m in ("func", "backprop", "auto")}
    H = dense_hessian(model, x, y, ops["func"].names)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = ops["func"].random_vector(g)
        ref = H @ v
        for m, op in ops.items():
            torch.testing.assert_close(op.matvec_flat(v), ref, rtol=1e-10, atol=1e-12, msg=m)
    assert ops["auto"].check["rel_diff"] < 1e-12
    assert ops["auto"].method == "backprop"  # the faster path on the CPU
    assert not any(p.grad is not None for p in model.parameters())  # nothing accumulated in .grad


def test_hvp_reads_the_current_weights_and_keeps_no_graph():
    model, x, y = tiny_mlp()
    op = HessianOperator(model, x, y, loss_fn=ce64, batch_size=16)
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0, ndim=1)
    setter = PointSetter([t for _, t in tensors], [dirs.x])
    v = op.random_vector(torch.Generator().manual_seed(1))
    setter.set([0.5])
    moved = op.matvec_flat(v)
    assert not moved.requires_grad
    torch.testing.assert_close(moved, dense_hessian(model, x, y, op.names) @ v, rtol=1e-10, atol=1e-12)
    setter.restore()
    assert not torch.allclose(op.matvec_flat(v), moved)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        op.matvec_flat(v)


def test_lanczos_stops_on_tolerance_and_window():
    A, _ = known_hessian(np.concatenate([[-0.01], np.linspace(0, 1e-3, 200), [1.0]]))  # λmin at a dense cluster
    v0 = torch.randn(len(A), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    r = lanczos(lambda v: A @ v, v0, max_iter=200, tol=1e-3)
    assert r.converged and r.iterations < 200
    assert r.ritz_values[0] == pytest.approx(-0.01, abs=1e-3) and r.ritz_values[-1] == pytest.approx(1.0, abs=1e-3)


# ---------------------------------------------------------------------------- maps: resume, the job


def test_map_resumes_like_the_loss_surface(tmp_path):
    model, x, y = tiny_mlp()
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0, ndim=2)
    grid = Grid(Axis(-0.5, 0.5, 3), Axis(-0.5, 0.5, 3))

    def run(path, **kw):
        op = HessianOperator(model, x, y, loss_fn=ce64, batch_size=16)
        setter = PointSetter([t for _, t in tensors], [dirs.x, dirs.y])
        return sweep(setter, {"": CurvatureMeasure(op, tol=1e-6, seed=0)}, grid, path, {"m": 1},
                     run=RunOptions(progress=False, **kw))

    whole = run(tmp_path / "whole.h5")
    part = run(tmp_path / "part.h5", max_points=4)
    assert int(part.done.sum()) == 4
    back = read_surface(tmp_path / "part.h5")
    assert int(back.done.sum()) == 4 and np.isnan(back.metrics["max_eig"][~back.done]).all()
    resumed = run(tmp_path / "part.h5")
    assert resumed.done.all()
    for m in ("max_eig", "min_eig"):
        np.testing.assert_array_equal(resumed.metrics[m], whole.metrics[m])
    assert np.ptp(whole.metrics["max_eig"]) > 0  # not a constant map: the points differ


def test_spectrum_of_the_quadratic():
    A, _ = known_hessian()
    _, op = quadratic_op(A)
    sp = compute_spectrum(op, top_k=3, tol=1e-10, trace_samples=300, n_iter=12, n_runs=20, seed=0)
    np.testing.assert_allclose(sp.top, [4.0, 3.0, 2.0], atol=1e-8)
    assert sp.bottom[0] == pytest.approx(-0.7, abs=1e-8) and sp.dim == 12
    assert abs(sp.trace.mean - EIGS.sum()) < 4 * sp.trace.stderr


@pytest.fixture(scope="module")
def hessian_script():
    """scripts/plot_hessian_eig.py imported in-process."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "plot_hessian_eig.py"
    spec = importlib.util.spec_from_file_location("plot_hessian_eig", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_map_spectrum_plots_resume_and_compare(hessian_script, digits_ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--ckpt", str(digits_ckpt), "--hessian-samples", "24", "--x=-0.5:0.5:2", "--y=-0.5:0.5:2",
            "--max-iter", "12", "--tol", "1e-2", "--spectrum", "--top-k", "2", "--trace-samples", "2",
            "--spectrum-iter", "6", "--out", str(out), "--no-progress", "--plot"]
    assert hessian_script.main(argv) == 0
    text = capsys.readouterr().out
    surf_file = out / "digits_r20_hessian_x-0.5_0.5_2_y-0.5_0.5_2.h5"
    assert str(surf_file) in text and "(4/4 points done)" in text and "s per point" in text
    surf = read_surface(surf_file)
    assert surf.done.all() and set(surf.metrics) == {"max_eig", "min_eig"}
    assert (surf.metrics["max_eig"] >= surf.metrics["min_eig"]).all()
    assert surf.settings["data"]["train"]["samples"] == 24 and surf.settings["tol"] == 1e-2
    # the same plane as plot_surface's for the seed: the directions compute_surface draws
    from landscape.directions import DirectionSpec, load_directions, make_directions, target_tensors
    from landscape.sources.checkpoint import build_model, load_checkpoint

    model, _, _ = build_model(load_checkpoint(digits_ckpt))
    drawn = make_directions(target_tensors(model, "weights"), DirectionSpec(), 0, 2)
    assert load_directions(out / "digits_r20_hessian_x-0.5_0.5_2_y-0.5_0.5_2_dirs.h5").fingerprint() == drawn.fingerprint()
    assert surf.settings["directions_sha256"] == drawn.fingerprint()
    for name in ("digits_r20_hessian_x-0.5_0.5_2_y-0.5_0.5_2_eig_ratio_2dheat.png",
                 "digits_r20_hessian_spectrum_n24_seed0.png"):
        assert (out / name).is_file()
    # a rerun resumes: nothing left to compute, the spectrum is reused
    assert hessian_script.main(argv) == 0
    text = capsys.readouterr().out
    assert "reusing the spectrum" in text and "points this run" not in text
    np.testing.assert_array_equal(read_surface(surf_file).metrics["max_eig"], surf.metrics["max_eig"])
    # other settings on the same file are refused, with the fix in the message
    with pytest.raises(SystemExit) as exc:
        hessian_script.main([*argv, "--tol", "1e-3"])
    assert exc.value.code == 2 and "--overwrite" in capsys.readouterr().err
    # figures from stored files only
    stem = tmp_path / "cmp"
    assert hessian_script.main(["--compare", str(surf_file), str(surf_file), "--titles", "a", "b",
                                "--compare-spectra", *[str(out / "digits_r20_hessian_spectrum_n24_seed0.h5")] * 2,
                                "--out", str(stem.parent), "--name", stem.name]) == 0
    assert (tmp_path / "cmp.png").is_file() and (tmp_path / "cmp_spectrum.png").is_file()
    assert "a: |min/max| center" in capsys.readouterr().out


def test_plots_of_a_1d_map(tmp_path):
    from landscape.plot.curvature import map_figure
    from landscape.storage import Surface

    surf = Surface(x=np.linspace(-1, 1, 5), y=None)
    surf.metrics = {"max_eig": np.array([4.0, 2.0, 1.0, 2.0, 0.0]), "min_eig": np.array([-2.0, -0.5, 0.1, -1.0, -1.0])}
    surf.done[:] = [True, True, True, True, False]
    np.testing.assert_allclose(eig_ratio(surf.metrics["min_eig"], surf.metrics["max_eig"])[:4], [0.5, 0.25, 0.1, 0.5])
    assert np.isnan(eig_ratio(np.array([1.0]), np.array([0.0])))[0]
    fig = map_figure(surf)
    assert len(fig.axes) == 2
    fig.savefig(tmp_path / "m.png")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_products_match_the_cpu():
    model, x, y = tiny_mlp()
    cpu = HessianOperator(model, x, y, loss_fn=ce64)
    v = cpu.random_vector(torch.Generator().manual_seed(0))
    ref = cpu.matvec_flat(v)
    model.cuda()
    gpu = HessianOperator(model, x.cuda(), y.cuda(), loss_fn=ce64)
    torch.testing.assert_close(gpu.matvec_flat(v.cuda()).cpu(), ref, rtol=1e-9, atol=1e-12)
    assert gpu.method == "func"


# ---------------------------------------------------------------------------- the loss convention


class TokenMLP(nn.Module):
    """(N, T, 3) -> class scores (N, 4, T): a per-token model for a per-token loss."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.l1, self.l2 = nn.Linear(3, 5).double(), nn.Linear(5, 4).double()

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x))).transpose(1, 2)


@pytest.mark.parametrize("kind", ["per_sample", "batch_mean", "per_token"])
def test_the_hessian_takes_the_surfaces_loss_convention(kind):
    """One convention for surfaces and curvature (`losses.per_sample`): per-sample values; a 0-dim
    batch mean weighted by its batch size (batches of 4, 4 and 2 here); trailing dimensions averaged
    per sample. The Hessian operator equals the dense Hessian of the surface's mean loss, written here
    as the mean over samples of each sample's loss (averaged over its tokens)."""
    from landscape.engine.evaluate import Evaluator

    g = torch.Generator().manual_seed(3)
    if kind == "per_token":
        model = TokenMLP()
        x = torch.randn(10, 6, 3, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (10, 6), generator=g)
        loss = ce64  # (N, T)
        per_sample = lambda out: ce64(out, y).mean(dim=1)  # noqa: E731
    else:
        torch.manual_seed(4)
        model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()
        x = torch.randn(10, 3, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (10,), generator=g)
        loss = ce64 if kind == "per_sample" else (lambda out, t: F.cross_entropy(out, t))  # 0-dim batch mean
        per_sample = lambda out: ce64(out, y)  # noqa: E731
    op = HessianOperator(model, x, y, loss_fn=loss, batch_size=4, ignore="none", method="backprop")
    params = dict(model.named_parameters())
    names = list(params)

    def surface_loss(flat):
        ps = dict(zip(names, vunflatten(flat, [params[n] for n in names])))
        return per_sample(functional_call(model, ps, (x,))).mean()

    flat0 = vflatten([p.detach() for p in params.values()])
    dense = hessian(surface_loss)(flat0)  # (dim, dim)
    assert dense.abs().max() > 1e-3
    for i in range(0, len(flat0), 7):
        e = torch.zeros_like(flat0)
        e[i] = 1.0
        torch.testing.assert_close(op.matvec_flat(e), dense[:, i], rtol=1e-9, atol=1e-12)
    # the surface's Evaluator takes the same mean
    got = Evaluator(model, x, y, loss, batch_size=4, metrics={})()[0]
    assert got == pytest.approx(float(per_sample(model(x)).mean()), rel=1e-12)
