"""Parameter groups from rules, and the optimizers and schedulers torch lacks."""

from groupwise.optim.combined import CombinedOptimizer
from groupwise.optim.cosine_annealing import CosineAnnealingLR
from groupwise.optim.muon import Muon
from groupwise.optim.param_groups import ParamGroupError, build_param_groups, describe
from groupwise.optim.per_group import build_optimizer
from groupwise.optim.sgd_l1l2 import SGDL1L2
from groupwise.optim.warmup_linear import WarmupLinearLR

__all__ = [
    "SGDL1L2",
    "CombinedOptimizer",
    "CosineAnnealingLR",
    "Muon",
    "ParamGroupError",
    "WarmupLinearLR",
    "build_optimizer",
    "build_param_groups",
    "describe",
]
