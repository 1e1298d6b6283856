"""A confusion-matrix image of each validation epoch in TensorBoard.

The libraries do the work: torchmetrics' ``MulticlassConfusionMatrix`` counts (and syncs
the counts across DDP ranks in ``compute``) and draws the matrix
(``MulticlassConfusionMatrix.plot(labels=..., add_text=True)``: rows the true class,
columns the predicted class, each cell's count written in it), and TensorBoard's
``SummaryWriter.add_figure`` logs the figure as the image ``val/confusion_matrix`` at
``trainer.global_step``. What they lack, and this callback adds: feeding the metric from
Lightning's validation hooks, the class names from the DataModule, and a figure sized to
the classes. ``plot`` without an ``ax`` draws on matplotlib's default 6.4 x 4.8 inch
figure, where CIFAR-10's ten tick labels overlap ("automobile" runs into "bird") and the
three-digit counts of a 5,000-image validation fill their cells; here it draws on an
``ax`` of a figure 0.8 inch per class, at least 6.4 inches, square
(``tests/test_confusion_matrix.py`` checks the counts, labels and size).

Logits: ``Classifier.validation_step`` returns its logits and they are used as they are.
For a LightningModule whose ``validation_step`` returns none, the callback runs the model
on the batch's images again (``pl_module(images)`` under ``no_grad``; the batch the hook
gets is the one after ``on_after_batch_transfer``, i.e. normalised as validation saw it).
The sanity-check batches are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix

from groupwise.errors import ConfigError

TAG = "val/confusion_matrix"
INCHES_PER_CLASS = 0.8
MIN_INCHES = 6.4  # matplotlib's default figure width


def figure(metric: MulticlassConfusionMatrix, matrix: torch.Tensor, labels: list[str]) -> Figure:
    """``metric.plot`` of ``matrix`` (counts in the cells, ``labels`` on both axes) on a
    square figure sized to the number of classes."""
    size = max(MIN_INCHES, INCHES_PER_CLASS * len(labels))
    fig = Figure(figsize=(size, size), layout="constrained")
    metric.plot(matrix, ax=fig.add_subplot(), add_text=True, labels=labels)
    return fig


class ConfusionMatrix(Callback):
    """Log the validation confusion matrix as an image at the end of each validation.

    Args:
        num_classes: number of classes; ``None`` takes ``pl_module.num_classes``.
        class_names: tick labels; ``None`` takes the DataModule's ``classes`` when there
            are as many, else numbers the classes 0, 1, ...
    """

    def __init__(
        self, num_classes: int | None = None, class_names: Sequence[str] | None = None
    ) -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        self.metric: MulticlassConfusionMatrix | None = None
        self.last_matrix: torch.Tensor | None = None  # the latest computed (synced) counts

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        num_classes = self.num_classes or pl_module.num_classes
        self.metric = MulticlassConfusionMatrix(num_classes)
        if self.class_names is None:  # the DataModule's names (CIFAR-10's), else numbers
            names = getattr(trainer.datamodule, "classes", None)
            fits = names is not None and len(names) == num_classes
            self.class_names = list(names) if fits else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ConfigError(
                f"{len(self.class_names)} class names for {num_classes} classes: {self.class_names}"
            )

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.metric.to(pl_module.device)
        self.metric.reset()

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking:
            return
        images, labels = batch[0], batch[1]
        logits = outputs
        expected = (len(labels), self.metric.num_classes)
        if not (isinstance(logits, torch.Tensor) and logits.shape == expected):
            with torch.no_grad():
                logits = pl_module(images)
        self.metric.update(logits.detach(), labels)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self.metric.update_called:
            return
        matrix = self.metric.compute()  # every rank: the all-gather of the counts
        self.last_matrix = matrix.cpu()
        if not trainer.is_global_zero:
            return
        writers = [
            logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)
        ]
        if writers:
            image = figure(self.metric, self.last_matrix, self.class_names)
            for writer in writers:
                writer.add_figure(TAG, image, global_step=trainer.global_step, close=False)
