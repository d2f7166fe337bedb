"""Errors meant for the user: the command line prints their message on one line and exits non-zero."""


class CopError(Exception):
    """A problem the user can fix (bad input, missing file, missing checkpoint)."""


class InputError(CopError):
    """Bad user input: unreadable image, malformed click, click outside the image."""


class ModelError(CopError):
    """A model cannot be built or loaded (unknown name, missing or wrong checkpoint)."""
