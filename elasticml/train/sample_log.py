"""A test hook that proves the data order: which sample ids each rank trained on, per step.

Off unless `ELASTICML_SAMPLE_LOG=DIR` is set. Each worker appends one line per completed step
to `DIR/samples-<host>-<pid>.txt`: `<step> <rank> <id> <id> ...` (step counted from 0). A line
is written only after the optimizer step, so a step that failed midway is not recorded, and
the integration tests can check that every sample is used exactly once per epoch across
crashes, losses and joins.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

ENV = "ELASTICML_SAMPLE_LOG"


class SampleLog:
    def __init__(self, rank: int, folder: str | None = None) -> None:
        folder = folder if folder is not None else os.environ.get(ENV)
        self.rank, self._fd = rank, -1
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            path = Path(folder) / f"samples-{socket.gethostname()}-{os.getpid()}.txt"
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def record(self, step: int, ids) -> None:
        if self._fd >= 0:
            line = " ".join(str(int(i)) for i in [step, self.rank, *ids.tolist()])
            os.write(self._fd, (line + "\n").encode())


def read_sample_log(folder: str | Path) -> list[tuple[int, int, list[int]]]:
    """Every record as (step, rank, ids), in no particular order."""
    records = []
    for path in Path(folder).glob("samples-*.txt"):
        for line in path.read_text().splitlines():
            numbers = [int(n) for n in line.split()]
            if len(numbers) >= 2:
                records.append((numbers[0], numbers[1], numbers[2:]))
    return records
