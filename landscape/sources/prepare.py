"""Data ready for the engine: resident tensors on the device, or a re-iterable source of batches;
and the fingerprint that names a data set in a surface's settings.

The fingerprint is the sha256 of the samples' bytes, the same whether the samples come as two
tensors or in batches (a streamed run and a resident one of the same data resume each other).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from landscape.config import DEFAULT_MEMORY_BUDGET, DataOptions
from landscape.engine.evaluate import DEFAULT_BATCH, DEFAULT_BATCH_CUDA, map_tensors
from landscape.engine.stream import check_deterministic, split_batch
from landscape.errors import LandscapeError

Data = Any  # (x, y) tensors | Dataset | DataLoader | an iterable of (inputs, targets) batches


@dataclass
class PreparedData:
    """Data ready for an evaluator: resident tensors (x, y) or a re-iterable source of batches."""

    mode: str  # "resident" | "stream"
    x: torch.Tensor | None = None
    y: Any = None
    batches: Iterable | None = None
    description: str = ""
    size: int | None = None  # samples, where known without a pass
    source: Any = None  # what was given (tensors, Dataset, DataLoader, batches): what the fingerprint reads

    def fingerprint(self) -> tuple[int, str]:
        """(samples, sha256 of their bytes): for tensors at once, else from one pass over the batches."""
        digest = Digest()
        if isinstance(self.source, tuple):
            digest.add(*self.source)
        else:  # the data as given (not a reordered copy of it), in its own order
            batches = self.source
            if isinstance(batches, Dataset) and not isinstance(batches, DataLoader):
                batches = DataLoader(batches, batch_size=DEFAULT_BATCH, shuffle=False)
            for batch in batches:
                digest.add(*split_batch(batch))
        return digest.rows, digest.hexdigest()


class Digest:
    """sha256 of a data set's samples, batch by batch: each leaf tensor of (inputs, targets) (inside
    tuples, lists and dicts too) hashed row after row, so two tensors and the same samples in
    batches give the same digest."""

    def __init__(self) -> None:
        self.leaves: dict[str, list] = {}  # path -> [sha256, rows, trailing shape, dtype]
        self.rows = 0

    def add(self, inputs: Any, targets: Any) -> None:
        rows = None
        for path, t in _leaves((inputs, targets)):
            t = t.detach().cpu().contiguous()
            entry = self.leaves.setdefault(path, [hashlib.sha256(), 0, tuple(t.shape[1:]), str(t.dtype)])
            if (tuple(t.shape[1:]), str(t.dtype)) != (entry[2], entry[3]):
                raise LandscapeError(f"the data's batches differ in shape or dtype at {path or 'the inputs'} "
                                     f"({tuple(t.shape[1:])} {t.dtype} after {entry[2]} {entry[3]})")
            entry[0].update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            entry[1] += len(t) if t.dim() else 1
            rows = len(t) if t.dim() and rows is None else rows
        self.rows += rows or 0

    def hexdigest(self) -> str:
        h = hashlib.sha256()
        for path in sorted(self.leaves):
            sha, rows, shape, dtype = self.leaves[path]
            h.update(f"{path}|{(rows, *shape)}|{dtype}|".encode())
            h.update(sha.digest())
        return h.hexdigest()


def _leaves(obj: Any, path: str = "") -> list[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    if isinstance(obj, Mapping):
        return [leaf for k in obj for leaf in _leaves(obj[k], f"{path}/{k}")]
    if isinstance(obj, (tuple, list)):
        return [leaf for i, o in enumerate(obj) for leaf in _leaves(o, f"{path}/{i}")]
    return []


def prepare_data(data: Data, device: torch.device, batch_size: int | None = None,
                 options: DataOptions = DataOptions()) -> PreparedData:
    """Resident when `data` is tensors (or a map-style Dataset of tensors) within the memory budget
    and `options.stream` is not True; else streamed through a DataLoader (`num_workers` workers,
    pinned memory on CUDA, prefetching) or, for a DataLoader or list of batches, as given."""
    budget = DEFAULT_MEMORY_BUDGET if options.memory_budget is None else options.memory_budget
    bs = batch_size or (DEFAULT_BATCH if device.type == "cpu" else DEFAULT_BATCH_CUDA)
    stream = options.stream

    def loader(ds: Dataset, workers: int) -> DataLoader:
        return DataLoader(ds, batch_size=bs, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
                          persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
            raise LandscapeError(f"data: x has shape {tuple(x.shape)} and y {tuple(y.shape)}; pass tensors with one "
                                 "row per sample, of equal length", "data")
        what = f"tensors {tuple(x.shape)} and {tuple(y.shape)}"
        if stream or (stream is None and x.nbytes + y.nbytes > budget):
            return PreparedData("stream", batches=loader(TensorDataset(x, y), 0), description=what, size=len(x),
                                source=(x, y))
        return PreparedData("resident", x.to(device), y.to(device), description=what, size=len(x), source=(x, y))
    if isinstance(data, DataLoader):
        check_deterministic(data)
        size = len(data.dataset) if not isinstance(data.dataset, IterableDataset) else None
        return PreparedData("stream", batches=data, description=f"DataLoader over {type(data.dataset).__name__}",
                            size=size, source=data)
    if isinstance(data, IterableDataset):
        return PreparedData("stream", batches=loader(data, 0), description=f"IterableDataset {type(data).__name__}",
                            source=data)
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        what = f"Dataset {type(data).__name__} of {len(data)} samples"
        if len(data) == 0:
            raise LandscapeError(f"data: {what} is empty", "data")
        if not stream and _fits(data, budget):
            x, y = _collate_all(data, bs)
            if x is not None:
                return PreparedData("resident", x.to(device), y.to(device), description=what, size=len(x),
                                    source=(x, y))
        return PreparedData("stream", batches=loader(data, options.num_workers), description=what, size=len(data),
                            source=data)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
        check_deterministic(data)
        return PreparedData("stream", batches=data, description=f"batches from a {type(data).__name__}", source=data)
    raise LandscapeError(f"data must be a pair of tensors (x, y), a Dataset, a DataLoader or an iterable of "
                         f"(inputs, targets) batches, got {type(data).__name__}", "data")


def _fits(ds: Dataset, budget: int) -> bool:
    """Whether len(ds) samples like the first one take at most `budget` bytes."""
    first = ds[0]
    tensors = [t for t in (first if isinstance(first, (tuple, list)) else [first]) if isinstance(t, torch.Tensor)]
    return sum(t.nbytes for t in tensors) * len(ds) <= budget


def _collate_all(ds: Dataset, batch_size: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The whole data set as two tensors (inputs, targets), or (None, None) when its batches are not tensor pairs."""
    xs, ys = [], []
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False):
        x, y = split_batch(batch)
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            return None, None
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def example_inputs(prepared: Mapping[str, PreparedData], device: torch.device) -> Any:
    """The first batch's inputs of the first streamed source, on `device` (None when there is none)."""
    for p in prepared.values():
        if p.mode == "stream":
            check_deterministic(p.batches)  # a one-shot iterator must not lose a batch to this peek
            for batch in p.batches:
                return map_tensors(lambda t: t.to(device), split_batch(batch)[0])
    return None
