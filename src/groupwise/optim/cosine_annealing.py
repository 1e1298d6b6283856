"""torch's ``CosineAnnealingLR`` whose ``T_max`` may be left empty, to take the run's length.

What torch lacks: ``T_max`` is a required argument, so a config cannot leave it empty for
the ``Classifier`` to fill from the trainer (``groupwise.optim.schedule_length``). This
class only makes it optional; the schedule is torch's.
"""

from __future__ import annotations

from torch.optim import Optimizer, lr_scheduler

from groupwise.errors import ConfigError


class CosineAnnealingLR(lr_scheduler.CosineAnnealingLR):
    """Each group's lr from its own value down to ``eta_min`` along a half cosine over
    ``T_max`` scheduler steps (torch's ``CosineAnnealingLR``).

    Args:
        optimizer: the optimizer.
        T_max: scheduler steps from the peak to ``eta_min`` (epochs with
            ``scheduler_interval: epoch``, optimizer steps with ``step``). ``None``: the
            ``Classifier`` sets it to the run's length.
        eta_min: the lowest lr, the same for every group.
        last_epoch: as in torch.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        T_max: int | None = None,  # noqa: N803 (torch's name)
        eta_min: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if T_max is None:
            raise ConfigError(
                "CosineAnnealingLR needs T_max; under the Classifier an empty T_max is "
                "filled with the run's length"
            )
        super().__init__(optimizer, T_max, eta_min, last_epoch)
