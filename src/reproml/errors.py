"""Errors a user can act on.

Every problem caused by input (params.yaml, a data file, a missing stage output) is raised as a
`ReproError`, whose message names the file, key or column and what was expected. The CLI prints
these without a traceback and exits with status 2; anything else is a bug and keeps its traceback.
"""


class ReproError(Exception):
    """A problem with the user's input, described well enough to fix without reading code."""


class ConfigError(ReproError):
    """params.yaml is unreadable, has an unknown key, a wrong type or a missing value."""


class DataValidationError(ReproError):
    """A data file cannot be used: unreadable, empty, or breaking the declared schema."""
