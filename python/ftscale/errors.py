"""The errors a user can cause. Every one says what to change.

Rust errors are mapped to these classes in one place (``rust/ftscale-py/src/errors.rs``);
Python code raises them directly.
"""

from __future__ import annotations


class FtscaleError(Exception):
    """Base class of every error a user can cause and fix."""


class ConfigError(FtscaleError, ValueError):
    """A configuration value or argument is invalid; the message names the key."""


class InputError(FtscaleError):
    """An input path is missing, unreadable or of an unknown format."""


class OutputError(FtscaleError):
    """An output location cannot be written."""


class DataError(FtscaleError):
    """The data itself cannot be used as configured (for example a source with no usable records)."""


__all__ = ["FtscaleError", "ConfigError", "InputError", "OutputError", "DataError"]
