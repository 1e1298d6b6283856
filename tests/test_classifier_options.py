"""Classifier options: flip test-time augmentation, channels_last, compile; the epoch
train accuracy. Each is checked against values computed by hand."""

import csv
from pathlib import Path

import lightning as L
import pytest
import torch
from cli_run import LENET, load, quick
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from op_count import OpCount
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from groupwise.classifier import Classifier
from groupwise.cli import run
from groupwise.nets import LeNet5


def trainer(**kwargs) -> L.Trainer:
    """A quiet CPU trainer that writes nothing unless told."""
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


def tta_by_hand(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        return (net(images) + net(images.flip(3))) / 2


class KeepOutputs(Callback):
    def __init__(self) -> None:
        self.outputs: list[torch.Tensor] = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_):
        self.outputs.append(outputs)


def is_channels_last(t: torch.Tensor) -> bool:
    """In channels_last and not also in the default layout (true of any conv weight with
    more than one input channel and a kernel over 1x1)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


# ---- tta_flip -----------------------------------------------------------------------------


def test_tta_flip_logits_loss_and_accuracy_are_those_of_the_mean_logits():
    torch.manual_seed(0)
    net = LeNet5()
    images = torch.randn(12, 3, 32, 32)
    expected = tta_by_hand(net, images)
    with torch.no_grad():
        plain = net(images)
    assert not torch.allclose(expected, plain, atol=1e-4)  # LeNet is not flip-symmetric
    # 7 of 12 labels are the TTA prediction, the rest are not: accuracy 7/12.
    predicted = expected.argmax(1)
    labels = torch.cat([predicted[:7], (predicted[7:] + 1) % 10])

    model = Classifier(net=net, tta_flip=True)
    keep = KeepOutputs()
    (metrics,) = trainer(callbacks=[keep]).validate(model, loader(images, labels, 5))

    # Batches of 5, 5 and 2: validation_step returns each batch's averaged logits.
    assert [len(o) for o in keep.outputs] == [5, 5, 2]
    torch.testing.assert_close(torch.cat(keep.outputs), expected)
    assert metrics["val/acc"] == pytest.approx(7 / 12)
    assert metrics["val/loss"] == pytest.approx(float(F.cross_entropy(expected, labels)))

    (metrics,) = trainer().test(model, loader(images, labels, 5))
    assert metrics["test/acc"] == pytest.approx(7 / 12)
    probabilities = torch.cat(trainer().predict(model, loader(images, labels, 5)))
    torch.testing.assert_close(probabilities, expected.softmax(1))


def test_tta_flip_changes_nothing_on_mirror_symmetric_images():
    torch.manual_seed(0)
    images = torch.randn(4, 3, 32, 32)
    images = images + images.flip(3)
    model, model_tta = Classifier(net=LeNet5()), Classifier(net=LeNet5(), tta_flip=True)
    model_tta.load_state_dict(model.state_dict())
    batch = (images, torch.zeros(4, dtype=torch.int64))
    torch.testing.assert_close(
        model_tta.eval().predict_step(batch, 0), model.eval().predict_step(batch, 0)
    )


class MirrorDifference(nn.Module):
    """Logits ``W (x - mirror(x)) + b``: the mirror image negates ``W (x - mirror(x))``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - x.flip(3)).flatten(1))


def test_tta_flip_of_a_mirror_antisymmetric_net_leaves_only_the_bias():
    torch.manual_seed(0)
    net = MirrorDifference()
    model = Classifier(net=net, tta_flip=True).eval()
    batch = (torch.randn(6, 3, 32, 32), torch.zeros(6, dtype=torch.int64))
    expected = net.linear.bias.detach().softmax(0).expand(6, 10)
    torch.testing.assert_close(model.predict_step(batch, 0), expected)
    # Without TTA the images decide the output.
    assert not torch.allclose(Classifier(net=net).eval().predict_step(batch, 0), expected)


# ---- train/acc ----------------------------------------------------------------------------


def test_epoch_train_acc_is_correct_over_total_of_that_epoch(tmp_path):
    """The logged train/acc is (images right) / (images) over the epoch's batches, as each
    batch's logits saw them (before its optimizer step); batches of 4, 4 and 2 make it
    differ from a mean of per-batch accuracies."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    images, labels = torch.randn(10, 3, 4, 4), torch.randint(0, 10, (10,))
    predictions: list[torch.Tensor] = []
    net.register_forward_hook(lambda _m, _i, out: predictions.append(out.argmax(1)))
    model = Classifier(net=net, optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    logger = CSVLogger(tmp_path, name="", version="")
    fit = trainer(logger=logger, max_epochs=3, limit_val_batches=0, log_every_n_steps=1)
    fit.fit(model, loader(images, labels, 4))

    right = [(p == labels).sum().item() for p in torch.cat(predictions).split(10)]
    batches = zip(predictions, labels.split(4) * 3, strict=True)
    per_batch = [(p == y).float().mean().item() for p, y in batches]
    with open(Path(logger.log_dir) / "metrics.csv") as file:
        logged = [float(r["train/acc"]) for r in csv.DictReader(file) if r["train/acc"]]
    assert logged == pytest.approx([r / 10 for r in right])
    assert len(set(right)) > 1  # the net learns: the epochs differ
    assert logged[0] != pytest.approx(sum(per_batch[:3]) / 3)  # 1/10, not (1/4 + 0 + 0) / 3


def test_the_train_accuracy_costs_five_tensor_ops_per_batch(tmp_path):
    """Each training batch's accuracy update is argmax, compare, sum and two adds to the
    epoch's counts (torchmetrics' MulticlassAccuracy took 15, a kernel launch each on a
    GPU and ~0.12 ms of a 7 ms LeNet-5 step on a CPU); what it computes is the test above."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    images, labels = torch.randn(12, 3, 4, 4), torch.randint(0, 10, (12,))
    model = Classifier(net=net, optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
    counts: list[int] = []
    update = model.train_acc.update

    def counted(*args):
        with OpCount() as count:
            update(*args)
        counts.append(count.ops)

    model.train_acc.update = counted
    trainer(max_epochs=1, limit_val_batches=0).fit(model, loader(images, labels, 4))
    assert counts == [5, 5, 5]


# ---- gradient clipping -----------------------------------------------------------------


BY_VALUE = {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"}


@pytest.mark.parametrize(
    "clip", [{}, BY_VALUE, {"gradient_clip_val": 0.05}], ids=["none", "value", "norm"]
)
def test_trainer_gradient_clipping_is_applied_to_the_step(clip):
    """One SGD step (lr 1, no momentum) moves the weights by exactly the clipped gradient:
    elementwise clamp for "value", a rescale to norm <= val over all parameters for
    "norm" (Lightning's default algorithm), nothing without a clip value."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    images, labels = torch.randn(4, 3, 4, 4), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in net.parameters()]
    loss = F.cross_entropy(net(images), labels)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    if clip.get("gradient_clip_algorithm") == "value":
        grads = [g.clamp(-0.01, 0.01) for g in grads]
    elif clip:
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        assert norm > 0.05  # the clip changes something
        grads = [g * (0.05 / (norm + 1e-6)) for g in grads]
    model = Classifier(net=net, optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    trainer(max_steps=1, limit_val_batches=0, **clip).fit(model, loader(images, labels, 4))
    for start, grad, after in zip(before, grads, net.parameters(), strict=True):
        torch.testing.assert_close(after.detach(), start - grad)


# ---- channels_last ------------------------------------------------------------------------


class KeepChannelsLastAtTrainStart(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        net = pl_module.net
        self.conv_weights = [p for p in net.parameters() if p.ndim == 4]
        self.all_channels_last = all(is_channels_last(p) for p in self.conv_weights)
        optimized = [p for group in trainer.optimizers[0].param_groups for p in group["params"]]
        self.same_params = sorted(map(id, optimized)) == sorted(map(id, net.parameters()))


def test_channels_last_converts_before_the_optimizer_and_changes_no_value(tmp_path):
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    model = Classifier(
        net=LeNet5(), optimizer=lambda p: torch.optim.SGD(p, lr=0.1), channels_last=True
    )
    start = KeepChannelsLastAtTrainStart()
    fit = trainer(callbacks=[start], max_steps=2, limit_val_batches=1)
    fit.fit(model, loader(images, labels, 4), loader(images, labels, 4))

    assert len(start.conv_weights) == 2 and start.all_channels_last and start.same_params
    assert all(is_channels_last(p) for p in model.net.parameters() if p.ndim == 4)

    # A checkpoint saved with channels_last loads into a model without it: same values.
    path = tmp_path / "channels_last.ckpt"
    fit.save_checkpoint(path)
    plain = Classifier(net=LeNet5())
    plain.load_state_dict(torch.load(path, weights_only=False)["state_dict"])
    assert not any(is_channels_last(p) for p in plain.parameters())
    trained = model.state_dict()
    assert all(torch.equal(value, trained[key]) for key, value in plain.state_dict().items())
    # The same outputs; the model's input is converted to channels_last in forward.
    model.eval(), plain.eval()
    inputs = []
    model.net.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
    with torch.no_grad():
        torch.testing.assert_close(model(images), plain(images))
    assert is_channels_last(inputs[0]) and torch.equal(inputs[0], images)

    # And back: loading plain values into converted parameters keeps them channels_last.
    again = Classifier(net=LeNet5(), channels_last=True)
    again.configure_model()
    again.load_state_dict(plain.state_dict())
    assert all(is_channels_last(p) for p in again.net.parameters() if p.ndim == 4)


# ---- compile ------------------------------------------------------------------------------


def test_compile_once_keeps_state_dict_keys_and_outputs(tmp_path, monkeypatch):
    compiled = []
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append(fn) or compile_(fn))

    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 4, 4), torch.randint(0, 10, (8,))
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    model = Classifier(net=net, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), compile=True)
    fit = trainer(max_steps=2, limit_val_batches=1)
    fit.fit(model, loader(images, labels, 4), loader(images, labels, 4))
    fit.validate(model, loader(images, labels, 4))  # configure_model again: no recompile
    assert len(compiled) == 1

    path = tmp_path / "compiled.ckpt"
    fit.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)["state_dict"]
    plain = Classifier(net=nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10)))
    assert list(saved) == list(plain.state_dict()) == ["net.1.weight", "net.1.bias"]
    plain.load_state_dict(saved)
    with torch.no_grad():
        torch.testing.assert_close(model(images), plain(images))


# ---- the command line ---------------------------------------------------------------------


def test_cli_fit_with_tta_flip_and_channels_last_logs_the_tta_accuracy(data_dir, tmp_path):
    args = ["--trainer.max_epochs", "1", "--model.tta_flip", "true"]
    args += ["--model.channels_last", "true"]
    fit = run(["fit", "--config", LENET, *quick(data_dir, tmp_path, *args)])
    assert all(is_channels_last(p) for p in fit.model.net.parameters() if p.ndim == 4)
    last = Path(fit.trainer.checkpoint_callback.dirpath) / "last.ckpt"
    saved = load(last)["hyper_parameters"]
    assert (saved["tta_flip"], saved["channels_last"], saved["compile"]) == (True, True, False)

    # The checkpoint loads into a model without channels_last, with the same values.
    restored = Classifier.load_from_checkpoint(last, channels_last=False)
    trained = fit.model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in restored.state_dict().items())

    # The 20 validation images (one batch), normalised as the model saw them.
    datamodule = fit.datamodule
    (batch,) = list(datamodule.val_dataloader())
    images, labels = datamodule.on_after_batch_transfer(batch, 0)
    logits = tta_by_hand(restored.net, images)
    metrics = fit.trainer.callback_metrics
    assert float(metrics["val/acc"]) == pytest.approx((logits.argmax(1) == labels).sum() / 20)
    assert float(metrics["val/loss"]) == pytest.approx(float(F.cross_entropy(logits, labels)))
