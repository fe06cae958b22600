"""The one exception type for bad input: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Something the user gave us is wrong; the message says what, and what to do about it."""


class EditWarning(UserWarning):
    """Something about the input the user should know, though the work goes on."""
