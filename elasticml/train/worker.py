"""Worker entrypoint: `python -m elasticml.train.worker RECIPE [key=value ...]`.

torch elastic starts one fresh interpreter per worker with RANK, WORLD_SIZE, MASTER_ADDR...
in its environment; this module loads the same recipe with the same overrides as the
launcher and trains. `@record` writes the worker's own exception to torch elastic's error
file, so the agent (and `elasticml report`) see the real cause, not `error_file: <N/A>`.

A worker leaves with `os._exit` once its work is on disk — after a SIGTERM stop or a failure
(state saved, error recorded) and after a normal finish: the interpreter's own teardown with
torch and a gloo group loaded takes ~1.5 s on a small CPU, the agent waits for the exit before
it can regroup, and gloo's destructors occasionally abort at that point, which the agent
would count as a failure. Events, sample logs and checkpoints are already on disk
(unbuffered writes, background saves joined), so skipping the teardown loses nothing.

A `UserError` (bad input only a worker can meet: a bad sample, a factory that returns the
wrong kind) prints its one line and exits with `WORKER_INPUT_ERROR_EXIT`: a restart would
meet the same input again.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

from torch.distributed.elastic.multiprocessing.errors import record

from elasticml.errors import WORKER_INPUT_ERROR_EXIT, UserError
from elasticml.recipe.load import load_recipe


@record
def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m elasticml.train.worker RECIPE [key=value ...]")
    recipe = load_recipe(args[0], args[1:])
    from elasticml.train.loop import Trainer

    trainer = Trainer(recipe)
    try:
        trainer.run()
    except Exception as err:
        trainer.events.emit("error", message=f"{type(err).__name__}: {err}",
                            traceback=traceback.format_exc())
        raise


def _leave(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    try:
        main()
        _leave(0)
    except SystemExit as stop:
        from elasticml.train.loop import SIGTERM_EXIT

        if stop.code != SIGTERM_EXIT:
            raise
        _leave(SIGTERM_EXIT)
    except UserError as err:  # bad input: a restart would meet it again (errors.py)
        print(f"error: {err}", file=sys.stderr)
        _leave(WORKER_INPUT_ERROR_EXIT)
    except Exception:  # noqa: BLE001 - recorded by @record already; exit as Python would
        traceback.print_exc()
        _leave(1)
