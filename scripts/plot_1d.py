"""Plot a 1-D loss curve: loss (left axis) and accuracy in % (right axis), train solid, test dashed.

Accepts the reference code's plot_1D.py flags.
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
  python scripts/plot_surface.py --x=-1:1:51 ...   # a 1-D surface (no --y); prints its .h5 path
  python scripts/plot_1d.py --surf_file results/surface_1d.h5 --log --loss_max 5 --acc_min 0
  # writes results/surface_1d_1d.png/.pdf and results/surface_1d_1d_log.png/.pdf
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--surf_file", required=True, help="the 1-D surface .h5 file (ours or the reference code's)")
    p.add_argument("--log", action="store_true", help="also write a plot with the loss on a log scale (_1d_log)")
    p.add_argument("--xmin", type=float, default=None, help="left end of the x axis (default: the data's)")
    p.add_argument("--xmax", type=float, default=None, help="right end of the x axis (default: the data's)")
    p.add_argument("--loss_max", type=float, default=None, help="top of the loss axis (default: the data's)")
    p.add_argument("--acc_min", type=float, default=None, help="bottom of the accuracy axis, in %% (default: 0)")
    p.add_argument("--show", action="store_true", help="also open the figures in windows, when a display exists")
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="folder for the figures (default: the surface file's folder)")
    p.add_argument("--name", default=None, metavar="STEM",
                   help="the figures' file name stem: <name>_1d.png/.pdf (and <name>_1d_log.png/.pdf with --log; "
                        "default: the surface file's name without .h5)")
    return p.parse_args(argv)


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    surf = read_surface(args.surf_file)
    if surf.ndim != 1:
        raise LandscapeError(f"{args.surf_file!r} holds a 2-D surface; plot it with scripts/plot_2d.py")
    out = out_stem(args.out, args.name, Path(args.surf_file).parent, file_stem(args.surf_file),
                   "the figures' folder")
    kw = dict(log=args.log, loss_max=args.loss_max, acc_min=args.acc_min, xlim=(args.xmin, args.xmax))
    for p in plot_surface_figures(surf, out, **kw):
        print(p)
    if args.show and has_display():
        import matplotlib.pyplot as plt

        surface_figures(surf, **kw, new_figure=plt.figure)
        plt.show()
    elif args.show:
        print("note: --show ignored: no display", file=sys.stderr)


if __name__ == "__main__":
    main()
