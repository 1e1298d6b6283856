"""Time per training step inside a fit: template vs Lightning alone vs the plain loop.

Whole-fit seconds (``parity``) mix the steps with what happens once per fit; this times
each step. A forward pre-hook on the net stamps the clock at the start of every step's
forward pass (one per step: no validation runs), in the fits of the ``parity`` benchmark's
variants (``--variants``, default: the template with every default callback, Lightning
alone with no callback and no logger, the plain PyTorch loop), for ``--steps`` optimizer
steps of ``--config`` (default LeNet-5) at ``--batch-size``. A step's time is the gap
between consecutive stamps: everything the loop does between two forward passes (loss,
backward, optimizer, hooks, logging, the next batch). The variants run back to back in
rotating order, ``--repeats`` rounds after one warm-up of each, in one process (the
template's first fit keeps freed host memory, ``groupwise.runtime.host_memory``, for all of them).

Reported per variant: the 10th percentile and the median of its step times (ms, median over
rounds), and what it adds per step over the plain loop of the same round (10th percentile
minus the plain loop's; median and range over rounds). The 10th percentile is the step
without the machine's interruptions: it shows the fixed cost per step that a loaded
machine hides in whole-fit times.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from benchmarks.harness import Record, Spread, run_rounds
from benchmarks.parity import NAMES, add_common, prepare, variant_fit


class Stamps:
    """The clock at each forward pass of the net it is registered on."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def register(self, net: torch.nn.Module) -> None:
        net.register_forward_pre_hook(lambda module, inputs: self.times.append(time.perf_counter()))

    def step_ms(self) -> list[float]:
        return [(b - a) * 1e3 for a, b in zip(self.times, self.times[1:], strict=False)]


def percentile(values: list[float], q: int) -> float:
    """The ``q``-th percentile (``statistics.quantiles`` in 100 parts, inclusive)."""
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, steps=300, repeats=6)
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(NAMES),
        default=["template", "bare", "plain"],
        help="which fits of the parity benchmark to time (plain is always included)",
    )


def run(args: argparse.Namespace, record: Record) -> None:
    images, labels, net_name, batch_size = prepare(args)
    data = (images, labels)
    kinds = list(dict.fromkeys([*args.variants, "plain"]))

    def measure(kind: str) -> dict[str, float]:
        stamps = Stamps()
        variant_fit(kind, args, args.steps, root, data, on_net=stamps.register)
        if len(stamps.times) != args.steps:
            raise RuntimeError(f"{kind}: {len(stamps.times)} forward passes in {args.steps} steps")
        steps = stamps.step_ms()
        return {"p10_ms": percentile(steps, 10), "median_ms": statistics.median(steps)}

    with tempfile.TemporaryDirectory() as root:
        for kind in kinds:  # warm-up: imports, allocator, first-call costs
            variant_fit(kind, args, args.warmup_steps, root, data)
        rounds = run_rounds(
            kinds,
            args.repeats,
            measure,
            lambda kind, r: f"{kind} p10 {r['p10_ms']:.3f} ms",
        )
    record.add("rounds", rounds.as_json())
    plain_p10 = [r["p10_ms"] for r in rounds.results["plain"]]
    rows = []
    for kind in kinds:
        p10 = [r["p10_ms"] for r in rounds.results[kind]]
        median = statistics.median(r["median_ms"] for r in rounds.results[kind])
        over = (
            "0"
            if kind == "plain"
            else Spread.of([a - b for a, b in zip(p10, plain_p10, strict=True)])
        )
        rows.append([
            NAMES[kind], f"{statistics.median(p10):.3f}", f"{median:.3f}",
            over if isinstance(over, str) else f"{over.format('+.3f')}",
        ])  # fmt: skip
    record.table(
        f"{args.config.name} ({net_name}), batch {batch_size}, {args.steps} steps, "
        f"{args.repeats} rounds, CPU, torch threads {torch.get_num_threads()}; ms per step "
        "(median over rounds)",
        ["", "p10 ms", "median ms", "p10 over plain, ms (min-max)"],
        rows,
    )
