"""Lightning's ``LearningRateMonitor``, safe for optimizers without weight decay and for
runs without a logger, with a tag per group named after that group's own optimizer,
logging a run without a scheduler once per epoch, and a per-step schedule's first and
last step however short the run."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor as _LightningLearningRateMonitor
from torch.optim import Optimizer

from groupwise.optim.combined import CombinedOptimizer

# the group keys Lightning's monitor reads (lr, momentum or betas[0], weight decay)
LOGGED_KEYS = ("lr", "momentum", "betas", "weight_decay")


class LearningRateMonitor(_LightningLearningRateMonitor):
    """Logs each named group's lr, momentum and weight decay (``lr-SGD/<group>...``).

    What Lightning's lacks:

    - with ``log_weight_decay=True`` it raises ``KeyError`` for an optimizer whose groups
      have no ``weight_decay`` (``torch.optim.LBFGS``, ``Rprop``); here such groups just
      log no weight decay;
    - its tag prefix is ``lr-<optimizer class>``: for a ``CombinedOptimizer`` (an optimizer
      per group) that would be ``lr-CombinedOptimizer`` for every group. Here each group's
      prefix is the class of that group's own optimizer (``lr-Muon/filters``,
      ``lr-SGD/norm``), as Lightning names the tags of a single optimizer of that class;
    - it reads momentum from ``betas`` if the optimizer's *defaults* have ``betas``; here
      each group's own keys decide (``betas[0]``, else ``momentum``), which is the same for
      a single optimizer and right for a group of another optimizer;
    - with ``logging_interval=None`` (log at each scheduler's own interval) it logs an
      optimizer without a scheduler both at every epoch start and every
      ``log_every_n_steps`` steps, twice at the same step where they meet; here such an
      optimizer's lrs, which nothing changes, are logged once per epoch;
    - it logs step-interval lrs only at the steps ``log_every_n_steps`` picks (the
      ``n``-th, ``2n``-th, ...), so a run shorter than ``log_every_n_steps`` logs none,
      and no run shows its first or its last step's lr. Here the first step of each fit
      and the last step are logged too (with the lrs those steps trained at: the values
      are noted before each step that is not logged, a few floats, and the last one is
      logged when training ends);
    - with two schedulers on one optimizer (a group's own schedule beside the run's), it
      logs each group once per scheduler where their intervals meet; here a value already
      logged at a step is not logged again at that step;
    - it refuses a trainer without a logger (``--trainer.logger false``), which would make
      every such run fail here, where it is one of the default callbacks: here it then
      does nothing.
    """

    _first_done = False  # the first step of this fit was logged
    # (step, {id(group): its logged keys}) of the latest step that was not logged
    _unlogged: tuple[int, dict[int, dict[str, Any]]] | None = None
    _values: dict[int, dict[str, Any]] | None = None  # read these instead of the groups
    _logged: tuple[int, dict[str, float]] | None = None  # (step, values logged at it)

    def on_train_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        self._first_done, self._unlogged, self._logged = False, None, None
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if not trainer.loggers or self.logging_interval == "epoch":
            return
        if self.logging_interval is None and not trainer.lr_scheduler_configs:
            return  # no scheduler, no interval of its own: logged at each epoch start
        # Lightning's own test and step number for its logs (its on_train_batch_start)
        if trainer._logger_connector.should_update_logs:
            super().on_train_batch_start(trainer, *args, **kwargs)
            self._first_done, self._unlogged = True, None
            return
        if trainer.log_every_n_steps == 0 or not self._steps_logged(trainer):
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        if not self._first_done:
            self._log(trainer, self._extract_stats(trainer, self._interval()), step)
            self._first_done = True
        elif self._unlogged is None or self._unlogged[0] != step:
            groups = [group for optimizer in trainer.optimizers for group in optimizer.param_groups]
            noted = {id(g): {k: g[k] for k in LOGGED_KEYS if k in g} for g in groups}
            self._unlogged = (step, noted)

    def on_train_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        """Log the last step's lrs if ``log_every_n_steps`` did not pick it."""
        if self._unlogged is None or not trainer.loggers:
            return
        step, self._values = self._unlogged
        try:
            stats = self._extract_stats(trainer, self._interval())
        finally:
            self._values, self._unlogged = None, None
        self._log(trainer, stats, step)

    def on_train_epoch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)

    def _extract_stats(self, trainer: Trainer, interval: str) -> dict[str, float]:
        """Lightning's, less the values already logged at this step: with a group's own
        schedule (``groupwise.optim.group_schedule``) the optimizer has two schedulers, an
        epoch one and a step one, and both would log every group at an epoch's first step."""
        stats = super()._extract_stats(trainer, interval)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        done = self._logged[1] if self._logged is not None and self._logged[0] == step else {}
        self._logged = (step, {**done, **stats})
        return {key: value for key, value in stats.items() if done.get(key) != value}

    def _interval(self) -> str:
        """The interval argument of ``_extract_stats`` at a step, as Lightning's."""
        return "step" if self.logging_interval is None else "any"

    def _steps_logged(self, trainer: Trainer) -> bool:
        """Whether any lr is logged at the steps: a step-interval scheduler, or the user's
        ``logging_interval: step``."""
        if self.logging_interval == "step":
            return True
        return any(config.interval == "step" for config in trainer.lr_scheduler_configs)

    @staticmethod
    def _log(trainer: Trainer, stats: dict[str, float], step: int) -> None:
        if stats:
            for logger in trainer.loggers:
                logger.log_metrics(stats, step=step)

    def _group(self, param_group: dict[str, Any]) -> dict[str, Any]:
        """The group's values, or those noted at the step being logged late."""
        return param_group if self._values is None else self._values[id(param_group)]

    def _extract_lr(self, param_group: dict[str, Any], name: str) -> dict[str, Any]:
        return super()._extract_lr(self._group(param_group), name)

    def _extract_weight_decay(self, param_group: dict[str, Any], name: str) -> dict[str, Any]:
        param_group = self._group(param_group)
        if "weight_decay" not in param_group:
            return {}
        return super()._extract_weight_decay(param_group, name)

    def _extract_momentum(
        self, param_group: dict[str, Any], name: str, use_betas: bool
    ) -> dict[str, float]:
        param_group = self._group(param_group)
        return super()._extract_momentum(param_group, name, "betas" in param_group)

    def _check_duplicates_and_update_name(
        self, optimizer: Optimizer, name: str, *args: Any, **kwargs: Any
    ) -> list[str]:
        names = super()._check_duplicates_and_update_name(optimizer, name, *args, **kwargs)
        if isinstance(optimizer, CombinedOptimizer) and name == f"lr-{type(optimizer).__name__}":
            # Lightning's names are name[-k]/<group>: the same, with each group's own class
            return [
                f"lr-{type(child).__name__}{tag[len(name) :]}"
                for tag, child in zip(names, optimizer.group_optimizers, strict=True)
            ]
        return names
