"""Errors that reach the user as one line: what went wrong and what to do next."""


class UserError(RuntimeError):
    """A problem the user can fix (bad argument, missing file, missing model); printed without a traceback."""
