"""The LightningModule's own behaviour, without a trainer."""

import pytest
import torch

from groupwise.classifier import Classifier
from groupwise.nets import LeNet5


def test_accuracy_is_the_fraction_of_images_right_not_a_class_average():
    model = Classifier(net=LeNet5())
    predictions = torch.tensor([0, 0, 0, 0])
    labels = torch.tensor([0, 0, 0, 1])  # unbalanced: 3 of 4 right, class recalls 1.0 and 0.0
    for accuracy in (model.train_acc, model.val_acc, model.test_acc):
        assert float(accuracy(predictions, labels)) == pytest.approx(0.75)


def test_wrong_number_of_logits_is_a_clear_error():
    model = Classifier(net=LeNet5(num_classes=7), num_classes=10)
    batch = (torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"logits of shape \(2, 7\); expected \(batch, 10\)"):
        model.training_step(batch, 0)
