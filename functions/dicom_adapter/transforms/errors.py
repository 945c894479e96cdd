"""The one error a transform's configuration raises, shared by its modules."""

from __future__ import annotations


class TransformConfigError(ValueError):
    """A transform cannot be configured as given (an unknown profile, option, keyword, tag or
    transfer syntax); the message names the entry, so the command can refuse to start with it."""
