"""What one training step of FastNet costs on this machine, by batch size and optimizer.

Run from the repository root:

    .venv/bin/python scripts/bench_step_cost.py [--batch-sizes 128 256] [--repeats 5]

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

import torch
from torch.nn import functional as F

from groupwise.nets import FastNet
from groupwise.optim import Muon


def median_seconds(work, iterations: int) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = FastNet().to(memory_format=torch.channels_last)

    per_image: dict[int, list[float]] = {b: [] for b in args.batch_sizes}
    for repeat in range(args.repeats):
        shift = repeat % len(args.batch_sizes)
        for batch_size in args.batch_sizes[shift:] + args.batch_sizes[:shift]:
            seconds = forward_backward(net, batch_size, args.iterations)
            per_image[batch_size].append(seconds / batch_size)
    print(f"FastNet forward + backward, torch threads {torch.get_num_threads()}")
    first = args.batch_sizes[0]
    for batch_size, values in per_image.items():
        ratio = statistics.median(values) / statistics.median(per_image[first])
        print(
            f"  batch {batch_size:>4}: {statistics.median(values) * 1e6:6.0f} us per image "
            f"(rounds {min(values) * 1e6:.0f}-{max(values) * 1e6:.0f}),"
            f" {ratio:.2f}x batch {first}'s"
        )

    filters = [p for name, p in net.named_parameters() if name.endswith("conv.weight")]
    for param in filters:
        param.grad = torch.randn_like(param)
    muon = Muon(filters, lr=0.08, momentum=0.8, ns_steps=3, weight_decay=0.0,
                normalize_weights=True)  # fmt: skip
    sgd = torch.optim.SGD(filters, lr=0.1, momentum=0.9, nesterov=True)
    print(f"optimizer.step() on the {len(filters)} conv filters (median of {args.iterations * 2})")
    for name, optimizer in (("Muon", muon), ("SGD", sgd)):
        print(f"  {name}: {median_seconds(optimizer.step, args.iterations * 2) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
