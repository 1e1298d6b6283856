"""When `EMAWeightAveraging` updates its average, as a property over its options: after each
optimizer step the average has been updated exactly once per step so far that is in an
epoch >= ``update_starting_at_epoch``, at or after ``update_starting_at_step`` and a multiple
of ``update_every_n_steps``; with ``update_every_n_steps: 0`` once per epoch end from
``update_starting_at_epoch``. Driven through a real Lightning ``Trainer`` (the callback's
hooks are what decide), on a one-weight model.
"""

import lightning as L
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, TensorDataset

from groupwise.callbacks import EMAWeightAveraging


class OneWeight(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return ((self.weight - batch[0]) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class RecordUpdates(Callback):
    """Listed after the EMA callback: its update count after each step and epoch end."""

    def __init__(self, ema: EMAWeightAveraging) -> None:
        self.ema = ema
        self.after_step: list[int] = []
        self.after_epoch: list[int] = []

    def on_train_batch_end(self, *args) -> None:
        self.after_step.append(int(self.ema._average_model.n_averaged))

    def on_train_epoch_end(self, *args) -> None:
        self.after_epoch.append(int(self.ema._average_model.n_averaged))


def expected_counts(options: dict, steps_per_epoch: int, epochs: int):
    """The update count after each step and after each epoch end, from the options alone."""
    every, start_step = options["update_every_n_steps"], options["update_starting_at_step"]
    start_epoch = options["update_starting_at_epoch"]
    count, after_step, after_epoch = 0, [], []
    for epoch in range(epochs):
        started = start_epoch is None or epoch >= start_epoch
        for index in range(steps_per_epoch):
            step = epoch * steps_per_epoch + index
            late = start_step is None or step >= start_step
            count += started and late and every > 0 and step % every == 0
            after_step.append(count)
        count += every <= 0 and start_epoch is not None and epoch >= start_epoch
        after_epoch.append(count)
    return after_step, after_epoch


def fit_counts(options: dict, steps_per_epoch: int, epochs: int):
    ema = EMAWeightAveraging(decay=0.5, **options)
    record = RecordUpdates(ema)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[ema, record],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    data = DataLoader(TensorDataset(torch.arange(steps_per_epoch, dtype=torch.float32)))
    trainer.fit(OneWeight(), data)
    return record.after_step, record.after_epoch


OPTIONS = st.fixed_dictionaries(
    {
        "update_every_n_steps": st.integers(0, 3),
        "update_starting_at_step": st.none() | st.integers(0, 8),
        "update_starting_at_epoch": st.none() | st.integers(0, 3),
    }
)


@settings(max_examples=25, deadline=None)
@given(options=OPTIONS, steps_per_epoch=st.integers(1, 3), epochs=st.integers(1, 3))
def test_the_average_is_updated_exactly_at_the_steps_its_options_name(
    options, steps_per_epoch, epochs
):
    assert fit_counts(options, steps_per_epoch, epochs) == expected_counts(
        options, steps_per_epoch, epochs
    )


def test_update_starting_at_epoch_alone_starts_at_that_epochs_first_step():
    """The issue's case: averaging from epoch 2 of a 2-epoch run averages nothing."""
    options = {"update_every_n_steps": 1, "update_starting_at_step": None}
    assert fit_counts({**options, "update_starting_at_epoch": 2}, 4, 2) == ([0] * 8, [0, 0])
    assert fit_counts({**options, "update_starting_at_epoch": 1}, 2, 2) == ([0, 0, 1, 2], [0, 2])


def test_an_epoch_end_does_not_average_the_last_steps_weights_twice():
    """Found by the property: Lightning also updated at each epoch end from the start epoch."""
    options = {"update_every_n_steps": 1, "update_starting_at_step": None}
    assert fit_counts({**options, "update_starting_at_epoch": 0}, 1, 1) == ([1], [1])
