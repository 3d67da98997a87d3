"""The one exception type that the CLI turns into a one-line message."""


class SymgradError(Exception):
    """A user-facing error: bad input, missing file, non-finite values.

    The message must say what is wrong *and* what to do about it; the CLI prints it as
    ``symgrad <command>: error: <message>`` and exits with status 2, without a traceback.
    """
