"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class FmrlError(Exception):
    """A problem with the user's input (file, line, what is wrong). Never a bug in the SDK."""

    exit_code = 2


class WriteError(FmrlError):
    """An output could not be written (full disk, read-only file system, no permission, ...):
    `PATH: cannot write (REASON)`. Whatever was partly written has been removed."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: cannot write ({reason})")
        self.path, self.reason = path, reason
