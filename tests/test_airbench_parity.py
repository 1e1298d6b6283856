"""configs/airbench94.yaml's optimizer, schedule and loss take the steps of
airbench94_muon.py's training loop: the same narrow net and batches (random images, no
augmentation), through Lightning against the script's loop written out here.

- One step, Newton-Schulz in bfloat16 on both sides (the script's dtype; the recipe's
  Muon with ``ns_dtype: bfloat16``): the SGD groups and the batch-norm statistics end
  bit for bit equal; the filters to within 0.02 x lr. The two bfloat16 iterations round
  in another order: on random 16x216, 16x144 and 64x576 matrices their outputs (entries
  up to 0.27) differed by up to 0.0083, each 0.002-0.008 from float64 (here 2026-12-06);
  on this net's first step the filters differ by up to 0.0033 = 0.0137 x lr.
- Four steps (two epochs of two batches: the lr falls as L403), Newton-Schulz in float32
  on both sides (``ns_dtype: float32``, what ``auto`` picks on a CPU without bfloat16
  instructions): every parameter and statistic within 1e-4. The two Muons round differently
  (timm's momentum is a lerp, a buffer 0.4x the script's), by about 1e-7 a step; the
  whitening bias's gradient, summed over every pixel, and the first conv's
  Newton-Schulz, which lifts its matrix's weak directions, carry that to 6e-6 and 5e-5
  after four steps, everything else stays within 5e-7 (2026-12-06; ``eps`` 0 on both
  sides changes none of it).

The script's side: its ``Muon`` (with ``zeropower_via_newtonschulz5``) from the CPU port,
``scripts/airbench94_cpu.py`` (the original's code, its Newton-Schulz dtype a parameter),
and its optimizer set-up and loop written out below from airbench94_muon.py (github
KellerJordan/cifar10-airbench, MIT licence), without ``torch.compile``, the timing, the
augmentation and the evaluation, its step counts those of these short runs
(``whiten_bias_train_steps`` 3 epochs of the run's batches, as the config's ``schedule:``,
which then ends after the run: a warning).
"""

from __future__ import annotations

import copy

import lightning as L
import torch
from airbench_recipe import TINY, recipe_config
from cli_run import quick
from script_module import script_module
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from groupwise.cli import run

STEPS = 4
ScriptMuon = script_module("airbench94_cpu").Muon  # airbench94_muon.py L56-L85


def script_training(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    per_epoch: int,
    dtype: torch.dtype,
) -> None:
    """airbench94_muon.py's ``main`` L342-L409, its set-up and training loop, over
    ``batches`` (``per_epoch`` an epoch), Newton-Schulz in ``dtype``."""
    batch_size, bias_lr, head_lr = 2000, 0.053, 0.67
    wd = 2e-6 * batch_size
    total_train_steps = len(batches)
    whiten_bias_train_steps = 3 * per_epoch
    filter_params = [p for p in model.parameters() if len(p.shape) == 4 and p.requires_grad]
    norm_biases = [p for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    param_configs = [
        dict(params=[model.whiten.bias], lr=bias_lr, weight_decay=wd / bias_lr),
        dict(params=norm_biases, lr=bias_lr, weight_decay=wd / bias_lr),
        dict(params=[model.head.weight], lr=head_lr, weight_decay=wd / head_lr),
    ]
    optimizer1 = torch.optim.SGD(param_configs, momentum=0.85, nesterov=True)
    optimizer2 = ScriptMuon(filter_params, lr=0.24, momentum=0.6, nesterov=True, ns_dtype=dtype)
    optimizers = [optimizer1, optimizer2]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    model.train()
    for step, (inputs, labels) in enumerate(batches):
        outputs = model(inputs)
        F.cross_entropy(outputs, labels, label_smoothing=0.2, reduction="sum").backward()
        for group in optimizer1.param_groups[:1]:
            group["lr"] = group["initial_lr"] * (1 - step / whiten_bias_train_steps)
        for group in optimizer1.param_groups[1:] + optimizer2.param_groups:
            group["lr"] = group["initial_lr"] * (1 - step / total_train_steps)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)


def fit_both(data_dir, tmp_path, steps: int, dtype: torch.dtype, ns_dtype: str):
    """The recipe's model fitted for ``steps`` steps by Lightning and the script's loop on a
    copy of its net (Newton-Schulz in ``dtype``, the recipe's Muon's in ``ns_dtype``); their
    nets' state dicts, after checking that every group trained."""
    config = recipe_config(tmp_path / "airbench.yaml", muon={"ns_dtype": ns_dtype})
    args = quick(data_dir, tmp_path, *TINY, "--model.channels_last", "false")
    model = run(["--config", str(config), *args], run=False).model
    script_net = copy.deepcopy(model.net)
    start = copy.deepcopy(model.net.state_dict())
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2 * 16, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 10, (2 * 16,), generator=generator)
    batch = 16 if steps > 1 else 32
    loader = DataLoader(TensorDataset(images, labels), batch_size=batch)
    trainer = L.Trainer(
        max_epochs=max(steps // 2, 1),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=loader)
    assert trainer.global_step == steps
    batches = [*zip(images.split(batch), labels.split(batch), strict=True)]
    script_training(script_net, batches * (steps // len(batches)), len(batches), dtype)
    ours, theirs = model.net.state_dict(), script_net.state_dict()
    assert list(ours) == list(theirs)
    for name in ("layers.2.conv1.weight", "whiten.bias", "head.weight", "layers.1.norm1.bias"):
        assert not torch.allclose(start[name], ours[name]), name  # every group trained
    return ours, theirs


def test_one_step_of_the_recipe_is_the_scripts(data_dir, tmp_path):
    ours, theirs = fit_both(data_dir, tmp_path, 1, torch.bfloat16, "bfloat16")
    for name, value in ours.items():
        if name.endswith("weight") and value.ndim == 4 and name != "whiten.weight":
            # the two bfloat16 iterations' rounding (module docstring), times the lr
            torch.testing.assert_close(value, theirs[name], rtol=0, atol=0.02 * 0.24)
        else:
            torch.testing.assert_close(value, theirs[name], rtol=0, atol=0, msg=name)


def test_four_steps_of_the_recipe_are_the_scripts_in_float32(data_dir, tmp_path):
    ours, theirs = fit_both(data_dir, tmp_path, STEPS, torch.float32, "float32")
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], rtol=1e-4, atol=1e-4, msg=name)
