"""The CLI's progress bar: Lightning's default bar is replaced by one that reads the metrics
(a device sync on a GPU) at most every ``interval_s`` instead of after every step and shows
the drawn step's loss, a bar the user configures is kept, and turning the bar off still
works. And what Lightning's own bar lacks: it shows only ``prog_bar`` metrics, which
Lightning reads after every step whatever the bar's ``refresh_rate``."""

import json

import pytest
import torch
from cli_run import LENET, quick
from host_reads import HostReads
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

from groupwise.callbacks.progress_bar import ProgressBar
from groupwise.cli import run


def fit_with_bar(data_dir, root, *extra: str):
    # quick() turns the bar off; the last --trainer.enable_progress_bar wins
    args = quick(
        data_dir, root, "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "true"
    )
    return run(["fit", "--config", LENET, *args, *extra])


@pytest.mark.parametrize(("interval_s", "reads"), [(0.0, 6), (3600.0, 3)])
def test_metrics_are_read_once_per_interval_and_at_each_epoch_end(
    data_dir, tmp_path, interval_s, reads
):
    bar = json.dumps(
        {
            "class_path": "groupwise.callbacks.ProgressBar",
            "init_args": {"interval_s": interval_s},
        }
    )
    cli = fit_with_bar(data_dir, tmp_path, f"--trainer.callbacks+={bar}")
    used = cli.trainer.progress_bar_callback
    assert type(used) is ProgressBar and used.interval_s == interval_s
    # 3 batches per epoch, 2 epochs: every batch, or only the first batch and each epoch's last
    assert used.metric_reads == reads
    assert cli.trainer.global_step == 6


def test_the_default_bar_is_replaced(data_dir, tmp_path):
    cli = fit_with_bar(data_dir, tmp_path)
    bar = cli.trainer.progress_bar_callback
    assert type(bar) is ProgressBar and bar.interval_s == 0.5
    assert 2 <= bar.metric_reads <= 6  # at least each epoch's last batch


def test_the_default_bar_is_replaced_when_other_callbacks_are_configured(data_dir, tmp_path):
    init = json.dumps({"class_path": "groupwise.callbacks.WeightInit", "init_args": {"seed": 0}})
    cli = fit_with_bar(data_dir, tmp_path, f"--trainer.callbacks+={init}")
    bars = [c for c in cli.trainer.callbacks if isinstance(c, TQDMProgressBar)]
    assert [type(bar) for bar in bars] == [ProgressBar]


def test_a_configured_tqdm_bar_is_kept(data_dir, tmp_path):
    tqdm = json.dumps(
        {
            "class_path": "lightning.pytorch.callbacks.TQDMProgressBar",
            "init_args": {"refresh_rate": 2},
        }
    )
    cli = fit_with_bar(data_dir, tmp_path, f"--trainer.callbacks+={tqdm}")
    bar = cli.trainer.progress_bar_callback
    assert type(bar) is TQDMProgressBar and bar.refresh_rate == 2


def test_no_bar_when_turned_off(data_dir, tmp_path):
    cli = run(["fit", "--config", LENET, *quick(data_dir, tmp_path, "--trainer.max_epochs", "1")])
    assert cli.trainer.progress_bar_callback is None
    assert not [c for c in cli.trainer.callbacks if isinstance(c, TQDMProgressBar)]


def test_bad_interval():
    with pytest.raises(ValueError, match="interval_s must be >= 0 seconds, got -1"):
        ProgressBar(interval_s=-1)


class LastLoss(Callback):
    """Keeps the training loss of the latest step and its number of images."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.loss, self.images = float(outputs["loss"]), len(batch[1])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_bar_shows_the_loss_of_the_step_it_draws(data_dir, tmp_path, reduction):
    """Per image, as TensorBoard's train/loss: a summed loss (airbench94's) is divided by
    the step's images, so the bar reads the same whatever the batch size."""
    last = json.dumps({"class_path": "test_progress_bar.LastLoss"})
    cli = fit_with_bar(
        data_dir, tmp_path, f"--trainer.callbacks+={last}", "--model.loss_reduction", reduction
    )
    bar = cli.trainer.progress_bar_callback
    (last,) = [c for c in cli.trainer.callbacks if isinstance(c, LastLoss)]
    shown = last.loss / last.images if reduction == "sum" else last.loss
    postfix = bar.train_progress_bar.postfix
    assert postfix.startswith(f"loss={bar.train_progress_bar.format_num(shown)}, v_num=")
    assert "val/acc=" in postfix  # the latest validation's metrics follow


class TinyModule(LightningModule):
    def __init__(self, prog_bar: bool) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.prog_bar = prog_bar

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("loss", loss, prog_bar=self.prog_bar)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    ("bar", "more_reads"),
    [(TQDMProgressBar(refresh_rate=1000), 11), (None, 10)],
    ids=["tqdm", "no-bar"],
)
def test_lightning_reads_a_prog_bar_metric_after_every_step_whatever_the_bar(
    tmp_path, bar, more_reads
):
    """Why ``ProgressBar`` is not ``TQDMProgressBar(refresh_rate=N)``: a metric the bar
    shows must be logged with ``prog_bar=True``, and then Lightning's loop reads it on the
    host after every training batch, however rarely the bar redraws, even with no bar at
    all: 10 steps make 10 more reads than without ``prog_bar`` (11 with the bar, whose one
    redraw, at the end, reads it once more)."""
    reads = {}
    for prog_bar in (False, True):
        data = DataLoader(TensorDataset(torch.randn(80, 4)), batch_size=4)  # 20 batches
        trainer = Trainer(
            max_steps=10,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=bar is not None,
            callbacks=[bar] if bar is not None else [],
            default_root_dir=tmp_path,
            accelerator="cpu",
        )
        with HostReads() as seen:
            trainer.fit(TinyModule(prog_bar), data)
        reads[prog_bar] = sum(seen.reads.values())
    assert reads[True] - reads[False] == more_reads
