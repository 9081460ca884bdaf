"""The model registry: `@register_model` on a factory, `get_model(name, ...)` to build one."""

from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

from landscape.errors import LandscapeError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None):
    """Register a factory `fn(num_classes=10, in_channels=3) -> nn.Module` under its name."""

    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is registered twice")
        _REGISTRY[key] = f
        return f

    return deco(fn) if fn is not None else deco


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_REGISTRY)


def get_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs) -> nn.Module:
    """Build a registered architecture by name."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise LandscapeError(
            f"unknown model {name!r}{hint}; choose one of: {', '.join(list_models())}"
        )
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, **kwargs)
