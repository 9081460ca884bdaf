"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

import functools
import sys
from typing import Callable


class LandscapeError(Exception):
    """A problem with the user's input (files, flags, data) that the user can fix.

    Scripts print it as one line and exit with status 2, without a traceback.
    """


def exit_on_error(main: Callable[..., object]) -> Callable[..., object]:
    """Wrap a script's main: a LandscapeError becomes `error: ...` on stderr and exit 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except LandscapeError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
