"""Plot a 2-D loss surface: contour, filled contour, heat map and 3-D surface (png + pdf).

Accepts the reference code's plot_2D.py flags.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402

from landscape.cli import file_stem, out_stem  # noqa: E402
from landscape.errors import LandscapeError, exit_on_error  # noqa: E402
from landscape.plot.surface import has_display, plot_surface_figures, surface_figures  # noqa: E402
from landscape.storage import read_surface  # noqa: E402

EXAMPLE = """example:
  python scripts/plot_surface.py          # computes a surface and prints its .h5 path
  python scripts/plot_2d.py --surf_file results/surface.h5 --surf_name train_loss \\
      --vmin 0.1 --vmax 10 --vlevel 0.5 --zlim 10
  # writes results/surface_train_loss_2dcontour.png/.pdf, _2dcontourf, _2dheat, _3dsurface
  python scripts/plot_2d.py --surf_file results/surface.h5 --out docs --name digits_resnet20
  # writes docs/digits_resnet20_train_loss_2dcontour.png/.pdf, ...; levels chosen from the data
  python scripts/plot_2d.py --surf_file results/surface.h5 --log   # log levels, colours and 3-D z axis
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--surf_file", required=True, help="the surface .h5 file (ours or the reference code's)")
    p.add_argument("--surf_name", default="train_loss", help="the metric to plot (default: train_loss)")
    p.add_argument("--vmin", type=float, default=None,
                   help="lowest contour level and colour (default: chosen from the data)")
    p.add_argument("--vmax", type=float, default=None,
                   help="contour levels and colours stop below it (default: chosen from the data)")
    p.add_argument("--vlevel", type=float, default=None,
                   help="step between contour levels: with --vmin and --vmax the reference's arange(vmin, vmax, "
                        "vlevel) (default: about 12 round levels chosen from the data, log-spaced where the values "
                        "span decades)")
    p.add_argument("--zlim", type=float, default=None,
                   help="the 3-D surface leaves out values above it (default: the colour range's top)")
    p.add_argument("--log", action="store_true",
                   help="log scale: log-spaced contour levels, log colours, and a log z axis in 3-D")
    p.add_argument("--show", action="store_true", help="also open the figures in windows, when a display exists")
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="folder for the figures (default: the surface file's folder)")
    p.add_argument("--name", default=None, metavar="STEM",
                   help="the figures' file name stem: <name>_<metric>_<kind>.png/.pdf "
                        "(default: the surface file's name without .h5)")
    p.add_argument("--only", default=None,
                   help="comma-separated figures to write, e.g. 2derror (a sampled surface's contour beside its "
                        "error bars) or 2dcontour,3dsurface (default: all)")
    return p.parse_args(argv)


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    surf = read_surface(args.surf_file)
    if surf.ndim != 2:
        raise LandscapeError(f"{args.surf_file!r} holds a 1-D surface; plot it with scripts/plot_1d.py")
    out = out_stem(args.out, args.name, Path(args.surf_file).parent, file_stem(args.surf_file),
                   "the figures' folder")
    kw = dict(metric=args.surf_name, vmin=args.vmin, vmax=args.vmax, vlevel=args.vlevel, zlim=args.zlim, log=args.log)
    only = [o.strip() for o in args.only.split(",") if o.strip()] if args.only else None
    for p in plot_surface_figures(surf, out, **kw, only=only):
        print(p)
    if args.show and has_display():
        import matplotlib.pyplot as plt

        surface_figures(surf, **kw, new_figure=plt.figure)
        plt.show()
    elif args.show:
        print("note: --show ignored: no display", file=sys.stderr)


if __name__ == "__main__":
    main()
