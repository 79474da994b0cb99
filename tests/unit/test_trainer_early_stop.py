"""Early stopping and encryption in a real trainer, as a world of one: the count in the state
across a resize, the final reports of the best model, and checkpoints encrypted at rest."""

from __future__ import annotations

import base64
import json

import torch

from elasticml.telemetry.events import read_events
from elasticml.train.checkpoint import read_checkpoint
from elasticml.train.encryption import ENV, parse_key, recipe_cipher
from tests.unit.test_trainer_solo import HALF, WHOLE, solo, steps  # noqa: F401 - a fixture

STOP = ("trainer.eval_every=2", "trainer.early_stopping.patience=3",
        "trainer.early_stopping.min_delta=0.01")


def scripted(trainer, values: list[float]) -> None:
    """Validation during training gives `values` in turn (accuracy); then the real scores."""
    evaluate, val, pending = trainer.task.evaluate, trainer.splits["val"], list(values)

    def score(model, data, device, shard=None):
        if data is val and pending:
            return {"accuracy": pending.pop(0), "loss": 1.0}
        return evaluate(model, data, device, *([shard] if shard else []))

    trainer.task.evaluate = score


def events(trainer, kind: str) -> list[dict]:
    return [e for e in read_events(trainer.run_dir.events) if e["kind"] == kind]


def test_the_count_is_kept_in_the_state_and_goes_on_after_a_resize(solo):  # noqa: F811
    before = solo(*STOP, *HALF)
    scripted(before, [0.5, 0.6, 0.605, 0.59])
    for step in (2, 4, 6, 8):
        before.step = step
        before.validate(counts=True)
    assert not before.validation.early_stopping.stopped
    counts = [e["early_stopping"] for e in events(before, "eval")]
    assert [c["stale"] for c in counts] == [0, 0, 1, 2] and counts[-1]["best_step"] == 4
    saved = before.state()

    after = solo(*STOP, *WHOLE)  # another world size
    after.load_state(saved)
    assert after.validation.early_stopping.stale == 2
    scripted(after, [0.6])
    after.step = 10
    after.validate(counts=True)
    assert after.validation.early_stopping.stopped
    [stop] = events(after, "early_stop")
    assert stop["step"] == 10 and stop["best_step"] == 4 and stop["best_value"] == 0.6
    assert stop["message"] == ("stopped early at step 10: val accuracy did not improve by 0.01 "
                               "for 3 evaluations")


def test_an_early_stop_reports_the_model_of_best_pt(solo):  # noqa: F811
    trainer = solo(*STOP, "trainer.max_steps=200")
    scripted(trainer, [0.5, 0.9, 0.8, 0.7, 0.6])
    trainer.train()
    assert trainer.step == 10, "stopped at the third validation without improvement"
    trainer.finish()

    report = json.loads((trainer.run_dir.reports / "final.json").read_text())
    folder = trainer.run_dir.checkpoints
    best = read_checkpoint(folder / "best.pt")
    assert best["step"] == 4 and report["weights_step"] == 4
    assert report["stopped_early"]["message"].startswith("stopped early at step 10: ")
    model = trainer.task.build_model()
    model.load_state_dict(best["model"])
    model.eval()
    expected = trainer.task.evaluate(model, trainer.splits["test"], trainer.device)
    assert report["test"]["accuracy"] == expected["accuracy"]
    final = read_checkpoint(folder / "step-10.pt")
    assert final["step"] == 10 and final["early_stopping"]["stale"] == 3
    assert any(not torch.equal(final["model"][k], best["model"][k]) for k in final["model"]), \
        "the final checkpoint keeps the trained model, not the best one"
    [done] = events(trainer, "done")
    assert done["reason"] == "early_stop" and done["weights_step"] == 4


def test_with_no_best_pt_anywhere_the_last_model_is_scored_and_said(solo):  # noqa: F811
    trainer = solo(*STOP, "trainer.max_steps=200")
    scripted(trainer, [0.9, 0.8, 0.7, 0.6])
    trainer.train()
    trainer.keeper.checkpoints.wait()
    (trainer.run_dir.checkpoints / "best.pt").unlink()
    trainer.finish()
    report = json.loads((trainer.run_dir.reports / "final.json").read_text())
    assert report["weights_step"] == trainer.step == 8
    [warning] = events(trainer, "warning")
    assert "no node holds best.pt of step 2" in warning["message"]


def test_checkpoints_are_encrypted_and_read_back(solo, monkeypatch):  # noqa: F811
    text = base64.b64encode(b"\x05" * 32).decode()
    monkeypatch.setenv(ENV, text)
    trainer = solo("trainer.encrypt_checkpoints=true")
    steps(trainer, 3)
    trainer.save("periodic")
    trainer.keeper.checkpoints.wait()
    blob = trainer.keeper.checkpoints.path_for(3).read_bytes()
    assert blob.startswith(b"EMLCKPE1") and text.encode() not in blob

    again = solo("trainer.encrypt_checkpoints=true")
    assert again.step == 3
    assert recipe_cipher(again.recipe).key.raw == parse_key(text, "").raw
    assert not any(text in path.read_text(errors="replace")
                   for path in trainer.run_dir.path.rglob("*") if path.is_file())


def test_a_state_saved_before_its_validation_ran_is_validated_first(solo):  # noqa: F811
    """A stop in the middle of the validation of step 4 saves the state of step 4; training
    resumes with that validation, so the count misses none."""
    before = solo(*STOP)
    scripted(before, [0.5])
    steps(before, 2)
    before.validate(counts=True)
    steps(before, 2)
    saved = before.state()  # step 4: its validation never ran
    assert saved["validated_step"] == 2

    after = solo(*STOP, "trainer.max_steps=4")
    after.load_state(saved)
    scripted(after, [0.4])
    after.train()
    counts = [(e["step"], e["early_stopping"]["stale"]) for e in events(after, "eval")]
    assert counts == [(2, 0), (4, 1)]


def test_a_tampered_encrypted_checkpoint_falls_back_with_a_warning_event(solo, monkeypatch):  # noqa: F811
    monkeypatch.setenv(ENV, base64.b64encode(b"\x05" * 32).decode())
    trainer = solo("trainer.encrypt_checkpoints=true", "trainer.async_checkpoint=false")
    for _ in range(2):
        steps(trainer, 3)
        trainer.save("periodic")
    newest = trainer.keeper.checkpoints.path_for(6)
    blob = bytearray(newest.read_bytes())
    blob[-100] ^= 0x01
    newest.write_bytes(bytes(blob))

    again = solo("trainer.encrypt_checkpoints=true")
    assert again.step == 3
    [warning] = events(again, "warning")
    assert "step-6.pt: encrypted, but does not authenticate" in warning["message"]
    [resumed] = [e for e in events(again, "resume") if e["step"] == 3]
    assert resumed["source"] == "checkpoint"
