"""landscape: loss-landscape visualization for neural networks.

Reproduces and extends Li et al., "Visualizing the Loss Landscape of Neural Nets"
(NeurIPS 2018): random filter-normalized directions, loss and accuracy on 1-D and
2-D grids of weight perturbations, HDF5 surfaces that resume after a kill, and
contour, heat-map, 3-D and 1-D plots.

The Python API, for any torch.nn.Module, data and loss:

    import landscape as ll
    surf = ll.compute_surface(model, (x, y), loss=ll.losses.cross_entropy,
                              metrics={"acc": ll.metrics.accuracy},
                              x=ll.Axis(-1, 1, 51), y=ll.Axis(-1, 1, 51), seed=0, out="runs/my.h5")
    ll.plot.contour(surf)            # or surf.plot_contour(ax=...)

- compute_surface(model, data, loss, metrics, x=, y=, ...): the surface file (see its help);
  the engine, sampling, data and run settings as frozen configs: EngineOptions, SamplingPlan,
  DataOptions, RunOptions
- data: tensors (x, y), a Dataset, a DataLoader or a list of (inputs, targets) batches;
  large or streamed data is read once per block of grid points (landscape.engine.stream)
- losses: cross_entropy, softmax_mse, squared_error, or any callable (output, targets) ->
  per-sample values; metrics: accuracy, or any such callable
- directions: random(model, norm="filter", ignore="biasbn", generator=g), interpolation(m1, m2),
  load(path); pass them as compute_surface(..., directions=[dx, dy])
- Axis(min, max, num), read_surface(path), plot (contour, contourf, heatmap, surface3d, line1d)

The spine, in data-flow order: sources (checkpoint, data, plug-ins) -> directions -> engine
(fold, fuse, precision, evaluate, stream, multipoint) -> sampling -> sweep -> storage -> plot;
surface.compute_surface ties them, and every door (the API, scripts/plot_surface.py, the
curvature job) goes through it or its sweep.
"""

__version__ = "0.1.0"

from landscape.errors import LandscapeError  # noqa: E402

# The API is imported on first use, so that `import landscape.plot` (re-plotting a file) does not
# pay for torch: name -> (module, attribute or None for the module itself).
_LAZY = {
    "compute_surface": ("landscape.surface", "compute_surface"),
    "Axis": ("landscape.grid", "Axis"),
    "SamplingPlan": ("landscape.sampling", "SamplingPlan"),
    "EngineOptions": ("landscape.engine", "EngineOptions"),
    "DataOptions": ("landscape.config", "DataOptions"),
    "RunOptions": ("landscape.config", "RunOptions"),
    "Surface": ("landscape.storage", "Surface"),
    "read_surface": ("landscape.storage", "read_surface"),
    "directions": ("landscape.directions", None),
    "losses": ("landscape.losses", None),
    "metrics": ("landscape.metrics", None),
    "plot": ("landscape.plot", None),
}

__all__ = ["LandscapeError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'landscape' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
