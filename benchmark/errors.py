"""The one base class of errors a user can fix (a bad suite, plugin, argument, store or dataset).

The CLI prints a :class:`UserError` as one line and exits 2; any other exception is a bug and keeps
its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: the message names the file, key and value to fix."""
