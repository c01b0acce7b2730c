"""Errors that several layers raise, in a leaf module every layer may import.

Each carries a one-line message: the CLI prints it as is and exits with code 2.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class ConfigError(ValueError):
    """A bad setting; its message is one line naming the setting and what is allowed."""


class DataError(ValueError):
    """A data file that is missing or cannot be read; the message names the path."""
