"""One spine: the same job through any door writes the same file, and any door finishes a file
another began, bit for bit equal to an uninterrupted run.

The doors: the command line with a checkpoint; the command line with plug-ins (the model and data
from the user's own file); the command line streaming its data; the Python API with tensors; the
Python API with a DataLoader. The job: the test checkpoint (a digits ResNet-20) on a seeded subset
of 64 of the 1,437 training digits with error bars against the whole split (what --n-samples
gives), a 3 x 2 grid, cross-entropy and accuracy, directions from seed 0.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

import landscape as ll
from landscape.sources.checkpoint import build_model, load_checkpoint
from landscape.sources.data import DEFAULT_NORMALIZATION, load_dataset
from landscape.storage import read_surface

GRID = ["--x=-1:1:3", "--y=-1:1:2"]
DOORS = ("cli", "cli_plugins", "cli_stream", "api", "api_loader")

DEFS = '''
import landscape.metrics
from landscape.models import get_model
from landscape.sources.data import DEFAULT_NORMALIZATION, load_dataset


def make_model():
    return get_model("resnet20", num_classes=10, in_channels=1)


def digits(split):
    d = load_dataset("digits", split)
    return DEFAULT_NORMALIZATION["digits"].apply(d.x), d.y
'''


@pytest.fixture(scope="module")
def job(tmp_path_factory, digits_ckpt):
    folder = tmp_path_factory.mktemp("doors")
    defs = folder / "defs.py"
    defs.write_text(DEFS)
    model, _, _ = build_model(load_checkpoint(digits_ckpt))
    d = load_dataset("digits", "train", n_samples=64, seed=0)
    data = (DEFAULT_NORMALIZATION["digits"].apply(d.x), d.y)
    return {"ckpt": digits_ckpt, "defs": defs, "model": model, "data": data, "population": d.population}


def run(door: str, job: dict, path: Path, plot_surface, max_points: int | None = None):
    """Compute (or continue) the job's surface at `path` through `door`."""
    more = ["--max-points", str(max_points)] if max_points is not None else []
    base = [*GRID, "--surf_file", str(path), "--no-progress", *more]
    if door == "cli":
        assert plot_surface.main(["--ckpt", str(job["ckpt"]), "--n-samples", "64", *base]) == 0
    elif door == "cli_plugins":
        assert plot_surface.main(["--model-def", f"{job['defs']}:make_model", "--ckpt", str(job["ckpt"]),
                                  "--data-def", f"{job['defs']}:digits", "--n-samples", "64", "--metric-def",
                                  "acc=landscape.metrics:accuracy", *base]) == 0
    elif door == "cli_stream":
        assert plot_surface.main(["--ckpt", str(job["ckpt"]), "--n-samples", "64", "--stream", "--points-per-pass",
                                  "2", *base]) == 0
    else:
        data = job["data"]
        if door == "api_loader":
            data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data), batch_size=64)
        ll.compute_surface(job["model"], data, metrics={"acc": ll.metrics.accuracy}, x=ll.Axis(-1, 1, 3),
                           y=ll.Axis(-1, 1, 2), seed=0, out=path, sampling=ll.SamplingPlan(),
                           populations={"train": job["population"]},
                           run=ll.RunOptions(progress=False, max_points=max_points))
    return read_surface(path)


def test_every_door_writes_the_same_file(job, plot_surface, tmp_path):
    """The same job through each door: the same settings, bit for bit the same values."""
    surfaces = {door: run(door, job, tmp_path / f"{door}.h5", plot_surface) for door in DOORS}
    ref = surfaces["cli"]
    assert ref.done.all() and set(ref.metrics) == {"train_loss", "train_acc", "train_loss_se", "train_acc_se",
                                                   "train_n"}
    for door, surf in surfaces.items():
        assert surf.settings == ref.settings, door
        for m in ref.metrics:
            assert surf.metrics[m].tobytes() == ref.metrics[m].tobytes(), (door, m)
    assert surfaces["cli_stream"].attrs["evaluation"] == {"train": "stream"}
    assert surfaces["api_loader"].attrs["evaluation"] == {"train": "stream"}
    assert surfaces["cli"].attrs["checkpoint"] == str(job["ckpt"])  # where it came from: attributes, not settings


@pytest.mark.parametrize("begin, finish", list(itertools.permutations(DOORS, 2)))
def test_a_file_begun_by_one_door_is_finished_by_another(job, plot_surface, tmp_path, begin, finish):
    ref = run("cli", job, tmp_path / "ref.h5", plot_surface)
    path = tmp_path / "s.h5"
    part = run(begin, job, path, plot_surface, max_points=2)
    assert int(part.done.sum()) == 2
    done = run(finish, job, path, plot_surface)
    assert done.done.all() and done.settings == ref.settings
    for m in ref.metrics:
        assert done.metrics[m].tobytes() == ref.metrics[m].tobytes(), m
    runs = done.attrs["runs"]
    assert [r["points"] for r in (json.loads(runs) if isinstance(runs, str) else runs)] == [2, 4]
