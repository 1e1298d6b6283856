"""The CLI's progress bar: Lightning's default bar is replaced by one that reads the metrics
(a device sync on a GPU) at most every ``interval_s`` instead of after every step, a bar the
user configures is kept, and turning the bar off still works."""

import json

import pytest
from cli_run import LENET, quick
from lightning.pytorch.callbacks import TQDMProgressBar

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
