"""Errors a user can fix. The CLI prints them as one line and exits with code 2."""


class DlrunError(Exception):
    """Base class: a problem with the user's input, not a bug in dlrun."""


class ConfigError(DlrunError):
    """The composed config is invalid (unknown option, wrong type, out of range)."""


class DataError(DlrunError):
    """A dataset is missing, corrupt, or inconsistent."""


class FileError(DlrunError):
    """A file given to dlrun is missing, truncated, or not something dlrun wrote."""
