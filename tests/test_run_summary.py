"""RunSummary: what a user reads at the end of fit and test, and the run's summary.txt."""

import re
import shutil
from pathlib import Path

import pytest
from cli_run import LENET, quick

from groupwise.cli import run


@pytest.fixture
def fitted(data_dir, tmp_path, monkeypatch, caplog):
    """A 3-epoch LeNet fit run from ``tmp_path`` (so the summary's paths are relative)."""
    monkeypatch.chdir(tmp_path)
    args = quick(data_dir, Path("."), "--trainer.max_epochs", "3")
    with caplog.at_level("INFO", logger="lightning.pytorch"):
        cli = run(["fit", "--config", LENET, *args])
    return cli, args, caplog.messages


def check_tensorboard_line(line: str, run_dir: str) -> None:
    label, command = line.split(maxsplit=1)
    assert label == "TensorBoard"
    script, *rest = command.split()
    assert rest == ["--logdir", run_dir]
    assert shutil.which(script) or Path(script).is_file()  # a command that exists


def test_fit_prints_and_saves_where_the_run_went(fitted):
    cli, _, printed = fitted
    best = next(c for c in cli.trainer.checkpoint_callbacks if c.monitor == "val/acc")
    best_path = Path(best.best_model_path).absolute().relative_to(Path.cwd())
    epoch = int(re.fullmatch(r"epoch(\d{3})-acc.*\.ckpt", best_path.name)[1])
    text = Path("lightning_logs/version_0/summary.txt").read_text()
    lines = text.splitlines()
    assert re.fullmatch(r"fit done in \d+\.\d s", lines[0])
    assert lines[1:4] == [
        "run directory  lightning_logs/version_0",
        f"best val/acc   {float(best.best_model_score):.4f} at epoch {epoch}: {best_path}",
        "last.ckpt      lightning_logs/version_0/checkpoints/last.ckpt",
    ]
    check_tensorboard_line(lines[4], "lightning_logs/version_0")
    assert len(lines) == 5
    assert text.rstrip("\n") in printed  # printed too (Lightning's logger, on rank 0)


def test_test_prints_the_checkpoint_and_its_metrics(fitted):
    _, args, _ = fitted
    last = "lightning_logs/version_0/checkpoints/last.ckpt"
    cli = run(["test", "--config", LENET, *args, "--ckpt_path", last])
    metrics = cli.trainer.callback_metrics
    lines = Path("lightning_logs/version_1/summary.txt").read_text().splitlines()
    assert re.fullmatch(r"test done in \d+\.\d s", lines[0])
    assert lines[1:5] == [
        "run directory  lightning_logs/version_1",
        f"checkpoint     {last}",
        f"test/acc       {float(metrics['test/acc']):.4f}",
        f"test/loss      {float(metrics['test/loss']):.4f}",
    ]
    check_tensorboard_line(lines[5], "lightning_logs/version_1")


def test_a_fit_that_holds_out_nothing_validates_nothing_and_warns_nothing(
    data_dir, tmp_path, monkeypatch, caplog, recwarn
):
    """``data.val_size 0`` (airbench94's, all images train): no validation loop, no best
    checkpoint by ``val/acc``, none of Lightning's warnings about an empty loader or a
    missing monitored metric; ``last.ckpt`` after every epoch; one line says so."""
    monkeypatch.chdir(tmp_path)
    args = quick(data_dir, Path("."), "--trainer.max_epochs", "2", "--data.val_size", "0")
    with caplog.at_level("INFO", logger="lightning.pytorch"):
        cli = run(["fit", "--config", LENET, *args])
    warned = [str(w.message) for w in recwarn]
    assert not [w for w in warned if "DataLoader" in w or "monitored key" in w], warned
    assert cli.trainer.fit_loop.epoch_loop.val_loop.batch_progress.total.completed == 0
    assert sorted(p.name for p in Path("lightning_logs/version_0/checkpoints").iterdir()) == [
        "last.ckpt"
    ]
    lines = Path("lightning_logs/version_0/summary.txt").read_text().splitlines()
    assert lines[1:3] == [
        "run directory  lightning_logs/version_0",
        "last.ckpt      lightning_logs/version_0/checkpoints/last.ckpt",
    ]
    assert (
        "no validation: data.val_size is 0 (every training image trains), so no checkpoint "
        "of the best val/acc is kept; last.ckpt is saved after every epoch"
    ) in caplog.messages
