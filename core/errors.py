"""Errors every layer of videolm raises; the command line turns them into one line and an exit code.

One rule for exit codes across every command: bad usage or a bad input file exits 2, a failure
while working exits 1. They live in the lowest layer (``videolm.core``) so that media, models and
tasks can all raise them without importing upward.
"""


class VideolmError(Exception):
    """A failure with a message fit to show a user as it is (no traceback needed)."""

    exit_code = 1


class UsageError(VideolmError):
    """The user asked for something that cannot work as asked (wrong flag, missing or bad input)."""

    exit_code = 2


class MediaError(VideolmError):
    """A media file could not be read or written. The message names the file and the cause.

    Reading a file the user gave is an input problem (exit 2); writing one is a failure while
    working (``writing=True``, exit 1)."""

    def __init__(self, path, cause: str = "", writing: bool = False):
        self.path = str(path)
        self.cause = cause
        self.exit_code = 1 if writing else 2
        # one argument: a whole message (a DataLoader worker's error is rebuilt from its text)
        super().__init__(f"{self.path}: {cause}" if cause else self.path)


class ConfigError(VideolmError):
    """A YAML config, a config dict or a model folder's config does not fit what reads it (exit 2)."""

    exit_code = 2


class DataError(VideolmError):
    """A dataset is empty, malformed or inconsistent: bad input (exit 2)."""

    exit_code = 2
