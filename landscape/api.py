"""The Python API: the loss surface of any `nn.Module` on any data with any loss, in one call.

    import landscape as ll
    surf = ll.compute_surface(model, (x, y), loss=ll.losses.cross_entropy,
                              metrics={"acc": ll.metrics.accuracy},
                              x=ll.Axis(-1, 1, 51), y=ll.Axis(-1, 1, 51), seed=0, out="runs/my.h5")
    surf.plot_contour()

The command line (`scripts/plot_surface.py --model-def ... --data-def ...`) is a thin layer
over `compute_surface` here; both give the same file for the same settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from landscape import surface as _surface
from landscape.sampling.adaptive import SampledBlockMeasure, SampledMeasure, SamplingPlan, sample_order, stratify_sets
from landscape.directions import (Direction, Directions, DirectionSpec, load_directions, make_directions,
                                  save_directions, target_tensors)
from landscape.distributed import Group, Shard
from landscape.errors import LandscapeError
from landscape.engine import EngineOptions, batch_statistics_layers, prepare_engine
from landscape.engine.evaluate import (DEFAULT_BATCH, DEFAULT_BATCH_CUDA, LossFn, check_metrics, cross_entropy,
                                default_batch_size)
from landscape.engine.hardware import auto_note, resolve_precision
from landscape.grid import Axis, Grid
from landscape.sampling.multilevel import MultilevelMeasure
from landscape.storage import Surface
from landscape.engine.stream import DEFAULT_POINTS_PER_PASS, StreamEvaluator, check_deterministic, split_batch, to_device

DEFAULT_MEMORY_BUDGET = 2**30  # bytes: data sets larger than this are streamed, not kept on the device

Data = Any  # (x, y) tensors | Dataset | DataLoader | an iterable of (inputs, targets) batches


@dataclass
class PreparedData:
    """Data ready for an evaluator: resident tensors (x, y) or a re-iterable source of batches."""

    mode: str  # "resident" | "stream"
    x: torch.Tensor | None = None
    y: Any = None
    batches: Iterable | None = None
    description: str = ""
    fingerprint: str | None = None  # sha256 of given tensors, for the resume check (a Dataset: its length only)


def prepare_data(data: Data, device: torch.device, batch_size: int | None = None, stream: bool | None = None,
                 memory_budget: int | None = None, num_workers: int = 0) -> PreparedData:
    """Resident when `data` is tensors (or a map-style Dataset of tensors) within `memory_budget`
    bytes and `stream` is not True; else streamed through a DataLoader (`num_workers` workers,
    pinned memory on CUDA, prefetching) or, for a DataLoader or list of batches, as given.
    """
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
    bs = batch_size or (DEFAULT_BATCH if device.type == "cpu" else DEFAULT_BATCH_CUDA)

    def loader(ds: Dataset, workers: int) -> DataLoader:
        return DataLoader(ds, batch_size=bs, shuffle=False, num_workers=workers, pin_memory=device.type == "cuda",
                          persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise LandscapeError(f"data: x has {len(x)} samples but y has {len(y)}; pass tensors of equal length")
        what = f"tensors {tuple(x.shape)} and {tuple(y.shape)}"
        digest = _sha256(x, y)
        if stream or (stream is None and x.nbytes + y.nbytes > budget):
            return PreparedData("stream", batches=loader(TensorDataset(x, y), 0), description=what, fingerprint=digest)
        return PreparedData("resident", x.to(device), y.to(device), description=what, fingerprint=digest)
    if isinstance(data, DataLoader):
        check_deterministic(data)
        return PreparedData("stream", batches=data, description=f"DataLoader over {type(data.dataset).__name__}")
    if isinstance(data, IterableDataset):
        return PreparedData("stream", batches=loader(data, 0), description=f"IterableDataset {type(data).__name__}")
    if isinstance(data, Dataset) and hasattr(data, "__len__"):
        what = f"Dataset {type(data).__name__} of {len(data)} samples"
        if len(data) == 0:
            raise LandscapeError(f"data: {what} is empty")
        if not stream and _fits(data, budget):
            x, y = _collate_all(data, bs)
            if x is not None:
                return PreparedData("resident", x.to(device), y.to(device), description=what)
        return PreparedData("stream", batches=loader(data, num_workers), description=what)
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes, Mapping)):
        check_deterministic(data)
        return PreparedData("stream", batches=data, description=f"batches from a {type(data).__name__}")
    raise LandscapeError(f"data must be a pair of tensors (x, y), a Dataset, a DataLoader or an iterable of "
                         f"(inputs, targets) batches, got {type(data).__name__}")


def _sha256(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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


def _directions(model: nn.Module, directions: Any, ndim: int, seed: int, spec: DirectionSpec) -> Directions:
    """Directions from the argument: None (random, seeded), a Directions, a file, or a list of direction lists."""
    tensors = target_tensors(model, spec.dir_type)
    if directions is None:
        dirs = make_directions(tensors, spec, seed, ndim)
    elif isinstance(directions, Directions):
        dirs = directions
    elif isinstance(directions, (str, os.PathLike)):
        dirs = load_directions(directions)
    elif isinstance(directions, (tuple, list)) and directions and all(isinstance(d, (tuple, list)) for d in directions):
        if len(directions) != ndim:
            raise LandscapeError(f"a {ndim}-D grid needs {ndim} directions, got {len(directions)}; "
                                 f"pass {'x and y' if ndim == 2 else 'one'} direction(s), or y=None for 1-D")
        dirs = Directions(list(directions[0]), list(directions[1]) if ndim == 2 else None, [n for n, _ in tensors],
                          {"kind": "given", "dir_type": spec.dir_type})
    else:
        raise LandscapeError("directions must be None (random), a Directions, a direction file, or a list of "
                             f"1 or 2 directions (lists of tensors), got {type(directions).__name__}")
    if ndim == 2 and dirs.y is None:
        raise LandscapeError("the directions have no y direction but the grid is 2-D; pass y=None for a 1-D surface")
    dirs.check_against(tensors, where="the directions")
    return dirs


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _weights_sha256(tensors: Sequence[tuple[str, torch.Tensor]]) -> str:
    return _sha256(*[t for _, t in tensors]) if tensors else "empty"


def compute_surface(
    model: nn.Module,
    data: Data,
    loss: LossFn = cross_entropy,
    metrics: Mapping[str, LossFn] | None = None,
    *,
    x: Axis = Axis(-1.0, 1.0, 51),
    y: Axis | None = Axis(-1.0, 1.0, 51),
    seed: int = 0,
    directions: Directions | Sequence[Direction] | str | os.PathLike | None = None,
    norm: str = "filter",
    ignore: str = "biasbn",
    dir_type: str = "weights",
    out: str | os.PathLike | None = None,
    split: str = "train",
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    fold_bn: bool = True,
    compile: bool = False,
    compile_mode: str | None = None,
    cuda_fuse: bool = False,
    cudnn_benchmark: bool = False,
    points_per_launch: int = 1,
    stream: bool | None = None,
    points_per_pass: int = DEFAULT_POINTS_PER_PASS,
    memory_budget: int | None = None,
    num_workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    max_points: int | None = None,
    shard: Shard | None = None,
    flush_seconds: float = 5.0,
    notes: list[str] | None = None,
    group: Group | None = None,
    sampling: SamplingPlan | None = None,
    engine: EngineOptions | None = None,
) -> Surface | None:
    """The loss surface of `model` around its current weights on `data`; written to `out` (and resumed
    from it: a rerun with the same settings computes only the points that are missing).

    Args:
        data: a pair of tensors (x, y), a Dataset, a DataLoader (not shuffling) or a re-iterable of
            (inputs, targets) batches, stored under the prefix `split`; or a dict {split: data}
            for several (e.g. {"train": ..., "test": ...}). See `prepare_data` for streaming.
        loss, metrics: callables (model output, targets) -> per-sample values (N,) or (N, ...), or
            a batch mean (see `landscape.losses`). The file holds `<split>_loss` and `<split>_<name>`.
        x, y: the grid's axes; y=None for a 1-D surface.
        directions: None draws filter-normalized random ones from `seed` (`norm`, `ignore`,
            `dir_type`), as the command line does; else a Directions, a direction file, or a
            list of direction lists (e.g. from `landscape.directions.random`).
        out: the surface file; None keeps it in a temporary folder (the Surface is returned).
            The directions go next to it, `<out stem>_dirs.h5`.
        batch_size, device, precision, fold_bn, compile, compile_mode, cuda_fuse, cudnn_benchmark:
            the evaluation engine (`landscape.engine.evaluate.EngineOptions`), as the command line's flags.
        points_per_launch: K > 1 evaluates K points in each forward pass over resident data
            (`landscape.engine.multipoint`; not with compile or a sampling tolerance).
        engine: all of the engine's settings at once (`landscape.engine.EngineOptions`, also
            fusion, prepacking and channels_last), instead of the separate arguments above.
            Every fast path is proven exact or not taken (see `landscape.engine.build`); `precision`
            "auto" is bf16 where the hardware runs it natively, else fp32, and bf16 where it
            would be emulated is refused (`landscape.engine.hardware`).
        stream, points_per_pass, memory_budget, num_workers: streaming evaluation reads each
            batch once per `points_per_pass` grid points (`stream=None`: when the data is larger
            than `memory_budget` bytes or is a DataLoader/iterable).
        group: the ranks of a torchrun/srun job (`landscape.distributed`): they share the points,
            rank 0 alone writes; the values are the same bit for bit as with one process.
        sampling: error bars and adaptive sampling (`landscape.sampling.adaptive.SamplingPlan`, e.g.
            `SamplingPlan(tolerance=0.125, vmax=10)`, `multilevel=True` for coarse to fine,
            `strata=256` for an order stratified by the center's per-sample loss): the
            file gets `<split>_loss_se`, `<split>_<metric>_se` and `<split>_n`. Resident data only.
    Returns:
        the Surface (`surf.metrics["train_loss"]` is (ny, nx), row = y); None on ranks other than 0.
    """
    if not isinstance(model, nn.Module):
        raise LandscapeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss):
        raise LandscapeError("loss must be a callable (output, targets) -> per-sample losses, "
                             f"got {type(loss).__name__}")
    metrics = check_metrics(metrics or {})
    grid = Grid(x, y)
    spec = DirectionSpec(dir_type, norm, ignore)
    device = torch.device(device) if device is not None else next(model.parameters(), torch.zeros(())).device
    engine_opts = _engine_options(engine, precision=precision, fold_bn=fold_bn, compile=compile or compile_mode is not None,
                                  batch_size=batch_size, cuda_fuse=cuda_fuse, cudnn_benchmark=cudnn_benchmark,
                                  compile_mode=compile_mode, points_per_launch=points_per_launch)
    precision = resolve_precision(engine_opts.precision, device)
    if notes is not None and auto_note(engine_opts.precision, precision, device):
        notes.append(auto_note(engine_opts.precision, precision, device))
    engine_opts = dataclasses.replace(engine_opts, precision=precision)
    batch_size = engine_opts.batch_size
    model.to(device)
    sources = dict(data) if isinstance(data, Mapping) else {split: data}  # split name -> data
    prepared = {s: prepare_data(d, device, batch_size, stream, memory_budget, num_workers) for s, d in sources.items()}
    multi = engine_opts.points_per_launch > 1
    if multi and ((sampling is not None and sampling.tolerance is not None)
                  or any(p.mode != "resident" for p in prepared.values())):
        raise LandscapeError("points_per_launch > 1 needs resident data and no sampling tolerance")
    was_training = model.training
    model.eval()
    batch_size = _whole_batches(model, prepared, batch_size, notes)
    engine_opts = dataclasses.replace(engine_opts, batch_size=batch_size)
    tensors = target_tensors(model, dir_type)
    dirs = _directions(model, directions, grid.ndim, seed, spec)
    try:
        engine = prepare_engine(model, dir_type, [dirs.x, dirs.y][:grid.ndim], engine_opts,
                                example=_example(model, prepared, engine_opts), check_points=grid.corners())
    except BaseException:
        model.train(was_training)
        raise
    eval_model, setter, nhwc = engine.model, engine.setter, engine.report.channels_last
    if notes is not None:
        notes += engine.report.notes()
    if sampling is not None:
        prepared = {s: _in_sample_order(s, p, sampling) for s, p in prepared.items()}
    measures: dict[str, Any] = {
        s: (engine.evaluator(p.x, p.y, loss, metrics, batch_size) if p.mode == "resident"
            else StreamEvaluator(eval_model, p.batches, loss, metrics, device, precision, points_per_pass, nhwc))
        for s, p in prepared.items()}
    if sampling is not None:
        for ev in measures.values():
            if batch_size is None:  # a point grows in whole batches: none larger than the first chunk
                ev.batch_size = min(ev.batch_size, sampling.n0)
        orders = stratify_sets(measures, setter, sampling, group, notes) if sampling.strata else None
        measures = {s: (MultilevelMeasure(ev, sampling, grid) if sampling.multilevel
                        else SampledBlockMeasure(ev, sampling) if multi else SampledMeasure(ev, sampling))
                    for s, ev in measures.items()}

    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="landscape-")
        out = Path(tmp.name) / "surface.h5"
    out = Path(out)
    dir_file = directions_path(out)
    # the values depend on these; how they were computed (resident or streamed, K) does not count
    settings = {
        "model": type(model).__name__, "weights_sha256": _weights_sha256(tensors),
        "data": {s: p.description for s, p in prepared.items()},
        "data_sha256": {s: p.fingerprint for s, p in prepared.items()}, "loss": _name(loss), "metrics": list(metrics),
        "directions_sha256": dirs.fingerprint(), "dir_type": dir_type, "x": x.spec(),
        "y": y.spec() if y is not None else None, "precision": precision,
    }
    if sampling is not None:
        settings["sampling"] = sampling.settings()
        if orders is not None:
            settings["sampling"]["order"] = orders
    attrs = {"model": type(model).__name__, "loss_name": _name(loss), "splits": ",".join(prepared),
             "evaluation": {s: p.mode for s, p in prepared.items()}, "directions": dirs.attrs, "device": str(device),
             "points_per_pass": max(m.points_per_pass if isinstance(m, StreamEvaluator) else 1
                                    for m in measures.values())}
    attrs["engine"] = engine.report.attrs()
    group = group or Group()
    try:
        error = None
        if group.is_main:  # every rank has the same directions (one seed); rank 0 alone writes files
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                _keep_directions(dir_file, dirs, overwrite or not out.exists())
            except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
                error = e
        group.agree(error)
        surf = _surface.compute_surface(setter, measures, grid, out, settings, attrs, str(dir_file),
                                        overwrite=overwrite, flush_seconds=flush_seconds, max_points=max_points,
                                        progress=progress, shard=shard, group=group, notes=notes)
    finally:
        model.train(was_training)
        if tmp is not None:
            tmp.cleanup()
    if tmp is not None and surf is not None:
        surf.dir_file = None  # the temporary folder is gone
    return surf


def _whole_batches(model: nn.Module, prepared: Mapping[str, PreparedData], batch_size: int | None,
                   notes: list[str] | None) -> int | None:
    """The batch size for a model whose BatchNorms use batch statistics (`batch_statistics_layers`):
    the whole set in one batch, as plain evaluation of it computes; refused where that cannot be."""
    layers = batch_statistics_layers(model)
    if not layers:
        return batch_size
    what = (f"{', '.join(layers[:3])} normalize{'s' if len(layers) == 1 else ''} with batch statistics "
            "(track_running_stats=False or training mode), so a sample's loss depends on the others in its batch")
    for s, p in prepared.items():
        if p.mode != "resident":
            raise LandscapeError(f"{what}; the {s} data is streamed in batches: pass it as tensors to evaluate it "
                                 "in one batch, or give the layers running statistics")
    largest = max(len(p.x) for p in prepared.values())
    if batch_size is not None and batch_size < largest:
        raise LandscapeError(f"{what}: evaluate the whole set as one batch (batch_size={largest}, or leave it unset), "
                             "or give the layers running statistics", "batch_size")
    if notes is not None and batch_size is None:
        notes.append(f"{what}: each set evaluated as one batch")
    return largest


def _engine_options(engine: EngineOptions | None, **given: Any) -> EngineOptions:
    """`engine` when given (then the separate engine arguments must keep their defaults), else the
    options the separate arguments name."""
    if engine is None:
        return EngineOptions(**given)
    if not isinstance(engine, EngineOptions):
        raise LandscapeError(f"engine must be a landscape.engine.EngineOptions, got {type(engine).__name__}")
    defaults = {k: v.default for k, v in inspect.signature(compute_surface).parameters.items() if k in given}
    changed = [k for k, v in given.items() if v != defaults[k] and not (k == "compile" and v == engine.compile)]
    if changed:
        raise LandscapeError(f"pass the engine's settings either as engine=EngineOptions(...) or as separate "
                             f"arguments, not both (got engine and {changed[0]})")
    return engine


def _example(model: nn.Module, prepared: Mapping[str, PreparedData], options: EngineOptions) -> Any:
    """A batch of inputs for the engine to choose its layout, prove its rewrites and check them on:
    the first batch of the first resident set (as the evaluator will cut it), else the first batch
    of the first streamed source, on the model's device."""
    for p in prepared.values():
        if p.mode == "resident" and isinstance(p.x, torch.Tensor) and len(p.x):
            size = options.batch_size or default_batch_size(model, p.x, options.precision)
            return p.x[:size]
    for p in prepared.values():
        if p.mode == "stream":
            check_deterministic(p.batches)  # a one-shot iterator must not lose a batch to this peek
            for batch in p.batches:
                device = next(itertools.chain(model.parameters(), model.buffers()), torch.zeros(())).device
                return to_device(split_batch(batch)[0], device)
    return None


def _in_sample_order(split: str, p: PreparedData, sampling: SamplingPlan) -> PreparedData:
    """Resident data permuted into the common random order of adaptive sampling (with a
    tolerance; a fixed sample with error bars keeps the given order)."""
    if p.mode != "resident" or not isinstance(p.x, torch.Tensor) or not isinstance(p.y, torch.Tensor):
        raise LandscapeError(f"sampling needs the {split} data resident as tensors (x, y); it is {p.description}: "
                             "pass tensors within the memory budget, or drop sampling")
    if sampling.tolerance is None:
        return p
    order = sample_order(len(p.y), sampling.seed).to(p.x.device)
    return PreparedData("resident", p.x[order], p.y[order], description=p.description, fingerprint=p.fingerprint)


def directions_path(out: str | os.PathLike) -> Path:
    """Where `compute_surface(out=...)` keeps the directions: `<out stem>_dirs.h5` beside it."""
    out = Path(out)
    return out.with_name(f"{out.stem}_dirs.h5")


def _keep_directions(path: Path, dirs: Directions, replace: bool) -> None:
    """Write the directions to `path` unless it holds them already; another direction file there is
    replaced only with `replace` (otherwise the surface's settings check reports the mismatch)."""
    if path.exists():
        try:
            if load_directions(path).fingerprint() == dirs.fingerprint():
                return
        except LandscapeError:
            pass
        if not replace:
            return
    save_directions(path, dirs)
