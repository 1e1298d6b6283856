"""Tensor ops and Python calls per ordinary training step: template, Lightning alone, plain loop.

Counts, not times, so the figures do not depend on the machine's load: from the start of
the net's forward pass number ``--first`` (the steps before it warm up) to the start of
number ``--first + --count``, i.e. ``--count`` whole steps of the loop, a
``TorchDispatchMode`` counts the tensor ops dispatched (each a kernel launch on a GPU) and
``sys.setprofile`` counts the Python function calls and the calls into C functions. The
fits are those of the ``parity`` benchmark's variants (``--variants``; default the template
with every default callback, Lightning alone with no callback and no logger, the plain
PyTorch loop), on ``--config`` (default LeNet-5) at ``--batch-size``, one fit each.
Reported per step (counts divided by ``--count``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.harness import Record
from benchmarks.parity import NAMES, add_common, prepare, variant_fit


class OpCount(TorchDispatchMode):
    """Counts the tensor ops dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class StepCounter:
    """Counts ops and calls between two forward passes of the net it is registered on
    (numbers ``first`` and ``first + count``, from 0)."""

    def __init__(self, first: int, count: int) -> None:
        self.first, self.count, self.forwards = first, count, 0
        self.mode = OpCount()
        self.calls = {"call": 0, "c_call": 0}

    def register(self, net: torch.nn.Module) -> None:
        net.register_forward_pre_hook(self.on_forward)

    def profile(self, frame, event: str, arg) -> None:
        if event in self.calls:
            self.calls[event] += 1

    def on_forward(self, module, inputs) -> None:
        if self.forwards == self.first:
            self.mode.__enter__()
            sys.setprofile(self.profile)
        elif self.forwards == self.first + self.count:
            sys.setprofile(None)
            self.mode.__exit__(None, None, None)
        self.forwards += 1

    def per_step(self) -> dict[str, float]:
        if self.forwards <= self.first + self.count:
            raise RuntimeError(f"the fit ended after {self.forwards} forward passes")
        return {
            "ops": self.mode.ops / self.count,
            "python_calls": self.calls["call"] / self.count,
            "c_calls": self.calls["c_call"] / self.count,
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, steps=20, repeats=None)
    parser.add_argument("--first", type=int, default=10, help="forward pass counting starts at")
    parser.add_argument("--count", type=int, default=3, help="steps counted")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(NAMES),
        default=["template", "bare", "plain"],
        help="which fits of the parity benchmark to count",
    )


def run(args: argparse.Namespace, record: Record) -> None:
    if args.steps <= args.first + args.count:
        sys.exit(f"--steps {args.steps} must be above --first + --count")
    images, labels, net_name, batch_size = prepare(args)
    counts = {}
    with tempfile.TemporaryDirectory() as root:
        for kind in args.variants:
            counter = StepCounter(args.first, args.count)
            variant_fit(kind, args, args.steps, root, (images, labels), on_net=counter.register)
            counts[kind] = counter.per_step()
            print(f"{kind}: {counts[kind]}", flush=True)
    record.add("per_step", counts)
    rows = [
        [NAMES[kind], f"{c['ops']:.0f}", f"{c['python_calls']:,.0f}", f"{c['c_calls']:,.0f}",
         f"{c['python_calls'] + c['c_calls']:,.0f}"]
        for kind, c in counts.items()
    ]  # fmt: skip
    record.table(
        f"{args.config.name} ({net_name}), batch {batch_size}: per step, forward passes "
        f"{args.first} to {args.first + args.count}",
        ["", "tensor ops", "Python calls", "C calls", "calls in all"],
        rows,
    )
