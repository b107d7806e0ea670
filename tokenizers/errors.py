"""Errors every layer of videolm raises; the command line turns them into one line and an exit code.

They live in the lowest layer (``videolm.tokenizers``) so that media, models and tasks can all
raise them without importing upward.
"""


class VideolmError(Exception):
    """A failure with a message fit to show a user as it is (no traceback needed)."""

    exit_code = 1


class UsageError(VideolmError):
    """The user asked for something that cannot work as asked (wrong flag, missing input)."""

    exit_code = 2


class MediaError(VideolmError):
    """A media file could not be read or written. The message names the file and the cause."""

    def __init__(self, path, cause: str):
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")


class ConfigError(VideolmError):
    """A YAML config or a config dict does not fit the entry point it names (a usage error)."""

    exit_code = 2


class DataError(VideolmError):
    """A dataset is empty, malformed or inconsistent."""
