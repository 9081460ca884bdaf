"""Streaming evaluation (one pass over a DataLoader per block of K points) against resident evaluation."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import landscape as ll
from landscape.errors import LandscapeError
from landscape.engine.evaluate import Evaluator, batch_sums
from landscape.engine.stream import StreamEvaluator
from conftest import api_kwargs

GRID = dict(x=ll.Axis(-1, 1, 4), y=ll.Axis(-0.5, 0.5, 3))


def small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(90, 1, 8, 8, generator=g), torch.randint(0, 10, (90,), generator=g)


def surface(model, data, tmp_path, name, **kw):
    kw = {"metrics": {"acc": ll.metrics.accuracy}, "batch_size": 32, "progress": False, **GRID, **kw}
    return ll.compute_surface(model, data, out=tmp_path / f"{name}.h5", **api_kwargs(**kw))


def test_stream_equals_resident_for_k_1_and_k_3(data, tmp_path):
    model = small_cnn()
    resident = surface(model, data, tmp_path, "r")
    assert resident.attrs["evaluation"] == {"train": "resident"}
    for k in (1, 3):
        s = surface(model, data, tmp_path, f"s{k}", stream=True, points_per_pass=k)
        assert s.attrs["evaluation"] == {"train": "stream"} and s.attrs["points_per_pass"] == k
        for m in ("train_loss", "train_acc"):
            np.testing.assert_allclose(s.metrics[m], resident.metrics[m], rtol=1e-6, atol=0)
            # same batches, same order, a point's sums independent of its block: equal bit for bit
            assert np.array_equal(s.metrics[m], resident.metrics[m])


def test_stream_with_other_batch_size_agrees_to_1e6(data, tmp_path):
    model = small_cnn()
    resident = surface(model, data, tmp_path, "r", batch_size=90)
    loader = DataLoader(TensorDataset(*data), batch_size=7, shuffle=False)  # a DataLoader streams
    s = surface(model, loader, tmp_path, "s", points_per_pass=5)
    assert s.attrs["evaluation"] == {"train": "stream"}
    np.testing.assert_allclose(s.metrics["train_loss"], resident.metrics["train_loss"], rtol=1e-6)
    assert np.array_equal(s.metrics["train_acc"], resident.metrics["train_acc"])


def test_streamed_resume_equals_uninterrupted(data, tmp_path):
    model = small_cnn()
    whole = surface(model, data, tmp_path, "whole", stream=True, points_per_pass=4)
    part = surface(model, data, tmp_path, "part", stream=True, points_per_pass=4, max_points=5)
    assert part.done.sum() == 5
    rest = surface(model, data, tmp_path, "part", stream=True, points_per_pass=4)
    assert rest.done.all()
    for m in ("train_loss", "train_acc"):
        assert np.array_equal(rest.metrics[m], whole.metrics[m])
    # a file begun streamed continues resident (the mode is not a setting; values agree to rounding)
    surface(model, data, tmp_path, "mixed", stream=True, points_per_pass=2, max_points=4)
    mixed = surface(model, data, tmp_path, "mixed")
    np.testing.assert_allclose(mixed.metrics["train_loss"], whole.metrics["train_loss"], rtol=1e-6)


class Images(Dataset):
    """A map-style data set that is larger than the memory budget of the test."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_dataset_over_the_memory_budget_is_streamed(data, tmp_path):
    model = small_cnn()
    resident = surface(model, Images(*data), tmp_path, "r")
    assert resident.attrs["evaluation"] == {"train": "resident"}
    s = surface(model, Images(*data), tmp_path, "s", memory_budget=1000, points_per_pass=6)
    assert s.attrs["evaluation"] == {"train": "stream"}
    assert np.array_equal(s.metrics["train_loss"], resident.metrics["train_loss"])


def test_shuffling_loader_and_one_shot_iterator_are_refused(data, tmp_path):
    model = small_cnn()
    shuffled = DataLoader(TensorDataset(*data), batch_size=10, shuffle=True)
    with pytest.raises(LandscapeError, match="shuffle=False"):
        surface(model, shuffled, tmp_path, "a")
    batches = ((data[0][i:i + 10], data[1][i:i + 10]) for i in range(0, 90, 10))
    with pytest.raises(LandscapeError, match="iterator.*read only once"):
        surface(model, batches, tmp_path, "b")
    # a list of batches is re-iterable: fine, and equal to the tensors themselves
    as_list = [(data[0][i:i + 32], data[1][i:i + 32]) for i in range(0, 90, 32)]
    s = surface(model, as_list, tmp_path, "c", points_per_pass=12)
    assert np.array_equal(s.metrics["train_loss"], surface(model, data, tmp_path, "d").metrics["train_loss"])


def test_batch_sums_per_sample_trailing_dims_and_batch_means():
    out = torch.tensor([[1.0, 3.0], [2.0, 6.0], [0.0, 0.0]])  # (N=3, T=2) per-token values
    per_token = batch_sums(out, None, 3, [lambda o, t: o], ["f"])
    assert per_token.tolist() == [[2.0 + 4.0 + 0.0, 4.0 + 16.0 + 0.0]]  # per-sample means 2, 4, 0
    mean = batch_sums(out, None, 3, [lambda o, t: o.mean()], ["f"])
    assert mean.tolist() == [[3 * 2.0, 3 * 4.0]]  # the batch mean 2 counts 3 times
    with pytest.raises(LandscapeError, match=r"f gave values of shape \(2,\) for a batch of 3"):
        batch_sums(out, None, 3, [lambda o, t: o[:2, 0]], ["f"])


def test_mean_returning_loss_is_weighted_by_batch_size(data):
    model = small_cnn().eval()
    per_sample = Evaluator(model, *data, ll.losses.cross_entropy, batch_size=32, metrics={})()
    mean_loss = lambda out, y: ll.losses.cross_entropy(out, y).mean()  # noqa: E731
    stream = StreamEvaluator(model, DataLoader(TensorDataset(*data), batch_size=32), mean_loss, metrics={})
    assert stream()[0] == pytest.approx(per_sample[0], rel=1e-6)  # batches of 32, 32, 26
    assert len(stream) == 90
    assert stream.batch_means == {"loss"}  # a mean: its standard error would not be a per-sample one
    resident = Evaluator(model, *data, mean_loss, batch_size=32)
    assert resident()[0] == pytest.approx(per_sample[0], rel=1e-6) and resident.batch_means == {"loss"}


def test_dict_and_tuple_inputs_are_spread_into_the_model(tmp_path):
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, ids, mask):
            return self.lin(ids * mask)

    torch.manual_seed(0)
    model = Masked()
    g = torch.Generator().manual_seed(0)
    ids, mask, y = torch.randn(24, 4, generator=g), (torch.rand(24, 4, generator=g) > 0.3).float(), torch.arange(24) % 3
    as_dict = [({"ids": ids[i:i + 8], "mask": mask[i:i + 8]}, y[i:i + 8]) for i in range(0, 24, 8)]
    as_tuple = [((ids[i:i + 8], mask[i:i + 8]), y[i:i + 8]) for i in range(0, 24, 8)]
    kw = {"x": ll.Axis(-1, 1, 3), "y": None, "progress": False, "points_per_pass": 2}
    a = ll.compute_surface(model, as_dict, **api_kwargs(**kw))
    b = ll.compute_surface(model, as_tuple, **api_kwargs(**kw))
    plain = nn.Sequential(nn.Linear(4, 3))
    plain[0].load_state_dict(model.lin.state_dict())
    c = ll.compute_surface(plain, (ids * mask, y), **api_kwargs(batch_size=8, **kw))
    assert np.array_equal(a.metrics["train_loss"], b.metrics["train_loss"])
    np.testing.assert_allclose(a.metrics["train_loss"], c.metrics["train_loss"], rtol=1e-6)
