"""Worker entrypoint: `python -m elasticml.train.worker RECIPE [--training-hash H] [key=value ...]`.

torch elastic starts one fresh interpreter per worker with RANK, WORLD_SIZE, MASTER_ADDR...
in its environment; this module loads the same recipe with the same overrides as the
launcher and trains. `@record` writes the worker's own exception to torch elastic's error
file, so the agent (and `elasticml report`) see the real cause, not `error_file: <N/A>`.

`--training-hash H` is the training hash of the recipe the job started with (the launcher
passes it): a worker whose recipe hashes otherwise — the file was edited since the launch —
refuses to train. That refusal, and every other `UserError` (a checkpoint trained under
another recipe, a state without the job key, bad data), is printed as one `error:` line,
recorded (error file and an `error` event) and ends the worker with
`errors.WORKER_INPUT_ERROR_EXIT`: a restart cannot fix it.

Environment read here and below: `ELASTICML_JOB_KEY` (seals the state broadcast,
`recovery.py`), `ELASTICML_CHECKPOINT_KEY` (encrypted checkpoints, `encryption.py`),
`ELASTICML_STOP_GRACE` (seconds between SIGTERM and SIGKILL, for the
slow-checkpoint warning), `ELASTICML_SAMPLE_LOG` (test hook, `sample_log.py`).

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
from elasticml.recipe.load import load_recipe, training_hash

USAGE = "usage: python -m elasticml.train.worker RECIPE [--training-hash H] [key=value ...]"
HASH_FLAG = "--training-hash"


def parse_args(args: list[str]) -> tuple[str, str | None, list[str]]:
    """(recipe, expected training hash or None, overrides)."""
    if not args or args[0].startswith("-"):
        raise SystemExit(USAGE)
    recipe, rest, expected = args[0], list(args[1:]), None
    if rest and rest[0].startswith(f"{HASH_FLAG}="):
        expected, rest = rest[0].partition("=")[2], rest[1:]
    elif rest and rest[0] == HASH_FLAG:
        if len(rest) < 2:
            raise SystemExit(USAGE)
        expected, rest = rest[1], rest[2:]
    return recipe, expected, rest


@record
def main(argv: list[str] | None = None) -> None:
    source, expected, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    recipe = load_recipe(source, overrides)
    found = training_hash(recipe)
    if expected and found != expected:
        message = (f"{source}: this recipe (training hash {found}) is not the one the job "
                   f"started with ({expected}); it was changed after the launch: put it back "
                   "as it was, or start a new run with --run-id NEW")
        _record(recipe, message)
        raise UserError(message)
    from elasticml.train.loop import Trainer

    trainer = Trainer(recipe)
    try:
        trainer.run()
    except UserError as err:
        trainer.events.emit("error", message=str(err), traceback=None)
        raise
    except Exception as err:
        trainer.events.emit("error", message=f"{type(err).__name__}: {err}",
                            traceback=traceback.format_exc())
        raise


def _record(recipe, message: str) -> None:
    """An `error` event for a worker that refuses before its trainer exists."""
    from elasticml.rundir import RunDir
    from elasticml.telemetry.events import EventLog

    env = os.environ
    EventLog(RunDir.of(recipe.run.dir, recipe.run_id).events, "worker",
             rank=int(env.get("RANK", 0)), local_rank=int(env.get("LOCAL_RANK", 0)),
             world_size=int(env.get("WORLD_SIZE", 1)),
             restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", 0))
             ).emit("error", message=message, traceback=None)


def _leave(code: int) -> None:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(argv: list[str] | None = None) -> None:
    """Train and leave with the worker's exit status (`os._exit`, see above): what
    `python -m elasticml.train.worker` runs, and a warm worker after its fork (`warm.py`)."""
    try:
        main(argv)
        _leave(0)
    except UserError as err:  # bad input: a restart would meet it again (errors.py)
        print(f"error: {err}", file=sys.stderr)
        _leave(WORKER_INPUT_ERROR_EXIT)
    except SystemExit as stop:
        from elasticml.train.loop import SIGTERM_EXIT

        if stop.code != SIGTERM_EXIT:
            raise
        _leave(SIGTERM_EXIT)
    except Exception:  # noqa: BLE001 - recorded by @record already; exit as Python would
        traceback.print_exc()
        _leave(1)


if __name__ == "__main__":
    run()
