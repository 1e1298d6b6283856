"""Parameter groups from rules, and the optimizers and schedulers torch lacks."""

from groupwise.optim.cosine_annealing import CosineAnnealingLR
from groupwise.optim.param_groups import ParamGroupError, build_param_groups, describe
from groupwise.optim.sgd_l1l2 import SGDL1L2
from groupwise.optim.warmup_linear import WarmupLinearLR

__all__ = [
    "SGDL1L2",
    "CosineAnnealingLR",
    "ParamGroupError",
    "WarmupLinearLR",
    "build_param_groups",
    "describe",
]
