"""The Classifier's ``tta`` levels (airbench94's none / mirror / mirror_translate) and its
``loss_reduction`` (airbench94 sums the cross-entropy), through the real Trainer, against
airbench94_muon.py's own formulas written out here."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from groupwise.classifier import Classifier
from groupwise.errors import ConfigError
from groupwise.nets import LeNet5


def trainer(**kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**(options | kwargs))


def loader(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> DataLoader:
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


@torch.no_grad()
def airbench_infer(net: nn.Module, inputs: torch.Tensor, tta_level: int) -> torch.Tensor:
    """airbench94_muon.py's ``infer_basic`` / ``infer_mirror`` / ``infer_mirror_translate``."""

    def infer_mirror(inputs):
        return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))

    net.eval()
    if tta_level == 0:
        return net(inputs)
    if tta_level == 1:
        return infer_mirror(inputs)
    logits = infer_mirror(inputs)
    padded = F.pad(inputs, (1,) * 4, "reflect")
    translated = [padded[:, :, 0:32, 0:32], padded[:, :, 2:34, 2:34]]
    logits_translate = torch.stack([infer_mirror(x) for x in translated]).mean(0)
    return 0.5 * logits + 0.5 * logits_translate


class KeepOutputs(Callback):
    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_):
        self.outputs.append(outputs)


@pytest.mark.parametrize(("tta", "level"), [("none", 0), ("mirror", 1), ("mirror_translate", 2)])
def test_each_level_gives_airbenchs_logits_loss_and_accuracy(tta, level):
    torch.manual_seed(0)
    net = LeNet5()
    images = torch.randn(12, 3, 32, 32)
    expected = airbench_infer(net, images, level)
    predicted = expected.argmax(1)
    labels = torch.cat([predicted[:5], (predicted[5:] + 1) % 10])  # 5 of 12 right
    model = Classifier(net=net, tta=tta)
    keep = KeepOutputs()
    (metrics,) = trainer(callbacks=[keep]).validate(model, loader(images, labels, 5))
    torch.testing.assert_close(torch.cat(keep.outputs), expected)
    assert metrics["val/acc"] == pytest.approx(5 / 12)
    assert metrics["val/loss"] == pytest.approx(float(F.cross_entropy(expected, labels)), rel=1e-5)
    probabilities = torch.cat(trainer().predict(model, loader(images, labels, 5)))
    torch.testing.assert_close(probabilities, expected.softmax(1))


def test_the_levels_differ_on_a_net_that_is_not_shift_or_mirror_invariant():
    torch.manual_seed(0)
    net = LeNet5()
    images = torch.randn(4, 3, 32, 32)
    logits = [
        Classifier(net=net, tta=t).eval()._logits(images, t)
        for t in ("none", "mirror", "mirror_translate")
    ]
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)
    assert not torch.allclose(logits[1], logits[2], atol=1e-4)


def test_mirror_translate_of_a_linear_net_is_the_net_of_the_weighted_views():
    """For an affine net the six views' weights (1/4, 1/4 and 1/8 for each of the four
    translated ones) can be applied to the images instead: a check of the weights."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    images = torch.randn(3, 3, 32, 32)
    padded = F.pad(images, (1,) * 4, "reflect")
    up_left, down_right = padded[..., :32, :32], padded[..., 2:, 2:]
    views = [images, images.flip(3), up_left, up_left.flip(3), down_right, down_right.flip(3)]
    weights = [1 / 4, 1 / 4, 1 / 8, 1 / 8, 1 / 8, 1 / 8]
    mixed = sum(w * v for w, v in zip(weights, views, strict=True))
    model = Classifier(net=net, tta="mirror_translate").eval()
    with torch.no_grad():
        torch.testing.assert_close(model._logits(images, model.tta), net(mixed))


def test_tta_flip_is_tta_mirror_and_the_options_must_agree():
    assert Classifier(net=LeNet5(), tta_flip=True).tta == "mirror"
    assert Classifier(net=LeNet5(), tta_flip=True, tta="mirror").tta == "mirror"
    assert Classifier(net=LeNet5()).tta == "none"
    with pytest.raises(
        ConfigError, match="model.tta_flip: true is model.tta: mirror, and model.tta is 'none'"
    ):
        Classifier(net=LeNet5(), tta_flip=True, tta="none")
    with pytest.raises(
        ConfigError,
        match=r"model.tta must be one of \['none', 'mirror', 'mirror_translate'\], got 'flip'",
    ):
        Classifier(net=LeNet5(), tta="flip")
    with pytest.raises(
        ConfigError, match=r"model.loss_reduction must be 'mean' or 'sum', got 'max'"
    ):
        Classifier(net=LeNet5(), loss_reduction="max")


# ---- loss_reduction ---------------------------------------------------------------------------


class KeepLoss(Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].detach())


def fit_one_step(
    reduction: str, lr: float, tmp_path, images, labels
) -> tuple[Classifier, KeepLoss]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    model = Classifier(
        net=net,
        optimizer=lambda p: torch.optim.SGD(p, lr=lr),
        label_smoothing=0.2,
        loss_reduction=reduction,
    )
    keep = KeepLoss()
    logger = CSVLogger(tmp_path / reduction, name="", version="")
    run = trainer(
        callbacks=[keep], logger=logger, max_steps=1, limit_val_batches=0, log_every_n_steps=1
    )
    run.fit(model, loader(images, labels, len(labels)))
    return model, keep


def test_sum_backpropagates_the_sum_logs_the_mean_and_is_the_mean_at_batch_size_times_the_lr(
    tmp_path,
):
    torch.manual_seed(1)
    images, labels = torch.randn(8, 3, 4, 4), torch.randint(0, 10, (8,))
    torch.manual_seed(0)
    initial = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    with torch.no_grad():
        want = F.cross_entropy(initial(images), labels, label_smoothing=0.2, reduction="sum")
    summed, keep = fit_one_step("sum", 0.01, tmp_path, images, labels)
    torch.testing.assert_close(keep.losses[0], want)
    with open(tmp_path / "sum" / "metrics.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r.get("train/loss")]
    assert float(row["train/loss"]) == pytest.approx(float(want) / 8, rel=1e-6)
    # SGD on the sum at lr 0.01 takes the step SGD on the mean takes at 8 x 0.01
    meaned, _ = fit_one_step("mean", 0.08, tmp_path, images, labels)
    for a, b in zip(summed.parameters(), meaned.parameters(), strict=True):
        torch.testing.assert_close(a, b)
