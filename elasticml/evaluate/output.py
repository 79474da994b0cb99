"""How an eval result is shown and kept: a rich table, a JSON report, TensorBoard tags.

The display is generic over what tasks return: scalar metrics in one table (with a baseline
column when the task also scored a `popular_<metric>` baseline), per-class lists in a second,
a square matrix (the confusion matrix) in a third. TensorBoard gets every scalar as
`eval/<split>/<metric>` at the checkpoint's step, and the confusion matrix as an image.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from elasticml.rundir import RunDir

BASELINE = "popular_"


def report_path(run_dir: RunDir, split: str, step: int) -> Path:
    return run_dir.reports / f"eval-{split}-step{step}.json"


def write_report(run_dir: RunDir, result) -> Path:
    from elasticml.train.checkpoint import write_atomically

    path = report_path(run_dir, result.split, result.step)
    write_atomically(path, (json.dumps(result.as_dict(), indent=2) + "\n").encode())
    return path


def write_tensorboard(run_dir: RunDir, result) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir.tensorboard), filename_suffix=".eval")
    try:
        prefix = f"eval/{result.split}"
        for name, value in scalars(result.metrics).items():
            writer.add_scalar(f"{prefix}/{name}", value, result.step)
        for name, matrix in matrices(result.metrics).items():
            writer.add_image(f"{prefix}/{name}", heatmap(matrix), result.step, dataformats="HWC")
    finally:
        writer.close()


def scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def matrices(metrics: dict) -> dict[str, list[list[float]]]:
    return {k: v for k, v in metrics.items()
            if isinstance(v, list) and v and all(isinstance(row, list) for row in v)}


def per_class(metrics: dict) -> dict[str, list[float]]:
    return {k: v for k, v in metrics.items()
            if isinstance(v, list) and v and all(isinstance(x, int | float) for x in v)}


def heatmap(matrix: list[list[float]], cell: int = 16):
    """A row-normalised matrix as an RGB image (white -> dark blue), `cell` pixels a cell.

    Rows are true classes, columns predictions, as in torchmetrics; normalising by row makes a
    rare class's mistakes as visible as a common one's.
    """
    import numpy as np

    counts = np.asarray(matrix, dtype=np.float64)
    share = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    white, blue = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0])
    image = white + share[..., None] * (blue - white)
    image = np.kron(image, np.ones((cell, cell, 1)))
    return image.astype(np.uint8)


def print_table(result, console: Console | None = None) -> None:
    console = console or Console()
    metrics = result.metrics
    console.print(f"[bold]{result.split}[/bold] split of {result.checkpoint} (step {result.step})")
    values = scalars(metrics)
    baseline = {k: values.pop(BASELINE + k) for k in list(values) if BASELINE + k in values}
    table = Table("metric", "value", box=None)
    if baseline:
        table = Table("metric", "model", "most popular", "gain", box=None)
    for name, value in values.items():
        row = [name, f"{value:.4f}"]
        if baseline:
            base = baseline.get(name)
            row += ["", ""] if base is None else [f"{base:.4f}", _gain(value, base)]
        table.add_row(*row)
    console.print(table)
    classes = per_class(metrics)
    if classes:
        names = list(classes)
        per = Table("class", *names, box=None, title="per class")
        for index in range(len(classes[names[0]])):
            per.add_row(str(index), *(f"{classes[n][index]:.4f}" for n in names))
        console.print(per)
    for name, matrix in matrices(metrics).items():
        grid = Table("true \\ predicted", *(str(i) for i in range(len(matrix[0]))),
                     box=None, title=name.replace("_", " "))
        for index, row in enumerate(matrix):
            grid.add_row(str(index), *(f"{int(v)}" for v in row))
        console.print(grid)


def _gain(value: float, base: float) -> str:
    return f"x{value / base:.1f}" if base > 0 else "-"
