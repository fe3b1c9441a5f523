"""One exception type for mistakes a user can fix.

The CLI turns a `UserError` into one line on stderr and exit code 2, never a traceback, so every
library function that validates user input raises it with a message that says what is wrong and
how to fix it.
"""


class UserError(Exception):
    """Bad input from the user: a name, a file, a value. The message is shown as is."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding like Ctrl-C so every `finally` runs (the CLI exits with 143)."""
