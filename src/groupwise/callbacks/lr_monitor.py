"""Lightning's ``LearningRateMonitor``, safe for optimizers that have no weight decay."""

from typing import Any

from lightning.pytorch.callbacks import LearningRateMonitor as _LightningLearningRateMonitor


class LearningRateMonitor(_LightningLearningRateMonitor):
    """Logs each named group's lr, momentum and weight decay (``lr-SGD/<group>...``).

    What Lightning's lacks: with ``log_weight_decay=True`` it raises ``KeyError`` for an
    optimizer whose groups have no ``weight_decay`` (``torch.optim.LBFGS``, ``Rprop``);
    here such groups just log no weight decay.
    """

    def _extract_weight_decay(self, param_group: dict[str, Any], name: str) -> dict[str, Any]:
        if "weight_decay" not in param_group:
            return {}
        return super()._extract_weight_decay(param_group, name)
