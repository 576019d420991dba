"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class FmrlError(Exception):
    """A problem with the user's input (file, line, what is wrong). Never a bug in the SDK."""

    exit_code = 2
