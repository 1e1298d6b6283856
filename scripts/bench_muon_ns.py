"""Muon's Newton-Schulz iteration in bfloat16 against float32, on this machine's CPU.

Run from the repository root:

    .venv/bin/python scripts/bench_muon_ns.py [--shapes 128x576 256x2304] [--ns-steps 3]
        [--dtypes bfloat16 float32] [--repeats 20] [--threads N]

For each matrix shape (``out x in*kh*kw``, a flattened conv filter: 128 x 576 is a 3x3
conv from 64 to 128 channels, 256 x 2304 one of airbench94's 256-channel filters) and
each dtype, times ``timm.optim.muon.zeropower_via_newtonschulz`` (the iteration
``groupwise.optim.Muon`` calls, with its ``dtype``) on a random float32 matrix, including
the cast into the dtype, ``--ns-steps`` iterations (``configs/fast_muon.yaml``'s 3). The
dtypes alternate call by call (after ``--warmup`` calls of each), so a machine that slows
down slows every dtype alike. Reported per shape and dtype: best and median of
``--repeats`` calls, each also over float32's (on a loaded machine the best is the
steadier figure). The first line names the machine:
CPU model, torch's CPU capability, the CPU's bfloat16 instructions as torch sees them
(``torch.cpu.get_capabilities()``), torch's thread count, and what ``Muon``'s
``ns_dtype: auto`` picks here.

Why it exists: without bfloat16 instructions (AVX2 only), torch computes bfloat16
matrix products in a slow generic kernel, so Muon's bfloat16 default can cost more than
the rest of a training step (issue 22, section 3).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch
from timm.optim.muon import zeropower_via_newtonschulz

from groupwise.optim.muon import DEFAULT_NS_COEFFICIENTS, auto_ns_dtype

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def machine_line() -> str:
    """CPU model, torch's capability, bfloat16 instructions, threads, Muon's auto dtype."""
    capabilities = torch.cpu.get_capabilities()
    flags = [flag for flag in BF16_FLAGS if capabilities.get(flag)]
    auto = str(auto_ns_dtype(torch.device("cpu"))).removeprefix("torch.")
    return (
        f"CPU {capabilities.get('cpu_name', '?')!r}, torch capability "
        f"{torch.backends.cpu.get_cpu_capability()}, bfloat16 instructions: "
        f"{', '.join(flags) or 'none'}; torch threads {torch.get_num_threads()}; "
        f"Muon ns_dtype auto -> {auto}"
    )


def shape(text: str) -> tuple[int, int]:
    """``"128x576"`` -> ``(128, 576)``."""
    rows, _, columns = text.partition("x")
    try:
        return int(rows), int(columns)
    except ValueError:
        message = f"a shape is ROWSxCOLUMNS, e.g. 128x576; got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def time_newton_schulz(
    matrix: torch.Tensor, dtypes: Sequence[torch.dtype], steps: int, repeats: int, warmup: int
) -> dict[torch.dtype, list[float]]:
    """Seconds of each call per dtype, the dtypes alternating call by call."""
    coefficients = [DEFAULT_NS_COEFFICIENTS]
    seconds: dict[torch.dtype, list[float]] = {dtype: [] for dtype in dtypes}
    for call in range(warmup + repeats):
        for dtype in dtypes:
            start = time.perf_counter()
            zeropower_via_newtonschulz(matrix, steps, coefficients, dtype=dtype)
            if call >= warmup:
                seconds[dtype].append(time.perf_counter() - start)
    return seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=shape, nargs="+", default=[(128, 576), (256, 2304)])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                        choices=["bfloat16", "float32"])  # fmt: skip
    parser.add_argument("--ns-steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtypes = [getattr(torch, name) for name in args.dtypes]
    print(machine_line())
    print(f"Newton-Schulz, {args.ns_steps} iterations, best / median of {args.repeats} calls")
    torch.manual_seed(0)
    for rows, columns in args.shapes:
        matrix = torch.randn(rows, columns)
        seconds = time_newton_schulz(matrix, dtypes, args.ns_steps, args.repeats, args.warmup)
        base = torch.float32 if torch.float32 in seconds else dtypes[0]
        best, median = min(seconds[base]), statistics.median(seconds[base])
        base_name = str(base).removeprefix("torch.")
        for dtype, values in seconds.items():
            name = str(dtype).removeprefix("torch.")
            print(
                f"  {rows} x {columns} {name:>8}: best {min(values) * 1e3:8.2f} ms "
                f"({min(values) / best:5.2f}x {base_name}'s), median "
                f"{statistics.median(values) * 1e3:8.2f} ms "
                f"({statistics.median(values) / median:5.2f}x)"
            )


if __name__ == "__main__":
    main()
