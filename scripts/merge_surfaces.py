#!/usr/bin/env python3
"""Merge the shard files of a job array (plot_surface.py --shard i/N) into one surface file.

Shards must come from one job: the same settings (checkpoint, data, directions, grid, loss)
and, where two files computed the same point, the same values bit for bit. The merged file
is the unsharded surface: plot_2d.py draws it, and plot_surface.py without --shard resumes it
(computing any missing points). Shards of either file format merge (format 1: accuracy as a
fraction; format 2: in percent, as the reference code writes it), compared as they are stored;
the merged file is written in the current format. Exit status: 0 when every point is done, 1
when some are missing (the merged file is still written and the missing shards are named), 2
on bad input.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.cli import check_name, OneLineParser  # noqa: E402
from landscape.errors import LandscapeError, exit_on_error  # noqa: E402
from landscape.storage import SurfaceLock, merge_surfaces, read_surface, write_surface  # noqa: E402

EXAMPLE = """examples:
  python scripts/merge_surfaces.py results/digits_resnet20_x-1_1_25_y-1_1_25.shard-*-of-4.h5
  python scripts/merge_surfaces.py a.shard-0-of-2.h5 a.shard-1-of-2.h5 --out merged   # merged/a.h5
  python scripts/merge_surfaces.py a.shard-0-of-2.h5 a.shard-1-of-2.h5 --name b        # b.h5 beside the shards
  python scripts/merge_surfaces.py a.shard-0-of-2.h5 a.shard-1-of-2.h5 --surf_file c/merged.h5
"""

_SHARD_NAME = re.compile(r"^(?P<stem>.+)\.shard-\d+-of-\d+(?P<suffix>\.[^.]+)$")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shards", nargs="+", help="shard files (or partial surfaces of the same job)")
    p.add_argument("--out", default=None, metavar="FOLDER", help="folder for the merged file (default: the shards')")
    p.add_argument("--name", default=None, metavar="STEM",
                   help="the merged file is <name>.h5 (default: the shards' name without .shard-i-of-N)")
    p.add_argument("--surf_file", default=None, metavar="FILE",
                   help="the merged file's path, instead of --out and --name")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the merged file; by default an existing one of the same job is merged in too")
    return p.parse_args(argv)


def merged_file(args: argparse.Namespace, shard: Path) -> Path:
    """--surf_file, else `<--out>/<--name>.h5`: --out defaults to the first shard's folder, --name to its
    name without .shard-i-of-N."""
    if args.surf_file is not None:
        if args.out is not None or args.name is not None:
            raise LandscapeError("--surf_file names the merged file itself; drop --out and --name, or --surf_file")
        out = Path(args.surf_file)
        if out.is_dir():
            raise LandscapeError(f"--surf_file {out} is a folder; give a file name such as {out / 'surface.h5'}, "
                                 f"or pass --out {out}")
        return out
    folder = shard.parent if args.out is None else Path(args.out)
    if folder.is_file() or (args.out is not None and folder.suffix in (".h5", ".hdf5") and not folder.is_dir()):
        raise LandscapeError(f"--out {args.out} names a file, but --out is the merged file's folder; "
                             f"pass --surf_file {args.out} to name the file")
    if args.name is not None:
        check_name(args.name)
        if Path(args.name).suffix in (".h5", ".hdf5"):
            raise LandscapeError(f"--name {args.name} has the suffix; give the stem: --name {Path(args.name).stem}")
        return folder / (args.name + (shard.suffix or ".h5"))
    m = _SHARD_NAME.match(shard.name)
    if m is None:
        raise LandscapeError(f"{shard.name} is not named like a shard (NAME.shard-I-of-N.h5); "
                             "pass --name STEM or --surf_file FILE")
    return folder / (m["stem"] + m["suffix"])


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shards = [Path(s) for s in args.shards]
    out = merged_file(args, shards[0])
    with SurfaceLock(out) as lock:
        inputs = list(shards)
        if out.exists() and not args.overwrite and out.resolve() not in [s.resolve() for s in shards]:
            try:
                read_surface(out)
            except LandscapeError as e:
                raise LandscapeError(f"{e}; pass --overwrite to replace it, or --surf_file (or --name) to write "
                                     "elsewhere") from None
            inputs.append(out)  # merge into what is there (e.g. shards that finished earlier)
        try:
            surf, report = merge_surfaces(inputs)
        except LandscapeError as e:
            if out in inputs[len(shards):] and str(out) in str(e):
                raise LandscapeError(f"{e}; or pass --overwrite to replace {out}") from None
            raise
        write_surface(out, surf)
    for note in lock.notes:
        print(f"note: {note}")
    print(f"merged {len(report.inputs)} files into {out}: {report.done}/{report.total} points done")
    if report.complete:
        return 0
    missing = report.total - report.done
    if report.missing_shards:
        names = ", ".join(str(i) for i in report.missing_shards[:8])
        more = " ..." if len(report.missing_shards) > 8 else ""
        print(f"missing: {missing} points; no file for shard(s) {names}{more} of {report.shard_count}; "
              f"run them (--shard I/{report.shard_count}) and merge again", file=sys.stderr)
    else:
        print(f"missing: {missing} points (e.g. {'; '.join(report.missing_example)}); resume the unfinished "
              f"shards, or run plot_surface.py on {out} without --shard to compute them", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
