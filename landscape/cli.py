"""What the scripts share on the command line: argparse whose errors are one line, and the
--out/--name convention for a file made from another (figures, .vtp, checkpoints, merged files).

The messages here speak in the scripts' flags: this module is the command line's, not the library's.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from landscape.errors import LandscapeError


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one `error:` line (a LandscapeError), not the usage text."""

    def error(self, message: str):
        raise LandscapeError(f"{message}; see --help")


def file_stem(path: str | Path) -> str:
    """The name a file's outputs take by default: its name without .h5."""
    path = Path(path)
    return path.stem if path.suffix == ".h5" else path.name


def check_name(name: str) -> str:
    """--name: a file name stem, not a path."""
    if not name or Path(name).name != name or name in (".", ".."):
        raise LandscapeError(f"--name {name!r} is a file name stem, not a path; give the folder with --out")
    return name


def out_stem(out: str | None, name: str | None, default_folder: Path, default_name: str, holds: str,
             file_suffixes: Sequence[str] = (".png", ".pdf")) -> Path:
    """`<out>/<name>`: --out (default `default_folder`), --name (default `default_name`). An --out
    that is a file, or looks like one (`file_suffixes`), is refused: it is `holds` ("the figures'
    folder"), and the message gives the --out and --name that were meant."""
    name = check_name(default_name if name is None else name)
    folder = default_folder if out is None else Path(out)
    if folder.is_file() or (out is not None and folder.suffix in file_suffixes):
        raise LandscapeError(f"--out {out} names a file, but --out is {holds}; pass --out {folder.parent} "
                             f"--name {folder.stem}")
    return folder / name
