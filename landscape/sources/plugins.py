"""Plug-ins from the command line: a model, data, loss or metric defined in the user's own file.

`--model-def path/to/file.py:factory` (or `package.module:factory`) names a callable; loading
errors are one line naming the file, the symbol and what was expected. `landscape.sources.spec`
builds the pieces from these flags; then the command line goes on as for a checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

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
