"""Animated optimizer paths (landscape/plot/animate.py) and `--animate` in the three scripts that draw paths."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from landscape.errors import LandscapeError
from landscape.plot.animate import (Path2D, PathAnimation, ffmpeg_available, frame_indices, frame_title,
                                    interpolate_surface, path_frames, write_animation)
from landscape.toy import OPTIMIZERS, TOY_PROBLEMS, optimize, valley_grad


def three_paths() -> list[Path2D]:
    """Paths of 4, 6 and 2 points, each with its losses (known per point) and epochs 0..n-1."""
    out = []
    for k, n in enumerate((4, 6, 2)):
        t = np.linspace(0, 1, n)
        coords = np.stack([t - 1 - k, (1 - t) * (k + 1)], axis=1)  # (n, 2): each starts elsewhere, ends at (-k, 0)
        out.append(Path2D(coords, f"opt{k}, lr 0.{k + 1}", epochs=np.arange(n), losses=10.0 ** -np.arange(n) + k,
                          name=f"opt{k}"))
    return out


def grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = np.linspace(-3.5, 0.5, 9), np.linspace(-0.5, 3.5, 7)
    gx, gy = np.meshgrid(x, y)
    return x, y, 0.1 + gx ** 2 + gy ** 2  # (7, 9)


def gif_frames(path) -> list[np.ndarray]:
    with Image.open(path) as im:
        out = []
        for k in range(im.n_frames):
            im.seek(k)
            out.append(np.asarray(im.convert("RGB"), dtype=np.int16))
        return out


# ---------------------------------------------------------------------------- frame data


def test_frame_k_shows_every_path_up_to_its_kth_point_and_short_paths_hold_at_their_end():
    idx = frame_indices([4, 6, 2])
    assert idx.shape == (6, 3)
    np.testing.assert_array_equal(idx[:, 1], np.arange(6))
    np.testing.assert_array_equal(idx[:, 0], [0, 1, 2, 3, 3, 3])
    np.testing.assert_array_equal(idx[:, 2], [0, 1, 1, 1, 1, 1])


@pytest.mark.parametrize("n, frames", [(1001, 80), (61, 60), (10, 2), (7, 7), (5, 50)])
def test_a_frame_cap_subsamples_steps_evenly_keeping_the_first_and_the_last(n, frames):
    steps = frame_indices([n], frames)[:, 0]
    assert len(steps) == min(n, frames) and steps[0] == 0 and steps[-1] == n - 1
    assert np.all(np.diff(steps) >= 1)
    gaps = np.diff(steps)
    assert gaps.max() - gaps.min() <= 1  # even


def test_first_and_last_frames_hold_the_starts_and_the_ends():
    paths = three_paths()
    frames = path_frames(paths)
    first, last = frames[0], frames[-1]
    np.testing.assert_array_equal(first.heads, [p.coords[0] for p in paths])
    assert [len(q) for q in first.points] == [1, 1, 1]
    np.testing.assert_array_equal(first.losses, [p.losses[0] for p in paths])
    np.testing.assert_array_equal(last.heads, [p.coords[-1] for p in paths])  # every path ends at its end
    for q, p in zip(last.points, paths):
        np.testing.assert_array_equal(q, p.coords)
    np.testing.assert_array_equal(last.losses, [p.losses[-1] for p in paths])
    assert last.ended.all() and not first.ended.any()
    assert frames[3].ended.tolist() == [True, False, True]  # the 4-point path ends in frame 3 and holds there
    np.testing.assert_array_equal(frames[5].heads[0], paths[0].coords[-1])


def test_title_carries_the_clock_and_each_paths_current_loss():
    paths = three_paths()
    frames = path_frames(paths)
    text = frame_title(frames[2], paths, "a plane", "loss at the point", step_name="epoch")
    assert text.splitlines()[0] == "a plane"
    assert "epoch 2 of 5; loss at the point:" in text
    for p, i in zip(paths, frames[2].index):
        assert f"{p.name} {p.losses[i]:.3g}" in text
    no_loss = [Path2D(p.coords, p.label) for p in paths]
    assert "n/a" in frame_title(path_frames(no_loss)[0], no_loss)
    assert frame_title(path_frames(no_loss)[0], no_loss, loss_name=None) == "step 0 of 5"


def test_bilinear_interpolation_is_exact_on_a_plane_and_nan_off_the_grid_or_next_to_a_missing_point():
    x, y = np.linspace(-1, 1, 5), np.linspace(0, 2, 4)
    gx, gy = np.meshgrid(x, y)
    z = 0.3 + 2 * gx - 0.5 * gy + 0.25 * gx * gy  # bilinear: reproduced exactly
    pts = np.array([[-0.9, 0.1], [0.33, 1.7], [1.0, 2.0], [0.0, 0.0]])
    expected = 0.3 + 2 * pts[:, 0] - 0.5 * pts[:, 1] + 0.25 * pts[:, 0] * pts[:, 1]
    np.testing.assert_allclose(interpolate_surface(x, y, z, pts), expected, rtol=1e-12)
    assert np.isnan(interpolate_surface(x, y, z, np.array([[1.5, 1.0]]))).all()
    masked = np.ma.masked_array(z, mask=np.zeros_like(z, dtype=bool))
    masked.mask[0, 0] = True  # (x, y) = (-1, 0) not computed
    got = interpolate_surface(x, y, masked, np.array([[-0.9, 0.1], [0.9, 1.9]]))
    assert np.isnan(got[0]) and got[1] == pytest.approx(0.3 + 1.8 - 0.95 + 0.25 * 0.9 * 1.9)


@pytest.mark.parametrize("call, match", [
    (lambda: frame_indices([3], frames=1), "--frames must be >= 2"),
    (lambda: path_frames([]), "no path"),
    (lambda: path_frames([Path2D(np.zeros((3, 2)), "a", losses=np.zeros(2))]), "3 points but 2 losses"),
    (lambda: write_animation(PathAnimation(three_paths()), "unused", fps=0), "--fps must be a positive"),
])
def test_bad_inputs_are_one_line_errors(call, match):
    from landscape.errors import as_flags
    with pytest.raises(LandscapeError) as e:
        call()
    assert match in as_flags(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------------- drawing and writing


@pytest.fixture(scope="module")
def animation_files(tmp_path_factory):
    paths = three_paths()
    x, y, z = grid()
    anim = PathAnimation(paths, x, y, z, title="three paths", loss_name="loss at the point", step_name="epoch",
                         marks=[(0.0, 0.0)])
    out = tmp_path_factory.mktemp("anim") / "three_paths"
    return paths, anim, write_animation(anim, out, fps=5)


def test_gif_has_one_frame_per_step_and_the_paths_move(animation_files):
    paths, anim, files = animation_files
    assert files.gif.is_file() and files.gif.name == "three_paths.gif" and anim.n_frames == 6
    frames = gif_frames(files.gif)
    assert len(frames) == 6
    for a, b in zip(frames, frames[1:]):
        assert np.abs(a - b).max() > 0  # every frame differs from the one before
    assert not list(files.gif.parent.glob(".*tmp*"))  # no temporary file left behind
    with Image.open(files.gif) as im:
        assert im.info["duration"] == 200  # 5 fps


def test_last_frame_draws_each_path_whole_with_a_star_at_its_end(animation_files):
    paths, anim, _ = animation_files
    anim.draw(anim.n_frames - 1)
    for line, head, p in zip(anim.lines, anim.heads, paths):
        np.testing.assert_array_equal(np.column_stack(line.get_data()), p.coords)
        np.testing.assert_array_equal(np.ravel(head.get_data()), p.coords[-1])
        assert head.get_marker() == "*"
    anim.draw(0)
    assert all(len(line.get_xdata()) == 1 for line in anim.lines)
    assert all(head.get_marker() == "o" for head in anim.heads)


def test_legend_has_one_entry_per_optimizer_and_the_title_their_losses(animation_files):
    paths, anim, _ = animation_files
    assert [t.get_text() for t in anim.legend.get_texts()] == [p.label for p in paths]
    anim.draw(anim.n_frames - 1)
    title = anim.title_artist.get_text()
    assert "three paths" in title and "epoch 5 of 5; loss at the point:" in title
    for p in paths:
        assert f"{p.name} {p.losses[-1]:.3g}" in title


def test_without_ffmpeg_the_mp4_is_skipped_with_a_note(tmp_path, monkeypatch):
    import landscape.plot.animate as animate
    monkeypatch.setattr(animate, "ffmpeg_available", lambda: False)
    files = write_animation(PathAnimation(three_paths()[:1], frames=3), tmp_path / "one", fps=4)
    assert files.mp4 is None and "ffmpeg" in files.note and not (tmp_path / "one.mp4").exists()
    assert Image.open(files.gif).n_frames == 3


@pytest.mark.skipif(not ffmpeg_available(), reason="ffmpeg is not installed: matplotlib cannot write an MP4")
def test_mp4_is_written_where_ffmpeg_exists(tmp_path):
    files = write_animation(PathAnimation(three_paths(), frames=4), tmp_path / "three", fps=4)
    assert files.mp4 == tmp_path / "three.mp4" and files.note is None
    data = files.mp4.read_bytes()
    assert len(data) > 1000 and data[4:8] == b"ftyp"  # an ISO media file


# ---------------------------------------------------------------------------- the toy optimizers


@pytest.mark.parametrize("optimizer, momentum", [(o, 0.0) for o in OPTIMIZERS] + [("sgd", 0.9), ("rmsprop", 0.5)])
def test_toy_optimizers_follow_the_torch_optimizers_of_the_real_comparison(optimizer, momentum):
    import torch
    from landscape.train import TrainConfig, make_optimizer
    start, lr, steps = np.array([-4.0, 1.8]), 0.05, 40
    ours = optimize(valley_grad, start, optimizer, lr, steps, momentum)
    p = torch.nn.Parameter(torch.tensor(start))
    opt = make_optimizer([p], TrainConfig(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=0.0))
    ref = [start]
    for _ in range(steps):
        p.grad = torch.from_numpy(valley_grad(p.detach().numpy()))
        opt.step()
        ref.append(p.detach().numpy().copy())
    np.testing.assert_allclose(ours, np.array(ref), rtol=1e-12, atol=1e-12)


def test_toy_paths_start_together_and_carry_f_at_every_point():
    for prob in TOY_PROBLEMS.values():
        for p in prob.paths():
            assert tuple(p.coords[0]) == prob.start and len(p.coords) == prob.steps + 1
            np.testing.assert_array_equal(p.losses, prob.f(p.coords[:, 0], p.coords[:, 1]))
    adam = optimize(valley_grad, np.array([-4.0, 1.8]), "adam", 0.3, 1)
    np.testing.assert_allclose(adam[1], [-3.7, 1.5], atol=1e-8)  # Adam's first step: lr * sign(g)
    with pytest.raises(LandscapeError, match="optimizer must be one of"):
        optimize(valley_grad, np.zeros(2), "lbfgs", 0.1, 3)


# ---------------------------------------------------------------------------- the scripts, end to end


def test_toy_script_animates_a_problem(script, tmp_path, capsys):
    mod = script("toy_optimizers")
    mod.main(["--animate", "--problems", "saddle", "--frames", "5", "--fps", "8", "--out", str(tmp_path)])
    gif = tmp_path / "toy_saddle_paths.gif"
    frames = gif_frames(gif)
    assert len(frames) == 5 and np.abs(frames[0] - frames[-1]).max() > 0
    assert not (tmp_path / "toy_ascent.png").exists()  # --animate draws the animations only
    assert ("toy_saddle_paths.mp4" in capsys.readouterr().out) == ffmpeg_available()
    with pytest.raises(SystemExit):
        mod.main(["--animate", "--only", "toy_ascent", "--out", str(tmp_path)])


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """compare_optimizers.py --animate on a tiny budget: SGD and Adam, 2 epochs on 64 digits, a 3x3 surface."""
    from conftest import load_script
    out = tmp_path_factory.mktemp("compare")
    res = load_script("compare_optimizers").main(
        ["--optimizers", "SGD", "Adam", "--epochs", "2", "--n-train", "64", "--batch-size", "32", "--num", "3",
         "--n-samples", "32", "--device", "cpu", "--animate", "--fps", "3", "--out", str(out)])
    return out, res


def test_compare_optimizers_animate_writes_one_frame_per_epoch_with_both_optimizers(compared):
    out, res = compared
    files = res["animation"]
    assert files.gif == out / "compare_optimizers_paths.gif"
    frames = gif_frames(files.gif)
    assert len(frames) == 3  # epochs 0, 1, 2
    assert np.abs(frames[0] - frames[-1]).max() > 0
    assert (files.mp4 is not None) == ffmpeg_available()


def test_compare_optimizers_animation_losses_are_the_surface_at_the_projected_points(compared):
    from landscape.storage import read_surface
    from landscape.trajectory import read_projection, trajectory_animation
    out, res = compared
    surf = read_surface(res["surf_file"])
    paths = [Path2D(read_projection(out / f"{slug}_proj.h5")[0], slug, name=slug) for slug in ("sgd", "adam")]
    anim = trajectory_animation(surf.x, surf.y, surf.masked("train_loss"), paths, res["ratio"])
    assert [t.get_text() for t in anim.legend.get_texts()] == ["sgd", "adam"]
    anim.draw(anim.n_frames - 1)
    title = anim.title_artist.get_text()
    # Adam is not the reference point of the plane (the run with the lowest loss is), but each end point
    # is inside the grid: its loss is the bilinear value of the surface there
    for p in paths:
        v = interpolate_surface(surf.x, surf.y, surf.masked("train_loss"), p.coords[-1:])[0]
        assert np.isfinite(v) and f"{p.name} {v:.3g}" in title


def test_plot_trajectory_animate_on_a_compared_run(script, compared, tmp_path):
    out, _ = compared
    res = script("plot_trajectory").main(
        ["--model_folder", str(out / "sgd"), "--final", str(out / "sgd" / "final.pt"), "--num", "3",
         "--n-samples", "32", "--device", "cpu", "--animate", "--frames", "2", "--out", str(tmp_path)])
    files = res["animation"]
    assert files.gif == tmp_path / "final_paths.gif"
    assert len(gif_frames(files.gif)) == 2  # 3 snapshots capped at 2 frames: the first and the last
