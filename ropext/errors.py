"""The one exception type the CLI turns into a single line and a non-zero exit."""


class RopextError(Exception):
    """A problem with the user's input or environment, stated in one line with how to fix it.

    The CLI prints ``error: <message>`` and exits with status 2; it never shows a traceback for these.
    """


class Interrupted(RopextError):
    """Ctrl-C during a command: the message says what was saved and how to continue; the CLI prints it as one
    line and exits with status 130."""
