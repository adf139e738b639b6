"""The one error type the CLI turns into a single red line and a non-zero exit."""


class VoltError(Exception):
    """A failure the user can act on; str() is the whole message, one line, with the fix."""
