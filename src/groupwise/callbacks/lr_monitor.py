"""Lightning's ``LearningRateMonitor``, safe for optimizers without weight decay and for
runs without a logger, with stable tags for an optimizer per group, and logging a run
without a scheduler once per epoch."""

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import LearningRateMonitor as _LightningLearningRateMonitor
from torch.optim import Optimizer

from groupwise.optim.combined import CombinedOptimizer


class LearningRateMonitor(_LightningLearningRateMonitor):
    """Logs each named group's lr, momentum and weight decay (``lr-SGD/<group>...``).

    What Lightning's lacks:

    - with ``log_weight_decay=True`` it raises ``KeyError`` for an optimizer whose groups
      have no ``weight_decay`` (``torch.optim.LBFGS``, ``Rprop``); here such groups just
      log no weight decay;
    - its tag prefix is ``lr-<optimizer class>``: for a ``CombinedOptimizer`` (an optimizer
      per group) that would be ``lr-CombinedOptimizer``, so adding a group's own optimizer
      would move every tag. Here the prefix is ``lr-<name>``, where ``name`` is the
      class of the model's optimizer (the default one), so a group's tags
      (``lr-SGD/filters``) stay the same whichever optimizer that group uses;
    - it reads momentum from ``betas`` if the optimizer's *defaults* have ``betas``; here
      each group's own keys decide (``betas[0]``, else ``momentum``), which is the same for
      a single optimizer and right for a group of another optimizer;
    - with ``logging_interval=None`` (log at each scheduler's own interval) it logs an
      optimizer without a scheduler both at every epoch start and every
      ``log_every_n_steps`` steps, twice at the same step where they meet; here such an
      optimizer's lrs, which nothing changes, are logged once per epoch.
    - it refuses a trainer without a logger (``--trainer.logger false``), which would make
      every such run fail here, where it is one of the default callbacks: here it then
      does nothing.
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

    def _extract_momentum(
        self, param_group: dict[str, Any], name: str, use_betas: bool
    ) -> dict[str, float]:
        return super()._extract_momentum(param_group, name, "betas" in param_group)

    def _check_duplicates_and_update_name(
        self, optimizer: Optimizer, name: str, *args: Any, **kwargs: Any
    ) -> list[str]:
        if isinstance(optimizer, CombinedOptimizer) and name == f"lr-{type(optimizer).__name__}":
            name = f"lr-{optimizer.name}"
        return super()._check_duplicates_and_update_name(optimizer, name, *args, **kwargs)
