"""The error of the bracket pipeline: a problem with the user's inputs (files, exposure times, options)."""


class MergeError(ValueError):
    """A problem with the user's inputs (files, exposure times, options); the message names the file."""
