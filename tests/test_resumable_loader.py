"""The training loader's position in the epoch, and the preemption callback's settings."""

import pytest
import torch
from torch.utils.data import TensorDataset

from groupwise.callbacks import Preemption
from groupwise.data.cifar10 import EpochRandomSampler
from groupwise.data.resumable_loader import ResumableDataLoader


def loader(num_workers: int = 0) -> ResumableDataLoader:
    data = TensorDataset(torch.arange(10))
    return ResumableDataLoader(
        data,
        batch_size=3,
        sampler=EpochRandomSampler(data, seed=7),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_resumed_loader_goes_on_with_the_next_batch(num_workers):
    unbroken = [batch.tolist() for (batch,) in loader()]
    first = loader()
    iterator = iter(first)
    next(iterator), next(iterator)
    assert first.state_dict() == {"batches": 2}

    resumed = loader(num_workers)
    resumed.load_state_dict(first.state_dict())
    assert len(resumed) == 4  # the epoch's length is unchanged: Lightning counts on
    assert [batch.tolist() for (batch,) in resumed] == unbroken[2:]
    assert resumed.state_dict() == {"batches": 4}
    resumed.sampler.set_epoch(0)  # the next epoch is whole again
    assert [batch.tolist() for (batch,) in resumed] == unbroken


def test_a_position_at_the_end_of_the_epoch_skips_nothing():
    resumed = loader()
    resumed.load_state_dict({"batches": 4})
    assert len(list(resumed)) == 4


def test_preemption_names_the_bad_signal_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"\['SIGKIL'\] cannot be caught; .*SIGUSR1"):
        Preemption(signals=["SIGKIL"])
    with pytest.raises(ValueError, match=r"\['SIGKILL'\] cannot be caught"):
        Preemption(signals=["SIGKILL"])
    with pytest.raises(ValueError, match="exit_code must be in"):
        Preemption(exit_code=256)
    with pytest.raises(ValueError, match=r"every_n_steps must be a positive .* got 0"):
        Preemption(every_n_steps=0)
