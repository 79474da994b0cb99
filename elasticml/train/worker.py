"""Worker entrypoint: `python -m elasticml.train.worker RECIPE [key=value ...]`.

torch elastic starts one fresh interpreter per worker with RANK, WORLD_SIZE, MASTER_ADDR...
in its environment; this module loads the same recipe with the same overrides as the
launcher and trains. `@record` writes the worker's own exception to torch elastic's error
file, so the agent (and `elasticml report`) see the real cause, not `error_file: <N/A>`.
"""

from __future__ import annotations

import sys
import traceback

from torch.distributed.elastic.multiprocessing.errors import record

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


if __name__ == "__main__":
    main()
