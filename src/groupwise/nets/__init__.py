"""Plain ``nn.Module`` networks for 3x32x32 input; they know nothing of Lightning."""

from groupwise.nets.airbench import AirbenchNet, whitening_filters
from groupwise.nets.fast import FastNet
from groupwise.nets.lenet import LeNet5
from groupwise.nets.resnet import CifarResNet18

__all__ = ["AirbenchNet", "CifarResNet18", "FastNet", "LeNet5", "whitening_filters"]
