"""Export a 2-D loss surface (.h5) as a VTK XML PolyData file (.vtp) for ParaView, as Li et al.'s 3-D
figures were rendered. Accepts the reference code's h52vtp.py flags (--file/-f, --surf_name, --zmax,
--log, --interp).

The file holds the grid points (x, y, height), quads over the grid cells and the height as point data.
Points not yet computed are left out, with the cells they touch. See docs/paraview.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402

from landscape.cli import file_stem, OneLineParser, out_stem  # noqa: E402
from landscape.errors import LandscapeError, as_flags, exit_on_error  # noqa: E402
from landscape.plot.vtp import surface_to_vtp, vtp_filename  # noqa: E402
from landscape.storage import read_surface  # noqa: E402

EXAMPLE = """examples:
  python scripts/plot_surface.py          # computes the embedded default, prints its .h5 path
  python scripts/h52vtp.py --surf_file results/digits_resnet20_x-1_1_25_y-1_1_25.h5
  # writes results/digits_resnet20_x-1_1_25_y-1_1_25_train_loss.vtp
  python scripts/h52vtp.py --surf_file results/surface.h5 --zmax 10 --log --interp 500 --out docs --name r20
  # writes docs/r20_train_loss_zmax10_log_interp500.vtp
"""

FLAGS = {"metric": "--surf_name"}  # library argument -> flag, where not --<name>


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--surf_file", "--file", "-f", required=True,
                   help="the surface .h5 file (ours or the reference code's); --file and -f as in the reference")
    p.add_argument("--surf_name", default="train_loss",
                   help="the metric drawn as the height: train_loss, test_loss, train_acc, ... (default: train_loss)")
    p.add_argument("--zmax", type=float, default=None,
                   help="clip values above it (default: none); +inf at computed points is drawn at --zmax")
    p.add_argument("--log", action="store_true", help="draw log(value + 0.1), after --zmax")
    p.add_argument("--interp", type=int, default=None, metavar="N",
                   help="resample to an N x N grid by bicubic interpolation (after --zmax and --log); needs every "
                        "point computed (default: the computed grid as it is)")
    p.add_argument("--ascii", action="store_true", help="write the numbers as text (default: compressed binary)")
    p.add_argument("--out", default=None, metavar="FOLDER",
                   help="folder for the .vtp file (default: the surface file's folder)")
    p.add_argument("--name", default=None, metavar="STEM",
                   help="the file name stem: <name>_<surf_name>[_zmax<Z>][_log][_interp<N>].vtp "
                        "(default: the surface file's name without .h5)")
    return p.parse_args(argv)


def output_path(args: argparse.Namespace) -> Path:
    """`<out>/<name>_<surf_name>[_zmax<Z>][_log][_interp<N>].vtp`."""
    stem = out_stem(args.out, args.name, Path(args.surf_file).parent, file_stem(args.surf_file),
                    "the folder of the .vtp file", (".vtp",))
    return stem.parent / vtp_filename(stem.name, args.surf_name, zmax=args.zmax, log=args.log, interp=args.interp)


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    path = output_path(args)
    surf = read_surface(args.surf_file)
    if surf.ndim != 2:
        raise LandscapeError(f"{args.surf_file!r} holds a 1-D surface, and a .vtp surface needs x and y: compute a "
                             "2-D one with scripts/plot_surface.py --x=-1:1:51 --y=-1:1:51, or plot this one with "
                             "scripts/plot_1d.py")
    try:
        info = surface_to_vtp(surf, path, args.surf_name, zmax=args.zmax, log=args.log, interp=args.interp,
                              ascii=args.ascii)
    except LandscapeError as e:
        raise LandscapeError(as_flags(e, FLAGS)) from None
    for note in info.notes:
        print(f"note: {as_flags(LandscapeError(note, ('zmax',)), FLAGS)}", file=sys.stderr)
    print(info.path)


if __name__ == "__main__":
    main()
