"""Outputs from stored surface files alone (no model, no recomputation): contour, filled contour,
heat map, 3-D and 1-D plots (`surface`), curvature maps and spectra (`curvature`), the interactive
HTML report (`report`, Plotly embedded), ParaView's .vtp (`vtp`) and animated optimizer paths
(`animate`). matplotlib is imported here, torch is not.

    import landscape as ll
    surf = ll.read_surface("results/....h5")
    ll.plot.contour(surf, "train_loss")
    ll.plot.save_figures(surf, "figures")   # every standard figure of every loss, PNG and PDF
"""

from landscape.plot.report import write_report
from landscape.plot.surface import (Levels, choose_levels, comparison_figure, contour, contourf, error_panels,
                                    has_display, heatmap, line1d, plot_surface_figures, sampling_summary,
                                    save_figure, save_figures, surface3d, surface_figures)
from landscape.plot.vtp import surface_to_vtp

__all__ = ["Levels", "choose_levels", "comparison_figure", "contour", "contourf", "error_panels", "has_display",
           "heatmap", "line1d", "plot_surface_figures", "sampling_summary", "save_figure", "save_figures",
           "surface3d", "surface_figures", "surface_to_vtp", "write_report"]
