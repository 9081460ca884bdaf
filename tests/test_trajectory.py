"""Trajectory PCA, projection, the PCA surface, and 1-D interpolation end points (landscape/trajectory.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from landscape.sources.checkpoint import build_model, load_checkpoint, save_checkpoint
from landscape.sources.data import DEFAULT_NORMALIZATION, load_dataset
from landscape.directions import DirectionSpec, load_directions
from landscape.errors import LandscapeError
from landscape.engine.evaluate import Evaluator
from landscape.grid import Axis
from conftest import surface_job
from landscape.surface import run_job
from landscape.trajectory import (covering_axes, path_length, project_trajectory, read_projection, snapshot_paths,
                                  trajectory_pca, write_projection)



def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))


def flat(ts, keep) -> torch.Tensor:
    return torch.cat([ts[i].detach().reshape(-1).double() for i in keep])


def set_flat(model: nn.Module, vec: torch.Tensor, keep) -> None:
    params = list(model.parameters())
    a = 0
    with torch.no_grad():
        for i in keep:
            n = params[i].numel()
            params[i].copy_(vec[a:a + n].view_as(params[i]))
            a += n


def write_path(folder: Path, model: nn.Module, points: list[torch.Tensor], keep, noise_1d: bool = True) -> list[Path]:
    """Save model_<i>.pt with the kept tensors at points[i]; 1-D tensors get noise (they must be ignored)."""
    g = torch.Generator().manual_seed(1)
    paths = []
    for i, v in enumerate(points):
        m = tiny_net()
        m.load_state_dict(model.state_dict())
        set_flat(m, v, keep)
        if noise_1d:
            with torch.no_grad():
                for p in m.parameters():
                    if p.dim() <= 1:
                        p.add_(torch.randn(p.shape, generator=g))
        paths.append(folder / f"model_{i}.pt")
        save_checkpoint(paths[-1], m, {"epoch": i})
    return paths


@pytest.fixture
def planar(tmp_path):
    """A path theta_f + a_i e1 + b_i e2 in a known plane (e1, e2 orthonormal over the >1-D tensors)."""
    torch.manual_seed(0)
    final = tiny_net()
    keep = [i for i, p in enumerate(final.parameters()) if p.dim() > 1]
    theta_f = flat(list(final.parameters()), keep)
    q, _ = torch.linalg.qr(torch.randn(theta_f.numel(), 2, dtype=torch.float64))
    e1, e2 = q[:, 0], q[:, 1]
    t = np.linspace(0, 1, 7)
    ab = np.stack([3 * (1 - t) ** 2 + 0.2 * np.sin(5 * t), -1.5 * (1 - t) + 0.5 * t * (1 - t)], axis=1)  # (7, 2)
    ab[-1] = 0  # the last snapshot is the final weights
    points = [theta_f + float(a) * e1 + float(b) * e2 for a, b in ab]
    paths = write_path(tmp_path, final, points, keep)
    return final, keep, (e1, e2), ab, paths


def test_pca_of_a_planar_path_recovers_its_coordinates_exactly(planar):
    final, keep, (e1, e2), ab, paths = planar
    pca = trajectory_pca(paths, paths[-1], final)
    dx, dy = pca.directions.x, pca.directions.y
    # every 1-D tensor (biases, BN) is zero in both directions, although the snapshots' moved
    for p, a, b in zip(final.parameters(), dx, dy):
        if p.dim() <= 1:
            assert not a.any() and not b.any()
    # the plane is the known one: the directions lie in span(e1, e2)
    basis = torch.stack([e1, e2], 1)  # (p, 2)
    for d in (flat(dx, keep), flat(dy, keep)):
        assert torch.linalg.norm(d - basis @ (basis.T @ d)) < 1e-6
    assert pca.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-9)
    coords = project_trajectory(paths, final, pca.directions)  # (7, 2), streamed
    np.testing.assert_allclose(coords, pca.coords, atol=1e-5)  # the Gram matrix gives the same numbers
    # coordinates recovered: c = ab R with R orthogonal (a rotation or reflection of e1, e2)
    r, *_ = np.linalg.lstsq(ab, coords, rcond=None)
    np.testing.assert_allclose(ab @ r, coords, atol=1e-5)
    np.testing.assert_allclose(r.T @ r, np.eye(2), atol=1e-5)
    np.testing.assert_allclose(coords[-1], 0.0, atol=1e-6)  # the final weights are the origin
    assert coords[0, 0] < 0 and coords[0, 1] < 0  # the fixed orientation: the path starts at negative coordinates


def test_pca_directions_are_orthonormal_and_match_a_dense_svd(tmp_path):
    torch.manual_seed(3)
    final = tiny_net()
    keep = [i for i, p in enumerate(final.parameters()) if p.dim() > 1]
    theta_f = flat(list(final.parameters()), keep)
    g = torch.Generator().manual_seed(4)
    steps = torch.randn(6, theta_f.numel(), generator=g, dtype=torch.float64) * torch.linspace(1, 0.2, 6)[:, None]
    walk = [theta_f + steps[i:].sum(0) for i in range(6)] + [theta_f]  # a random walk ending at theta_f
    paths = write_path(tmp_path, final, walk, keep)
    pca = trajectory_pca(paths, paths[-1], final)
    d = torch.stack([flat(pca.directions.x, keep), flat(pca.directions.y, keep)])  # (2, p)
    np.testing.assert_allclose((d @ d.T).numpy(), np.eye(2), atol=1e-6)
    ratio = pca.explained_variance_ratio
    assert 0 < ratio[1] <= ratio[0] and ratio.sum() <= 1.0
    # the dense computation it replaces: SVD of the centered (n, p) matrix of u_i (stored float32 values)
    names = [n for n, _ in final.named_parameters()]
    u = torch.stack([torch.cat([load_checkpoint(p).state_dict[names[i]].reshape(-1).double() for i in keep])
                     for p in paths]) - flat(list(final.parameters()), keep)
    uc = (u - u.mean(0)).numpy()
    _, s, vt = np.linalg.svd(uc, full_matrices=False)
    np.testing.assert_allclose(ratio, (s ** 2 / (s ** 2).sum())[:2], rtol=1e-9)
    np.testing.assert_allclose(pca.explained_variance, (s ** 2 / (len(paths) - 1))[:2], rtol=1e-9)
    for k in range(2):
        assert abs(float(d[k].numpy() @ vt[k])) == pytest.approx(1.0, abs=1e-6)


def test_snapshots_are_streamed_in_blocks_of_at_most_chunk_elements(planar):
    final, keep, _, _, paths = planar
    whole = trajectory_pca(paths, paths[-1], final)
    n, p = len(paths), sum(final_p.numel() for i, final_p in enumerate(final.parameters()) if i in keep)
    assert whole.peak_block_elements == n * max(q.numel() for q in final.parameters())  # one tensor at a time
    assert whole.peak_block_elements < n * p  # never the dense (n, n_params) matrix
    small = trajectory_pca(paths, paths[-1], final, chunk_elements=70)
    assert small.peak_block_elements <= 70
    np.testing.assert_allclose(small.gram, whole.gram, rtol=1e-12)
    for a, b in zip(small.directions.x + small.directions.y, whole.directions.x + whole.directions.y):
        torch.testing.assert_close(a, b)


def test_snapshot_paths_follow_the_reference_loop_and_name_a_missing_file(tmp_path):
    for e in (0, 2, 4, 6):
        (tmp_path / f"model_{e}.pt").write_bytes(b"")
    got = snapshot_paths(tmp_path, start_epoch=0, save_epoch=2)
    assert [e for e, _ in got] == [0, 2, 4, 6]
    assert [e for e, _ in snapshot_paths(tmp_path, start_epoch=2, max_epoch=4, save_epoch=2)] == [2, 4]
    with pytest.raises(LandscapeError, match="model_1.pt"):
        snapshot_paths(tmp_path, start_epoch=0, max_epoch=6, save_epoch=1)
    with pytest.raises(LandscapeError, match="not a folder"):
        snapshot_paths(tmp_path / "nope")


def test_too_few_or_degenerate_snapshots_are_one_line_errors(tmp_path):
    final = tiny_net()
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"model_{i}.pt")
        save_checkpoint(paths[-1], final, {})
    with pytest.raises(LandscapeError, match="at least 3 snapshots"):
        trajectory_pca(paths[:2], paths[-1], final)
    with pytest.raises(LandscapeError, match="fewer than 2 dimensions"):
        trajectory_pca(paths, paths[-1], final)


def test_projection_file_round_trip_and_covering_axes(tmp_path):
    coords = np.array([[-3.0, -1.0], [-1.0, 0.5], [0.0, 0.0]])
    path = write_projection(tmp_path / "d_proj.h5", coords, [0, 5, 10])
    back, epochs = read_projection(path)
    np.testing.assert_array_equal(back, coords)
    assert epochs.tolist() == [0, 5, 10]
    ax, ay = covering_axes(coords, num=11, margin=0.1)
    assert (ax.min, ax.max, ax.num) == pytest.approx((-3.3, 0.3, 11))
    assert (ay.min, ay.max) == pytest.approx((-1.15, 0.65))


def test_path_length_sums_the_steps_over_the_kept_tensors(planar):
    final, keep, (e1, e2), ab, paths = planar
    expected = np.linalg.norm(np.diff(ab, axis=0), axis=1).sum()  # e1, e2 orthonormal: plane distances
    assert path_length(paths, final) == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------------------- with the surface engine


@pytest.fixture(scope="module")
def trained_snapshots(tmp_path_factory):
    """A ResNet-20 trained 4 epochs on 128 digits, with model_<epoch>.pt snapshots and final.pt."""
    from landscape.models import get_model
    from landscape.train import TrainConfig, train
    folder = tmp_path_factory.mktemp("traj")
    tr = load_dataset("digits", "train", n_samples=128, seed=0)
    norm = DEFAULT_NORMALIZATION["digits"]
    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10, in_channels=1)
    meta = {"arch": "resnet20", "num_classes": 10, "in_channels": 1, "dataset": "digits",
            "normalization": norm.to_dict()}

    def snap(epoch, m, metrics):
        save_checkpoint(folder / f"model_{epoch}.pt", m, {**meta, "epoch": epoch})

    train(model, tr, norm, TrainConfig(epochs=4, lr=0.05, batch_size=32, save_every=1), snapshot=snap, progress=False)
    return folder


def test_plot_trajectory_script_end_to_end(script, trained_snapshots, tmp_path):
    mod = script("plot_trajectory")
    out = mod.main(["--model_folder", str(trained_snapshots), "--start_epoch", "0", "--max_epoch", "4",
                    "--save_epoch", "1", "--n-samples", "64", "--num", "4", "--device", "cpu",
                    "--out", str(tmp_path)])
    dirs = load_directions(out["dir_file"])
    assert dirs.attrs["kind"] == "pca" and len(dirs.x) == len(list(build_model(load_checkpoint(
        trained_snapshots / "model_4.pt"))[0].parameters()))
    ratio = out["ratio"]
    assert 0 < ratio.sum() <= 1
    coords, epochs = read_projection(out["proj_file"])
    assert epochs.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(coords[-1], 0, atol=1e-9)
    from landscape.storage import read_surface
    surf = read_surface(out["surf_file"])
    assert surf.done.all() and surf.shape == (4, 4)
    # the grid covers the whole path
    assert surf.x.min() < coords[:, 0].min() and surf.x.max() > coords[:, 0].max()
    assert surf.y.min() < coords[:, 1].min() and surf.y.max() > coords[:, 1].max()
    assert out["figure"].stat().st_size > 10_000


def test_interpolation_end_points_are_the_two_checkpoints_own_losses(trained_snapshots, tmp_path):
    a, b = trained_snapshots / "model_1.pt", trained_snapshots / "model_4.pt"
    res = run_job(surface_job(ckpt=str(a), ckpt2=str(b), x=Axis(0, 1, 2), y=None, n_samples=64, device="cpu",
                              xspec=DirectionSpec(dir_type="states"), out=str(tmp_path), progress=False))
    data = load_dataset("digits", "train", n_samples=64, seed=0)
    x = DEFAULT_NORMALIZATION["digits"].apply(data.x)
    own = [Evaluator(build_model(load_checkpoint(p))[0], x, data.y)() for p in (a, b)]
    assert own[0][0] != pytest.approx(own[1][0], rel=1e-3)  # the two ends differ: the check means something
    for k, (loss, acc) in enumerate(own):
        assert res.surface.metrics["train_loss"][k] == pytest.approx(loss, rel=1e-6, abs=1e-6)
        assert res.surface.metrics["train_acc"][k] == acc


# ---------------------------------------------------------------------------- BN re-estimation (landscape/bn.py)


def bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2),
                         nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


def test_bn_recompute_on_an_interpolation_path_gives_the_hand_computed_batch_statistics(tmp_path):
    import torch.nn.functional as F
    from landscape.engine.bn import BNRecomputeSetter
    from landscape.directions import interpolation_direction, target_tensors
    from landscape.engine.evaluate import PointSetter
    from landscape.config import RunOptions
    from landscape.sweep import sweep
    from landscape.grid import Grid
    torch.manual_seed(0)
    a, b = bn_net(), bn_net()
    for m in (a, b):  # running statistics of the checkpoints, far from what the data gives
        m[1].running_mean.fill_(5.0)
        m[4].running_var.fill_(9.0)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (20,), generator=g)
    model = bn_net()
    model.load_state_dict(a.state_dict())
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tensors = [t for _, t in target_tensors(model, "weights")]
    setter = BNRecomputeSetter(PointSetter(tensors, [interpolation_direction(
        tensors, [t for _, t in target_tensors(b, "weights")])]), model, x, batch_size=8)  # batches of 7, 7, 6

    setter.set([0.5])
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    mid = {k: ((pa[k] + pb[k]) / 2).detach() for k in pa}
    means1, vars1, means2, vars2 = [], [], [], []
    for xb in torch.tensor_split(x, 3):  # by hand: each batch normalized with its own statistics (train mode)
        h1 = F.conv2d(xb, mid["0.weight"], mid["0.bias"])
        m1, v1 = h1.mean((0, 2, 3)), h1.var((0, 2, 3), unbiased=True)
        a1 = F.relu((h1 - m1.view(1, -1, 1, 1)) / torch.sqrt(h1.var((0, 2, 3), unbiased=False) + 1e-5).view(1, -1, 1, 1)
                    * mid["1.weight"].view(1, -1, 1, 1) + mid["1.bias"].view(1, -1, 1, 1))
        h2 = F.conv2d(a1, mid["3.weight"], mid["3.bias"])
        means1.append(m1)
        vars1.append(v1)
        means2.append(h2.mean((0, 2, 3)))
        vars2.append(h2.var((0, 2, 3), unbiased=True))
    torch.testing.assert_close(model[1].running_mean, torch.stack(means1).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var, torch.stack(vars1).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[4].running_mean, torch.stack(means2).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[4].running_var, torch.stack(vars2).mean(0), rtol=1e-5, atol=1e-6)
    assert not model.training and model[1].momentum == 0.1  # modes and momenta are put back
    for k, v in mid.items():
        torch.testing.assert_close(dict(model.named_parameters())[k].detach(), v)
    # the eval-mode loss at the point uses the re-estimated statistics
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y).item()
    setter.restore()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # weights and the checkpoint's statistics, bit for bit

    surf = sweep(setter, {"train": Evaluator(model, x, y)}, Grid(Axis(0, 1, 3)), tmp_path / "s.h5", {"test": 1}, run=RunOptions(progress=False))
    assert surf.metrics["train_loss"][1] == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():
        stale = F.cross_entropy(model(x), y).item()  # center statistics, no re-estimation
    assert surf.metrics["train_loss"][0] != pytest.approx(stale, rel=1e-3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bn_recompute_refuses_a_model_without_batchnorm_and_tiny_batches():
    from landscape.engine.bn import BNRecomputeSetter, recompute_bn_
    from landscape.engine.evaluate import PointSetter
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    setter = PointSetter(list(net.parameters()), [[torch.zeros_like(p) for p in net.parameters()]])
    with pytest.raises(LandscapeError, match="no BatchNorm|has none"):
        BNRecomputeSetter(setter, net, torch.zeros(4, 1, 2, 2))
    with pytest.raises(LandscapeError, match="at least 2 samples"):
        recompute_bn_(bn_net(), torch.zeros(4, 1, 8, 8), batch_size=1)


# ---------------------------------------------------------------------------- optimizers on one plane


def test_compare_optimizers_script_on_a_tiny_budget(script, tmp_path, capsys):
    mod = script("compare_optimizers")
    argv = ["--optimizers", "SGD", "Adam", "CalibratedAdam", "--epochs", "2", "--n-train", "96", "--num", "3",
            "--n-samples", "32", "--device", "cpu", "--out", str(tmp_path)]
    out = mod.main(argv)
    rows = {r["optimizer"]: r for r in out["rows"]}
    assert set(rows) == {"SGD", "Adam", "CalibratedAdam"}
    # every run starts from the same initial weights
    inits = [load_checkpoint(tmp_path / slug / "model_0.pt").state_dict for slug in ("sgd", "adam", "calibratedadam")]
    for k in inits[0]:
        assert torch.equal(inits[0][k], inits[1][k]) and torch.equal(inits[0][k], inits[2][k])
    # path lengths from the Gram matrix equal the ones streamed from the snapshots
    model = build_model(load_checkpoint(tmp_path / "sgd" / "final.pt"))[0]
    for slug, label in (("sgd", "SGD"), ("adam", "Adam")):
        snaps = [tmp_path / slug / f"model_{e}.pt" for e in range(2)] + [tmp_path / slug / "final.pt"]
        assert rows[label]["path_length"] == pytest.approx(path_length(snaps, model), rel=1e-6)
        assert 0 < rows[label]["variance_captured"] <= 1 + 1e-9
    assert 0 < out["ratio"].sum() <= 1
    table = (tmp_path / "compare_optimizers.md").read_text()
    assert table.count("\n| ") == 4  # header + 3 runs
    # a rerun reuses the trained runs and the surface
    capsys.readouterr()
    mod.main(argv)
    assert capsys.readouterr().out.count("reusing") == 3
