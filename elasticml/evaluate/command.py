"""`elasticml eval CHECKPOINT`: score a checkpoint on one split, from the recipe stored inside it.

A checkpoint carries the resolved recipe it was trained with, so eval rebuilds the task and the
model without the original YAML. `key=value` overrides may change how data is read (a task
option, the device), never the model: the weights only fit the model they were trained as.

CHECKPOINT is a `.pt` file or a run directory (its newest checkpoint that reads back intact).
The result is printed (a table, or with `--json` exactly one JSON object on stdout), written to
`<run>/reports/eval-<split>-step<N>.json` and to the run's TensorBoard. `--nproc N` scores the
split in N processes, each on its shard; torchmetrics combines their metric states, so the
numbers are those of a single process.

Every input the user can get wrong (missing, truncated or foreign file, a run without
checkpoints, an unknown task, a model override, an encrypted checkpoint without its key or with
another key) is a `UserError`: one line, exit status 2. Those checks come before torch is
imported, so they answer at once.

An encrypted checkpoint (`trainer.encrypt_checkpoints`) is opened with the key from
`--key-file`, `$ELASTICML_CHECKPOINT_KEY`, or the `trainer.checkpoint_key_file` of the run's
recipe (`checkpoint_files.cipher_for`).

Loading a checkpoint runs no code the user did not choose. The recipe inside may name
components (`_target_`); without `--trust-code` eval builds only elasticml's own datasets and
tasks and classes from torch and torchmetrics, and refuses anything else in one line that
names the flag. With `--trust-code` the recipe's modules are imported from the folder the
recipe was trained from (recorded in the checkpoint) and `PYTHONPATH`, never from the current
directory.
"""

from __future__ import annotations

import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from elasticml.errors import UserError
from elasticml.recipe.schema import Recipe
from elasticml.rundir import RunDir
from elasticml.train.encryption import Cipher

SPLITS = ("val", "test", "train")


@dataclass
class EvalRequest:
    checkpoint: str
    split: str = "test"
    overrides: list[str] = field(default_factory=list)
    as_json: bool = False
    nproc: int = 1
    trust_code: bool = False
    """Import the code the checkpoint's recipe names (the user said so)."""
    key_file: str | None = None
    """File holding the key of an encrypted checkpoint."""


@dataclass
class Source:
    """A checkpoint that read back intact, and the run directory it belongs to (if any)."""

    path: Path
    state: dict
    run_dir: RunDir | None
    cipher: Cipher | None = None
    """What opened the file (an encrypted one is opened again by `--nproc` processes)."""

    @property
    def step(self) -> int:
        return int(self.state["step"])


@dataclass
class EvalResult:
    checkpoint: str
    step: int
    split: str
    metrics: dict

    def as_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "step": self.step, "split": self.split,
                "metrics": self.metrics}


def run_eval(request: EvalRequest) -> int:
    """The whole command: resolve, rebuild, score, keep and show the result."""
    if request.split not in SPLITS:
        raise UserError(f"--split: '{request.split}' is not one of {', '.join(SPLITS)}")
    if request.nproc < 1:
        raise UserError(f"--nproc: must be >= 1, got {request.nproc}")
    source = resolve_checkpoint(request.checkpoint, request.key_file)
    recipe = stored_recipe(source, request.overrides)
    if not request.trust_code:
        refuse_foreign_code(recipe, source.path)
    metrics = score(source, recipe, request.split, request.nproc, request.trust_code,
                    source.cipher)
    result = EvalResult(str(source.path), source.step, request.split, metrics)

    from elasticml.evaluate.output import print_table, write_report, write_tensorboard

    if source.run_dir is not None:
        report = write_report(source.run_dir, result)
        write_tensorboard(source.run_dir, result)
        _note(f"saved {report} and TensorBoard tags eval/{result.split}/*")
    else:
        _note(f"{source.path} is not inside a run directory: the result is only printed")
    if request.as_json:
        sys.stdout.write(json.dumps(result.as_dict()) + "\n")
    else:
        print_table(result)
    return 0


# --- finding and reading the checkpoint --------------------------------------------------


def resolve_checkpoint(target: str, key_file: str | None = None) -> Source:
    """A checkpoint (a `step-N.pt` file or a sharded `step-N.dcp` folder), or a run
    directory's (or checkpoint folder's) newest checkpoint that reads back intact."""
    from elasticml.checkpoint_files import cipher_for
    from elasticml.train.checkpoint import (
        CorruptCheckpoint,
        is_sharded_checkpoint,
        read_checkpoint,
    )

    path = Path(target).expanduser()
    if not path.exists():
        raise UserError(f"checkpoint not found: {target}")
    cipher = cipher_for(path, key_file)
    if path.is_dir() and not is_sharded_checkpoint(path):
        path, state = _newest_in(target, path, cipher)
    else:
        try:
            state = _read_sharded(path) if is_sharded_checkpoint(path) else \
                read_checkpoint(path, cipher)
        except CorruptCheckpoint as err:
            raise UserError(str(err)) from None
    if not isinstance(state, dict) or not {"model", "recipe", "step"} <= state.keys():
        raise UserError(f"{path}: not an elasticml training checkpoint (no model, recipe and "
                        "step inside)")
    return Source(path.resolve(), state, _run_dir_of(path.resolve()), cipher)


def _read_sharded(path: Path) -> dict:
    from elasticml.train.sharded_checkpoint import read_sharded  # imports torch

    return read_sharded(path)


def _newest_in(target: str, path: Path, cipher) -> tuple[Path, dict]:
    """(the newest checkpoint that reads back intact, its state) of a run directory or a
    checkpoint folder: `step-N.pt` files and `step-N.dcp` folders alike."""
    from elasticml.train.checkpoint import CheckpointManager, CorruptCheckpoint
    from elasticml.train.sharded_checkpoint import newest_verified, read_sharded

    run = RunDir(path.resolve())
    folder = run.checkpoints if run.checkpoints.is_dir() else path
    with warnings.catch_warnings(record=True) as skipped:
        warnings.simplefilter("always")
        plain = CheckpointManager(folder, cipher=cipher).newest()
        sharded = newest_verified(folder, lambda message, step: warnings.warn(message,
                                                                           stacklevel=2))
    for warning in skipped:
        _note(str(warning.message))
    if plain is None and sharded < 0:
        raise UserError(f"{target}: no readable checkpoint (step-N.pt or step-N.dcp) in "
                        f"{folder}")
    if plain is not None and plain[0] >= sharded:
        step, state = plain
        path = CheckpointManager(folder).path_for(step)
    else:
        step, path = sharded, folder / f"step-{sharded}.dcp"
        try:
            state = read_sharded(path)
        except CorruptCheckpoint as err:  # removed or damaged since it was verified
            raise UserError(str(err)) from None
    _note(f"using the newest good checkpoint of {target}: {path.name} (step {step})")
    return path, state


def _run_dir_of(checkpoint: Path) -> RunDir | None:
    """`<run>/checkpoints/<file>` -> `<run>`, when that folder is a run directory."""
    if checkpoint.parent.name != "checkpoints":
        return None
    run = RunDir(checkpoint.parent.parent)
    return run if run.looks_like_a_run() else None


def stored_recipe(source: Source, overrides: list[str]) -> Recipe:
    """The recipe inside the checkpoint, with the user's data-side overrides applied."""
    from elasticml.recipe.load import load_recipe

    for item in overrides:
        key = item.partition("=")[0].strip()
        if key == "model" or key.startswith("model."):
            raise UserError(f"{key}: the model cannot be changed at eval; the weights were "
                            "trained for the model stored in the checkpoint")
    stored = source.state["recipe"]
    if not isinstance(stored, dict):
        raise UserError(f"{source.path}: the recipe inside is not a mapping")
    try:
        return load_recipe(stored, overrides)
    except UserError as err:
        raise UserError(f"{source.path}: recipe inside the checkpoint: {err}") from None


def refuse_foreign_code(recipe: Recipe, checkpoint: Path) -> None:
    """One line naming `--trust-code` when the recipe names code eval would have to import
    from outside elasticml, torch and torchmetrics (checked by name: nothing is imported)."""
    from elasticml.evaluate.scoring import components_of, foreign

    for key, dotted in components_of(recipe):
        if foreign(dotted):
            raise UserError(f"{checkpoint}: its recipe names code from outside elasticml, torch "
                            f"and torchmetrics ({key}: {dotted}); eval imports it only if you "
                            "pass --trust-code")


# --- scoring -------------------------------------------------------------------------------


def score(source: Source, recipe: Recipe, split: str, nproc: int,
          trust_code: bool = False, cipher: Cipher | None = None) -> dict:
    if nproc == 1:
        from elasticml.evaluate.scoring import score_shard

        return score_shard(source.state, recipe, split, trust_code=trust_code)
    from elasticml.evaluate.parallel import score_in_processes

    return score_in_processes(source.path, recipe, split, nproc, trust_code, cipher)


def _note(message: str) -> None:
    """Progress notes go to stderr: with `--json`, stdout holds the result and nothing else."""
    print(message, file=sys.stderr)
