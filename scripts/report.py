"""Write an interactive report of a surface file: one self-contained HTML page that opens offline.

The 3-D surface (rotatable), the contour plot with each point's values on hover, 1-D slices
through the center with error bands, the trajectory and curvature maps when given, and the run's
provenance, all from the stored file (no model, no recomputation). See docs/report.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402

from landscape.errors import exit_on_error  # noqa: E402
from landscape.plot.report import report_path, write_report  # noqa: E402

EXAMPLE = """example:
  python scripts/plot_surface.py          # computes a surface and prints its .h5 path
  python scripts/report.py --surf_file results/digits_resnet20_x-1_1_25_y-1_1_25.h5 --vmax 10
  # writes results/digits_resnet20_x-1_1_25_y-1_1_25_report.html; open it in a browser
  python scripts/report.py --surf_file results/traj.h5 --projection results/traj_dirs_proj.h5 \\
      --curvature results/curv.h5 --out docs --name trajectory --log
  # writes docs/trajectory_report.html
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--surf_file", required=True, help="the surface .h5 file (ours or the reference code's)")
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="folder for the report (default: the surface file's folder)")
    p.add_argument("--name", default=None, metavar="STEM",
                   help="the report's file name stem: <name>_report.html (default: the surface file's name "
                        "without .h5)")
    p.add_argument("--projection", default=None, metavar="PROJ_H5",
                   help="a trajectory to draw over the contours (*_proj.h5 of scripts/plot_trajectory.py)")
    p.add_argument("--curvature", default=None, metavar="H5",
                   help="a curvature map file (max_eig, min_eig; scripts/plot_hessian_eig.py) to show too")
    p.add_argument("--vmax", type=float, default=None,
                   help="the 3-D surface leaves out losses above it and the colours stop there (default: no clip)")
    p.add_argument("--log", action="store_true", help="loss on a log10 scale")
    p.add_argument("--title", default=None, help="the page's title (default: 'loss landscape: <file name>')")
    return p.parse_args(argv)


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    path = report_path(args.surf_file, args.out, args.name)
    print(write_report(args.surf_file, path, projection=args.projection, curvature=args.curvature,
                       vmax=args.vmax, log=args.log, title=args.title))


if __name__ == "__main__":
    main()
