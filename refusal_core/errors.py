"""The one base class for errors caused by the user's input, not by a bug.

The command line exits with code 2 and prints only the message for a ``UserError``; any
other exception is a bug and exits with code 1 and a traceback. Each module's own error
type (a bad prompt file, a direction set that does not fit the model, an unloadable model
spec...) subclasses ``UserError``, so callers never map a bare ``ValueError`` to bad input.
Messages name the user's file or value and the fix.
"""

from __future__ import annotations

__all__ = ["SettingsError", "UserError"]


class UserError(Exception):
    """Bad input: a file, a value or a spec the user gave; the message says how to fix it."""


class SettingsError(UserError, ValueError):
    """A setting (a number of trials, a layer, a storage URL, a study name...) is out of range."""
