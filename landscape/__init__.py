"""landscape: loss-landscape visualization for neural networks.

Reproduces and extends Li et al., "Visualizing the Loss Landscape of Neural Nets"
(NeurIPS 2018): random filter-normalized directions, loss and accuracy on 1-D and
2-D grids of weight perturbations, HDF5 surfaces that resume after a kill, and
contour, heat-map, 3-D and 1-D plots.

Modules, in data-flow order: models, data, checkpoint, directions, grid,
evaluate, surface (with storage), plot.
"""

__version__ = "0.1.0"

from landscape.errors import LandscapeError  # noqa: E402

__all__ = ["LandscapeError", "__version__"]
