#!/usr/bin/env python3
"""Optimizers on toy functions with known answers: ascent to a local maximum, learning rates,
AdaGrad's shrinking steps, a 2-D gradient field with a descent path (PNG + PDF each)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.errors import exit_on_error  # noqa: E402
from landscape.plot.surface import save_figure  # noqa: E402
from landscape.toy import FIGURES  # noqa: E402

EXAMPLE = "example:\n  python scripts/toy_optimizers.py --out docs"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/toy", help="folder for the figures (default: results/toy)")
    p.add_argument("--only", nargs="+", choices=sorted(FIGURES), default=None, help="draw only these figures")
    return p.parse_args(argv)


@exit_on_error
def main(argv=None) -> None:
    args = parse_args(argv)
    for name in args.only or FIGURES:
        paths = save_figure(FIGURES[name](), Path(args.out) / name)
        print(f"{name}: {paths[0]} (and .pdf)")


if __name__ == "__main__":
    main()
