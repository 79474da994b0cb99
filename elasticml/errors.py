"""The one error type users see.

Anything the user can fix (a recipe key, a path, a flag) raises `UserError`; the CLI prints
its message as a single line and exits with status 2. Everything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A problem with the user's input, explained in one line that says how to fix it."""

    exit_code = 2
