"""The one exception type that the CLI turns into a one-line message."""


class SymgradError(Exception):
    """A user-facing error: bad input, missing file, non-finite values.

    The message must say what is wrong *and* what to do about it; the CLI prints it as
    ``symgrad <command>: error: <message>`` and exits with status 2, without a traceback.
    """


# Exit status of a command that stopped early on SIGTERM (cluster pre-emption or a job's time
# limit) after saving everything it computed: EX_TEMPFAIL of sysexits.h, "try again later".
# Rerunning the same command continues; sweep scripts requeue the job on this status, and a
# status of 0 always means the work is complete.
EXIT_PREEMPTED = 75
