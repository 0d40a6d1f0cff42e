"""Errors a user can fix. The CLI prints them as one line and exits with code 2; the text of a
user error is built by dlrun.cli.messages, and `one_line` cuts any other exception to the one
line that goes into a message."""


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an exception's text, whitespace collapsed (its type name when
    it has no text): what a one-line message quotes of a library's error."""
    lines = [" ".join(line.split()) for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


class DlrunError(Exception):
    """Base class: a problem with the user's input, not a bug in dlrun."""


class ConfigError(DlrunError):
    """The composed config is invalid (unknown option, wrong type, out of range)."""


class DataError(DlrunError):
    """A dataset is missing, corrupt, or inconsistent."""


class FileError(DlrunError):
    """A file given to dlrun is missing, truncated, or not something dlrun wrote."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM stopped a run at a safe point (a checkpoint written). A BaseException,
    like KeyboardInterrupt, so that a sweep stops instead of going on with its next job; the
    CLI prints the message and exits with `exit_code` (128 + the signal number)."""

    keep_run_dir = True

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
