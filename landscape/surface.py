"""The spine: model and data -> directions -> engine -> measures -> grid sweep -> surface file.

`compute_surface` is the one path every door takes: the Python API calls it with a model, data, a
loss and metrics of its own; the command line (`run_job`, behind scripts/plot_surface.py) resolves
its flags into the same pieces (`landscape.sources`) and calls it. So the same job through any door
writes the same file (settings included), and any door can resume a file another began.

    import landscape as ll
    surf = ll.compute_surface(model, (x, y), loss=ll.losses.cross_entropy,
                              metrics={"acc": ll.metrics.accuracy},
                              x=ll.Axis(-1, 1, 51), y=ll.Axis(-1, 1, 51), seed=0, out="runs/my.h5")

A surface file's `settings` name what its values depend on, by content: the model's weights and the
data (sha256 of their bytes), the loss and metric names, the directions (sha256), the grid, the
precision, the sampling plan. A rerun with the same settings continues the file; other settings
are refused. Where they came from (checkpoint, data set, normalization, engine) is in its other
attributes, which are not compared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from landscape.config import DataOptions, RunOptions, check_options
from landscape.directions import (DirectionSpec, Directions, directions_path, interpolation_direction,
                                  keep_directions, make_directions, random_direction, resolve as resolve_directions,
                                  target_tensors)
from landscape.distributed import Group, PeerError, dist_info, local_device
from landscape.engine import EngineOptions, batch_statistics_layers, prepare_engine
from landscape.engine.evaluate import Evaluator, LossFn, check_metrics, cross_entropy
from landscape.engine.hardware import auto_note, resolve_precision
from landscape.engine.stream import StreamEvaluator
from landscape.engine.threads import set_threads
from landscape.errors import LandscapeError
from landscape.grid import Axis, Grid
from landscape.losses import LOSSES
from landscape.sampling.adaptive import (SampledBlockMeasure, SampledMeasure, SamplingPlan, StreamSampledMeasure,
                                         order_path, sample_order, stratify_sets)
from landscape.sampling.multilevel import MultilevelMeasure
from landscape.sources.prepare import PreparedData, example_inputs, prepare_data
from landscape.sources.spec import SourceSpec, Sources, load_endpoint, resolve as resolve_sources
from landscape.storage import Surface
from landscape.sweep import Interrupted, check_writable, sweep

__all__ = ["Interrupted", "PeerError", "SurfaceJob", "DirectionRequest", "JobResult", "compute_surface", "run_job",
           "resolve_device", "weights_sha256", "loss_name", "SETTINGS_FORMAT"]

SETTINGS_FORMAT = 2  # the settings' schema; files of another format are not resumed

Data = Any  # (x, y) tensors | Dataset | DataLoader | an iterable of (inputs, targets) batches


def compute_surface(
    model: nn.Module,
    data: Data | Mapping[str, Data],
    loss: LossFn = cross_entropy,
    metrics: Mapping[str, LossFn] | None = None,
    *,
    x: Axis = Axis(-1.0, 1.0, 51),
    y: Axis | None = Axis(-1.0, 1.0, 51),
    directions: Any = None,
    seed: int = 0,
    norm: str = "filter",
    ignore: str = "biasbn",
    dir_type: str = "weights",
    out: str | Path | None = None,
    dir_file: str | Path | None = None,
    split: str = "train",
    precision: str | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    engine: EngineOptions | None = None,
    sampling: SamplingPlan | None = None,
    data_options: DataOptions | None = None,
    run: RunOptions | None = None,
    bn_data: torch.Tensor | None = None,
    populations: Mapping[str, int | None] | None = None,
    provenance: Mapping[str, Any] | None = None,
    group: Group | None = None,
    notes: list[str] | None = None,
) -> Surface | None:
    """The loss surface of `model` around its current weights on `data`, written to `out` (and
    resumed from it: a rerun with the same settings computes only the points that are missing).

    Args:
        data: a pair of tensors (x, y), a Dataset, a DataLoader (not shuffling) or a re-iterable of
            (inputs, targets) batches, stored under the prefix `split`; or a dict {split: data}.
        loss, metrics: callables (model output, targets) -> per-sample values (N,) or (N, ...), or
            a 0-dim batch mean (`landscape.losses.per_sample`). The file holds `<split>_loss` and
            `<split>_<name>` per metric.
        x, y: the grid's axes; y=None for a 1-D surface.
        directions: None draws filter-normalized random ones from `seed` (`norm`, `ignore`,
            `dir_type`); else a Directions, a direction file, or a list of direction lists (e.g.
            `landscape.directions.random(model)`, `landscape.directions.interpolation(m1, m2)`).
        out: the surface file (None: a temporary folder; the Surface is returned). The directions
            are kept in `dir_file` (default `<out stem>_dirs.h5` beside it).
        precision, batch_size, device: the engine's most used settings; `engine` takes them all
            (`landscape.engine.EngineOptions`: BN folding, fusion, layout, compile, K points per
            launch); give one or the other. Every fast path is proven exact or not taken
            (docs/exactness.md).
        sampling: error bars and adaptive sampling (`landscape.sampling.SamplingPlan`): the file
            gets `<split>_loss_se`, `<split>_<metric>_se` and `<split>_n`; with resident or
            streamed data (multilevel and strata: resident only).
        data_options: resident or streamed data (`landscape.config.DataOptions`).
        run: overwrite, max_points, progress, shard, flush_seconds (`landscape.config.RunOptions`).
        bn_data: training inputs to re-estimate BatchNorm statistics from at every point.
        populations: {split: samples of the whole set the data was drawn from}, for the standard
            errors (None: the data given is the whole set).
        provenance: attributes stored with the file, not compared on resume (checkpoint, data set).
        group: the ranks of a torchrun/srun job (`landscape.distributed`): they share the points,
            rank 0 alone writes; the values are the same bit for bit as with one process.
    Returns:
        the Surface (`surf.metrics["train_loss"]` is (ny, nx), row = y); None on ranks other than 0.
    """
    if not isinstance(model, nn.Module):
        raise LandscapeError(f"model must be a torch.nn.Module, got {type(model).__name__}", "model")
    if not callable(loss):
        raise LandscapeError(f"loss must be a callable (output, targets) -> per-sample losses, got "
                             f"{type(loss).__name__}", "loss")
    metrics = check_metrics(metrics or {})
    grid = Grid(x, y)
    spec = DirectionSpec(dir_type, norm, ignore)
    options = _engine_options(engine, precision, batch_size)
    data_options = data_options or DataOptions()
    run = run or RunOptions()
    group = group or Group()
    device = torch.device(device) if device is not None else next(model.parameters(), torch.zeros(())).device
    resolved = resolve_precision(options.precision, device)
    if notes is not None and auto_note(options.precision, resolved, device):
        notes.append(auto_note(options.precision, resolved, device))
    if bn_data is not None and options.fold_bn:
        options = dataclasses.replace(options, fold_bn=False)  # folding bakes the statistics into the weights
    options = dataclasses.replace(options, precision=resolved)
    model.to(device)
    given = dict(data) if isinstance(data, Mapping) else {split: data}
    prepared = {s: prepare_data(d, device, options.batch_size, data_options) for s, d in given.items()}
    streamed = any(p.mode == "stream" for p in prepared.values())
    check_options(options, sampling, streamed, bn_data is not None, run, group.world_size > 1)

    was_training = model.training
    model.eval()
    try:
        options = dataclasses.replace(options, batch_size=_whole_batches(model, prepared, options.batch_size, notes))
        # the settings, from the model and data as given (rank 0 alone writes the file)
        weights = weights_sha256(model) if group.is_main else None
        dirs = resolve_directions(model, directions, spec, seed, grid.ndim)
        example = _example(model, prepared, options)
        eng = prepare_engine(model, dir_type, [dirs.x, dirs.y][:grid.ndim], options, example=example,
                             check_points=grid.corners())
        if notes is not None:
            notes += eng.report.notes()
        if sampling is not None:
            prepared = {s: _in_sample_order(s, p, sampling, options.batch_size) for s, p in prepared.items()}
        evaluators = {s: (eng.evaluator(p.x, p.y, loss, metrics, options.batch_size) if p.mode == "resident" else
                          StreamEvaluator(eng.model, p.batches, loss, metrics, device, resolved,
                                          data_options.points_per_pass, eng.report.channels_last))
                      for s, p in prepared.items()}
        engine_attrs = eng.report.attrs()
        if resolved != "fp32":
            engine_attrs["center_rel_err"] = _low_precision_error(model, eng, evaluators, notes)
        setter = eng.setter
        if bn_data is not None:
            from landscape.engine.bn import BNRecomputeSetter

            setter = BNRecomputeSetter(setter, model, eng.inputs(bn_data.to(device)),
                                       batch_size=options.batch_size or 512)
            if notes is not None:
                notes.append(f"BatchNorm statistics re-estimated at every point from {len(bn_data)} training samples")

        tmp = None
        if out is None:
            tmp = tempfile.TemporaryDirectory(prefix="landscape-")
            out = Path(tmp.name) / "surface.h5"
        out = Path(out)
        dir_file = Path(dir_file) if dir_file is not None else directions_path(out)  # shards share it
        if run.shard is not None:
            out = run.shard.path(out)
        settings: dict[str, Any] = {}
        error = None
        if group.is_main:
            try:
                check_writable(out.parent, "out")
                settings = {
                    "format": SETTINGS_FORMAT, "weights_sha256": weights,
                    "data": {s: dict(zip(("samples", "sha256"), p.fingerprint())) for s, p in prepared.items()},
                    "loss": loss_name(loss), "metrics": list(metrics), "directions_sha256": dirs.fingerprint(),
                    "dir_type": dir_type, "x": x.spec(), "y": y.spec() if y is not None else None,
                    "precision": resolved,
                }
                if bn_data is not None:
                    settings["bn_recompute"] = {"samples": len(bn_data), "sha256": _tensor_sha256(bn_data)}
            except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
                error = e
        group.agree(error)
        measures = evaluators
        if sampling is not None:
            measures = _sampled(evaluators, prepared, setter, sampling, grid, populations or {}, settings, out, run,
                                group, notes, options.batch_size)
        attrs = {**dict(provenance or {}), "loss_name": loss_name(loss), "splits": ",".join(prepared),
                 "evaluation": {s: p.mode for s, p in prepared.items()},
                 "n_samples": {s: settings.get("data", {}).get(s, {}).get("samples", p.size)
                               for s, p in prepared.items()},
                 "directions": dirs.attrs, "dir_type": dir_type, "seed": seed, "device": str(device),
                 "batch_size": next((ev.batch_size for ev in evaluators.values() if hasattr(ev, "batch_size")), None),
                 "engine": engine_attrs, "ranks": group.world_size,
                 "points_per_pass": max([getattr(m, "points_per_pass", 1) for m in measures.values()] + [1])}
        replace = run.overwrite or not out.exists()

        def keep() -> None:  # rank 0, once the surface file is open: every rank has the same directions
            keep_directions(dir_file, dirs, replace)

        try:
            surf = sweep(setter, measures, grid, out, settings, attrs, str(dir_file), run, group=group, notes=notes,
                         before=keep)
        finally:
            if tmp is not None:
                tmp.cleanup()
        if tmp is not None and surf is not None:
            surf.dir_file = None  # the temporary folder is gone
        return surf
    finally:
        model.train(was_training)


def _engine_options(engine: EngineOptions | None, precision: str | None, batch_size: int | None) -> EngineOptions:
    """`engine`, or the default options with `precision` and `batch_size`; not both."""
    if engine is None:
        return EngineOptions(precision or "fp32", batch_size=batch_size)
    if not isinstance(engine, EngineOptions):
        raise LandscapeError(f"engine must be a landscape.engine.EngineOptions, got {type(engine).__name__}", "engine")
    if precision is not None or batch_size is not None:
        raise LandscapeError("give precision and batch_size inside engine=EngineOptions(...), not beside it",
                             "engine")
    return engine


def weights_sha256(model: nn.Module) -> str:
    """sha256 of the model's state_dict: every tensor's name, shape, dtype and bytes, in order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _tensor_sha256(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def loss_name(fn: Any) -> str:
    """A loss's name in the settings: its name in `landscape.losses.LOSSES`, else its qualified name."""
    for name, registered in LOSSES.items():
        if fn is registered:
            return name
    return getattr(fn, "__qualname__", None) or type(fn).__name__


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
                                 "in one batch, or give the layers running statistics", "stream")
    largest = max(len(p.x) for p in prepared.values())
    if batch_size is not None and batch_size < largest:
        raise LandscapeError(f"{what}: evaluate the whole set as one batch (batch_size={largest}, or leave it unset), "
                             "or give the layers running statistics", "batch_size")
    if notes is not None and batch_size is None:
        notes.append(f"{what}: each set evaluated as one batch")
    return largest


def _example(model: nn.Module, prepared: Mapping[str, PreparedData], options: EngineOptions) -> Any:
    """A batch of inputs for the engine to choose its layout, prove its rewrites and check them on:
    the first batch of the first resident set (as the evaluator will cut it), else the first batch
    of the first streamed source, on the model's device."""
    from landscape.engine.evaluate import default_batch_size

    for p in prepared.values():
        if p.mode == "resident" and isinstance(p.x, torch.Tensor) and len(p.x):
            return p.x[:options.batch_size or default_batch_size(model, p.x, options.precision)]
    device = next(model.parameters(), torch.zeros(())).device
    return example_inputs(prepared, device)


def _in_sample_order(split: str, p: PreparedData, sampling: SamplingPlan, batch_size: int | None) -> PreparedData:
    """The data in the common random order of adaptive sampling (with a tolerance; a fixed sample
    with error bars keeps the given order): resident tensors permuted, streamed map-style data read
    through the permutation."""
    if sampling.tolerance is None:
        return p
    if p.mode == "resident":
        order = sample_order(len(p.y), sampling.seed).to(p.x.device)
        return dataclasses.replace(p, x=p.x[order], y=p.y[order])
    from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

    source = p.source
    loader = source if isinstance(source, DataLoader) else None
    dataset = (TensorDataset(*source) if isinstance(source, tuple) else
               loader.dataset if loader is not None else source)
    if not isinstance(dataset, Dataset) or isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise LandscapeError(f"tolerance (adaptive sampling) reads every point's samples in one seeded random order; "
                             f"the {split} data is {p.description}, which cannot be reordered: pass tensors, a "
                             "Dataset or a DataLoader over one", "tolerance")
    order = sample_order(len(dataset), sampling.seed).tolist()
    batch = loader.batch_size if loader is not None else (p.batches.batch_size if hasattr(p.batches, "batch_size")
                                                         else batch_size or 256)
    kwargs = {}
    if loader is not None:
        kwargs = dict(collate_fn=loader.collate_fn, num_workers=loader.num_workers, pin_memory=loader.pin_memory)
    batches = DataLoader(Subset(dataset, order), batch_size=batch, shuffle=False, **kwargs)
    return dataclasses.replace(p, batches=batches, size=len(dataset))


def _sampled(evaluators: dict, prepared: Mapping[str, PreparedData], setter, sampling: SamplingPlan, grid: Grid,
             populations: Mapping[str, int | None], settings: dict, out: Path, run: RunOptions, group: Group,
             notes: list[str] | None, batch_size: int | None) -> dict:
    """The measures with error bars (`landscape.sampling`) over the evaluators; `settings` gets the plan
    (and the stratified orders' fingerprints)."""
    for s, ev in evaluators.items():
        if batch_size is None and isinstance(ev, Evaluator):  # a point grows in whole batches: none larger
            ev.batch_size = min(ev.batch_size, sampling.n0)  # than the first chunk
    settings["sampling"] = sampling.settings()
    # the standard errors refer to the whole set each split's data was drawn from
    settings["sampling"]["populations"] = {s: populations.get(s) for s in evaluators}
    if sampling.strata:
        # the order's file is keyed to the other settings; overwrite computes it again
        key = hashlib.sha256(json.dumps({k: v for k, v in settings.items() if k != "sampling"}, sort_keys=True,
                                        default=str).encode()).hexdigest()[:16] if group.is_main else ""
        settings["sampling"]["order"] = stratify_sets(evaluators, setter, sampling, group, notes, order_path(out), key,
                                                      resume=out.exists() and not run.overwrite)
    out_measures = {}
    for s, ev in evaluators.items():
        population = populations.get(s)
        if isinstance(ev, StreamEvaluator):
            p = prepared[s]
            batch = getattr(p.batches, "batch_size", None)
            if sampling.tolerance is not None and (p.size is None or batch is None):
                raise LandscapeError(f"tolerance (adaptive sampling) needs the {s} data's size and one batch size; "
                                     f"it is {p.description}: pass tensors, a Dataset or a DataLoader over one",
                                     "tolerance")
            out_measures[s] = StreamSampledMeasure(ev, sampling, p.size, batch, population)
        elif sampling.multilevel:
            out_measures[s] = MultilevelMeasure(ev, sampling, grid, population)
        elif hasattr(ev, "block_sums"):
            out_measures[s] = SampledBlockMeasure(ev, sampling, population)
        else:
            out_measures[s] = SampledMeasure(ev, sampling, population)
    return out_measures


def _low_precision_error(model: nn.Module, eng, evaluators: Mapping[str, Any], notes: list[str] | None) -> float | None:
    """The relative loss error of the reduced precision at the center, against exact fp32 on the
    model as given, on (up to 4,096 samples of) the first resident set; None without one."""
    split, ev = next(((s, e) for s, e in evaluators.items() if isinstance(e, Evaluator)), (None, None))
    if ev is None:
        return None
    px, py = ev.x[:4096], ev.y[:4096]
    exact = Evaluator(model, px, py, ev.loss_fn, ev.batch_size, metrics={})()[0]
    eng.setter.set([0.0] * len(eng.setter.dirs))
    try:
        low = Evaluator(eng.model, px, py, ev.loss_fn, ev.batch_size, eng.precision, metrics={})()[0]
    finally:
        eng.setter.restore()
    err = abs(low - exact) / max(abs(exact), 1e-12)
    if notes is not None:
        notes.append(f"{eng.precision}: relative loss error at the center {err:.1e} ({split} loss {low:.6g} vs fp32 "
                     f"{exact:.6g})")
    return err


# ---------------------------------------------------------------------------------------
# The command line's door: flags -> frozen configs -> sources -> compute_surface.


@dataclass(frozen=True)
class DirectionRequest:
    """The directions the command line asks for: random (per axis spec and seed), the plane through
    two or three checkpoints (interpolation), or a direction file."""

    xspec: DirectionSpec = DirectionSpec()
    yspec: DirectionSpec = DirectionSpec()
    same_dir: bool = False  # y = x
    seed: int = 0
    ckpt2: str | None = None  # x = theta2 - theta1
    ckpt3: str | None = None  # y = theta3 - theta1
    dir_file: str | None = None  # reuse the directions in this file when it exists, else write them there


@dataclass(frozen=True)
class SurfaceJob:
    """Everything `scripts/plot_surface.py` asks for, as the configs the library takes."""

    sources: SourceSpec = SourceSpec()
    x: Axis = Axis(-1.0, 1.0, 51)
    y: Axis | None = Axis(-1.0, 1.0, 51)
    directions: DirectionRequest = DirectionRequest()
    engine: EngineOptions = EngineOptions()
    sampling: SamplingPlan | None = None
    data: DataOptions = DataOptions()
    run: RunOptions = RunOptions()
    out: str = "results"  # the folder of the surface, its directions and figures
    surf_file: str | None = None  # default: <out>/<checkpoint stem>_x..._y....h5
    device: str = "auto"
    threads: int | None = None  # torch CPU threads; None: on the CPU the idle cores this process may use
    bn_recompute: bool = False  # re-estimate BN statistics at every point from training inputs
    bn_samples: int | None = None  # training samples for that; None: n_samples, else the whole split


@dataclass
class JobResult:
    surface: Surface | None  # None on ranks other than 0 (only rank 0 holds the file)
    surf_file: Path
    dir_file: Path
    arch: str
    notes: list[str] = field(default_factory=list)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise LandscapeError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}", "device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LandscapeError("device cuda was asked for but no CUDA GPU is available; use cpu", "device")
    return dev


def surface_path(job: SurfaceJob, name: str) -> Path:
    """The surface file of a job: `surf_file`, else `<out>/<name>_x<spec>[_y<spec>].h5`."""
    if job.surf_file:
        return Path(job.surf_file)
    tag = f"x{job.x.spec()}" + (f"_y{job.y.spec()}" if job.y is not None else "")
    return Path(job.out) / f"{name}_{tag.replace(':', '_')}.h5"


def run_job(job: SurfaceJob) -> JobResult:
    """Compute (or resume) the surface a job describes, through `compute_surface`.

    Under torchrun or srun (several ranks, `distributed.dist_info`) every rank resolves the model
    and data, rank 0 alone writes files, and the points are shared out.
    """
    info = dist_info()
    device = resolve_device(job.device)
    with Group(info, device) as group:
        notes: list[str] = []
        error, sources, given, bn_data, surf_file, dir_file = None, None, None, None, None, None
        try:  # every rank: a failure on one stops all, rank 0 reports it
            device = local_device(info, device)
            check_options(job.engine, job.sampling, job.data.stream is True, job.bn_recompute, job.run,
                          group.world_size > 1)
            threads_note = set_threads(job.threads, device)
            if threads_note is not None:
                notes.append(threads_note)
            sources = resolve_sources(job.sources, device)
            notes += sources.notes
            surf_file = surface_path(job, sources.name)
            check_writable(surf_file.parent, "surf_file" if job.surf_file else "out_dir")
            req = job.directions
            dir_file = Path(req.dir_file) if req.dir_file else directions_path(surf_file)
            given = _requested_directions(job, sources, dir_file, notes)
            bn_data = _bn_inputs(job, sources) if job.bn_recompute else None
        except Exception as e:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = e
        group.agree(error)
        req = job.directions
        surf = compute_surface(
            sources.model, sources.data, sources.loss, sources.metrics, x=job.x, y=job.y, directions=given,
            seed=req.seed, norm=req.xspec.norm, ignore=req.xspec.ignore, dir_type=req.xspec.dir_type, out=surf_file,
            dir_file=dir_file, device=device, engine=job.engine, sampling=job.sampling, data_options=job.data,
            run=job.run, bn_data=bn_data, populations=sources.populations, provenance=sources.provenance,
            group=group, notes=notes)
    shard_file = job.run.shard.path(surf_file) if job.run.shard is not None else surf_file
    return JobResult(surf, shard_file, dir_file, sources.arch or sources.name, notes)


def _requested_directions(job: SurfaceJob, sources: Sources, dir_file: Path, notes: list[str]) -> Any:
    """What `compute_surface` gets as `directions` for the request: the direction file when one is
    named and exists; the plane through the checkpoints; random directions whose y differs from x
    (another norm or ignore, or y = x); else None (random, drawn there)."""
    req, ndim = job.directions, 1 if job.y is None else 2
    model = sources.model
    if req.dir_file and dir_file.exists():
        notes.append(f"reusing directions from {dir_file}")
        return dir_file
    if req.ckpt2 is None and (ndim == 1 or (req.yspec == req.xspec and not req.same_dir)):
        return None
    tensors = target_tensors(model, req.xspec.dir_type)
    if req.ckpt2 is None:
        return make_directions(tensors, req.xspec, req.seed, ndim, req.same_dir, req.yspec)
    s = job.sources

    def other(path: str) -> list[torch.Tensor]:
        m = load_endpoint(path, sources.arch or s.arch, s.model_def, s.model_kwargs, s.allow_pickle)
        return [t for _, t in target_tensors(m, req.xspec.dir_type)]

    ws = [w for _, w in tensors]
    dirs = Directions(interpolation_direction(ws, other(req.ckpt2)), None, [n for n, _ in tensors],
                      {"kind": "interpolation", "model_file2": req.ckpt2, "dir_type": req.xspec.dir_type})
    if ndim == 2:
        if req.ckpt3 is not None:
            dirs.y = interpolation_direction(ws, other(req.ckpt3))
            dirs.attrs["model_file3"] = req.ckpt3
        else:
            g = torch.Generator().manual_seed(req.seed)
            dirs.y = random_direction(ws, req.yspec.norm, req.yspec.ignore, generator=g)
            dirs.attrs.update(seed=req.seed, ynorm=req.yspec.norm, yignore=req.yspec.ignore)
    return dirs


def _bn_inputs(job: SurfaceJob, sources: Sources) -> torch.Tensor:
    """Training inputs to re-estimate BatchNorm statistics from (`bn_samples`, else `n_samples`)."""
    from landscape.sources.data import load_dataset

    s = job.sources
    n = job.bn_samples or s.n_samples
    dataset = sources.provenance.get("dataset")
    if dataset is None:
        train = sources.data.get("train")
        if isinstance(train, tuple) and isinstance(train[0], torch.Tensor):
            return train[0] if n is None else train[0][:n]
        raise LandscapeError("bn_recompute needs training inputs as tensors: a built-in data set, or a data definition "
                             "whose train split returns (x, y)", "bn_recompute")
    x = load_dataset(dataset, "train", s.data_root, n, s.seed).x
    norm = sources.provenance.get("normalization")
    if norm:
        from landscape.sources.data import Normalization

        x = Normalization.from_dict(norm).apply(x)
    return x
