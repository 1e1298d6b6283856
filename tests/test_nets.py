"""The shipped nets: output shapes and exact parameter counts of the published designs."""

import torch

from groupwise.nets import CifarResNet18, LeNet5


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet5_shape_and_size():
    model = LeNet5()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    # conv 456 + conv 2,416 + fc 48,120 + fc 10,164 + fc 850
    assert count(model) == 62_006
    assert count(model.features) == 2_872


def test_cifar_resnet18_shape_size_and_stem():
    model = CifarResNet18(num_classes=10)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert count(model) == 11_173_962  # the usual CIFAR ResNet-18 size
    stem_conv = model.backbone[0][0]
    assert (stem_conv.kernel_size, stem_conv.stride) == ((3, 3), (1, 1))
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert count(model.head) == 512 * 10 + 10
