"""Metrics the LightningModule updates (torchmetrics ``Metric`` subclasses)."""

from groupwise.metrics.accuracy import TrainAccuracy

__all__ = ["TrainAccuracy"]
