"""The errors users see.

Anything the user can fix (a recipe key, a path, a flag) raises `UserError`; the CLI prints
its message as a single line and exits with status 2. Everything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
    """A problem with the user's input, explained in one line that says how to fix it."""

    exit_code = 2


WORKER_INPUT_ERROR_EXIT = 65
"""Exit status of a worker that stopped on a `UserError` (a bad row in a data file, a recipe
that changed under a running job). Restarting cannot fix those, so the agent ends the job at
once, exits 2 and shows the worker's one line instead of retrying (sysexits' EX_DATAERR)."""


class CorruptCheckpoint(ValueError):
    """A checkpoint that does not read back intact (truncated, tampered, foreign): skipped for
    the one before by the trainer, one line from the commands."""
