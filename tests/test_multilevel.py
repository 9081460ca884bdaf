"""Coarse-to-fine adaptive sampling (landscape/multilevel.py): levels, the control-variate
estimate and its standard error on per-sample losses known in closed form, and the job."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from landscape.sampling.adaptive import MULTILEVEL_SCHEME, SamplingPlan, forwards_used
from landscape.errors import LandscapeError
from landscape.engine.evaluate import Evaluator, PointSetter
from landscape.grid import Axis, Grid
from landscape.sampling.multilevel import (PARENT_VMAX, Hierarchy, MultilevelMeasure, axis_levels, coarsest_stride,
                                  level_share, samples_path)
from landscape.config import RunOptions
from conftest import surface_job
from landscape.surface import run_job
from landscape.sweep import sweep


class Poly(nn.Module):
    """Per-sample loss x0 + s x1 + t x2 + s^2 x3 (the first output column): at grid point
    (s, t) = (cx, cy) each sample's loss is known exactly."""

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.t = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        return (x[:, 0] + self.s * x[:, 1] + self.t * x[:, 2] + self.s ** 2 * x[:, 3])[:, None].expand(-1, 2)


def first_column(output, target):
    return output[:, 0]


def poly_set(n, curvature=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, dtype=torch.float64, generator=g)
    x[:, 0] = 5 + 3 * x[:, 0].abs()
    x[:, 3] *= curvature
    return x, torch.zeros(n, dtype=torch.long)


def measure(x, y, grid, plan, batch=16):
    model = Poly()
    ev = Evaluator(model, x, y, loss_fn=first_column, batch_size=batch)
    dirs = [[torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)],
            [torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)]][:grid.ndim]
    setter = PointSetter([model.s, model.t], dirs)
    return MultilevelMeasure(ev, plan, grid), setter


def run_all(m, setter, grid):
    """Every point coarse to fine; rows keyed by flat index."""
    pts = grid.points()
    rows = {}
    for p in m.point_order(np.arange(grid.size)):
        rows[int(p)] = m.block(setter, pts[[p]])[0]
    return rows


def test_levels_and_parents_of_a_51_point_axis_and_a_grid() -> None:
    assert coarsest_stride(51) == 8 and coarsest_stride(25) == 4 and coarsest_stride(5) == 1
    lv = axis_levels(51, 8)
    assert set(np.flatnonzero(lv == 0)) == {0, 8, 16, 24, 32, 40, 48, 50}
    assert lv[4] == 1 and lv[2] == 2 and lv[49] == 3 and lv[1] == 3
    h = Hierarchy((25, 51))  # (ny, nx): the common stride is the smaller axis's, 4
    assert h.stride == 4 and h.depth == 2
    order = list(h.order(np.arange(25 * 51)))
    rank = {p: i for i, p in enumerate(order)}
    for p in range(25 * 51):
        ws = [w for _, w in h.parents[p]]
        assert (len(ws) == 0) == (h.level[p] == 0)
        if ws:
            assert sum(ws) == pytest.approx(1.0)
            assert len(ws) == 2 and min(ws) > 0 or ws == [-1 / 16, 9 / 16, 9 / 16, -1 / 16]  # linear or cubic
        for q, _ in h.parents[p]:
            assert rank[q] < rank[p]  # parents are done first
            assert h.level[q] < h.level[p] or (h.level[q] == h.level[p] and h.stage[q] < h.stage[p])
    # point (ix=49, iy=0) sits between the level-0 indices 48 and 50 along x (no room for a cubic)
    assert sorted(h.parents[49]) == [(48, 0.5), (50, 0.5)]
    # (ix=3, iy=0): the cubic through x = 0, 2, 4, 6; (ix=2, iy=0) at level 1: 2 +- 6 is off the grid
    assert h.parents[3] == [(0, -1 / 16), (2, 9 / 16), (4, 9 / 16), (6, -1 / 16)]
    assert sorted(h.parents[2]) == [(0, 0.5), (4, 0.5)]
    assert Hierarchy((51,), cubic=False).parents[3] == [(2, 0.5), (4, 0.5)]


def test_a_fine_point_is_its_parents_interpolation_plus_the_residual_with_the_closed_form_se() -> None:
    """Losses linear in the coordinates: the residual is exactly 0, so a finer point is the
    interpolation of its parents' estimates and its SE is that of their combination, which is
    computed here by hand from the known per-sample values."""
    x, y = poly_set(4000)
    grid = Grid(Axis(-1, 1, 17), None)
    plan = SamplingPlan(tolerance=0.2, n0=32, low_loss=0.0)
    m, setter = measure(x, y, grid, plan)
    rows = run_all(m, setter, grid)
    h, pts = m.h, grid.points()
    assert list(np.flatnonzero(h.level == 0)) == [0, 4, 8, 12, 16] and h.depth == 2
    loss = lambda i, n: (x[:n, 0] + pts[i, 0] * x[:n, 1]).numpy()  # noqa: E731
    for p in range(17):
        n = int(rows[p][4])
        if h.level[p] == 0:
            v = loss(p, n)
            assert rows[p][0] == pytest.approx(v.mean(), rel=1e-12)
            assert rows[p][1] == pytest.approx(v.std(ddof=1) / math.sqrt(n), rel=1e-9)
            assert 2 * rows[p][1] <= plan.tolerance * math.sqrt(level_share(0, 2)) + 1e-12
            continue
        assert n == 32  # the residual has no spread: the first chunk is enough
        kind = int(rows[p][6])  # the stencil it chose: the cubic (1) or, where it has one, the linear (2)
        assert kind in (1, 2) and h.stencil(p, kind)
        assert rows[p][0] == pytest.approx(sum(w * rows[q][0] for q, w in h.stencil(p, kind)), rel=1e-12)
    # SE of the level-1 point between 0 and 4 (= (L0 + L4) / 2), by hand
    p = 2
    na, nb = int(rows[0][4]), int(rows[4][4])
    va, vb = loss(0, max(na, nb)), loss(4, max(na, nb))
    k = min(na, nb)
    cov = np.cov(va[:k], vb[:k], ddof=1)[0, 1]
    var = 0.25 * (va[:na].var(ddof=1) / na + vb[:nb].var(ddof=1) / nb + 2 * cov / max(na, nb))
    assert rows[p][1] == pytest.approx(math.sqrt(var), rel=1e-9)
    assert 2 * rows[p][1] <= plan.tolerance * math.sqrt(level_share(1, 2)) + 1e-12


def test_parents_near_vmax_are_refined_and_a_point_falls_back_to_the_linear_stencil() -> None:
    """Loss ~ 7.4 - 10 s along a 17-point axis, vmax 10: the level-0 point at s = -1 (loss 17.4,
    above PARENT_VMAX x vmax) stops on the vmax rule after its first chunk, while the one at
    s = -0.5 (12.4: above vmax, but its children may not be) is refined to its tolerance although
    the plain vmax rule would have stopped it there too. The level-1 point at s = -0.25 then cannot
    use its cubic (through s = -1) but can use the linear interpolation between s = -0.5 and 0,
    and equals it (the losses are linear in s, so the residual is 0); the one at s = -0.75,
    whose only stencil is linear through s = -1, is estimated directly."""
    x, y = poly_set(4000)
    x[:, 1] -= 10
    grid = Grid(Axis(-1, 1, 17), None)
    plan = SamplingPlan(tolerance=0.2, n0=32, low_loss=0.0, vmax=10.0)
    m, setter = measure(x, y, grid, plan)
    rows = run_all(m, setter, grid)
    h = m.h
    assert PARENT_VMAX * plan.vmax < 17 and h.children[0] and h.children[4]
    assert rows[0][4] == 32 and rows[0][0] - plan.z_vmax * rows[0][1] > PARENT_VMAX * plan.vmax
    first = (x[:32, 0] - 0.5 * x[:32, 1]).numpy()  # the point at s = -0.5 after its first chunk
    assert first.mean() - plan.z_vmax * first.std(ddof=1) / math.sqrt(32) > plan.vmax  # the plain rule would stop
    assert rows[4][4] > 32 and 2 * rows[4][1] <= plan.tolerance * math.sqrt(level_share(0, h.depth)) + 1e-12
    assert h.stencil(6, 1) == [(0, -1 / 16), (4, 9 / 16), (8, 9 / 16), (12, -1 / 16)]
    assert rows[6][6] == 2 and h.stencil(6, 2) == [(4, 0.5), (8, 0.5)]
    assert rows[6][0] == pytest.approx(0.5 * rows[4][0] + 0.5 * rows[8][0], rel=1e-12)
    assert rows[2][6] == 0 and h.stencil(2, 2) == []  # its parents are linear already: no fallback
    # s = -0.75 (loss 14.9) has children, but estimated directly it stops on the plain vmax rule
    assert h.children[2] and rows[2][4] == 32 and rows[2][0] - plan.z_vmax * rows[2][1] < PARENT_VMAX * plan.vmax
    assert rows[10][6] in (1, 2)  # all four cubic parents precise: a stencil, whichever needs fewer samples


def test_the_reported_se_matches_the_spread_over_random_orders() -> None:
    """A curved 2-D surface: over 150 random sample orders, the RMS error of each point's
    estimate against its exact mean agrees with the SE the estimate reports (ratio 0.8-1.25),
    and +-2 SE covers at least 90 % of the estimates."""
    n_all = 3000
    x0, y = poly_set(n_all, curvature=2.0, seed=1)
    grid = Grid(Axis(-1, 1, 9), Axis(-1, 1, 9))
    pts = grid.points()
    exact = np.array([(x0[:, 0] + s * x0[:, 1] + t * x0[:, 2] + s * s * x0[:, 3]).mean().item() for s, t in pts])
    plan = SamplingPlan(tolerance=0.3, n0=32, low_loss=0.0)
    errs, ses = [], []
    for seed in range(150):
        order = torch.randperm(n_all, generator=torch.Generator().manual_seed(100 + seed))
        m, setter = measure(x0[order], y, grid, plan)
        rows = run_all(m, setter, grid)
        errs.append([rows[p][0] - exact[p] for p in range(grid.size)])
        ses.append([rows[p][1] for p in range(grid.size)])
    errs, ses = np.array(errs), np.array(ses)
    ratio = np.sqrt((errs ** 2).mean(axis=0)) / np.sqrt((ses ** 2).mean(axis=0))
    assert 0.8 < np.median(ratio) < 1.25 and ratio.max() < 1.5, ratio
    covered = (np.abs(errs) <= 2 * ses).mean(axis=0)
    assert covered.min() >= 0.9, covered
    assert np.abs(errs).max() < 2 * plan.tolerance


def test_on_a_fine_grid_the_control_variate_saves_most_forwards() -> None:
    """33x33 points: the direct rule needs (2 sd / T)^2 samples at every point; coarse to fine
    spends them on the 9x9 level-0 points and little elsewhere."""
    x, y = poly_set(20000, curvature=2.0, seed=2)
    grid = Grid(Axis(-1, 1, 33), Axis(-1, 1, 33))
    m, setter = measure(x, y, grid, SamplingPlan(tolerance=0.3, n0=32, low_loss=0.0), batch=32)
    rows = run_all(m, setter, grid)
    pts = grid.points()
    per = [(x[:, 0] + s * x[:, 1] + t * x[:, 2] + s * s * x[:, 3]) for s, t in pts]
    direct = sum((2 * v.std().item() / 0.3) ** 2 for v in per)
    assert m.forwards < direct / 3, (m.forwards, direct)
    err = np.array([abs(rows[p][0] - per[p].mean().item()) for p in range(grid.size)])
    assert (err <= 2 * np.array([rows[p][1] for p in range(grid.size)])).mean() > 0.9


def test_tolerance_zero_uses_the_whole_set_and_equals_the_exact_means() -> None:
    x, y = poly_set(200, curvature=1.0)
    grid = Grid(Axis(-1, 1, 5), Axis(-1, 1, 5))
    m, setter = measure(x, y, grid, SamplingPlan(tolerance=0.0, n0=32, low_loss=0.0))
    rows = run_all(m, setter, grid)
    for p, (s, t) in enumerate(grid.points()):
        exact = (x[:, 0] + s * x[:, 1] + t * x[:, 2] + s * s * x[:, 3]).mean().item()
        assert rows[p][4] == 200 and rows[p][1] == 0.0
        assert rows[p][0] == pytest.approx(exact, rel=1e-13)


def job(ckpt, out, **kw):
    kw.setdefault("sampling", SamplingPlan(tolerance=0.3, n0=32, vmax=10.0, multilevel=True))
    return surface_job(ckpt=str(ckpt), n_samples=256, device="cpu", x=Axis(-1, 1, 9), y=Axis(-1, 1, 5), out=str(out),
                       progress=False, **kw)


def test_multilevel_job_resumes_bit_for_bit_and_counts_its_forwards(digits_ckpt, tmp_path) -> None:
    whole = run_job(job(digits_ckpt, tmp_path / "a")).surface
    assert {"train_loss_se", "train_n", "train_forwards", "train_control"} <= set(whole.metrics) and whole.done.all()
    assert whole.settings["sampling"]["multilevel"] == MULTILEVEL_SCHEME  # another scheme's file is not resumed
    assert set(np.unique(whole.metrics["train_control"])) <= {0.0, 1.0, 2.0}
    part = run_job(job(digits_ckpt, tmp_path / "b", max_points=7))  # stops inside the first levels
    assert samples_path(part.surf_file).is_file()  # the coarse points' per-sample values, for the resume
    resumed = run_job(job(digits_ckpt, tmp_path / "b")).surface
    for m in ("train_loss", "train_loss_se", "train_acc", "train_acc_se", "train_n", "train_forwards"):
        np.testing.assert_array_equal(resumed.metrics[m], whole.metrics[m], err_msg=m)
    assert not list(tmp_path.rglob("*_samples.h5"))  # the per-sample store goes when the surface is complete
    used, full = forwards_used(whole)
    assert used == whole.metrics["train_forwards"].sum() >= whole.metrics["train_n"].sum()
    assert full == 45 * 256
    # the same grid without the control variate: the plain adaptive file is not resumed by it
    with pytest.raises(LandscapeError, match="other settings"):
        run_job(job(digits_ckpt, tmp_path / "b", sampling=SamplingPlan(tolerance=0.3, n0=32, vmax=10.0)))


def test_multilevel_refuses_shards_and_a_missing_tolerance(digits_ckpt, tmp_path, plot_surface) -> None:
    from landscape.distributed import Shard

    with pytest.raises(LandscapeError, match="one process"):
        run_job(job(digits_ckpt, tmp_path / "s", shard=Shard(0, 2)))
    with pytest.raises(LandscapeError, match="--multilevel needs --tolerance"):
        plot_surface.build_job(plot_surface.parse_args(["--multilevel"]))
    plan = plot_surface.build_job(plot_surface.parse_args(["--tolerance", "0.2", "--multilevel"])).sampling
    assert plan.multilevel and plan.tolerance == 0.2


def test_a_resume_reads_the_ancestors_values_from_the_sample_store(tmp_path) -> None:
    """Stopped part-way, a coarse-to-fine run keeps its parents' per-sample values beside the
    surface; the resumed run evaluates only the samples of the points still to do (and the
    parents' extensions they need), and equals the uninterrupted run bit for bit, forwards
    included. Without the store, or with another run's, the parents' values are recomputed: the
    same estimates bit for bit, at the cost of more forwards."""
    x, y = poly_set(3000, curvature=2.0, seed=3)
    grid = Grid(Axis(-1, 1, 9), Axis(-1, 1, 9))
    plan = SamplingPlan(tolerance=0.3, n0=32, low_loss=0.0, multilevel=True)

    def run(path, **kw):
        m, setter = measure(x, y, grid, plan)
        surf = sweep(setter, {"train": m}, grid, path, {"case": 1}, run=RunOptions(progress=False, **kw))
        return surf, m.forwards

    whole, whole_forwards = run(tmp_path / "whole.h5")
    assert whole_forwards == whole.metrics["train_forwards"].sum()
    for name in ("store", "none", "other"):
        path = tmp_path / f"{name}.h5"
        part, _ = run(path, max_points=30)  # level 0 (25 points) and some of level 1
        store = samples_path(path)
        assert store.is_file() and not part.done.all()
        if name == "none":
            store.unlink()
        elif name == "other":  # a store from another run (other settings): not trusted
            m, setter = measure(x, y, grid, plan)
            sweep(setter, {"train": m}, grid, tmp_path / "o.h5", {"case": 2}, run=RunOptions(progress=False, max_points=30))
            samples_path(tmp_path / "o.h5").replace(store)
        resumed, forwards = run(path)
        for m in ("train_loss", "train_loss_se", "train_n", "train_control"):
            np.testing.assert_array_equal(resumed.metrics[m], whole.metrics[m], err_msg=f"{name}: {m}")
        new = ~part.done
        assert forwards == resumed.metrics["train_forwards"][new].sum()  # each point is charged what it cost
        if name == "store":  # nothing evaluated twice
            np.testing.assert_array_equal(resumed.metrics["train_forwards"], whole.metrics["train_forwards"])
        else:  # the recomputed parents are charged to the first points that needed them
            assert forwards > whole.metrics["train_forwards"][new].sum()
        assert not store.exists()


def test_a_torn_sample_store_is_started_afresh(tmp_path) -> None:
    x, y = poly_set(2000, curvature=1.0, seed=4)
    grid = Grid(Axis(-1, 1, 9), None)
    plan = SamplingPlan(tolerance=0.3, n0=32, low_loss=0.0, multilevel=True)
    m, setter = measure(x, y, grid, plan)
    whole = sweep(setter, {"train": m}, grid, tmp_path / "w.h5", {}, run=RunOptions(progress=False))
    m, setter = measure(x, y, grid, plan)
    sweep(setter, {"train": m}, grid, tmp_path / "t.h5", {}, run=RunOptions(progress=False, max_points=4))
    samples_path(tmp_path / "t.h5").write_bytes(b"not an HDF5 file")  # as a kill mid-write might leave it
    m, setter = measure(x, y, grid, plan)
    resumed = sweep(setter, {"train": m}, grid, tmp_path / "t.h5", {}, run=RunOptions(progress=False))
    np.testing.assert_array_equal(resumed.metrics["train_loss"], whole.metrics["train_loss"])
