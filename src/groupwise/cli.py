"""The ``groupwise`` command: Lightning's CLI with this template's defaults.

Lightning's ``LightningCLI`` does the parsing, YAML configs, dotted overrides and the
``fit`` / ``validate`` / ``test`` / ``predict`` subcommands. What it lacks and is added here:
the CLI's automatic ``configure_optimizers`` is turned off (it would make one anonymous
parameter group), and two callbacks are always present, each configurable from YAML under
its own key: ``checkpoint`` (best by ``val/acc`` plus ``last.ckpt``) and ``lr_monitor``
(every named group's lr, momentum and weight decay once per epoch in TensorBoard).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from groupwise.cifar10 import CIFAR10DataModule
from groupwise.classifier import Classifier


class GroupwiseCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "epoch{epoch:03d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults(
            {
                "lr_monitor.logging_interval": "epoch",
                "lr_monitor.log_momentum": True,
                "lr_monitor.log_weight_decay": True,
            }
        )


def main(args: ArgsType = None) -> GroupwiseCLI:
    """Run the CLI on ``args`` (``sys.argv`` when ``None``)."""
    return GroupwiseCLI(
        Classifier,
        CIFAR10DataModule,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        args=args,
    )
