"""Where a surface's model and data come from, and how the data reaches the engine.

- `spec`: the command line's model and data flags (`SourceSpec`) resolved into a model, data, a
  loss and metrics (`Sources`), which `surface.compute_surface` takes from any door;
- `checkpoint`: checkpoint files and the model registry; `data`: data sets and normalization;
  `plugins`: the user's own model, data, loss and metric definitions;
- `prepare`: resident or streamed data, and the fingerprint that names it in a surface's settings.
"""

from landscape.sources.spec import SourceSpec, Sources, default_checkpoint, resolve

__all__ = ["SourceSpec", "Sources", "default_checkpoint", "resolve"]
