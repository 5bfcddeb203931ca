"""The error type that the ``fwm-rl`` command reports as one line and a non-zero exit status, and the one place
where errors of constructing things from the user's input become such lines."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class UserError(Exception):
    """A mistake in the user's arguments or data files; the message says what was wrong and what is allowed."""


@contextmanager
def user_input(what: str) -> Iterator[None]:
    """Construct ``what`` (an env, an agent, a model) from user-given values: the ValueError/TypeError that the
    constructor raises for a bad value becomes a one-line UserError. Use it only around such construction, before
    the run directory exists; errors anywhere else keep their traceback."""
    try:
        yield
    except (TypeError, ValueError) as e:
        raise UserError(f"cannot build {what}: {' '.join(str(e).split())}") from None
