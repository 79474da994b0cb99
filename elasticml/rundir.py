"""Where a run keeps what it writes: `<run root>/<run id>/`.

```
recipe.yaml        the resolved recipe (eval and report never need the original file)
events/            append-only JSON lines, one file per process
checkpoints/       step-<N>.pt (+ best.pt, best.json), atomic and checksummed; .lock; under
                   fsdp/hsdp step-<N>.dcp/ folders (+ best.dcp/), or in trainer.checkpoint_dir
tensorboard/       one TensorBoard run, continued across restarts
logs/              worker stdout/stderr per attempt, hang stack dumps
reports/           training / validation / test reports written at the end and by eval
pinned/            recipe-<sha256>.yaml: the resolved recipe each launch's workers read
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def of(cls, root: str | Path, run_id: str) -> RunDir:
        return cls(Path(root).expanduser().resolve() / run_id)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def events(self) -> Path:
        return self.path / "events"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def reports(self) -> Path:
        return self.path / "reports"

    @property
    def pinned(self) -> Path:
        return self.path / "pinned"

    def create(self) -> RunDir:
        for folder in (self.events, self.checkpoints, self.tensorboard, self.logs, self.reports):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def looks_like_a_run(self) -> bool:
        return self.events.is_dir() or self.recipe.is_file()
