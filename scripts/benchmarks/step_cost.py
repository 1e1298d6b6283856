"""What one training step of FastNet costs on this machine, by batch size and optimizer.

On random images (no data needed), with the fast recipes' net (``FastNet``, widths
32/64/128, channels_last) and the default torch thread count:

* forward + cross-entropy + backward, per image, at each batch size (median of
  ``--iterations`` passes after 3 warm-up passes, then the median over ``--repeats``
  rounds, the batch sizes in rotating order);
* one ``optimizer.step()`` on the 7 convolution filters: ``groupwise.optim.Muon`` as
  ``configs/fast_muon.yaml`` sets it (Newton-Schulz in the dtype ``ns_dtype: auto`` picks
  on this CPU, 3 iterations, weight normalisation) against Nesterov ``torch.optim.SGD``.

Why it exists: it tells whether a recipe's time goes into the optimizer or into the
batch size's cost per image (``docs/recipes.md``, "Muon on the filters").
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from benchmarks.harness import Record, Spread, run_rounds
from groupwise.nets import FastNet
from groupwise.optim import Muon


def median_seconds(work: Callable[[], object], iterations: int) -> float:
    """Median seconds of ``work()`` over ``iterations`` calls after 3 warm-up calls."""
    times = []
    for _ in range(iterations + 3):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times[3:])


def forward_backward(net: torch.nn.Module, batch_size: int, iterations: int) -> float:
    """Median seconds of one forward + loss + backward pass of ``batch_size`` images."""
    images = torch.randn(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,))
    return median_seconds(lambda: F.cross_entropy(net(images), labels).backward(), iterations)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=8)


def run(args: argparse.Namespace, record: Record) -> None:
    torch.manual_seed(0)
    net = FastNet().to(memory_format=torch.channels_last)
    names = [str(b) for b in args.batch_sizes]
    rounds = run_rounds(
        names,
        args.repeats,
        lambda b: forward_backward(net, int(b), args.iterations) / int(b),
    )
    record.add("rounds", rounds.as_json())
    first = rounds.results[names[0]]
    rows = []
    for name in names:
        per_image = Spread.of([s * 1e6 for s in rounds.results[name]])
        ratio = per_image.median / (statistics.median(first) * 1e6)
        rows.append([name, per_image.format(".0f"), f"{ratio:.2f}x"])
    record.table(
        "FastNet forward + backward, us per image (median over rounds, range)",
        ["batch", "us per image", f"vs batch {names[0]}"],
        rows,
    )

    filters = [p for name, p in net.named_parameters() if name.endswith("conv.weight")]
    for param in filters:
        param.grad = torch.randn_like(param)
    muon = Muon(filters, lr=0.08, momentum=0.8, ns_steps=3, weight_decay=0.0,
                normalize_weights=True)  # fmt: skip
    sgd = torch.optim.SGD(filters, lr=0.1, momentum=0.9, nesterov=True)
    steps = [
        [name, f"{median_seconds(optimizer.step, args.iterations * 2) * 1e3:.2f}"]
        for name, optimizer in (("Muon", muon), ("SGD", sgd))
    ]
    record.table(
        f"optimizer.step() on the {len(filters)} conv filters (median of {args.iterations * 2})",
        ["optimizer", "ms"],
        steps,
    )
