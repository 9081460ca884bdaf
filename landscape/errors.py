"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

import functools
import re
import sys
from typing import Callable, Mapping


class LandscapeError(Exception):
    """A problem with the user's input (files, flags, data) that the user can fix.

    Scripts print it as one line and exit with status 2, without a traceback. A library error
    about one argument names it (`argument`, e.g. "precision"); a script's `exit_on_error` names
    the command-line flag instead ("--precision").
    """

    def __init__(self, message: str, argument: str | tuple[str, ...] | None = None):
        super().__init__(message)
        self.argument = argument


# arguments whose flag is not "--" + the name with dashes
FLAGS: dict[str, str] = {
    "loss": "--loss_name", "dir_type": "--dir_type", "norm": "--xnorm", "ignore": "--xignore", "xignore": "--xignore",
    "yignore": "--yignore", "dir_file": "--dir_file", "surf_file": "--surf_file", "strata": "--stratify",
    "splits": "--split", "data": "--data-def", "model": "--model-def", "dir_tol": "--direction-tol", "out": "--surf_file",
    "out_dir": "--out",
    "dir_max_iter": "--direction-max-iter", "xdir": "--xdir", "ydir": "--ydir",
    "bn_data": "--bn-recompute",
}


def flag_of(argument: str, flags: Mapping[str, str] | None = None) -> str:
    """The command-line flag of a library argument: `flags`, then FLAGS, else --name-with-dashes."""
    table = {**FLAGS, **(flags or {})}
    return table.get(argument, "--" + argument.replace("_", "-"))


def as_flags(e: LandscapeError, flags: Mapping[str, str] | None = None) -> str:
    """The error's message with each of its arguments' names (the first whole-word occurrence of
    each) as the command-line flag."""
    text = str(e)
    names = (e.argument,) if isinstance(e.argument, str) else tuple(getattr(e, "argument", None) or ())
    for name in names:
        # a word of its own (not part of a path, a flag or a longer name)
        text = re.sub(rf"(?:(?<=[\s(])|^){re.escape(name)}\b(?![-=/.\w])", flag_of(name, flags), text, count=1)
    return text


def exit_on_error(main: Callable[..., object] | None = None, *, flags: Mapping[str, str] | None = None):
    """Wrap a script's main: a LandscapeError becomes `error: ...` on stderr (library argument names
    given as flags: `flags`, then FLAGS) and exit 2. `@exit_on_error` or
    `@exit_on_error(flags={"folder": "--model_folder"})` for a script whose flags have other names."""

    def wrap(main: Callable[..., object]) -> Callable[..., object]:
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except LandscapeError as e:
                print(f"error: {as_flags(e, flags)}", file=sys.stderr)
                raise SystemExit(2) from None

        return wrapper

    return wrap if main is None else wrap(main)
