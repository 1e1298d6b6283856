"""RNGStateCheckpoint's parts: the states it saves and which rank gets which on resume.
(The end-to-end proof, a dropout net killed and resumed bit-identical, is in
tests/test_resume.py.)"""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from groupwise.callbacks.rng_state import (
    RNG_STATES_KEY,
    RNGStateCheckpoint,
    collect_rng_states,
    restore_rng_states,
)


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def seeded_states(seed: int) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    np.random.randn()  # leaves a cached Gaussian in numpy's state
    return collect_rng_states()


def test_saved_states_survive_a_weights_only_load_and_restore_every_generator(tmp_path):
    states = seeded_states(1)
    expected = draws()
    torch.save({RNG_STATES_KEY: [states]}, tmp_path / "c.ckpt")
    loaded = torch.load(tmp_path / "c.ckpt", weights_only=True)[RNG_STATES_KEY][0]
    seeded_states(2)
    restore_rng_states(loaded)
    assert draws() == expected
    assert "cuda" not in states  # a CPU run touches no CUDA generator


def trainer(rank: int, world_size: int, fn: str = "fit") -> SimpleNamespace:
    return SimpleNamespace(global_rank=rank, world_size=world_size, state=SimpleNamespace(fn=fn))


def test_each_rank_restores_its_own_states_at_train_start():
    per_rank = [seeded_states(10), seeded_states(11)]
    restore_rng_states(per_rank[1])
    expected = draws()
    callback = RNGStateCheckpoint()
    callback.on_load_checkpoint(trainer(1, 2), None, {RNG_STATES_KEY: per_rank})
    seeded_states(3)  # what happens between the load and the start of training
    callback.on_train_start(trainer(1, 2), None)
    assert draws() == expected


@pytest.mark.parametrize(
    ("checkpoint", "warning"),
    [
        ({}, "the checkpoint holds no random states"),
        ({RNG_STATES_KEY: [{}, {}, {}]}, "the random states of 3 ranks and this run has 2"),
    ],
)
def test_states_that_cannot_be_restored_are_left_with_a_warning(checkpoint, warning):
    callback = RNGStateCheckpoint()
    with pytest.warns(UserWarning, match=warning):
        callback.on_load_checkpoint(trainer(0, 2), None, checkpoint)
    seeded_states(4)
    expected = draws()
    seeded_states(4)
    callback.on_train_start(trainer(0, 2), None)
    assert draws() == expected


def test_validate_and_test_restore_nothing(recwarn):
    callback = RNGStateCheckpoint()
    callback.on_load_checkpoint(trainer(0, 1, "validate"), None, {RNG_STATES_KEY: [{}]})
    callback.on_train_start(trainer(0, 1, "validate"), None)  # would fail on the empty dict
    assert not recwarn.list
