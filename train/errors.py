"""The error type that the ``fwm-rl`` command reports as one line and a non-zero exit status."""


class UserError(Exception):
    """A mistake in the user's arguments or data files; the message says what was wrong and what is allowed."""
