"""Errors a user can act on: printed as one line, never as a traceback."""


class UserError(Exception):
    """Bad params, a missing file, bad data: the message names the key or the file."""
