#!/usr/bin/env python3
"""Optimizers on toy functions with known answers: ascent to a local maximum, learning rates,
AdaGrad's shrinking steps, a 2-D gradient field with a descent path (PNG + PDF each).

With --animate, instead: SGD, SGD+momentum, AdaGrad, Adam, RAdam and CalibratedAdam moving
together over 2-D problems (an elongated valley, Rosenbrock's banana, a saddle between two wells),
f at each optimizer's current point in the title: <out>/toy_<problem>_paths.gif, and .mp4 where
ffmpeg exists.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.errors import LandscapeError, exit_on_error  # noqa: E402
from landscape.plot.animate import check_animation_options, write_animation  # noqa: E402
from landscape.plot.surface import save_figure  # noqa: E402
from landscape.toy import FIGURES, TOY_PROBLEMS, toy_animation  # noqa: E402

EXAMPLE = """examples:
  python scripts/toy_optimizers.py --out docs
  python scripts/toy_optimizers.py --animate --out docs          # docs/toy_<problem>_paths.gif"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/toy", help="folder for the figures (default: results/toy)")
    p.add_argument("--only", nargs="+", choices=sorted(FIGURES), default=None, help="draw only these figures")
    p.add_argument("--animate", action="store_true",
                   help="animate the optimizers on the 2-D problems instead of drawing the figures: "
                        "<out>/toy_<problem>_paths.gif (and .mp4 where ffmpeg exists)")
    p.add_argument("--problems", nargs="+", choices=sorted(TOY_PROBLEMS), default=None,
                   help="with --animate: only these problems (default: all)")
    p.add_argument("--fps", type=float, default=10.0, help="with --animate: frames per second (default: 10)")
    p.add_argument("--frames", type=int, default=80,
                   help="with --animate: at most N frames, steps subsampled evenly (default: 80)")
    return p.parse_args(argv)


@exit_on_error
def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    if not args.animate:
        if args.problems is not None:
            raise LandscapeError("--problems picks what --animate draws; add --animate (or use --only for figures)")
        for name in args.only or FIGURES:
            paths = save_figure(FIGURES[name](), out / name)
            print(f"{name}: {paths[0]} (and .pdf)")
        return
    if args.only is not None:
        raise LandscapeError("--only picks static figures, which --animate does not draw; pick problems with --problems")
    check_animation_options(args.fps, args.frames)
    for name in args.problems or TOY_PROBLEMS:
        files = write_animation(toy_animation(TOY_PROBLEMS[name], args.frames), out / f"toy_{name}_paths", args.fps)
        print(f"{name}: {files.gif}" + (f" and {files.mp4}" if files.mp4 else f"  (note: {files.note})"))


if __name__ == "__main__":
    main()
