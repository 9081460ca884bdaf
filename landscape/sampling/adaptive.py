"""Adaptive sampling: each surface point evaluated on only as many samples as the figure needs.

A point's loss is a mean over the data set; a random subset of n samples estimates it with
standard error s / sqrt(n) (s: the subset's standard deviation). The set is permuted once with a
seeded generator and every point reads the same order (common random numbers: neighbouring points
see the same images, so the surface stays smooth); a point grows its prefix [0, n) until

- its bound z * SE is at most the tolerance T, or
- it is confidently above the highest contour drawn (mean - z_vmax * SE > vmax), or
- the set is exhausted.

What a stored standard error means, in every mode: the standard error of the stored mean as an
estimate of the mean over the whole set the samples were drawn from (the `population`: the whole
split, also when `--n-samples` took a subset of it). It is 0 only where a point used that whole
set; the finite-population factor sqrt(1 - n/N) is left out (a conservative choice: it matters
only as n nears N). A fixed prefix is an unbiased estimate; a point that stops once its SE falls
below T is not quite (its stopping time depends on the samples it read): the bias is measured by
`landscape.sampling.validate.stopping_bias` and stated in docs/sampling.md.

Where a few samples carry the mean (near the minimum: a few misclassified images) the normal
SE is too small. Two guards (their coverage: BENCHMARKS.md): a point whose mean loss is below
`low_loss` takes at least `n_low` samples, and no point stops before the losses' effective
sample size (sum l)^2 / sum l^2 (Kish) reaches `ess_min`: about the number of "heavy" samples
seen, which the normal approximation needs to be a dozen or so.

With `strata` (`--stratify K`) the common order is stratified (`stratified_order`): one pass at
the center gives every sample's loss there, and every prefix then holds each of K quantile blocks
of those losses in proportion. The per-sample losses of points near the minimum follow the
center's, so the images that carry their mean can no longer crowd into, or stay out of, the
first chunks of one order: that shared accident, not the per-point SE, moved a whole basin at
once in some orders (BENCHMARKS.md). The reported SE stays the plain s / sqrt(n), which overstates
a stratified mean's error by the share of the variance the center's losses explain. The order is
kept beside the surface (`order_path`) so a resumed run reads the same one.

Apart from that order file, nothing here knows about files. `SampledMeasure` is a measure for
`surface.compute_surface`: it returns (loss, loss_se, acc, acc_se, n), stored as `train_loss`,
`train_loss_se`, ....
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Generator

import torch

from landscape.errors import LandscapeError

# how landscape.sampling.multilevel builds its estimates (part of a coarse-to-fine file's settings)
MULTILEVEL_SCHEME = {"interpolation": "cubic", "fallback": "linear", "level_shares": "equal",
                     "control": "the stencil or none that needs the fewest samples",
                     "parents_stop_above_vmax_times": 1.5, "those parents": "level 0 and those with a control"}

SumsFn = Callable[[int, int], torch.Tensor]  # (start, stop) -> (n_metrics, 2) float64 (sum, sum of squares)


@dataclass(frozen=True)
class SamplingPlan:
    """When a point stops adding samples. `tolerance=None`: a fixed sample (all of the set), SE reported."""

    tolerance: float | None = None  # absolute bound on |estimate - full-set mean| (z * SE)
    n0: int = 256  # samples of the first chunk
    z: float = 2.0  # bound = z * SE
    vmax: float | None = None  # stop once mean - z_vmax * SE > vmax (above the highest contour drawn)
    # A stop there leaves an SE of up to (mean - vmax) / z_vmax, far beyond the tolerance's, so it
    # asks for more confidence than the bound (at 2 SE points below vmax stopped there on the
    # CIFAR-10 headline: BENCHMARKS.md, "The vmax rule at 3.5 SE").
    z_vmax: float = 3.5
    low_loss: float = 0.1  # below this mean loss, the normal SE is not trusted before n_low samples
    n_low: int = 2048
    ess_min: float = 10.0  # (sum l)^2 / sum l^2 of the sample must reach this before its SE is trusted
    max_growth: float = 4.0  # a step at most multiplies n by this
    seed: int = 0  # of the common sample order
    multilevel: bool = False  # coarse-to-fine control variates (landscape.sampling.multilevel)
    strata: int = 0  # > 0: the order is stratified by the center's per-sample loss (`stratified_order`)

    def __post_init__(self) -> None:
        if self.tolerance is not None and not self.tolerance >= 0:
            raise LandscapeError(f"tolerance must be >= 0, got {self.tolerance}", "tolerance")
        if self.n0 < 1:
            raise LandscapeError(f"n0 must be >= 1, got {self.n0}", "n0")
        if not self.z > 0:
            raise LandscapeError(f"z must be > 0, got {self.z}", "z")
        if not self.z_vmax > 0:
            raise LandscapeError(f"z_vmax must be > 0, got {self.z_vmax}", "z_vmax")
        if self.n_low < 1:
            raise LandscapeError(f"n_low must be >= 1, got {self.n_low}", "n_low")
        if not self.ess_min >= 0:
            raise LandscapeError(f"ess_min must be >= 0, got {self.ess_min}")
        if not self.max_growth > 1:
            raise LandscapeError(f"max_growth must be > 1, got {self.max_growth}")
        if self.multilevel and self.tolerance is None:
            raise LandscapeError("multilevel needs tolerance: it refines points until their bound is below it",
                                 ("multilevel", "tolerance"))
        if self.strata < 0 or self.strata == 1:
            raise LandscapeError(f"strata must be 0 or at least 2, got {self.strata}", "strata")
        if self.strata and self.tolerance is None:
            raise LandscapeError("strata needs tolerance: it orders the samples points read a prefix of",
                                 ("strata", "tolerance"))

    def settings(self) -> dict:
        out = asdict(self)
        if self.multilevel:
            out["multilevel"] = dict(MULTILEVEL_SCHEME)  # a file made by another scheme is not resumed
        else:
            del out["multilevel"]  # files made before the option still resume
        if not self.strata:
            del out["strata"]  # likewise
        return out


def mean_se(total: torch.Tensor | list, n: int) -> tuple[float, float]:
    """(mean, standard error of the mean) from (sum, sum of squares) of n samples.

    SE = s / sqrt(n) with s the sample standard deviation (divisor n - 1); for 0/1 values that
    is the binomial sqrt(p (1 - p) / (n - 1)). One sample: SE is NaN.
    """
    s, q = (float(v) for v in total)
    mean = s / n
    if n < 2:
        return mean, math.nan
    var = max(0.0, (q - s * mean) / (n - 1))  # sample variance
    return mean, math.sqrt(var / n)


@dataclass
class Estimate:
    """One point's result: per metric (the loss first) its mean and SE; `steps` holds
    (n, mean loss, loss SE) after every chunk."""

    means: list[float]
    ses: list[float]
    n: int
    steps: list[tuple[int, float, float]] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return self.means[0]

    @property
    def loss_se(self) -> float:
        return self.ses[0]


def estimate(sums: SumsFn, size: int, batch: int, plan: SamplingPlan, population: int | None = None) -> Estimate:
    """Grow the prefix [0, n) of a set of `size` samples until `plan` says stop.

    `sums(start, stop)` gives, per metric (the loss first, then e.g. accuracy: hits, hits), the sum
    and the sum of squares over [start, stop) of the set in its (already permuted) order. It is
    called once per batch of `batch` samples whose bounds are multiples of `batch` (n grows in
    whole batches), and the batch sums are added in order into one float64 total: with the whole
    set used, the loss is bit for bit what one `Evaluator.sums(0, size)` pass with that batch
    size gives. `population` (default `size`): the size of the set the samples stand for; when
    it is `size`, using them all is exact (SE 0). (`estimate_steps` is the same rule, driven batch
    by batch from outside: streamed data.)
    """
    steps = estimate_steps(size, batch, plan, population)
    try:
        request = next(steps)
        while True:
            request = steps.send(sums(*request))
    except StopIteration as done:
        return done.value


def estimate_steps(size: int, batch: int, plan: SamplingPlan, population: int | None = None
                   ) -> Generator[tuple[int, int], torch.Tensor, Estimate]:
    """`estimate` as a generator: it yields each (start, stop) batch range it needs, in order from 0,
    is sent that range's sums, and returns the Estimate."""
    if size < 1:
        raise LandscapeError("the evaluation set is empty; check n_samples and the data set", "n_samples")
    if batch < 1:
        raise LandscapeError(f"batch_size must be >= 1, got {batch}", "batch_size")
    population = size if population is None else population
    total = None
    pos = 0
    n = size if plan.tolerance is None else min(size, _round_up(plan.n0, batch))
    steps = []
    while True:
        for i in range(pos, n, batch):
            s = yield i, min(i + batch, n)
            total = s if total is None else total + s
        pos = n
        t = total.tolist()  # the one host sync of this step
        loss, loss_se = _stats(t[0], n, size, population)
        steps.append((n, loss, loss_se))
        if n >= size or plan.tolerance is None:
            break
        bound = plan.z * loss_se
        s, q = t[0]
        if loss < plan.low_loss and n < plan.n_low:
            want = plan.n_low  # the normal SE is too small for skewed low losses: take more first
        elif q > 0 and s * s / q < plan.ess_min:
            want = 2 * n  # a few samples carry the sum: the normal SE is not to be trusted yet
        elif bound <= plan.tolerance:
            break
        elif plan.vmax is not None and loss - plan.z_vmax * loss_se > plan.vmax:
            break  # above the highest contour with confidence: more precision changes nothing drawn
        else:
            want = _needed(n, loss_se, plan, population)
        n = min(size, _round_up(max(want, n + 1), batch))
    stats = [_stats(row, n, size, population) for row in t]
    return Estimate([m for m, _ in stats], [e for _, e in stats], n, steps)


def _stats(row, n: int, size: int, population: int | float) -> tuple[float, float]:
    """mean and SE of a prefix of n of `size` samples: SE 0 for the whole set (when the set is the
    population), else the plain s / sqrt(n), with no finite-population factor."""
    mean, se = mean_se(row, n)
    return (mean, 0.0) if n >= size and population == size else (mean, se)


def _needed(n: int, se: float, plan: SamplingPlan, population: int) -> float:
    """Samples for z * SE <= tolerance if the spread stays as measured (+10 %), at most max_growth * n."""
    if not math.isfinite(se):
        return plan.max_growth * n
    bound = plan.z * se
    # SE^2 = a / n; solve for n at the target, a from the current n
    target = plan.tolerance / plan.z
    need = population if target <= 0 else se * se * n / (target * target)
    if bound > 0:
        need *= 1.1
    return min(need, plan.max_growth * n)


def _round_up(n: float, batch: int) -> int:
    return int(math.ceil(n / batch)) * batch


def sample_order(size: int, seed: int) -> torch.Tensor:
    """The common random order of a set's samples (the same for every point)."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))


def stratified_order(key: torch.Tensor, strata: int, seed: int) -> torch.Tensor:
    """A random order of len(key) samples in which every prefix holds each stratum of `key` in
    proportion: its share of high and low values is the set's.

    The samples are sorted by `key` (ties in random order) and cut into `strata` blocks of m
    consecutive ones; the order takes one random unused sample of every block per round of
    `strata` positions, the blocks in a fresh random order each round. The N - strata * m samples
    left over (chosen uniformly at random) come last, in random order. Every sample is at each
    position with the same probability, so the mean of any prefix [0, n) is unbiased for the set's
    mean; its variance is the within-stratum part of a random prefix's, and the plain SE s / sqrt(n)
    (what `estimate` and `landscape.sampling.multilevel` report) overstates it by the share of the variance
    that `key` explains. With key = the per-sample loss at the center, that share is large near
    the minimum, where a few misclassified images carry the mean and a random prefix may hold too
    many or too few of them for every point of the basin at once.
    """
    n = len(key)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    k = min(strata, n // 2)
    if k < 2:
        return perm
    m = n // k
    body, rest = perm[: k * m], perm[k * m:]
    body = body[torch.sort(key.detach().to("cpu", torch.float64)[body], stable=True).indices]  # ties: random
    blocks = body.view(k, m)  # block b: the b-th k-quantile of key
    blocks = blocks.gather(1, torch.argsort(torch.rand(k, m, generator=g), dim=1))  # random within a block
    rounds = blocks.t()  # (m, k): round t takes the t-th sample of every block
    rounds = rounds.gather(1, torch.argsort(torch.rand(m, k, generator=g), dim=1))  # blocks in random order
    return torch.cat([rounds.reshape(-1), rest])


def center_values(evaluator, setter) -> torch.Tensor:
    """The per-sample loss of every sample of `evaluator`'s set at the center (all coordinates 0)."""
    setter.set([0.0] * len(setter.dirs))
    try:
        return evaluator.values()[0]
    finally:
        setter.restore()


def stratify(evaluator, setter, plan: SamplingPlan) -> torch.Tensor | None:
    """Put `evaluator`'s set, in place, into the order `stratified_order` makes from the center's
    per-sample losses (one pass over the set) when `plan.strata` asks for it; returns the
    permutation applied (None: unchanged)."""
    if not plan.strata:  # SamplingPlan allows strata only with a tolerance
        return None
    order = stratified_order(center_values(evaluator, setter), plan.strata, plan.seed)
    _reorder(evaluator, order)
    return order


def _reorder(evaluator, order: torch.Tensor) -> None:
    """Put `evaluator`'s set, in place, into `order` (indices into it as it is)."""
    idx = order.to(evaluator.x.device)
    evaluator.x, evaluator.y = evaluator.x[idx], evaluator.y[idx]


def order_path(surface_path) -> Path:
    """Where the stratified sample orders of a surface are kept: `<stem>_order.h5` beside it."""
    path = Path(surface_path)
    return path.with_name(f"{path.stem}_order.h5")


def stratify_sets(evaluators: dict, setter, plan: SamplingPlan, group=None, notes: list[str] | None = None,
                  path=None, key: str = "", resume: bool = False) -> dict:
    """`stratify` each split's evaluator ({split: Evaluator}); in a torchrun job (`group`, a
    `landscape.distributed.Group`) rank 0 computes the orders and the other ranks apply the same.

    With `path` (`order_path` of the surface file): a run that starts a surface (`resume` False)
    computes the orders and writes them there; a run that continues one reads them when their
    `key` (a fingerprint of the surface's other settings) and set sizes match, so it reads the
    same order even where the center's per-sample losses do not come out the same bit for bit
    (another GPU algorithm, other threads), and otherwise computes them without writing (the
    surface's settings check then accepts or refuses them; the file is left as it is).
    Returns {split: the order's fingerprint}, for the surface's settings (a resumed run or a shard
    whose order differs is refused as a run with other settings)."""
    orders, error, read = {}, None, False
    main = group is None or group.is_main
    if main:
        try:
            sizes = {s: len(ev) for s, ev in evaluators.items()}
            orders = _read_orders(path, key, plan, sizes) if resume else None
            read = orders is not None
            if read:
                for s, ev in evaluators.items():
                    _reorder(ev, orders[s])
            else:
                orders = {s: stratify(ev, setter, plan) for s, ev in evaluators.items()}
                if path is not None and not resume:
                    _write_orders(path, key, plan, orders)
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = e
    if group is not None:
        group.agree(error)
    elif error is not None:
        raise error
    if group is not None and group.world_size > 1:
        orders, read = group.broadcast((orders, read) if main else None)
        if not main:
            for s, ev in evaluators.items():
                _reorder(ev, orders[s])
    if notes is not None:
        how = (f"read from {path}" if read else
               f"one pass over {', '.join(f'{len(ev)} {s}' for s, ev in evaluators.items())} samples")
        notes.append(f"sample order stratified into {plan.strata} strata of the center's per-sample loss ({how})")
    return {s: order_fingerprint(o) for s, o in orders.items()}


def _order_attrs(key: str, plan: SamplingPlan) -> dict:
    return {"key": key, "strata": plan.strata, "seed": plan.seed}


def _read_orders(path, key: str, plan: SamplingPlan, sizes: dict) -> dict | None:
    """The orders stored at `path` for these settings and set sizes, else None (missing, from
    another run, or unreadable: computed again)."""
    import h5py

    if path is None or not os.path.exists(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            if any(f.attrs.get(k) != v for k, v in _order_attrs(key, plan).items()):
                return None
            out = {}
            for s, n in sizes.items():
                if s not in f or f[s].shape != (n,):
                    return None
                o = torch.from_numpy(f[s][()].astype("int64"))
                if not torch.equal(o.sort().values, torch.arange(n)):
                    return None
                out[s] = o
            return out
    except OSError:
        return None


def _write_orders(path, key: str, plan: SamplingPlan, orders: dict) -> None:
    """Write the orders through a temporary name and an atomic rename."""
    import tempfile

    import h5py

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".order.", suffix=".h5", dir=folder)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(_order_attrs(key, plan))
            for s, o in orders.items():
                f[s] = o.numpy()
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def order_fingerprint(order: torch.Tensor) -> str:
    """A short hash of a sample order (stored in a surface's settings: a resumed run must read the same)."""
    import hashlib

    return hashlib.sha256(order.to(torch.int64).numpy().tobytes()).hexdigest()[:16]


class SampledMeasure:
    """A measure for `compute_surface`: an evaluator's means (loss, acc, ...) with standard errors.

    `metric_names` are the evaluator's, each followed by `<name>_se`, then `n` (samples used):
    ("loss", "loss_se", "acc", "acc_se", "n"). The evaluator's set must already be in the common
    random order (`sample_order`); with a plan whose tolerance is None every point uses the whole
    set (a fixed subset with error bars). `population`: the size of the set the evaluator's samples
    were drawn from (None: the evaluator's set is the whole set, so using all of it gives SE 0;
    math.inf: a subset of a larger or unknown set, SE = s / sqrt(n)).
    """

    def __init__(self, evaluator, plan: SamplingPlan, population: int | None = None):
        if evaluator.metric_names[0] != "loss":
            raise ValueError(f"the evaluator's first metric must be the loss, got {evaluator.metric_names}")
        self.evaluator = evaluator
        self.plan = plan
        self.population = population
        self.metric_names = tuple(x for m in evaluator.metric_names for x in (m, f"{m}_se")) + ("n",)
        self.forwards = 0  # samples evaluated over all points of this process
        self.last: Estimate | None = None

    def __len__(self) -> int:
        return len(self.evaluator)

    def __call__(self) -> tuple[float, ...]:
        est = estimate(self.evaluator.sums, len(self.evaluator), self.evaluator.batch_size, self.plan,
                       self.population)
        self.forwards += est.n
        self.last = est
        return tuple(x for m, e in zip(est.means, est.ses) for x in (m, e)) + (float(est.n),)


class SampledBlockMeasure(SampledMeasure):
    """A `SampledMeasure` with a plan whose tolerance is None (every point uses the whole set) over
    an evaluator with `block_sums` (K points per launch, `landscape.engine.multipoint`): `block` gives the
    rows for several points from one pass over the set."""

    def __init__(self, evaluator, plan: SamplingPlan, population: int | None = None):
        if plan.tolerance is not None:
            raise ValueError("K points per launch evaluate every point on the whole set: no tolerance")
        super().__init__(evaluator, plan, population)
        self.points_per_pass = evaluator.points_per_pass
        self.aligned = getattr(evaluator, "aligned", False)

    def block(self, setter, points) -> list[list[float]]:
        size = len(self.evaluator)
        population = size if self.population is None else self.population
        rows = []
        for t in self.evaluator.block_sums(setter, points).tolist() if len(points) else []:
            stats = [_stats(row, size, size, population) for row in t]
            rows.append([x for m, e in stats for x in (m, e)] + [float(size)])
            self.forwards += size
        return rows


def set_size(surf, prefix: str = "train") -> int | None:
    """The size of the `prefix` split's set as the surface's `n_samples` attribute records it, if it does."""
    import json

    sizes = surf.attrs.get("n_samples")
    if isinstance(sizes, str):
        sizes = json.loads(sizes)
    size = sizes.get(prefix) if isinstance(sizes, dict) else None
    return int(size) if size is not None else None


def forwards_used(surf, prefix: str = "train") -> tuple[int, int]:
    """(samples evaluated over the done points, samples a full evaluation of those points takes).

    The full count is the done points times the set size stored in the surface's `n_samples`
    attribute (or, without it, the largest `n` seen).
    """
    import numpy as np

    key = f"{prefix}_n"
    if key not in surf.metrics:
        raise LandscapeError(f"the surface has no {key}: it was not computed with --tolerance or --n-samples")
    done = surf.done
    # a coarse-to-fine surface also counts the samples parents added to serve as controls
    cost = f"{prefix}_forwards" if f"{prefix}_forwards" in surf.metrics else key
    used = int(np.nansum(surf.metrics[cost][done]))
    size = set_size(surf, prefix)
    size = size if size is not None else int(np.nanmax(surf.metrics[key][done]))
    return used, int(done.sum()) * size


class StreamSampledMeasure:
    """`SampledMeasure` over streamed data (`landscape.engine.stream.StreamEvaluator`): in one pass over
    the batches per block of points, each point takes the batches its stopping rule asks for
    (`estimate_steps`, the same rule as resident data) and the pass ends once every point of the
    block has stopped. With a tolerance the batches must come in the common random order (the
    caller reorders the data: `surface.compute_surface`) and be `batch_size` samples each."""

    def __init__(self, evaluator, plan: SamplingPlan, size: int, batch_size: int, population: int | None = None):
        if evaluator.metric_names[0] != "loss":
            raise ValueError(f"the evaluator's first metric must be the loss, got {evaluator.metric_names}")
        self.evaluator, self.plan, self.size, self.batch_size = evaluator, plan, size, batch_size
        self.population = population
        self.points_per_pass = evaluator.points_per_pass
        self.metric_names = tuple(x for m in evaluator.metric_names for x in (m, f"{m}_se")) + ("n",)
        self.forwards = 0

    def __len__(self) -> int:
        return self.size

    def block(self, setter, points) -> list[list[float]]:
        steps = [estimate_steps(self.size, self.batch_size, self.plan, self.population) for _ in points]
        wanted = [next(g) for g in steps]
        results: list[Estimate | None] = [None] * len(points)

        def take(k: int, start: int, sums: torch.Tensor) -> None:
            if wanted[k][0] != start:
                raise LandscapeError(f"the streamed batches are not {self.batch_size} samples each; adaptive sampling "
                                     "needs batches of one size (the last may be shorter)", "batch_size")
            try:
                wanted[k] = steps[k].send(sums)
            except StopIteration as done:
                results[k] = done.value

        self.evaluator.each_batch(setter, points, take, lambda k: results[k] is None)
        if any(r is None for r in results):
            raise LandscapeError(f"the data yielded fewer than the {self.size} samples it has; it must give the same "
                                 "samples on every pass", "data")
        rows = []
        for est in results:
            self.forwards += est.n
            rows.append([x for m, e in zip(est.means, est.ses) for x in (m, e)] + [float(est.n)])
        return rows

    def __call__(self) -> tuple[float, ...]:
        raise TypeError("a streamed measure evaluates blocks of points (block)")
