"""Errors that reach the user as one clear line (exit code 2), never as a traceback."""


class UserError(Exception):
    """A problem the user can fix: bad config, unreadable file, missing model, bad flag.

    The CLI prints ``error: <message>`` on stderr and exits with status 2.
    """


class ModelError(UserError):
    """A model directory that is missing, incomplete, corrupt or mismatched."""


class AudioError(UserError):
    """Audio that cannot be read or decoded."""
