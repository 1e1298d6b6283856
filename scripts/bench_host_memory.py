"""Minor page faults and time per CPU training step, with glibc's freed memory kept
(``groupwise.host_memory``, the default) and with glibc's adaptive thresholds.

Run from the repository root:

    .venv/bin/python scripts/bench_host_memory.py [--configs lenet fast resnet18]
        [--steps 60] [--rounds 3] [--data-dir data/cifar10-jpeg]

Each fit is ``groupwise fit --config configs/NAME.yaml`` in a fresh process, exactly as a
user runs it (all default callbacks, TensorBoard), for ``--steps`` optimizer steps with no
validation, on the CPU. "adaptive" runs with ``MALLOC_ARENA_MAX=8`` in the environment,
which makes groupwise leave glibc's allocator alone and changes nothing else for a
single-threaded allocation pattern. A callback records the process's minor page faults and
the clock at the start of every step; the second half of the steps is reported (the heap
has grown to its size by then): mean faults per step and mean ms per step, per fit,
then the median over ``--rounds`` rounds (kept and adaptive back to back, alternating
which goes first) and the median of the per-round time ratios adaptive / kept.
ResNet-18 steps take over a second here: give it fewer ``--steps``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch import Callback

REPO = Path(__file__).resolve().parents[1]


class StepProbe(Callback):
    """Writes ``[[minor faults, seconds], ...]`` at each step's start to ``out`` (JSON)."""

    def __init__(self, out: str) -> None:
        self.out, self.rows = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.rows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()))

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out).write_text(json.dumps(self.rows))


def fit_once(config: Path, data_dir: Path, steps: int, adaptive: bool, root: str) -> tuple:
    """(faults per step, ms per step) over the second half of the steps: means, since the
    faults come in bursts on some steps."""
    out = Path(root) / "steps.json"
    probe = {"class_path": "bench_host_memory.StepProbe", "init_args": {"out": str(out)}}
    command = [
        str(Path(sys.executable).parent / "groupwise"),
        "fit",
        "--config", str(config),
        f"--data.data_dir={data_dir}",
        f"--trainer.default_root_dir={root}",
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        f"--trainer.callbacks+={json.dumps(probe)}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "scripts"), *sys.path])
    if adaptive:
        env["MALLOC_ARENA_MAX"] = "8"
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{config.name}: fit failed ({done.returncode}):\n{done.stderr[-3000:]}")
    rows = json.loads(out.read_text())[steps // 2 :]
    faults = [b[0] - a[0] for a, b in zip(rows, rows[1:], strict=False)]
    seconds = [b[1] - a[1] for a, b in zip(rows, rows[1:], strict=False)]
    return statistics.mean(faults), statistics.mean(seconds) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["lenet", "fast"])
    parser.add_argument("--data-dir", type=Path, default=REPO / "data" / "cifar10-jpeg")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per fit")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not args.data_dir.is_dir():
        sys.exit(f"no CIFAR-10 at {args.data_dir}; pass --data-dir (see the README)")
    from groupwise.data.cifar10 import CIFAR10DataModule

    CIFAR10DataModule(str(args.data_dir), download=False).prepare_data()  # the decode cache
    head = ("config", "round", "kept faults", "ms", "adaptive faults", "ms")
    print("{:<10} {:>5} {:>12} {:>8} {:>16} {:>8}".format(*head))
    summary = []
    for name in args.configs:
        config = REPO / "configs" / f"{name}.yaml"
        runs: dict[bool, list[tuple]] = {False: [], True: []}
        for round_ in range(args.rounds):
            for adaptive in (False, True) if round_ % 2 == 0 else (True, False):
                with tempfile.TemporaryDirectory() as root:
                    run = fit_once(config, args.data_dir, args.steps, adaptive, root)
                    runs[adaptive].append(run)
            (kf, kms), (af, ams) = runs[False][-1], runs[True][-1]
            row = f"{name:<10} {round_:>5} {kf:>12,.0f} {kms:>8.2f} {af:>16,.0f} {ams:>8.2f}"
            print(row, flush=True)
        ratio = statistics.median(a[1] / k[1] for k, a in zip(runs[False], runs[True], strict=True))
        summary.append((name, runs, ratio))
    print("\nmedians over rounds (second half of each fit's steps)")
    for name, runs, ratio in summary:
        kept = [statistics.median(r[i] for r in runs[False]) for i in (0, 1)]
        adaptive = [statistics.median(r[i] for r in runs[True]) for i in (0, 1)]
        print(
            f"{name}: kept {kept[0]:,.0f} faults, {kept[1]:.2f} ms per step; adaptive "
            f"{adaptive[0]:,.0f} faults, {adaptive[1]:.2f} ms; time adaptive / kept {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
