"""A confusion-matrix image of each validation epoch in TensorBoard.

What Lightning and torchmetrics lack between them: torchmetrics'
``MulticlassConfusionMatrix`` counts (and syncs the counts across DDP ranks in
``compute``), but nothing draws the matrix into TensorBoard. ``ConfusionMatrix`` updates
one in ``on_validation_batch_end`` and, at validation epoch end, draws it with matplotlib
(Agg, no display) and logs it as the image ``val/confusion_matrix`` (rows: true class,
columns: predicted class; each cell the image count) at ``trainer.global_step``.

Logits: ``Classifier.validation_step`` returns its logits and they are used as they are.
For a LightningModule whose ``validation_step`` returns none, the callback runs the model
on the batch's images again (``pl_module(images)`` under ``no_grad``; the batch the hook
gets is the one after ``on_after_batch_transfer``, i.e. normalised as validation saw it).
The sanity-check batches are not counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix

TAG = "val/confusion_matrix"


def draw(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    """The matrix as an RGB image, uint8 (height, width, 3), counts written in the cells."""
    size = max(4.0, 0.45 * len(class_names) + 1.5)
    figure = Figure(figsize=(size, size), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=90)
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        colour = "white" if count > threshold else "black"
        axes.text(col, row, str(count), ha="center", va="center", color=colour, fontsize=7)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


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
            raise ValueError(
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
        image = None
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                if image is None:
                    image = draw(self.last_matrix.numpy(), self.class_names)
                logger.experiment.add_image(
                    TAG, image, global_step=trainer.global_step, dataformats="HWC"
                )
