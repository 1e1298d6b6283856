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


def test_train_accuracy_takes_logits_or_classes_and_is_zero_before_any_image():
    model = Classifier(net=LeNet5())
    logits = torch.tensor([[0.0, 2.0], [3.0, 1.0], [0.0, 1.0]])  # classes 1, 0, 1
    model.train_acc.update(logits, torch.tensor([1, 1, 1]))
    model.train_acc.update(torch.tensor([0]), torch.tensor([0]))
    assert float(model.train_acc.compute()) == pytest.approx(3 / 4)
    model.train_acc.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert float(model.train_acc.compute()) == 0.0  # as MulticlassAccuracy gives


def test_wrong_number_of_logits_is_a_clear_error():
    model = Classifier(net=LeNet5(num_classes=7), num_classes=10)
    batch = (torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"logits of shape \(2, 7\); expected \(batch, 10\)"):
        model.training_step(batch, 0)
