"""The state one rank hands the others at a (re)start: sealed with the job key, checked on
arrival, and the best metric agreed with what every node's disk holds."""

import pytest
import torch

from elasticml.errors import UserError
from elasticml.train.recovery import choose_best, open_state, pack_state

KEY = b"k" * 32


def state() -> dict:
    return {"step": 4, "model": {"w": torch.arange(3.0)}, "best": None}


def test_a_sealed_state_opens_with_the_same_key():
    opened = open_state(pack_state(state(), KEY), KEY, source=1)
    assert opened["step"] == 4 and torch.equal(opened["model"]["w"], torch.arange(3.0))


@pytest.mark.parametrize("sender_key", [b"x" * 32, None], ids=["another key", "no key"])
def test_a_state_that_does_not_carry_the_job_key_is_refused(sender_key):
    blob = pack_state(state(), sender_key)
    with pytest.raises(UserError, match="rank 1.*job key") as refused:
        open_state(blob, KEY, source=1)
    assert "\n" not in str(refused.value)


def test_a_tampered_state_is_refused_before_it_is_read():
    blob = bytearray(pack_state(state(), KEY))
    blob[10] ^= 0xFF
    with pytest.raises(UserError, match="job key"):
        open_state(bytes(blob), KEY, source=0)


def test_without_a_key_anywhere_the_state_travels_unsigned_as_before():
    assert open_state(pack_state(state(), None), None, source=0)["step"] == 4


BEST_10 = {"metric": "accuracy", "value": 0.8, "step": 10}
BEST_20 = {"metric": "accuracy", "value": 0.9, "step": 20}


def test_the_best_is_the_best_of_the_state_and_of_every_disk():
    assert choose_best(BEST_10, [None, BEST_20], "accuracy", higher=True) == BEST_20
    assert choose_best(BEST_20, [BEST_10, None], "accuracy", higher=True) == BEST_20
    assert choose_best(None, [None, None], "accuracy", higher=True) is None
    assert choose_best(BEST_20, [BEST_10], "accuracy", higher=False) == BEST_10
    other_metric = {"metric": "macro_f1", "value": 0.99, "step": 30}
    assert choose_best(BEST_10, [other_metric], "accuracy", higher=True) == BEST_10


def test_a_tie_keeps_the_agreed_state_s_best():
    same_value = {"metric": "accuracy", "value": 0.9, "step": 25}
    assert choose_best(BEST_20, [same_value], "accuracy", higher=True) == BEST_20
