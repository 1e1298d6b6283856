"""Lightning's TQDM progress bar, redrawn at most every ``interval_s`` seconds.

What Lightning lacks: with its default ``refresh_rate=1``, ``TQDMProgressBar`` redraws the
terminal and reads every ``prog_bar`` metric on the host (``tensor.item()``, which waits for
the GPU to finish the step) after every training batch: a device sync and a terminal write
per step. Here the step count is updated every batch (a Python int), and the bar is
redrawn with fresh metrics only when ``interval_s`` has passed, and at each epoch's last
batch, so a fast GPU run syncs about once per ``interval_s`` instead of once per step.
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from groupwise.errors import ConfigError


class ProgressBar(TQDMProgressBar):
    """``TQDMProgressBar`` whose training bar is redrawn at most every ``interval_s``.

    Args:
        interval_s: minimum seconds between two redraws (and metric reads) of the training
            bar; the last batch of an epoch is always drawn.
        refresh_rate, process_position, leave: as for ``TQDMProgressBar``.
    """

    def __init__(
        self,
        interval_s: float = 0.5,
        refresh_rate: int = 1,
        process_position: int = 0,
        leave: bool = False,
    ) -> None:
        if interval_s < 0:
            raise ConfigError(f"interval_s must be >= 0 seconds, got {interval_s}")
        super().__init__(refresh_rate, process_position, leave)
        self.interval_s = interval_s
        self._last_draw = float("-inf")
        self.metric_reads = 0  # how many times the training bar read the metrics

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        bar, n = self.train_progress_bar, batch_idx + 1
        if bar is None or bar.disable or not self._should_update(n, bar.total):
            return
        bar.n = n  # no redraw: tqdm draws on refresh()
        now = time.monotonic()
        if n == bar.total or now - self._last_draw >= self.interval_s:
            self._last_draw = now
            self.metric_reads += 1
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()
