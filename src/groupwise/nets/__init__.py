"""Plain ``nn.Module`` networks for 3x32x32 input; they know nothing of Lightning."""

from groupwise.nets.fast import FastNet
from groupwise.nets.lenet import LeNet5
from groupwise.nets.resnet import CifarResNet18

__all__ = ["CifarResNet18", "FastNet", "LeNet5"]
