"""Early stopping: the count, its direction, the state it keeps, and the recipe checks."""

import pytest

from elasticml.errors import UserError
from elasticml.recipe.load import load_recipe, training_hash
from elasticml.train.early_stop import EarlyStopping, higher_is_better


def counted(values, patience=3, min_delta=0.0, higher=True) -> tuple[EarlyStopping, int | None]:
    """(the count after `values`, validated at steps 10, 20, ...; the step it stopped at)."""
    stop = EarlyStopping("accuracy", patience, min_delta, higher)
    for index, value in enumerate(values, start=1):
        if stop.update(value, index * 10):
            return stop, index * 10
    return stop, None


def test_stops_after_patience_validations_without_improvement():
    stop, at = counted([0.5, 0.7, 0.6, 0.7, 0.69, 0.8])
    assert at == 50 and stop.best == 0.7 and stop.best_step == 20 and stop.stale == 3
    assert stop.message(50) == ("stopped early at step 50: val accuracy did not improve for 3 "
                                "evaluations")


def test_an_improvement_must_beat_min_delta():
    stop, at = counted([0.5, 0.505, 0.509, 0.52], patience=2, min_delta=0.01)
    assert at == 30 and stop.best == 0.5
    assert "did not improve by 0.01 for 2 evaluations" in stop.message(30)
    _, at = counted([0.5, 0.52, 0.54, 0.56], patience=2, min_delta=0.01)
    assert at is None


def test_lower_is_better_and_nan_is_no_improvement():
    stop, at = counted([1.0, 0.8, None, 0.9], patience=2, higher=False)
    assert at == 40 and stop.best == 0.8


def test_the_count_survives_a_state_round_trip_and_resets_for_another_metric():
    stop, _ = counted([0.5, 0.4, 0.3], patience=5)
    again = EarlyStopping("accuracy", 5, 0.0, True)
    again.load_state_dict(stop.state_dict())
    assert (again.best, again.best_step, again.stale) == (0.5, 10, 2)
    assert not again.update(0.45, 40) and again.stale == 3
    # a raised patience keeps the count; another metric, direction or min_delta restarts it
    longer = EarlyStopping("accuracy", 9, 0.0, True)
    longer.load_state_dict(stop.state_dict())
    assert longer.stale == 2
    for other in (EarlyStopping("loss", 5, 0.0, False), EarlyStopping("accuracy", 5, 0.1, True)):
        other.load_state_dict(stop.state_dict())
        assert (other.best, other.stale) == (None, 0)
    off = EarlyStopping("accuracy", 0, 0.0, True)
    off.load_state_dict(None)
    assert not off.on and not off.stopped


@pytest.mark.parametrize("mode, metric, expected", [
    ("auto", "accuracy", True), ("auto", "loss", False), ("auto", "val_loss", False),
    ("auto", "macro_f1", True), ("min", "accuracy", False), ("max", "loss", True),
    ("auto", "mse", False)])
def test_the_direction(mode, metric, expected):
    # the task's main metric here is "mse", lower is better (as a task would say)
    assert higher_is_better(mode, metric, main_metric="mse", task_higher=False) is expected


def recipe(*overrides):
    return load_recipe({"trainer": {"max_steps": 10}}, list(overrides))


@pytest.mark.parametrize("override, message", [
    ("trainer.early_stopping.patience=-1", "trainer.early_stopping.patience: must be >= 0"),
    ("trainer.early_stopping.min_delta=-0.1", "trainer.early_stopping.min_delta: must be >= 0"),
    ("trainer.early_stopping.mode=up", "trainer.early_stopping.mode: 'up' is not one of auto"),
    ("trainer.checkpoint_key_file=/nonexistent/key", "trainer.checkpoint_key_file: no such file"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(UserError, match=message):
        recipe(override)


def test_patience_needs_validations_during_training():
    with pytest.raises(UserError, match="trainer.early_stopping.patience: .*trainer.eval_every"):
        recipe("trainer.early_stopping.patience=3", "trainer.eval_every=0")


def test_turning_either_on_is_not_another_training():
    plain = training_hash(recipe())
    assert training_hash(recipe("trainer.early_stopping.patience=3",
                                "trainer.encrypt_checkpoints=true")) == plain
