"""Lightning's ``LearningRateMonitor``, safe for optimizers that have no weight decay and
for runs without a logger, and logging a run without a scheduler once per epoch."""

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor as _LightningLearningRateMonitor


class LearningRateMonitor(_LightningLearningRateMonitor):
    """Logs each named group's lr, momentum and weight decay (``lr-SGD/<group>...``).

    What Lightning's lacks: with ``log_weight_decay=True`` it raises ``KeyError`` for an
    optimizer whose groups have no ``weight_decay`` (``torch.optim.LBFGS``, ``Rprop``);
    here such groups just log no weight decay. And it refuses a trainer without a logger
    (``--trainer.logger false``), which makes every such run fail here, where it is one of
    the default callbacks: here it then does nothing.
    And with ``logging_interval=None`` (log at
    each scheduler's own interval) it logs an optimizer without a scheduler both at every
    epoch start and every ``log_every_n_steps`` steps, twice at the same step where they
    meet; here such an optimizer's lrs, which nothing changes, are logged once per epoch.
    """

    def on_train_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if not trainer.loggers:
            return
        if self.logging_interval is None and not trainer.lr_scheduler_configs:
            return  # no scheduler, no interval of its own: logged at each epoch start
        super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)

    def _extract_weight_decay(self, param_group: dict[str, Any], name: str) -> dict[str, Any]:
        if "weight_decay" not in param_group:
            return {}
        return super()._extract_weight_decay(param_group, name)
