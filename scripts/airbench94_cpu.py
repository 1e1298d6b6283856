"""airbench94_muon.py ported to the CPU: the hand-written loop groupwise's recipe is set against.

Run from the repository root (one run takes 30-90 minutes on a loaded 2-core CPU):

    PYTHONPATH=src .venv/bin/python scripts/airbench94_cpu.py \\
        --data-dir data/cifar10-jpeg --seed 0 [--val-size 10000] [--out FILE.json]
    PYTHONPATH=src .venv/bin/python scripts/airbench94_cpu.py --count-flops

The original is Keller Jordan's ``airbench94_muon.py``
(https://github.com/KellerJordan/cifar10-airbench/blob/master/airbench94_muon.py, commit
f1c599c4af24aca803e3e65a6a7e52a502e09d0e; 94.01% mean test accuracy over 200 runs in 2.59 s on
an A100), itself descended from https://github.com/tysam-code/hlb-CIFAR10. It is used here
under its MIT licence: "Copyright (c) 2024 Keller Jordan. Permission is hereby granted, free of
charge, to any person obtaining a copy of this software and associated documentation files
(the "Software"), to deal in the Software without restriction, including without limitation
the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of
the Software, and to permit persons to whom the Software is furnished to do so, subject to the
following conditions: The above copyright notice and this permission notice shall be included
in all copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED "AS IS",
WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES
OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN
ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE
OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."

Unchanged: the net (2x2 whitening conv from the patch covariance of the first 5,000 training
images, three conv groups of widths 64/256/256 with batch norm of stats momentum 0.6 and
frozen weights, GELU, max pooling, a bias-free head scaled by 1/256), Muon (lr 0.24, momentum
0.6, Nesterov, weight normalisation, 3 quintic Newton-Schulz steps) on the conv filters, fused
Nesterov SGD (momentum 0.85) on the whitening bias (lr 0.053), the norm biases (0.053) and the
head (0.67), weight decay 2e-6 x batch size / lr, the linear decays (the whitening bias over 3
epochs, then frozen; the rest over 8), the summed label-smoothed (0.2) cross-entropy, batch
2000 with the last partial batch dropped, the data order and augmentation (one random flip per
image drawn in epoch 0, every image flipped in odd epochs, random translation by up to 2
pixels of the reflect-padded images, a fresh ``randperm`` each epoch), test-time augmentation
level 2 (mirror and 1-pixel translations), the printed table, and what is timed: the whitening
init, each epoch's training and the final TTA evaluation (the per-epoch evaluation and loading
the files are not; the record's ``wall_seconds`` adds the per-epoch evaluation, which a
``groupwise fit`` that validates every epoch does too).

Changed, each because of the CPU or of the side-by-side comparison with groupwise:

1. float32 everywhere (the original keeps the net in float16 and the batch norms in float32):
   this CPU has no fast float16. ``--autocast`` (used by ``scripts/bench_gpu.py``) runs the
   forward pass in bfloat16 or float16 autocast instead.
2. Newton-Schulz in float32 (``--ns-dtype``, default ``auto``: bfloat16 where the device
   multiplies it in hardware, a recent GPU or a CPU with AVX512-BF16 or AMX, float32
   otherwise, as groupwise's ``ns_dtype: auto``); the original runs it in bfloat16, which a
   CPU with only AVX2 emulates at ~20x the cost (issue 22, section 3).
3. No ``torch.compile`` (``--compile`` turns it on for the net and the Newton-Schulz
   function, with the original's ``max-autotune`` mode); the original compiles both and runs
   a warm-up run first. ``channels_last`` as the original and groupwise's recipe
   (``--no-channels-last`` for the default layout; faster on this CPU too).
4. ``time.perf_counter`` in place of CUDA events (the same regions are timed).
5. The data: the original reads the official train (50,000) and test (10,000) sets with
   torchvision. Here the training images are read with groupwise's own reader and decode
   cache (``groupwise.data.cifar10_files.load_split``) and split as the DataModule splits them
   (``seeded_permutation(50000, --split-seed)``, the first ``--val-size`` held out), so the
   10,000 images evaluated on are the ones a ``groupwise fit`` with ``data.val_size: 10000``
   and ``data.seed`` = ``--split-seed`` validates on; the net trains on the other 40,000 (20
   steps per epoch, 160 in all, the whitening bias's schedule 60). The training images are
   held in the order of a second seeded permutation, so the whitening's first 5,000 are a
   uniform sample (the image-folder files come grouped by class; the official batches come
   shuffled), the same images groupwise's recipe whitens from (``split_indices``).
6. One run per process, seeded with ``torch.manual_seed(--seed)``; the original runs 200
   unseeded runs after a warm-up run in one process.
7. Added: ``--epochs``, ``--batch-size`` and ``--limit-steps`` for quick checks (the schedule
   keeps the length the epochs and batch size give; ``--limit-steps`` only stops early), a
   JSON record of the run (``--out``), ``--count-flops``, and ``CifarNet(widths=...)`` (the
   original's widths by default; narrow ones in ``bench_gpu.py``'s dry run).
8. Memory only: the loader frees its normalised and pre-flipped copies of the training images
   once the padded copy is made (never read again when translating; -1 GB of ~7 GB at batch
   2000 on 40,000 images).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch import nn

from groupwise.errors import ConfigError, exit_on_user_error

#############################################
#               Muon optimizer              #
#############################################


def zeropower_via_newtonschulz5(
    G: torch.Tensor, steps: int = 3, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """
    Newton-Schulz iteration to compute the zeroth power / orthogonalization of G. We opt to use a
    quintic iteration whose coefficients are selected to maximize the slope at zero. For the
    purpose of minimizing steps, it turns out to be empirically effective to keep increasing the
    slope at zero even beyond the point where the iteration no longer converges all the way to
    one everywhere on the interval. This iteration therefore does not produce UV^T but rather
    something like US'V^T where S' is diagonal with S_{ii}' \\sim Uniform(0.5, 1.5), which turns
    out not to hurt model performance at all relative to UV^T, where USV^T = G is the SVD.

    (Port: the iteration's ``dtype`` is a parameter; the original always uses bfloat16.)
    """
    assert len(G.shape) == 2
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.to(dtype, copy=True)  # a copy, as the original's G.bfloat16() of a float16 G
    X /= X.norm() + eps  # ensure top singular value <= 1
    if G.size(0) > G.size(1):
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if G.size(0) > G.size(1):
        X = X.T
    return X


class Muon(torch.optim.Optimizer):
    """The original's Muon; ``ns_dtype`` and ``compile_options`` are the port's (changes 2
    and 3): the Newton-Schulz function is ``torch.compile``d with these options (the original:
    always, with none) or not at all (None)."""

    def __init__(
        self,
        params: Any,
        lr: float = 1e-3,
        momentum: float = 0,
        nesterov: bool = False,
        ns_dtype: torch.dtype = torch.bfloat16,
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum requires a momentum")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        self.zeropower = zeropower_via_newtonschulz5
        if compile_options is not None:
            self.zeropower = torch.compile(zeropower_via_newtonschulz5, **compile_options)

    def step(self) -> None:  # type: ignore[override]
        for group in self.param_groups:
            lr = group["lr"]
            momentum = group["momentum"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                state = self.state[p]

                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(g)
                g = g.add(buf, alpha=momentum) if group["nesterov"] else buf

                p.data.mul_(len(p.data) ** 0.5 / p.data.norm())  # normalize the weight
                update = self.zeropower(g.reshape(len(g), -1), dtype=self.ns_dtype).view(g.shape)
                p.data.add_(update, alpha=-lr)  # take a step


#############################################
#                DataLoader                 #
#############################################

CIFAR_MEAN = torch.tensor((0.4914, 0.4822, 0.4465))
CIFAR_STD = torch.tensor((0.2470, 0.2435, 0.2616))


def batch_flip_lr(inputs: torch.Tensor) -> torch.Tensor:
    flip_mask = (torch.rand(len(inputs), device=inputs.device) < 0.5).view(-1, 1, 1, 1)
    return torch.where(flip_mask, inputs.flip(-1), inputs)


def batch_crop(images: torch.Tensor, crop_size: int) -> torch.Tensor:
    r = (images.size(-1) - crop_size) // 2
    shifts = torch.randint(-r, r + 1, size=(len(images), 2), device=images.device)
    images_out = torch.empty(
        (len(images), 3, crop_size, crop_size), device=images.device, dtype=images.dtype
    )
    # The two cropping methods in this if-else produce equivalent results, but the second is
    # faster for r > 2.
    if r <= 2:
        for sy in range(-r, r + 1):
            for sx in range(-r, r + 1):
                mask = (shifts[:, 0] == sy) & (shifts[:, 1] == sx)
                images_out[mask] = images[
                    mask, :, r + sy : r + sy + crop_size, r + sx : r + sx + crop_size
                ]
    else:
        images_tmp = torch.empty(
            (len(images), 3, crop_size, crop_size + 2 * r),
            device=images.device,
            dtype=images.dtype,
        )
        for s in range(-r, r + 1):
            mask = shifts[:, 0] == s
            images_tmp[mask] = images[mask, :, r + s : r + s + crop_size, :]
        for s in range(-r, r + 1):
            mask = shifts[:, 1] == s
            images_out[mask] = images_tmp[mask, :, :, r + s : r + s + crop_size]
    return images_out


class CifarLoader:
    """The original's loader over images already in memory (change 5): ``images`` uint8
    (N, 3, 32, 32) and ``labels`` int64 (N,), moved to ``device`` as ``dtype`` in [0, 1]."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        train: bool = True,
        batch_size: int = 500,
        aug: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
    ) -> None:
        self.labels = labels.to(device)
        # It's faster to load+process uint8 data than to load preprocessed fp16 data
        self.images = images.to(device).to(dtype) / 255
        if channels_last:
            self.images = self.images.to(memory_format=torch.channels_last)

        self.normalize = T.Normalize(CIFAR_MEAN, CIFAR_STD)
        self.proc_images: dict[str, torch.Tensor] = {}  # results of image processing in epoch 0
        self.epoch = 0

        self.aug = aug or {}
        for k in self.aug:
            assert k in ["flip", "translate"], f"Unrecognized key: {k}"

        self.batch_size = batch_size
        self.drop_last = train
        self.shuffle = train

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.images) // self.batch_size
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        if self.epoch == 0:
            images = self.proc_images["norm"] = self.normalize(self.images)
            # Pre-flip images in order to do every-other epoch flipping scheme
            if self.aug.get("flip", False):
                images = self.proc_images["flip"] = batch_flip_lr(images)
            # Pre-pad images to save time when doing random translation
            pad = self.aug.get("translate", 0)
            if pad > 0:
                self.proc_images["pad"] = F.pad(images, (pad,) * 4, "reflect")
                # Port: the others are not read again when translating; freed (change 8)
                del self.proc_images["norm"]
                self.proc_images.pop("flip", None)

        if self.aug.get("translate", 0) > 0:
            images = batch_crop(self.proc_images["pad"], self.images.shape[-2])
        elif self.aug.get("flip", False):
            images = self.proc_images["flip"]
        else:
            images = self.proc_images["norm"]
        # Flip all images together every other epoch. This increases diversity relative to
        # random flipping
        if self.aug.get("flip", False) and self.epoch % 2 == 1:
            images = images.flip(-1)

        self.epoch += 1

        indices = (torch.randperm if self.shuffle else torch.arange)(
            len(images), device=images.device
        )
        for i in range(len(self)):
            idxs = indices[i * self.batch_size : (i + 1) * self.batch_size]
            yield (images[idxs], self.labels[idxs])


#############################################
#            Network Definition             #
#############################################


# note the use of low BatchNorm stats momentum
class BatchNorm(nn.BatchNorm2d):
    def __init__(self, num_features: int, momentum: float = 0.6, eps: float = 1e-12) -> None:
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False
        # Note that PyTorch already initializes the weights to one and bias to zero


class Conv(nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        torch.nn.init.dirac_(w[: w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = Conv(channels_in, channels_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = BatchNorm(channels_out)
        self.conv2 = Conv(channels_out, channels_out)
        self.norm2 = BatchNorm(channels_out)
        self.activ = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.pool(x)
        x = self.norm1(x)
        x = self.activ(x)
        x = self.conv2(x)
        x = self.norm2(x)
        x = self.activ(x)
        return x


class CifarNet(nn.Module):
    """The original's net, in float32 (change 1: no ``.half()`` of the non-norm modules).
    ``widths``: the original's (64, 256, 256) unless given (change 7; the GPU benchmark's
    dry run uses narrow ones)."""

    def __init__(self, widths: dict[str, int] | None = None) -> None:
        super().__init__()
        widths = widths or dict(block1=64, block2=256, block3=256)
        whiten_kernel_size = 2
        whiten_width = 2 * 3 * whiten_kernel_size**2
        self.whiten = nn.Conv2d(3, whiten_width, whiten_kernel_size, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.layers = nn.Sequential(
            nn.GELU(),
            ConvGroup(whiten_width, widths["block1"]),
            ConvGroup(widths["block1"], widths["block2"]),
            ConvGroup(widths["block2"], widths["block3"]),
            nn.MaxPool2d(3),
        )
        self.head = nn.Linear(widths["block3"], 10, bias=False)

    def reset(self) -> None:
        for m in self.modules():
            if type(m) in (nn.Conv2d, Conv, BatchNorm, nn.Linear):
                m.reset_parameters()
        w = self.head.weight.data
        w *= 1 / w.std()

    def init_whiten(self, train_images: torch.Tensor, eps: float = 5e-4) -> None:
        c, (h, w) = train_images.shape[1], self.whiten.weight.shape[2:]
        patches = (
            train_images.unfold(2, h, 1).unfold(3, w, 1).transpose(1, 3).reshape(-1, c, h, w)
        ).float()
        patches_flat = patches.view(len(patches), -1)
        est_patch_covariance = (patches_flat.T @ patches_flat) / len(patches_flat)
        eigenvalues, eigenvectors = torch.linalg.eigh(est_patch_covariance, UPLO="U")
        eigenvectors_scaled = eigenvectors.T.reshape(-1, c, h, w) / torch.sqrt(
            eigenvalues.view(-1, 1, 1, 1) + eps
        )
        self.whiten.weight.data[:] = torch.cat((eigenvectors_scaled, -eigenvectors_scaled))

    def forward(self, x: torch.Tensor, whiten_bias_grad: bool = True) -> torch.Tensor:
        b = self.whiten.bias
        x = F.conv2d(x, self.whiten.weight, b if whiten_bias_grad else b.detach())
        x = self.layers(x)
        x = x.view(len(x), -1)
        return self.head(x) / x.size(-1)


############################################
#                 Logging                  #
############################################


def print_columns(columns_list: Sequence[str], is_head=False, is_final_entry=False) -> None:
    print_string = ""
    for col in columns_list:
        print_string += f"|  {col}  "
    print_string += "|"
    if is_head:
        print("-" * len(print_string))
    print(print_string, flush=True)
    if is_head or is_final_entry:
        print("-" * len(print_string), flush=True)


logging_columns_list = ["run   ", "epoch", "train_acc", "val_acc", "tta_val_acc", "time_seconds"]


def print_training_details(variables: dict[str, Any], is_final_entry: bool) -> None:
    formatted = []
    for col in logging_columns_list:
        var = variables.get(col.strip())
        if type(var) in (int, str):
            res = str(var)
        elif type(var) is float:
            res = f"{var:0.4f}"
        else:
            assert var is None
            res = ""
        formatted.append(res.rjust(len(col)))
    print_columns(formatted, is_final_entry=is_final_entry)


############################################
#               Evaluation                 #
############################################


def infer(
    model: nn.Module, loader: CifarLoader, tta_level: int = 0, autocast: torch.dtype | None = None
) -> torch.Tensor:
    # Test-time augmentation strategy (for tta_level=2):
    # 1. Flip/mirror the image left-to-right (50% of the time).
    # 2. Translate the image by one pixel either up-and-left or down-and-right (50% of the
    #    time, i.e. both happen 25% of the time).
    #
    # This creates 6 views per image (left/right times the two translations and
    # no-translation), which we evaluate and then weight according to the given probabilities.

    def infer_basic(inputs, net):
        return net(inputs).clone()

    def infer_mirror(inputs, net):
        return 0.5 * net(inputs) + 0.5 * net(inputs.flip(-1))

    def infer_mirror_translate(inputs, net):
        logits = infer_mirror(inputs, net)
        pad = 1
        padded_inputs = F.pad(inputs, (pad,) * 4, "reflect")
        inputs_translate_list = [
            padded_inputs[:, :, 0:32, 0:32],
            padded_inputs[:, :, 2:34, 2:34],
        ]
        logits_translate_list = [
            infer_mirror(inputs_translate, net) for inputs_translate in inputs_translate_list
        ]
        logits_translate = torch.stack(logits_translate_list).mean(0)
        return 0.5 * logits + 0.5 * logits_translate

    model.eval()
    test_images = loader.normalize(loader.images)
    infer_fn = [infer_basic, infer_mirror, infer_mirror_translate][tta_level]
    device_type = loader.images.device.type
    with torch.no_grad(), torch.autocast(device_type, autocast, enabled=autocast is not None):
        return torch.cat([infer_fn(inputs, model) for inputs in test_images.split(2000)])


def evaluate(
    model: nn.Module, loader: CifarLoader, tta_level: int = 0, autocast: torch.dtype | None = None
) -> float:
    logits = infer(model, loader, tta_level, autocast)
    return (logits.argmax(1) == loader.labels).float().mean().item()


############################################
#                 Timing                   #
############################################


class PerfCounterTimer:
    """Sums the seconds between ``start()`` and ``stop()`` (change 4: ``time.perf_counter``
    in place of the original's CUDA events). ``stop`` returns the interval."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> float:
        interval = time.perf_counter() - self._started
        self.seconds += interval
        return interval


class CudaEventTimer(PerfCounterTimer):
    """The original's timer: CUDA events around each region, synchronised at its end."""

    def __init__(self) -> None:
        super().__init__()
        self.starter = torch.cuda.Event(enable_timing=True)
        self.ender = torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        self.starter.record()

    def stop(self) -> float:
        self.ender.record()
        torch.cuda.synchronize()
        interval = 1e-3 * self.starter.elapsed_time(self.ender)
        self.seconds += interval
        return interval


############################################
#                Training                  #
############################################


def train(
    run: int | str,
    model: CifarNet,
    train_loader: CifarLoader,
    test_loader: CifarLoader,
    *,
    epochs: int = 8,
    limit_steps: int | None = None,
    ns_dtype: torch.dtype = torch.float32,
    compile_options: dict[str, Any] | None = None,
    autocast: torch.dtype | None = None,
    timer: PerfCounterTimer | None = None,
    print_table: bool = True,
) -> dict[str, Any]:
    """One run of the original's ``main(run, model)``; returns what the JSON record holds.

    ``compile_options``: ``torch.compile`` options of Muon's Newton-Schulz function (None: not
    compiled); ``autocast``: the forward passes' autocast dtype (None: off); ``timer``: a
    :class:`PerfCounterTimer` (the default) or a :class:`CudaEventTimer`."""
    batch_size = train_loader.batch_size
    bias_lr = 0.053
    head_lr = 0.67
    wd = 2e-6 * batch_size

    if len(train_loader) == 0:
        raise ConfigError(
            f"batch size {batch_size} is larger than the {len(train_loader.images)} training"
            " images: no full batch to train on (the last partial batch is dropped)"
        )
    total_train_steps = math.ceil(epochs * len(train_loader))
    whiten_bias_train_steps = math.ceil(3 * len(train_loader))

    # Create optimizers and learning rate schedulers
    filter_params = [p for p in model.parameters() if len(p.shape) == 4 and p.requires_grad]
    norm_biases = [p for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    param_configs = [
        dict(params=[model.whiten.bias], lr=bias_lr, weight_decay=wd / bias_lr),
        dict(params=norm_biases, lr=bias_lr, weight_decay=wd / bias_lr),
        dict(params=[model.head.weight], lr=head_lr, weight_decay=wd / head_lr),
    ]
    optimizer1 = torch.optim.SGD(param_configs, momentum=0.85, nesterov=True, fused=True)
    optimizer2 = Muon(
        filter_params,
        lr=0.24,
        momentum=0.6,
        nesterov=True,
        ns_dtype=ns_dtype,
        compile_options=compile_options,
    )
    optimizers = [optimizer1, optimizer2]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]

    timer = timer or PerfCounterTimer()
    device_type = train_loader.images.device.type
    model.reset()
    step = 0

    # Initialize the whitening layer using training images
    wall_start = time.perf_counter()  # port: the wall time, per-epoch evaluation included
    timer.start()
    train_images = train_loader.normalize(train_loader.images[:5000])
    model.init_whiten(train_images)
    whiten_seconds = timer.stop()

    epoch_seconds: list[float] = []
    eval_seconds: list[float] = []  # the untimed per-epoch evaluations (perf_counter)
    val_accs: list[float] = []
    stop_at = total_train_steps if limit_steps is None else min(limit_steps, total_train_steps)
    for epoch in range(math.ceil(total_train_steps / len(train_loader))):
        if step >= stop_at:
            break

        ####################
        #     Training     #
        ####################

        timer.start()
        model.train()
        for inputs, labels in train_loader:
            with torch.autocast(device_type, autocast, enabled=autocast is not None):
                outputs = model(inputs, whiten_bias_grad=(step < whiten_bias_train_steps))
                loss = F.cross_entropy(outputs, labels, label_smoothing=0.2, reduction="sum")
            loss.backward()
            for group in optimizer1.param_groups[:1]:
                group["lr"] = group["initial_lr"] * (1 - step / whiten_bias_train_steps)
            for group in optimizer1.param_groups[1:] + optimizer2.param_groups:
                group["lr"] = group["initial_lr"] * (1 - step / total_train_steps)
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)
            step += 1
            if step >= stop_at:
                break
        epoch_seconds.append(timer.stop())

        ####################
        #    Evaluation    #
        ####################

        # Save the accuracy and loss from the last training batch of the epoch
        train_acc = (outputs.detach().argmax(1) == labels).float().mean().item()
        eval_start = time.perf_counter()
        val_acc = evaluate(model, test_loader, tta_level=0, autocast=autocast)
        eval_seconds.append(time.perf_counter() - eval_start)
        val_accs.append(val_acc)
        if print_table:
            print_training_details(
                dict(run=run, epoch=epoch, train_acc=train_acc, val_acc=val_acc,
                     time_seconds=timer.seconds),
                is_final_entry=False,
            )  # fmt: skip
        run = None  # Only print the run number once

    ####################
    #  TTA Evaluation  #
    ####################

    timer.start()
    tta_val_acc = evaluate(model, test_loader, tta_level=2, autocast=autocast)
    tta_seconds = timer.stop()
    wall_seconds = time.perf_counter() - wall_start
    if print_table:
        print_training_details(
            dict(run=run, epoch="eval", tta_val_acc=tta_val_acc, time_seconds=timer.seconds),
            is_final_entry=True,
        )

    return {
        "acc": val_accs[-1] if val_accs else None,
        "tta_acc": tta_val_acc,
        "val_acc_per_epoch": val_accs,
        "steps": step,
        "total_train_steps": total_train_steps,
        "whiten_bias_train_steps": whiten_bias_train_steps,
        "time_seconds": timer.seconds,
        "whiten_seconds": whiten_seconds,
        "epoch_seconds": epoch_seconds,
        "tta_seconds": tta_seconds,
        "eval_seconds": eval_seconds,
        "wall_seconds": wall_seconds,
    }


############################################
#        Data: groupwise's reader           #
############################################


def split_indices(n: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) indices into the training split, as ``CIFAR10DataModule`` holds them out:
    ``seeded_permutation(n, seed)``, the first ``val_size`` for validation, the rest (sorted)
    for training. The training indices come in the order of ``seeded_permutation(n - val_size,
    seed)`` over the sorted ones, so the first 5,000, which the whitening is computed from
    (the original's ``train_loader.images[:5000]``), are the DataModule's
    ``train_sample(5000)``, the images groupwise's ``WhiteningInit`` uses: a uniform sample
    (image-folder files come grouped by class; the official batches come shuffled)."""
    from groupwise.data.cifar10 import seeded_permutation

    if not 0 <= val_size < n:
        raise ConfigError(f"val_size must be in [0, {n}) for {n} training images, got {val_size}")
    perm = seeded_permutation(n, split_seed)
    train = perm[val_size:].sort().values
    return train[seeded_permutation(len(train), split_seed)], perm[:val_size]


def load_data(
    data_dir: str | os.PathLike, val_size: int, split_seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train images, train labels, validation images, validation labels (uint8, int64) of the
    training split in ``data_dir``, read with groupwise's reader and decode cache."""
    from groupwise.data.cifar10_files import load_split

    split = load_split(data_dir, "train", cache=True)
    train_idx, val_idx = split_indices(len(split.labels), val_size, split_seed)
    return (
        split.images[train_idx],
        split.labels[train_idx],
        split.images[val_idx],
        split.labels[val_idx],
    )


############################################
#              Machine record              #
############################################

SIMD_FLAG_PREFIXES = ("avx", "amx", "fma", "f16c", "sse4")


def machine_record() -> dict[str, Any]:
    """CPU model, its SIMD flags, what torch dispatches to, threads and torch's version."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = sorted(f for f in value.split() if f.startswith(SIMD_FLAG_PREFIXES))
                break
    except OSError:  # not Linux
        pass
    record = {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "simd_flags": flags,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name()
    return record


def machine_line(record: dict[str, Any]) -> str:
    """One line for a table or a doc: CPU, cores, SIMD flags, torch."""
    line = (
        f"{record['cpu']}, {record['cpu_count']} cores, flags {' '.join(record['simd_flags'])}"
        f" (torch dispatch {record['torch_cpu_capability']}), {record['torch_threads']} threads,"
        f" torch {record['torch']}"
    )
    return line + (f", GPU {record['gpu']}" if "gpu" in record else "")


# the CPU instructions that multiply bfloat16 matrices in hardware, as torch.cpu names them
CPU_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def fast_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware: a GPU of compute
    capability 8.0 or newer, or a CPU with AVX512-BF16, AMX-BF16 or ARM's BF16; elsewhere
    (an AVX2 CPU, or AVX-512 without BF16) bfloat16 is emulated, ~20x float32's time. The
    rule of groupwise's ``ns_dtype: auto`` (``groupwise.optim.muon.auto_ns_dtype`` on
    branch main), so the port and the recipe pick the same dtype."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    capabilities = torch.cpu.get_capabilities()
    return any(capabilities.get(flag) for flag in CPU_BFLOAT16_FLAGS)


NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_ns_dtype(name: str, device: torch.device) -> torch.dtype:
    """The Newton-Schulz dtype for ``--ns-dtype`` (``auto``: by :func:`fast_bfloat16`)."""
    if name == "auto":
        return torch.bfloat16 if fast_bfloat16(device) else torch.float32
    return NS_DTYPES[name]


############################################
#                  FLOPs                   #
############################################


def count_flops(
    n_train: int = 50_000,
    n_eval: int = 10_000,
    batch_size: int = 2000,
    epochs: int = 8,
    device: str = "meta",
) -> dict[str, float]:
    """FLOPs of one run, by part, counted with ``torch.utils.flop_counter.FlopCounterMode``.

    Counted: what ``FlopCounterMode`` counts (matmuls and convolutions, forward and backward;
    no elementwise work, pooling, batch norm, GELU or loss) in one training step forward +
    backward at ``batch_size`` with the whitening bias trained and one without (its
    schedule ends after 3 epochs, and then the first conv's input gradient is not needed),
    times their numbers of steps; Muon's Newton-Schulz matmuls per step; the whitening
    init's patch covariance (``eigh`` is not counted); the per-epoch evaluation (one forward
    per image) and the final TTA level 2 evaluation (6 forwards per image) of ``n_eval``
    images. Shapes only, on the meta device, so nothing is computed.
    """
    from torch.utils.flop_counter import FlopCounterMode

    def flops(work: Callable[[], Any]) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            work()
        return counter.get_total_flops()

    model = CifarNet().to(device)
    images = torch.zeros(batch_size, 3, 32, 32, device=device)
    labels = torch.zeros(batch_size, dtype=torch.int64, device=device)
    filters = [p for p in model.parameters() if len(p.shape) == 4 and p.requires_grad]

    def step(whiten_bias_grad: bool) -> None:
        outputs = model(images, whiten_bias_grad=whiten_bias_grad)
        F.cross_entropy(outputs, labels, label_smoothing=0.2, reduction="sum").backward()
        model.zero_grad(set_to_none=True)

    def newton_schulz() -> None:
        for p in (p.detach() for p in filters):
            zeropower_via_newtonschulz5(p.reshape(len(p), -1), dtype=torch.float32)

    def forward() -> None:
        with torch.no_grad():
            model(images)

    steps_per_epoch = n_train // batch_size
    total_steps = math.ceil(epochs * steps_per_epoch)
    whiten_steps = min(math.ceil(3 * steps_per_epoch), total_steps)
    whiten_images = torch.zeros(min(5000, n_train), 3, 32, 32, device=device)
    eval_batches = n_eval / batch_size
    parts = {
        "train forward+backward": whiten_steps * flops(lambda: step(True))
        + (total_steps - whiten_steps) * flops(lambda: step(False)),
        "Muon Newton-Schulz": total_steps * flops(newton_schulz),
        "whitening init": flops(lambda: model.init_whiten(whiten_images))
        if device != "meta"
        else _covariance_flops(whiten_images.shape, model.whiten.weight.shape),
        "per-epoch evaluation": epochs * eval_batches * flops(forward),
        "final TTA evaluation (6 views)": 6 * eval_batches * flops(forward),
    }
    return parts


def _covariance_flops(images_shape: Sequence[int], weight_shape: Sequence[int]) -> int:
    """FLOPs of ``init_whiten``'s ``patches_flat.T @ patches_flat`` (counted by hand on the
    meta device, where ``eigh`` has no kernel): 2 * patches * dim^2."""
    n, c, height, width = images_shape
    kh, kw = weight_shape[2:]
    patches = n * (height - kh + 1) * (width - kw + 1)
    dim = c * kh * kw
    return 2 * patches * dim * dim


def print_flops(n_train: int, n_eval: int, batch_size: int, epochs: int) -> dict[str, Any]:
    """Print the FLOPs table for ``n_train`` training images against airbench's 0.29 PFLOP."""
    parts = count_flops(n_train, n_eval, batch_size, epochs)
    training = sum(v for k, v in parts.items() if "evaluation" not in k)
    total = sum(parts.values())
    print(
        f"FLOPs of one run: {n_train} training images, {epochs} epochs of batch {batch_size},"
        f" {n_eval} evaluation images (FlopCounterMode: matmuls and convolutions only)"
    )
    for name, value in parts.items():
        print(f"  {name:32s} {value / 1e12:10.3f} TFLOP")
    print(f"  {'training (all but evaluation)':32s} {training / 1e12:10.3f} TFLOP")
    print(f"  {'with evaluation':32s} {total / 1e12:10.3f} TFLOP")
    print(
        f"  airbench94_muon's README: 0.29 PFLOP; training here / 0.29 = {training / 0.29e15:.3f}"
    )
    return {"parts": parts, "training": training, "total": total, "n_train": n_train}


############################################
#                  Main                    #
############################################


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options, on ``parser`` (this script's own, or a benchmark entry point's)."""
    parser.add_argument("--data-dir", default="data/cifar10-jpeg", help="CIFAR-10 data folder")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed of the run")
    parser.add_argument(
        "--split-seed", type=int, default=0,
        help="seed of the held-out split: groupwise's data.seed (default 0)",
    )  # fmt: skip
    parser.add_argument("--val-size", type=int, default=10_000, help="training images held out")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--limit-steps", type=int, default=None, help="stop after N steps")
    parser.add_argument("--ns-dtype", choices=["auto", *NS_DTYPES], default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile net and Muon")
    parser.add_argument(
        "--channels-last", action=argparse.BooleanOptionalAction, default=True,
        help="the net and images in channels_last, as the original (default: on)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="JSON record (default: lightning_logs/...)")
    parser.add_argument("--count-flops", action="store_true", help="print FLOPs; do not train")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse's one-line error (exit 2) for a size below 1."""
    for name in ("epochs", "batch_size", "limit_steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train once (or count FLOPs), print airbench's table and write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    return run(args, argv)


def run(args: argparse.Namespace, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """What ``main`` does once the options are parsed (``argv``: kept in the record)."""
    if args.count_flops:
        result = print_flops(50_000, 10_000, args.batch_size, args.epochs)
        n_train = 50_000 - args.val_size
        if n_train != 50_000:
            print()
            print_flops(n_train, args.val_size, args.batch_size, args.epochs)
        return result

    device = torch.device("cpu")
    ns_dtype = resolve_ns_dtype(args.ns_dtype, device)
    train_images, train_labels, val_images, val_labels = load_data(
        args.data_dir, args.val_size, args.split_seed
    )
    torch.manual_seed(args.seed)
    loader_args = dict(device=device, channels_last=args.channels_last)
    test_loader = CifarLoader(val_images, val_labels, train=False, batch_size=2000, **loader_args)
    train_loader = CifarLoader(
        train_images, train_labels, train=True, batch_size=args.batch_size,
        aug=dict(flip=True, translate=2), **loader_args,
    )  # fmt: skip
    model = CifarNet()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model.compile(mode="max-autotune")

    machine = machine_record()
    print(f"machine: {machine_line(machine)}")
    print(
        f"data: {len(train_labels)} training images, {len(val_labels)} held out"
        f" (split seed {args.split_seed}) from {args.data_dir}; Newton-Schulz in"
        f" {str(ns_dtype).removeprefix('torch.')}, compile {args.compile},"
        f" channels_last {args.channels_last}",
        flush=True,
    )
    print_columns(logging_columns_list, is_head=True)
    result = train(
        args.seed, model, train_loader, test_loader, epochs=args.epochs,
        limit_steps=args.limit_steps, ns_dtype=ns_dtype,
        compile_options={} if args.compile else None,
    )  # fmt: skip
    record = {
        **result,
        "seed": args.seed,
        "split_seed": args.split_seed,
        "val_size": args.val_size,
        "n_train": len(train_labels),
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "ns_dtype": str(ns_dtype).removeprefix("torch."),
        "compile": args.compile,
        "channels_last": args.channels_last,
        "data_dir": str(args.data_dir),
        "machine": machine,
        "machine_line": machine_line(machine),
        "argv": list(sys.argv[1:] if argv is None else argv),
    }
    out = Path(args.out or f"lightning_logs/airbench94_cpu/seed{args.seed}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record: {out}")
    return record


if __name__ == "__main__":
    with exit_on_user_error():  # a missing data folder or a bad size: one line, exit 2
        main()
