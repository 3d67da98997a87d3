"""The one exception type that the CLI turns into a one-line message."""


class SymgradError(Exception):
    """A user-facing error: bad input, missing file, non-finite values.

    The message must say what is wrong *and* what to do about it; the CLI prints it as
    ``symgrad <command>: error: <message>`` and exits with status 2, without a traceback.
    """


class SettingError(SymgradError):
    """A setting out of range, in the words of the library: ``template`` names settings as
    ``{name}`` (a config field or a function's parameter); ``str()`` shows them quoted, as a
    config file or a library caller writes them (``'damping'``), and ``message(name_of)``
    any other spelling, such as the command line's flags (``--damping``). ``values`` fill
    the other placeholders (``{value}``)."""

    def __init__(self, template: str, **values):
        self.template, self.values = template, values
        super().__init__(self.message(lambda name: f"'{name}'"))

    def message(self, name_of) -> str:
        values = self.values

        class Names(dict):
            def __missing__(self, key):
                return values[key] if key in values else name_of(key)

        return self.template.format_map(Names())


# Exit status of a command that stopped early on SIGTERM (cluster pre-emption or a job's time
# limit) after saving everything it computed: EX_TEMPFAIL of sysexits.h, "try again later".
# Rerunning the same command continues; sweep scripts requeue the job on this status, and a
# status of 0 always means the work is complete.
EXIT_PREEMPTED = 75
