"""The project's error type: one clear line for the user, exit code 2."""

from __future__ import annotations


class ObliviateError(Exception):
    """An input or usage problem the user can fix.

    The message is one line that names what was expected and what was found. The CLI prints it as
    ``obliviate: error: <message>`` and exits with :attr:`exit_code`; nothing is written before it is raised.
    """

    exit_code = 2


class DataError(ObliviateError):
    """A forget / retain / holdout set that cannot be loaded or fails validation."""


class ModelError(ObliviateError):
    """A model or tokenizer directory that cannot be loaded or does not match."""


class ConfigError(ObliviateError):
    """An option or combination of options that makes no sense."""


class TrainingError(ObliviateError):
    """A run that had to stop (non-finite loss, refused output directory)."""
