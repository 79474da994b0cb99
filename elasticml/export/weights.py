"""`elasticml checkpoints export`: a checkpoint's model as one plain `torch.save` file.

For users who want a single file to load with `model.load_state_dict(torch.load(path))`: from a
`step-N.pt` file (opened with its key when encrypted) or a sharded `step-N.dcp` folder, whose
shards are joined into whole tensors at any process count. The file holds the model's state
dict alone (tensors only, so `torch.load(..., weights_only=True)` reads it); the step, the
recipe and the optimizer stay in the checkpoint. It is written atomically (temporary name,
fsync, rename) and never over the checkpoint itself.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from elasticml.errors import UserError


def export_weights(target: str, output: str, key_file: str | None = None) -> Path:
    import torch

    from elasticml.evaluate.command import resolve_checkpoint
    from elasticml.train.checkpoint import write_atomically

    source = resolve_checkpoint(target, key_file)
    out = Path(output).expanduser()
    if out.is_dir():
        raise UserError(f"-o {output}: is a folder; name the file to write (e.g. model.pt)")
    if out.resolve() == source.path or source.path in out.resolve().parents:
        raise UserError(f"-o {output}: would write into the checkpoint itself; name another file")
    buffer = io.BytesIO()
    torch.save(dict(source.state["model"]), buffer)
    write_atomically(out, buffer.getvalue())
    print(f"exported the model of step {source.step} ({source.path.name}) to {out}",
          file=sys.stderr)
    return out
