"""Lightning callbacks that know about named parameter groups, each in its own module."""

from groupwise.callbacks.confusion_matrix import ConfusionMatrix
from groupwise.callbacks.custom_scalars import CustomScalars
from groupwise.callbacks.ema import EMAWeightAveraging
from groupwise.callbacks.finetune import FreezeGroups, set_group_lr
from groupwise.callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from groupwise.callbacks.group_plan import GroupPlan
from groupwise.callbacks.group_stats import GroupStats
from groupwise.callbacks.lr_monitor import LearningRateMonitor
from groupwise.callbacks.prediction_writer import PredictionWriter
from groupwise.callbacks.preemption import Preempted, Preemption
from groupwise.callbacks.progress_bar import ProgressBar
from groupwise.callbacks.rng_state import RNGStateCheckpoint
from groupwise.callbacks.run_summary import RunSummary
from groupwise.callbacks.weight_init import WeightInit
from groupwise.callbacks.whitening import WhiteningInit

__all__ = [
    "ConfusionMatrix",
    "CustomScalars",
    "EMAWeightAveraging",
    "FiniteLossGuard",
    "FreezeGroups",
    "GroupPlan",
    "GroupStats",
    "LearningRateMonitor",
    "NonFiniteLossError",
    "Preempted",
    "Preemption",
    "PredictionWriter",
    "ProgressBar",
    "RNGStateCheckpoint",
    "RunSummary",
    "WeightInit",
    "WhiteningInit",
    "set_group_lr",
]
