"""The one exception encdec raises for problems a user can fix."""


class EncdecError(Exception):
    """A user-facing error: the message names the file, line or field and what to do."""
