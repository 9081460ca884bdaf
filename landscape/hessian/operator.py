"""Curvature of the loss: Hessian-vector products over a data set, extreme eigenvalues (Lanczos),
the trace (Hutchinson), the spectral density (stochastic Lanczos quadrature), Hessian eigenvector
directions, and the per-point measure behind Li et al.'s |λmin/λmax| maps (their Fig. 7).

A vector is a list of tensors shaped like the selected parameters (PyHessian's small algebra;
the helpers below return new tensors). Lanczos keeps its basis as flat vectors, one row of
`dim` numbers per step, on the model's device.

The Hessian is that of the *mean* loss over the whole data set, with the surface's loss convention
(`landscape.losses.per_sample`: per-sample values; a 0-dim batch mean weighted by its batch size;
trailing dimensions averaged per sample), at the model's current weights,
in eval mode (BatchNorm uses its running statistics), with respect to the parameters that the
directions move: with `ignore="biasbn"` the tensors with more than one dimension. (The reference
code differentiates the sum of per-batch mean losses, which scales with the number of batches.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from scipy.linalg import eigh_tridiagonal
from torch.func import functional_call, grad, jvp

from landscape.directions import IGNORES, Directions, random_direction
from landscape.errors import LandscapeError
from landscape.engine.evaluate import LossFn, cross_entropy, retry_halving_batch, tf32_mode
from landscape.losses import per_sample

Vector = list[torch.Tensor]

HVP_METHODS = ("auto", "func", "backprop")
AXIS_KINDS = ("random", "hessian", "hessian_min")  # what an axis of a curvature map runs along
SCALES = ("weights", "unit")  # length of a Hessian eigenvector direction
DEFAULT_HVP_BATCH = 256  # CPU: the fastest of 64, 128, 256 for ResNet-56 on the digits (BENCHMARKS.md)
DEFAULT_HVP_BATCH_CUDA = 2048  # halved on out-of-memory until it fits
# Relative difference allowed between the two HVP paths (checked once per operator). Measured on
# the digits ResNet-56 in fp32: 1.6e-4 (the trained model's loss is ~5e-4, so the gradient is a
# sum of small, cancelling terms); a wrong path differs by O(1).
HVP_CHECK_RTOL = {torch.float32: 1e-2, torch.float64: 1e-8}


# ---------------------------------------------------------------------------- vector algebra


def vdot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """<a, b> summed in float64."""
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def vnorm(a: Sequence[torch.Tensor]) -> float:
    return math.sqrt(vdot(a, a))


def vflatten(a: Sequence[torch.Tensor]) -> torch.Tensor:
    """One flat tensor (dim,) holding every tensor of `a` in order."""
    return torch.cat([t.reshape(-1) for t in a])


def vunflatten(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> Vector:
    """Split a flat tensor (dim,) into tensors shaped like `like` (views of `flat`)."""
    out, i = [], 0
    for t in like:
        out.append(flat[i:i + t.numel()].view(t.shape))
        i += t.numel()
    if i != flat.numel():
        raise ValueError(f"a flat vector of {flat.numel()} numbers does not fit tensors holding {i}")
    return out


# ---------------------------------------------------------------------------- Hessian-vector products


def hessian_parameters(model: nn.Module, ignore: str = "biasbn") -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs the Hessian is taken over: those a direction with this `ignore` moves.

    `ignore="biasbn"` keeps tensors with more than one dimension (biases and BN parameters stay
    fixed, as in the directions); `"none"` keeps every floating-point parameter.
    """
    if ignore not in IGNORES:
        raise LandscapeError(f"ignore must be one of {', '.join(IGNORES)}, got {ignore!r}")
    pairs = [(n, p) for n, p in model.named_parameters()
             if p.is_floating_point() and (ignore == "none" or p.dim() > 1)]
    if not pairs:
        raise LandscapeError(f"the model has no parameter to take the Hessian over with ignore={ignore!r}")
    return pairs


class HessianOperator:
    """v -> H v for the Hessian of the mean loss over a resident data set, at the model's current weights.

    The parameters are read at every product, so a `PointSetter` moving the model in place
    moves the operator too. `method`: `func` (torch.func forward-over-reverse, `jvp` of
    `grad`), `backprop` (double backward) or `auto`: at the first product both run and must
    agree (an error otherwise); then `func` is kept on accelerators and `backprop` on the CPU
    (where it is faster), or `backprop` wherever `func` fails. Products are summed over
    batches on the data's device, in fp32 (TF32 off) for an fp32 model.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn = cross_entropy,
                 ignore: str = "biasbn", batch_size: int | None = None, method: str = "auto"):
        if method not in HVP_METHODS:
            raise LandscapeError(f"method must be one of {', '.join(HVP_METHODS)}, got {method!r}", "method")
        if len(x) != len(y):
            raise LandscapeError(f"x has {len(x)} samples but y has {len(y)}; give one target per sample")
        if len(x) == 0:
            raise LandscapeError("the curvature data set is empty (x has no samples); give it at least one")
        pairs = hessian_parameters(model, ignore)
        self.model = model
        self.names = [n for n, _ in pairs]
        self.params = [p for _, p in pairs]  # the model's own tensors: always the current weights
        self.x, self.y, self.loss_fn = x, y, loss_fn
        default = DEFAULT_HVP_BATCH if x.device.type == "cpu" else DEFAULT_HVP_BATCH_CUDA
        self.batch_size = min(len(x), default) if batch_size is None else batch_size
        if self.batch_size < 1:
            raise LandscapeError(f"batch_size must be >= 1, got {batch_size}", "batch_size")
        self.method = method
        self.dim = sum(p.numel() for p in self.params)
        self.count = 0  # Hessian-vector products so far
        self.seconds = 0.0  # time spent in them
        self.check: dict[str, Any] | None = None  # the auto check's outcome, once made

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    @property
    def device(self) -> torch.device:
        return self.params[0].device

    def __len__(self) -> int:
        return len(self.y)

    def weights(self) -> Vector:
        """A copy of the current values of the selected parameters."""
        return [p.detach().clone() for p in self.params]

    def random_vector(self, generator: torch.Generator | None = None, kind: str = "gaussian") -> torch.Tensor:
        """A flat random vector (dim,) drawn on the CPU from `generator` (the same on every device)."""
        if kind == "gaussian":
            v = torch.randn(self.dim, generator=generator, dtype=torch.float64)
        elif kind == "rademacher":
            v = torch.randint(0, 2, (self.dim,), generator=generator).double().mul_(2).sub_(1)
        else:
            raise ValueError(f"kind must be gaussian or rademacher, got {kind!r}")
        return v.to(device=self.device, dtype=self.dtype)

    def matvec(self, v: Sequence[torch.Tensor]) -> Vector:
        """H v for v shaped like the selected parameters; new tensors."""
        if len(v) != len(self.params) or any(a.shape != p.shape for a, p in zip(v, self.params)):
            raise ValueError("v must hold one tensor per selected parameter, shaped like it")
        if torch.is_inference_mode_enabled():
            raise RuntimeError("Hessian-vector products need autograd; call them outside torch.inference_mode()")
        v = [a.to(device=p.device, dtype=p.dtype) for a, p in zip(v, self.params)]
        start = time.perf_counter()
        self.model.eval()
        with torch.enable_grad(), tf32_mode(self.device, allow=False):
            out = retry_halving_batch(self, lambda: self._product(v))
        self.count += 1
        self.seconds += time.perf_counter() - start
        return [t.detach() for t in out]

    __call__ = matvec

    def matvec_flat(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat vector (dim,); a new flat tensor."""
        return vflatten(self.matvec(vunflatten(v, self.params)))

    def _product(self, v: Vector) -> Vector:
        if self.method == "func":
            return self._hvp_func(v)
        if self.method == "backprop":
            return self._hvp_backprop(v)
        # auto: the first product runs both paths and compares them
        try:
            hv_func = self._hvp_func(v)
        except torch.cuda.OutOfMemoryError:
            raise  # matvec halves the batch and retries
        except (RuntimeError, NotImplementedError) as e:  # an op without a forward-mode derivative
            self.method = "backprop"
            self.check = {"method": "backprop", "func_error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            return self._hvp_backprop(v)
        hv_back = self._hvp_backprop(v)
        diff = math.sqrt(sum(float((a.double() - b.double()).pow(2).sum()) for a, b in zip(hv_func, hv_back)))
        scale = max(vnorm(hv_back), 1e-30)
        rtol = HVP_CHECK_RTOL.get(self.dtype, 1e-2)
        if not diff <= rtol * scale:
            raise RuntimeError(f"the torch.func and double-backprop Hessian-vector products differ by "
                               f"{diff / scale:.2e} (relative; allowed {rtol:.0e}); pass --hvp backprop or "
                               "--hvp func to use one path, and report this model")
        # double backprop was the faster on the CPU, forward-over-reverse on GPUs (BENCHMARKS.md, Curvature)
        self.method = "backprop" if self.device.type == "cpu" else "func"
        self.check = {"method": self.method, "rel_diff": diff / scale, "rtol": rtol}
        return hv_func if self.method == "func" else hv_back

    def _batches(self):
        for i in range(0, len(self.x), self.batch_size):
            yield self.x[i:i + self.batch_size], self.y[i:i + self.batch_size]

    def _batch_loss(self, ps: Sequence[torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """This batch's share of the mean loss: the sum of its per-sample losses / N, per the surface's
        convention (`losses.per_sample`: a 0-dim batch mean counts for the batch's samples, trailing
        dimensions are averaged per sample), so the Hessian is that of the surface's loss."""
        frozen = {n: p.detach() for n, p in self.model.named_parameters()}  # no graph through the others
        out = functional_call(self.model, {**frozen, **dict(zip(self.names, ps))}, (xb,))
        values, _ = per_sample(self.loss_fn(out, yb), len(xb))
        return values.sum() / len(self.x)

    def _hvp_func(self, v: Vector) -> Vector:
        primals = tuple(p.detach() for p in self.params)
        total = [torch.zeros_like(p) for p in primals]
        for xb, yb in self._batches():
            g = grad(lambda ps: self._batch_loss(ps, xb, yb))
            _, hv = jvp(g, (primals,), (tuple(v),))  # forward-over-reverse
            torch._foreach_add_(total, list(hv))
        return total

    def _hvp_backprop(self, v: Vector) -> Vector:
        ps = [p.detach().requires_grad_() for p in self.params]  # leaves sharing the model's storage
        total = [torch.zeros_like(p) for p in ps]
        for xb, yb in self._batches():
            loss = self._batch_loss(ps, xb, yb)
            g = torch.autograd.grad(loss, ps, create_graph=True, allow_unused=True)
            live = [(i, gi) for i, gi in enumerate(g) if gi is not None and gi.requires_grad]
            if not live:
                continue
            hv = torch.autograd.grad([gi for _, gi in live], [ps[i] for i, _ in live],
                                     grad_outputs=[v[i] for i, _ in live], allow_unused=True)
            for (i, _), h in zip(live, hv):
                if h is not None:
                    total[i].add_(h)
        return total


# ---------------------------------------------------------------------------- Lanczos


@dataclass
class LanczosResult:
    """m steps of Lanczos: the tridiagonal T (alphas, betas), its eigenpairs and their residuals."""

    alphas: np.ndarray  # (m,) diagonal of T
    betas: np.ndarray  # (m,) off-diagonal of T, then the residual norm after the last step
    ritz_values: np.ndarray  # (m,) ascending
    ritz_small: np.ndarray  # (m, m) eigenvectors of T, columns in the order of ritz_values
    residuals: np.ndarray  # (m,) ||H y - theta y|| of each Ritz pair (unit y)
    converged: bool  # the wanted Ritz pairs met the tolerance (or the space is invariant)
    basis: torch.Tensor | None = None  # (m, dim) orthonormal rows, when kept

    @property
    def iterations(self) -> int:
        return len(self.alphas)

    def ritz_vector(self, i: int) -> torch.Tensor:
        """The Ritz vector (dim,) of ritz_values[i] (needs the basis)."""
        if self.basis is None:
            raise ValueError("the Lanczos basis was not kept; run lanczos(..., keep_basis=True)")
        s = torch.as_tensor(self.ritz_small[:, i], dtype=self.basis.dtype, device=self.basis.device)
        return s @ self.basis


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, max_iter: int,
            tol: float | None = None, n_top: int = 1, n_bottom: int = 1, keep_basis: bool = False,
            window: int = 5, on_step: Callable[[int], None] | None = None) -> LanczosResult:
    """Lanczos with full reorthogonalization on a symmetric operator, from the flat vector `v0`.

    Runs at most `max_iter` steps (and at most dim). With `tol`, stops as soon as each of the
    `n_top` largest and `n_bottom` smallest Ritz pairs (θ, y) has
      - residual ||H y - θ y|| <= tol · max|θ| (a symmetric H has an eigenvalue that close to θ), and
      - θ moved by <= tol · max|θ| over the last `window` steps.
    The second test matters at a minimum: there the most negative eigenvalue sits at the edge
    of a dense cluster near 0, and an early Ritz value can converge to a cluster member (small
    residual) long before the extreme one appears (digits ResNet-56, 256 samples: the residual
    test alone stops at step 7 with θmin = -2.4e-6 for λmin = -4.5e-3). Both ends are then
    accurate to about tol · ‖H‖, so |λmin/λmax| is accurate to about tol. Also stops when the
    Krylov space is invariant (the Ritz values are then exact).
    """
    n = v0.numel()
    m_max = min(int(max_iter), n)
    if m_max < 1:
        raise LandscapeError(f"the Lanczos iteration cap must be >= 1, got {max_iter}")
    if tol is not None and not tol > 0:
        raise LandscapeError(f"the Lanczos tolerance must be positive, got {tol}")
    dev, dt = v0.device, v0.dtype
    Q = torch.empty((m_max, n), dtype=dt, device=dev)  # (m, dim) orthonormal basis rows
    q = v0 / v0.double().norm().to(dt)
    alphas: list[float] = []
    betas: list[float] = []
    theta = np.zeros(0)
    S = np.zeros((0, 0))
    res = np.zeros(0)
    wanted: list[np.ndarray | None] = []  # per step, the wanted Ritz values (top then bottom)
    converged = False
    for j in range(m_max):
        Q[j] = q
        w = matvec(q).to(dt)
        alpha = float(torch.dot(w.double(), q.double()))
        # full reorthogonalization, twice ("twice is enough"): also removes alpha q and beta q_prev
        basis = Q[:j + 1]  # (j+1, dim)
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        beta = float(w.double().norm())
        alphas.append(alpha)
        if j == 0:
            theta, S = np.array([alpha]), np.ones((1, 1))
        else:
            theta, S = eigh_tridiagonal(np.array(alphas), np.array(betas))  # ascending
        res = np.abs(beta * S[-1, :])  # (j+1,) residual norm of each Ritz pair
        scale = float(np.abs(theta).max())
        if on_step is not None:
            on_step(j + 1)
        if beta <= 1e3 * np.finfo(np.float64).eps * max(scale, 1e-300) * math.sqrt(n) or beta == 0.0:
            converged = True  # invariant subspace: T's eigenvalues are eigenvalues of H
            betas.append(beta)
            break
        wanted.append(np.concatenate([theta[len(theta) - n_top:], theta[:n_bottom]]) if len(theta) >= n_top + n_bottom
                      else None)
        if tol is not None and j >= window and wanted[-1] is not None and wanted[-1 - window] is not None:
            small = np.concatenate([res[len(theta) - n_top:], res[:n_bottom]]) <= tol * scale
            still = np.abs(wanted[-1] - wanted[-1 - window]) <= tol * scale
            if np.all(small) and np.all(still):
                converged = True
                betas.append(beta)
                break
        betas.append(beta)
        q = w / beta
    m = len(alphas)
    converged = converged or m == n  # the whole space: T is similar to H
    return LanczosResult(np.array(alphas), np.array(betas), theta, S, res, converged,
                         Q[:m] if keep_basis else None)


# ---------------------------------------------------------------------------- extreme eigenvalues


@dataclass
class Eigs:
    """Extreme eigenvalues of a Hessian and, when asked for, their eigenvectors."""

    top: np.ndarray  # (k_top,) largest first
    bottom: np.ndarray  # (k_bottom,) most negative first
    top_vectors: list[Vector] = field(default_factory=list)  # unit vectors, shaped like the parameters
    bottom_vectors: list[Vector] = field(default_factory=list)
    products: int = 0  # Hessian-vector products used
    converged: bool = True
    solver: str = "lanczos"

    @property
    def max(self) -> float:
        return float(self.top[0])

    @property
    def min(self) -> float:
        return float(self.bottom[0])


SOLVERS = ("lanczos", "arpack")


def extreme_eigs(op: HessianOperator, k_top: int = 1, k_bottom: int = 1, tol: float = 1e-3, max_iter: int = 100,
                 vectors: bool = False, generator: torch.Generator | None = None, solver: str = "lanczos") -> Eigs:
    """The `k_top` largest and `k_bottom` smallest (most negative) eigenvalues of the Hessian.

    `solver="lanczos"` (default): one Lanczos run finds both ends at once (the extremes of a
    spectrum converge first); it stops when every wanted Ritz pair has residual and recent
    change <= tol · max|θ| (see `lanczos`) or after `max_iter` products. `"arpack"`: scipy's `eigsh` on a
    `LinearOperator` in float64, once with which="LA" and once with "SA" (ARPACK's `tol` is a
    relative accuracy of each eigenvalue; `max_iter` caps its restarts). The start vector is
    Gaussian, drawn from `generator` on the CPU.
    """
    if k_top < 0 or k_bottom < 0 or k_top + k_bottom == 0:
        raise LandscapeError(f"ask for at least one eigenvalue (k_top={k_top}, k_bottom={k_bottom})")
    if k_top + k_bottom > op.dim:
        raise LandscapeError(f"k_top + k_bottom = {k_top + k_bottom} exceeds the {op.dim} parameters")
    before = op.count
    if solver == "lanczos":
        v0 = op.random_vector(generator)
        r = lanczos(op.matvec_flat, v0, max_iter, tol, k_top, k_bottom, keep_basis=vectors)
        m = r.iterations
        top_idx = list(range(m - 1, m - 1 - min(k_top, m), -1))
        bot_idx = list(range(min(k_bottom, m)))
        top = r.ritz_values[top_idx]
        bottom = r.ritz_values[bot_idx]
        tv = [vunflatten(r.ritz_vector(i), op.params) for i in top_idx] if vectors else []
        bv = [vunflatten(r.ritz_vector(i), op.params) for i in bot_idx] if vectors else []
        return Eigs(top, bottom, tv, bv, op.count - before, r.converged, solver)
    if solver == "arpack":
        from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

        def mv(v: np.ndarray) -> np.ndarray:
            t = torch.from_numpy(np.ascontiguousarray(v).reshape(-1)).to(device=op.device, dtype=op.dtype)
            return op.matvec_flat(t).double().cpu().numpy()

        A = LinearOperator((op.dim, op.dim), matvec=mv, dtype=np.float64)
        v0 = op.random_vector(generator).double().cpu().numpy()
        out, converged = {}, True
        for which, k in (("LA", k_top), ("SA", k_bottom)):
            if k == 0:
                out[which] = (np.zeros(0), np.zeros((op.dim, 0)))
                continue
            try:
                w, V = eigsh(A, k=k, which=which, tol=tol, maxiter=max_iter, v0=v0)
            except ArpackNoConvergence as e:
                w, V, converged = e.eigenvalues, e.eigenvectors, False
            order = np.argsort(-w) if which == "LA" else np.argsort(w)
            out[which] = (w[order], V[:, order])

        def vecs(V: np.ndarray) -> list[Vector]:
            return [vunflatten(torch.from_numpy(V[:, i].copy()).to(op.device, op.dtype), op.params)
                    for i in range(V.shape[1])] if vectors else []

        return Eigs(out["LA"][0], out["SA"][0], vecs(out["LA"][1]), vecs(out["SA"][1]),
                    op.count - before, converged, solver)
    raise LandscapeError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")


# ---------------------------------------------------------------------------- trace and density


@dataclass(frozen=True)
class TraceEstimate:
    mean: float  # the estimate of tr(H)
    stderr: float  # its standard error (0 with one sample)
    samples: int


def hutchinson_trace(op: HessianOperator, n_samples: int = 100, tol: float | None = None,
                     generator: torch.Generator | None = None, min_samples: int = 10) -> TraceEstimate:
    """tr(H) ≈ mean of zᵀHz over Rademacher vectors z (Hutchinson).

    With `tol`, stops once the standard error is <= tol · |mean| (after `min_samples`).
    Exact with one sample when H is diagonal.
    """
    if n_samples < 1:
        raise LandscapeError(f"the trace needs at least one sample, got {n_samples}")
    vals: list[float] = []
    for i in range(n_samples):
        z = op.random_vector(generator, "rademacher")
        vals.append(float(torch.dot(op.matvec_flat(z).double(), z.double())))
        if tol is not None and i + 1 >= min_samples:
            se = float(np.std(vals, ddof=1) / math.sqrt(len(vals)))
            if se <= tol * abs(np.mean(vals)):
                break
    se = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) > 1 else 0.0
    return TraceEstimate(float(np.mean(vals)), se, len(vals))


@dataclass
class SpectralDensity:
    """Stochastic Lanczos quadrature: per run, Ritz values (nodes) and their weights (summing to 1)."""

    nodes: np.ndarray  # (runs, m) eigenvalues of each run's T, ascending
    weights: np.ndarray  # (runs, m) squared first components of T's eigenvectors

    def default_sigma(self) -> float:
        """1 % of the spectrum's width: the Gaussian kernel's standard deviation by default."""
        width = float(self.nodes.max() - self.nodes.min())
        return 0.01 * width if width > 0 else max(abs(float(self.nodes.max())), 1.0) * 0.01

    def grid(self, n: int = 1000, sigma: float | None = None) -> np.ndarray:
        """n points covering every node with 5 σ to spare."""
        s = self.default_sigma() if sigma is None else sigma
        return np.linspace(self.nodes.min() - 5 * s, self.nodes.max() + 5 * s, n)

    def density(self, lam: np.ndarray, sigma: float | None = None) -> np.ndarray:
        """The eigenvalue density at `lam`, a sum of Gaussians (std `sigma`) averaged over runs; integrates to 1."""
        s = self.default_sigma() if sigma is None else sigma
        if not s > 0:
            raise LandscapeError(f"sigma must be positive, got {s}")
        lam = np.asarray(lam, dtype=np.float64)
        z = (lam[:, None] - self.nodes.reshape(-1)[None, :]) / s  # (n, runs*m)
        g = np.exp(-0.5 * z * z) / (s * math.sqrt(2 * math.pi))
        return g @ self.weights.reshape(-1) / len(self.nodes)

    def mean_eigenvalue(self) -> float:
        """The density's mean, an estimate of tr(H) / dim."""
        return float((self.nodes * self.weights).sum() / len(self.nodes))


def spectral_density(op: HessianOperator, n_iter: int = 80, n_runs: int = 1,
                     generator: torch.Generator | None = None,
                     on_step: Callable[[int], None] | None = None) -> SpectralDensity:
    """The Hessian's eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    Each run: `n_iter` Lanczos steps from a Gaussian vector; the nodes are T's eigenvalues and
    the weights the squares of its eigenvectors' first components.
    """
    if n_runs < 1:
        raise LandscapeError(f"the spectral density needs at least one run, got {n_runs}")
    nodes, weights = [], []
    for _ in range(n_runs):
        r = lanczos(op.matvec_flat, op.random_vector(generator), n_iter, tol=None, on_step=on_step)
        nodes.append(r.ritz_values)
        weights.append(r.ritz_small[0, :] ** 2)
    # a run ends early only on an invariant subspace (exact nodes): pad it with zero-weight nodes
    width = max(len(n) for n in nodes)
    nodes = [np.concatenate([n, np.full(width - len(n), n[-1])]) for n in nodes]
    weights = [np.concatenate([w, np.zeros(width - len(w))]) for w in weights]
    return SpectralDensity(np.stack(nodes), np.stack(weights))  # (runs, m) each


# ---------------------------------------------------------------------------- maps and directions


class CurvatureMeasure:
    """The extreme Hessian eigenvalues at the model's current weights: a measure for `compute_surface`.

    Used with the prefix "" the file gets the reference code's `max_eig` and `min_eig`. Every
    point starts Lanczos from the same seeded vector, so a value does not depend on the order
    in which points are computed (a resumed map equals an uninterrupted one).
    """

    metric_names = ("max_eig", "min_eig")

    def __init__(self, op: HessianOperator, tol: float = 1e-3, max_iter: int = 100, seed: int = 0,
                 solver: str = "lanczos"):
        self.op, self.tol, self.max_iter, self.seed, self.solver = op, tol, max_iter, seed, solver
        self.products: list[int] = []  # per computed point
        self.unconverged = 0

    def __call__(self) -> tuple[float, float]:
        g = torch.Generator().manual_seed(self.seed)
        e = extreme_eigs(self.op, 1, 1, self.tol, self.max_iter, generator=g, solver=self.solver)
        self.products.append(e.products)
        self.unconverged += not e.converged
        return e.max, e.min


def eig_ratio(min_eig: np.ndarray, max_eig: np.ndarray) -> np.ndarray:
    """|λmin / λmax| elementwise (the reference's `abs_ratio`); NaN where λmax is 0."""
    min_eig, max_eig = np.asarray(min_eig, dtype=np.float64), np.asarray(max_eig, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(min_eig / max_eig)
    return np.where(max_eig == 0, np.nan, r)


def _sign_fixed(v: torch.Tensor) -> torch.Tensor:
    """v with the sign that makes its largest-magnitude entry positive (eigenvectors have no sign)."""
    i = int(v.abs().argmax())
    return -v if float(v[i]) < 0 else v


def curvature_directions(model: nn.Module, axes: Sequence[str], op: HessianOperator | None = None,
                         norm: Sequence[str] = ("filter", "filter"), ignore: str = "biasbn", seed: int = 0,
                         tol: float = 1e-4, max_iter: int = 200, scale: str = "weights") -> Directions:
    """Directions for a 1-D (one axis) or 2-D (two) map; each axis `random`, `hessian` or `hessian_min`.

    Random axes are drawn as `make_directions` draws them (one CPU generator seeded with `seed`,
    x first, then y; normalized per `norm`), so two random axes equal plot_surface's directions
    for the same seed. `hessian` axes take the Hessian's top eigenvectors in turn (x the first,
    y the second), `hessian_min` axes the most negative ones; the eigenvectors are found with
    Lanczos to residual `tol` · |λ|max and have length ‖θ‖ over the Hessian's parameters with
    `scale="weights"` (as long as a filter-normalized random direction with ignore=biasbn), or 1
    with `scale="unit"`. Tensors outside the Hessian's parameters get zeros.
    """
    for a in axes:
        if a not in AXIS_KINDS:
            raise LandscapeError(f"axes must each be one of {', '.join(AXIS_KINDS)}, got {a!r}", "axes")
    if len(axes) not in (1, 2):
        raise ValueError(f"a map has 1 or 2 axes, got {len(axes)}")
    if scale not in SCALES:
        raise LandscapeError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}", "scale")
    named = [(n, p.detach()) for n, p in model.named_parameters()]
    ws = [w for _, w in named]
    g = torch.Generator().manual_seed(seed)
    dirs: list[list[torch.Tensor] | None] = [None] * len(axes)
    for i, a in enumerate(axes):  # random first, in axis order: the same draws as make_directions
        if a == "random":
            dirs[i] = random_direction(ws, norm[i], ignore, generator=g)
    attrs: dict[str, Any] = {"kind": "random" if set(axes) == {"random"} else "hessian", "seed": seed, "dir_type": "weights", "xdir": axes[0],
                             "xnorm": norm[0] if axes[0] == "random" else "none", "xignore": ignore}
    if len(axes) == 2:
        attrs.update(ydir=axes[1], ynorm=norm[1] if axes[1] == "random" else "none", yignore=ignore,
                     same_dir=False)
    k_top, k_bottom = axes.count("hessian"), axes.count("hessian_min")
    if k_top + k_bottom:
        if op is None:
            raise ValueError("Hessian directions need a HessianOperator")
        if op.model is not model:
            raise ValueError("the HessianOperator must be built on the same model")
        e = extreme_eigs(op, k_top, k_bottom, tol, max_iter, vectors=True,
                         generator=torch.Generator().manual_seed(seed))
        if not e.converged:
            raise LandscapeError(f"Lanczos did not reach tolerance {tol:g} for the Hessian directions in "
                                 f"{max_iter} products; raise --direction-max-iter or --direction-tol")
        length = math.sqrt(vdot(op.weights(), op.weights())) if scale == "weights" else 1.0
        top, bottom = iter(zip(e.top, e.top_vectors)), iter(zip(e.bottom, e.bottom_vectors))
        index = {n: i for i, (n, _) in enumerate(named)}
        eigenvalues = []
        for i, a in enumerate(axes):
            if a == "random":
                continue
            lam, vec = next(top) if a == "hessian" else next(bottom)
            flat = _sign_fixed(vflatten(vec).double())
            flat = flat / flat.norm() * length
            full = [torch.zeros(w.shape, dtype=w.dtype) for w in ws]
            for name, t in zip(op.names, vunflatten(flat, op.params)):
                full[index[name]] = t.to(dtype=ws[index[name]].dtype).cpu()
            dirs[i] = full
            eigenvalues.append(float(lam))
        attrs.update(eigenvalues=eigenvalues, eig_tol=tol, scale=scale, hessian_samples=len(op),
                     hessian_products=e.products)
    return Directions(dirs[0], dirs[1] if len(axes) == 2 else None, [n for n, _ in named], attrs)


# ---------------------------------------------------------------------------- the spectrum at one point


@dataclass
class Spectrum:
    """Everything known about the Hessian's spectrum at one point."""

    density: SpectralDensity
    top: np.ndarray  # (k,) largest eigenvalues, largest first
    bottom: np.ndarray  # (1,) the most negative eigenvalue
    trace: TraceEstimate
    dim: int  # number of parameters the Hessian is taken over
    products: int = 0  # Hessian-vector products used
    seconds: float = 0.0


def compute_spectrum(op: HessianOperator, top_k: int = 5, tol: float = 1e-3, max_iter: int = 100,
                     trace_samples: int = 50, n_iter: int = 80, n_runs: int = 1, seed: int = 0,
                     on_step: Callable[[int], None] | None = None) -> Spectrum:
    """Top-k and most negative eigenvalues (Lanczos), the trace (Hutchinson) and the density (SLQ)
    at the model's current weights; each part from its own generator seeded with `seed`."""
    before, start = op.count, time.perf_counter()
    eigs = extreme_eigs(op, top_k, 1, tol, max_iter, generator=torch.Generator().manual_seed(seed))
    if on_step is not None:
        on_step(eigs.products)
    trace = hutchinson_trace(op, trace_samples, generator=torch.Generator().manual_seed(seed))
    if on_step is not None:
        on_step(trace.samples)
    density = spectral_density(op, n_iter, n_runs, generator=torch.Generator().manual_seed(seed), on_step=
                               (lambda j: on_step(1)) if on_step is not None else None)
    return Spectrum(density, eigs.top, eigs.bottom, trace, op.dim, op.count - before, time.perf_counter() - start)
