"""Plug-ins from the command line: a model, data, loss or metric defined in the user's own file.

`--model-def path/to/file.py:factory` (or `package.module:factory`) names a callable; loading
errors are one line naming the file, the symbol and what was expected. `run_plugin_job` is what
`scripts/plot_surface.py` runs with any of these flags: it builds the pieces and calls
`landscape.api.compute_surface`, the function Python callers use.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from landscape.engine.threads import set_threads
from landscape.errors import LandscapeError


def load_symbol(spec: str, flag: str, expected: str) -> Callable:
    """The callable that `spec` names: 'path/to/file.py:name' or 'package.module:name'."""
    where, sep, name = str(spec).rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise LandscapeError(f"{flag} {spec!r}: expected FILE.py:NAME or package.module:NAME naming {expected}")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _import_file(Path(where), spec, flag)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise LandscapeError(f"{flag} {spec!r}: cannot import module {where!r} ({_first_line(e)}); "
                                 "give a file path ending in .py or an importable module") from None
        except Exception as e:  # noqa: BLE001 - the user's module failed at import
            raise LandscapeError(f"{flag} {spec!r}: importing {where} failed ({type(e).__name__}: {_first_line(e)})"
                                 ) from None
    if not hasattr(module, name):
        defined = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                   and getattr(v, "__module__", None) == module.__name__]
        listed = ", ".join(defined[:6]) or "no callables"
        raise LandscapeError(f"{flag} {spec!r}: {where} has no {name!r} (it defines {listed}); name {expected}")
    obj = getattr(module, name)
    if not callable(obj):
        raise LandscapeError(f"{flag} {spec!r}: {name} in {where} is a {type(obj).__name__}, expected {expected}")
    return obj


def _import_file(path: Path, spec: str, flag: str) -> Any:
    if not path.is_file():
        raise LandscapeError(f"{flag} {spec!r}: the file {str(path)!r} does not exist")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    modname = f"landscape_plugin_{path.stem}_{digest}"
    if modname in sys.modules:
        return sys.modules[modname]
    loader_spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[modname] = module  # so that DataLoader workers and pickle find its classes
    sys.path.insert(0, str(path.resolve().parent))  # its own imports of neighbouring files
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - any error in the user's file
        del sys.modules[modname]
        raise LandscapeError(f"{flag} {spec!r}: running {path} failed ({type(e).__name__}: {_first_line(e)})") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def parse_kwargs(text: str | None, flag: str = "--model-kwargs") -> dict[str, Any]:
    """A JSON object of keyword arguments ('{"width": 2}'); None gives {}."""
    if text is None:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        raise LandscapeError(f"{flag} {text!r} is not JSON ({e.msg} at character {e.pos}); "
                             """write a JSON object such as '{"width": 2}'""") from None
    if not isinstance(kwargs, dict):
        raise LandscapeError(f"{flag} must be a JSON object such as '{{\"width\": 2}}', got {type(kwargs).__name__}")
    return kwargs


def build_model(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Call the factory `spec` names with `kwargs`; it must return a torch.nn.Module."""
    factory = load_symbol(spec, "--model-def", "a function returning a torch.nn.Module")
    try:
        model = factory(**(kwargs or {}))
    except Exception as e:  # noqa: BLE001
        raise LandscapeError(f"--model-def {spec!r}: calling it with {kwargs or {}} failed "
                             f"({type(e).__name__}: {_first_line(e)}); check --model-kwargs") from None
    if not isinstance(model, nn.Module):
        raise LandscapeError(f"--model-def {spec!r} returned a {type(model).__name__}, expected a torch.nn.Module")
    return model


def build_data(spec: str, split: str) -> Any:
    """Call the function `spec` names (with `split` when it takes an argument): tensors (x, y),
    a Dataset, a DataLoader or a list of (inputs, targets) batches."""
    fn = load_symbol(spec, "--data-def", "a function returning (x, y) tensors, a Dataset or a DataLoader")
    try:
        takes_split = any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
                          for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        takes_split = False
    try:
        data = fn(split) if takes_split else fn()
    except Exception as e:  # noqa: BLE001
        raise LandscapeError(f"--data-def {spec!r}: calling it failed ({type(e).__name__}: {_first_line(e)})") from None
    if data is None:
        raise LandscapeError(f"--data-def {spec!r} returned None, expected (x, y) tensors, a Dataset or a DataLoader")
    return data


def parse_metric_defs(specs: list[str] | None) -> dict[str, Callable] | None:
    """`--metric-def NAME=FILE.py:fn` (repeatable) -> {NAME: fn}; None when none is given."""
    if not specs:
        return None
    out = {}
    for s in specs:
        name, sep, where = s.partition("=")
        if not sep or not name:
            raise LandscapeError(f"--metric-def {s!r}: expected NAME=FILE.py:fn, e.g. acc=mymetrics.py:accuracy")
        out[name] = load_symbol(where, "--metric-def", "a callable (output, targets) -> per-sample values")
    return out


@dataclass(frozen=True)
class PluginJob:
    """A surface from user-defined pieces; anything not given comes from the checkpoint and --dataset."""

    model_def: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data_def: str | None = None
    loss_def: str | None = None
    metric_defs: tuple[str, ...] | None = None
    stream: bool | None = None
    points_per_pass: int = 8
    num_workers: int = 0
    memory_budget_mb: float | None = None


def run_plugin_job(job: Any, plugins: PluginJob) -> Any:
    """`scripts/plot_surface.py` with plug-ins: the model, data and loss, then `api.compute_surface`.

    `job` is the script's SurfaceJob (grid, directions, output and engine settings). Under
    torchrun or srun every rank builds the same pieces and the ranks share the points. Returns a
    surface.JobResult (its surface None on ranks other than 0).
    """
    from landscape import api
    from landscape.distributed import Group, dist_info, local_device
    from landscape.surface import JobResult, resolve_device

    info = dist_info()
    device = resolve_device(job.device)
    with Group(info, device) as group:
        notes: list[str] = []
        error = None
        try:  # every rank: a failure on one stops all, rank 0 reports it
            model, data, loss, metrics, surf_file = _build(job, plugins, notes)
        except Exception as e:  # noqa: BLE001
            error = e
        group.agree(error)
        budget = int(plugins.memory_budget_mb * 2**20) if plugins.memory_budget_mb is not None else None
        surf = api.compute_surface(
            model, data, loss, metrics, x=job.x, y=job.y, seed=job.seed, directions=job.dir_file,
            norm=job.xspec.norm, ignore=job.xspec.ignore, dir_type=job.xspec.dir_type, out=surf_file,
            batch_size=job.batch_size, device=local_device(info, device), precision=job.precision,
            fold_bn=job.fold_bn, compile=job.compile, stream=plugins.stream, points_per_pass=plugins.points_per_pass,
            memory_budget=budget, num_workers=plugins.num_workers, overwrite=job.overwrite, progress=job.progress,
            max_points=job.max_points, shard=job.shard, flush_seconds=job.flush_seconds, notes=notes, group=group)
    return JobResult(surf, surf_file, api.directions_path(surf_file), type(model).__name__, notes)


def _build(job: Any, plugins: PluginJob, notes: list[str]) -> tuple[nn.Module, dict, Callable, dict | None, Path]:
    """(model, {split: data}, loss, metrics, surface file) for the job."""
    from landscape.sources.checkpoint import _compare, _describe, _signature, build_model as build_zoo_model, load_checkpoint
    from landscape.sources.data import load_dataset, resolve_normalization
    from landscape.engine.evaluate import get_loss
    from landscape.metrics import accuracy
    from landscape.surface import default_checkpoint

    sampling = getattr(job, "sampling", None)
    if sampling is not None and sampling.tolerance is not None:
        raise LandscapeError("--tolerance (adaptive sampling) does not combine with plug-ins or --stream yet; drop one")
    if job.ckpt2 is not None or job.bn_recompute:
        raise LandscapeError("--model_file2/--bn-recompute do not combine with --model-def/--data-def/--loss-def/"
                             "--stream yet; use the Python API (landscape.directions.interpolation) for those")
    if job.same_dir or job.yspec.norm != job.xspec.norm or job.yspec.ignore != job.xspec.ignore:
        raise LandscapeError("with plug-ins, y is drawn like x: drop --same_dir, --ynorm and --yignore")
    if plugins.points_per_pass < 1:
        raise LandscapeError(f"--points-per-pass must be >= 1, got {plugins.points_per_pass}")
    from landscape.surface import resolve_device

    threads_note = set_threads(job.threads, resolve_device(job.device))
    if threads_note is not None:
        notes.append(threads_note)
    ckpt = None
    if plugins.model_def is not None:
        torch.manual_seed(job.seed)  # the factory's initial weights, when no checkpoint is given
        model = build_model(plugins.model_def, plugins.model_kwargs)
        stem = plugins.model_def.rpartition(":")[2]
        if job.ckpt is not None:
            ckpt = load_checkpoint(job.ckpt, allow_pickle=job.allow_pickle)
            missing, unexpected, shapes = _compare(_signature(model), ckpt.state_dict)
            if missing or unexpected or shapes:
                raise LandscapeError(f"--ckpt {job.ckpt} does not fit the --model-def model: "
                                     f"{_describe(missing, unexpected, shapes)}; pass the checkpoint saved from "
                                     "that model (and its --model-kwargs)")
            model.load_state_dict(ckpt.state_dict)
            stem = Path(job.ckpt).stem
        else:
            notes.append(f"no --ckpt: the surface is around the model's initial weights (torch seed {job.seed})")
    else:
        ckpt_path = Path(job.ckpt) if job.ckpt is not None else default_checkpoint()
        ckpt = load_checkpoint(ckpt_path, allow_pickle=job.allow_pickle)
        model, _, more = build_zoo_model(ckpt, job.arch)
        notes += more
        stem = ckpt_path.stem

    if plugins.data_def is not None:
        data = {s: build_data(plugins.data_def, s) for s in job.splits}
    else:
        dataset = job.dataset or (ckpt.meta.get("dataset") if ckpt is not None else None)
        if dataset is None:
            raise LandscapeError("without --data-def, pass --dataset (or a checkpoint that names its data)")
        meta_norm = ckpt.meta.get("normalization") if ckpt is not None else None
        normalization, _ = resolve_normalization(job.normalization, dataset, meta_norm)
        data = {}
        for s in job.splits:
            d = load_dataset(dataset, s, job.data_root, job.n_samples, job.seed)
            data[s] = (normalization.apply(d.x) if normalization is not None else d.x, d.y)
    loss = (load_symbol(plugins.loss_def, "--loss-def", "a callable (output, targets) -> per-sample losses")
            if plugins.loss_def is not None else get_loss(job.loss))
    metrics = parse_metric_defs(list(plugins.metric_defs) if plugins.metric_defs else None)
    if metrics is None:  # accuracy only where the command line would give it: a zoo model, its loss
        metrics = {} if plugins.loss_def is not None or plugins.model_def is not None else {"acc": accuracy}

    tag = f"x{job.x.spec()}" + (f"_y{job.y.spec()}" if job.y is not None else "")
    surf_file = Path(job.surf_file) if job.surf_file else Path(job.out) / f"{stem}_{tag.replace(':', '_')}.h5"
    if job.shard is not None:
        surf_file = job.shard.path(surf_file)
    return model, data, loss, metrics, surf_file
