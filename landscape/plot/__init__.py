"""Figures from stored surface files alone (no model): contour, filled contour, heat map, 3-D and
1-D plots (`surface`), curvature maps and spectra (`curvature`). matplotlib is imported here, torch
is not.

    import landscape as ll
    surf = ll.read_surface("results/....h5")
    ll.plot.contour(surf, "train_loss")
"""

from landscape.plot.surface import (comparison_figure, contour, contourf, error_panels, has_display, heatmap,
                                    line1d, plot_surface_figures, sampling_summary, save_figure, surface3d,
                                    surface_figures)

__all__ = ["comparison_figure", "contour", "contourf", "error_panels", "has_display", "heatmap", "line1d",
           "plot_surface_figures", "sampling_summary", "save_figure", "surface3d", "surface_figures"]
