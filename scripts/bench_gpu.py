"""On one GPU: the airbench94 port and the groupwise recipe side by side, 16-bit, compiled.

One command on a machine with one CUDA GPU (``bash scripts/bench.sh gpu`` sets up ``.venv``
and the data first; at most about 10 minutes on an H100, see "Time" below):

    PYTHONPATH=src .venv/bin/python scripts/bench_gpu.py --data-dir data/cifar10-jpeg
        [--runs 5] [--autocast bfloat16|float16] [--val-size 10000] [--budget-s 540]
        [--out FILE.json]

and anywhere, in about half a minute, the same code paths on the CPU on fabricated data:

    PYTHONPATH=src .venv/bin/python scripts/bench_gpu.py --dry-run

What runs, in this order:

1. The CUDA host-sync test (``benchmarks/cuda_host_sync.py``: ``tests/test_host_sync.py``'s
   CUDA test in a child pytest), a row of the table: passed, FAILED with pytest's message,
   or "skipped (no GPU)" (without CUDA, as in the dry run: no child is started).
2. The port: ``scripts/airbench94_cpu.py``'s ``train`` (the port of airbench94_muon.py; its
   docstring lists what differs from the original) with the net in ``channels_last``,
   compiled as the original compiles it (``model.compile(mode="max-autotune")``, Muon's
   Newton-Schulz function ``torch.compile``d, Newton-Schulz in bfloat16), its forward
   passes under ``torch.autocast`` in ``--autocast`` (the original holds the net in float16
   instead), the images on the GPU in that dtype, ``cudnn.benchmark`` on. A warm-up run on
   random labels compiles everything (the original's ``main("warmup")``), not reported.
   Timed as airbench times itself: CUDA events around the whitening init, each epoch's
   training and the final TTA evaluation, summed (data loading, the warm-up and the
   per-epoch evaluation excluded).
3. The recipe: ``groupwise fit --config configs/airbench94.yaml`` through the real CLI
   (``benchmarks/gpu_recipe.py``, whose docstring says what is timed: the whitening init,
   then everything from the first training step to the end of the fit, the final TTA
   validation included, CUDA events read once after the fit) with
   ``--trainer.precision`` ``bf16-mixed`` (``16-mixed`` for ``--autocast float16``: Lightning
   then adds a GradScaler, one host read per step, which the port does not have),
   ``--model.channels_last true``, ``--model.compile true`` (``nn.Module.compile``, Inductor's
   default mode, not max-autotune), ``--trainer.accelerator gpu``, the same held-out split
   (``--data.val_size``, ``--data.seed`` = ``--split-seed``), validation once after the last
   epoch. A warm-up fit first (compiles), not reported.
4. Then ``--runs`` pairs, seeds 0, 1, ...: port and recipe back to back, the order alternating
   (port first for even seeds), until the runs are done or the next pair would pass
   ``--budget-s`` (estimated from the last pair; at least one pair always runs).

Then one table (each run's TTA accuracy and seconds; each side's mean and median; the
recipe/port time ratio per seed and its median; the mean accuracy difference; the
warm-ups; the host-sync row; how many pairs ran) and the JSON record (``--out``; through
``bash scripts/bench.sh gpu`` also the harness's ``bench_results/gpu-*.json``).

What only a GPU can tell (not measured: no GPU was lent to this work): the figures, and
whether a timed fit still compiles. A new ``LightningModule`` per fit does not make Dynamo
trace again (checked in the dry run: the timed fit compiles 0 new graphs with the eager
backend, so with Inductor too the warm-up fit's code is reused), but Inductor may still
autotune or recompile for other reasons (``graphs_compiled`` in the record; compare the
first epoch's seconds with the others'); and whether the template's per-step work (logging
every 5 steps, the progress bar, ``FiniteLossGuard``) costs on a 2.6-second run what the
CPU's ratio suggests.

Time (the 10-minute limit on one H100; an estimate from the parts, not a measurement):
the host-sync test ~30 s (pytest's start, ~8 s on the 2-core CI machine, and one 30-step
fit); reading the 50,000 JPEGs once (``load_data`` writes the decode cache: 7 s on the
2-core CPU, ``docs/benchmarks.md``'s cold start; every later read loads the cache in about
0.5 s); the port's warm-up ~1-3 min (max-autotune compiles and benchmarks kernels for the
forward, the backward and the TTA shapes); the recipe's warm-up fit ~1-2 min (Inductor's
default mode: the training and evaluation graphs); then each pair ~20 s (the port ~3 s,
airbench's 2.59 s on an A100 scaled by the 40,000 of 50,000 images and an H100's speed,
plus its untimed per-epoch evaluation; a fit ~15 s: the CLI, the DataModule's setup from
the cache, the sanity check, 160 steps, a checkpoint per epoch). About 5-7 minutes for 5
pairs. ``--budget-s`` (540 s by default) starts no pair that would end after it (the last
pair's time x 1.25 from now), so past the warm-ups the run stays within the limit even
where the estimate is wrong; the table says how many pairs ran.

``--dry-run``: the same calls on the CPU, on 16 fabricated images written as a CIFAR-10
image folder that both sides read (8 held out, 8 trained on in one batch of 8 an epoch, 4
epochs: the whitening bias trains in the first 3 steps only; one pair), a narrow net
(widths 8, 16, 16 on both sides), the whitening from those 8 images, ``torch.compile``'s
``eager`` backend (Dynamo traces, nothing is generated; the recipe with
``model.compile: false`` and ``gpu_recipe.EagerCompile``), ``time.perf_counter`` in place of
the CUDA events, Newton-Schulz in float32 where the CPU lacks bfloat16 instructions,
``bf16-mixed`` (Lightning runs ``16-mixed`` as ``bf16-mixed`` on a CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import airbench94_cpu as port  # noqa: E402  (scripts/ is not a package)
from benchmarks import cuda_host_sync, gpu_recipe  # noqa: E402
from benchmarks.harness import Spread, format_table, paired_ratios, round_orders  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
# Lightning's precision setting for the same autocast
PRECISIONS = {"bfloat16": "bf16-mixed", "float16": "16-mixed"}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# the dry run's sizes: 8 images trained on, 8 held out, one batch of 8 an epoch, 4 epochs
DRY = {"train": 8, "val": 8, "batch_size": 8, "epochs": 4, "widths": [8, 16, 16]}


def fabricated_folder(root: Path, n_images: int, seed: int = 0) -> Path:
    """``n_images`` random 32x32 PNGs in CIFAR-10's image-folder layout under ``root``
    (``train/<class>/<i>.png``, labels ``i % 10``: every class has images), for the dry
    run; both sides read it, the port with ``load_data``, the recipe with the DataModule."""
    from PIL import Image

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_images, 32, 32, 3), dtype=torch.uint8, generator=generator)
    for i, image in enumerate(images):
        folder = root / "train" / CLASSES[i % 10]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.numpy()).save(folder / f"{i:05d}.png")
    return root


class PortRuns:
    """The port on one device: one compiled net, a warm-up run on random labels
    (:meth:`warm_up`), then timed runs (:meth:`run`), each a fresh ``reset`` of the net."""

    def __init__(
        self,
        data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        *,
        device: torch.device,
        autocast: torch.dtype,
        batch_size: int = 2000,
        epochs: int = 8,
        compile_backend: str = "inductor",
        ns_dtype: torch.dtype = torch.bfloat16,
        timer_class: type[port.PerfCounterTimer] = port.CudaEventTimer,
        widths: Sequence[int] | None = None,
    ) -> None:
        self.data, self.device, self.autocast = data, device, autocast
        self.batch_size, self.epochs, self.ns_dtype = batch_size, epochs, ns_dtype
        self.timer_class = timer_class
        blocks = dict(zip(("block1", "block2", "block3"), widths, strict=True)) if widths else None
        self.model = port.CifarNet(blocks).to(device).to(memory_format=torch.channels_last)
        if compile_backend == "inductor":
            self.model.compile(mode="max-autotune")  # the original's
            self.muon_compile: dict[str, Any] = {}  # the original's @torch.compile
        else:
            self.model.compile(backend=compile_backend)
            self.muon_compile = {"backend": compile_backend}

    def _train(self, run: int | str, labels: torch.Tensor) -> dict[str, Any]:
        train_images, _, val_images, val_labels = self.data
        common = dict(device=self.device, dtype=self.autocast, channels_last=True)
        test = port.CifarLoader(val_images, val_labels, train=False, batch_size=2000, **common)
        train = port.CifarLoader(
            train_images, labels, train=True, batch_size=self.batch_size,
            aug=dict(flip=True, translate=2), **common,
        )  # fmt: skip
        port.print_columns(port.logging_columns_list, is_head=True)
        return port.train(
            run, self.model, train, test, epochs=self.epochs, ns_dtype=self.ns_dtype,
            compile_options=self.muon_compile, autocast=self.autocast,
            timer=self.timer_class(),
        )  # fmt: skip

    def warm_up(self) -> dict[str, Any]:
        """The original's warm-up: a run on random labels that compiles everything."""
        torch.manual_seed(0)
        return self._train("warmup", torch.randint(0, 10, self.data[1].shape))

    def run(self, seed: int) -> dict[str, Any]:
        """One timed run; its record, with how many graphs Dynamo compiled during it (0
        when the warm-up's are reused)."""
        torch.manual_seed(seed)
        graphs = gpu_recipe.dynamo_graphs()
        result = self._train(seed, self.data[1])
        after = gpu_recipe.dynamo_graphs()
        compiled = None if graphs is None or after is None else after - graphs
        return {"seed": seed, **result, "graphs_compiled": compiled}


def mean_or_none(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def acc_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def table_rows(record: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The one table of a record: each run, each side's mean and median, the time ratio
    and accuracy difference, the warm-ups, the host-sync test, the pairs run."""
    header = ["", "seed", "tta_acc", "seconds", "note"]
    rows: list[list[Any]] = []
    sides = [("port", record["port"]), ("groupwise", record["recipe"])]
    for i in range(len(record["port"])):
        for name, runs in sides:
            r = runs[i]
            note = f"fit {r['wall_seconds']:.1f} s wall" if name == "groupwise" else ""
            rows.append([name, r["seed"], acc_text(r["tta_acc"]), f"{r['time_seconds']:.3f}", note])
    for name, runs in sides:
        times = [r["time_seconds"] for r in runs]
        rows.append([
            name, "mean", acc_text(mean_or_none([r["tta_acc"] for r in runs])),
            f"{statistics.mean(times):.3f}", f"median {statistics.median(times):.3f} s",
        ])  # fmt: skip
    ratios = record["time_ratios"]
    spread = Spread.of(ratios)
    rows.append([
        "groupwise / port", "", "", f"{spread.median:.3f}x",
        f"time, median of {len(ratios)} per-seed ratios ({spread.format()})",
    ])  # fmt: skip
    port_acc = mean_or_none([r["tta_acc"] for r in record["port"]])
    recipe_acc = mean_or_none([r["tta_acc"] for r in record["recipe"]])
    difference = "-" if None in (port_acc, recipe_acc) else f"{recipe_acc - port_acc:+.4f}"
    rows.append(["groupwise - port", "", difference, "", "mean tta_acc"])
    warmups = record["warmup_seconds"]
    rows.append([
        "warm-up", "", "", "",
        f"port {warmups['port']:.1f} s, groupwise fit {warmups['groupwise']:.1f} s"
        " (compiling; not timed)",
    ])  # fmt: skip
    rows.append(["CUDA host-sync", "", "", "", cuda_host_sync.row_text(record["host_sync"])])
    rows.append(["pairs run", "", "", "", record["pairs_note"]])
    return header, rows


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print(f"\n{title}\n{format_table(header, rows)}", flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options, on ``parser`` (this script's own, or a benchmark entry point's)."""
    parser.add_argument("--data-dir", default="data/cifar10-jpeg")
    parser.add_argument(
        "--runs", type=int, default=None,
        help="timed pairs, seeds 0..runs-1 (default 5; 1 with --dry-run)",
    )  # fmt: skip
    parser.add_argument("--autocast", choices=list(AUTOCAST_DTYPES), default="bfloat16")
    parser.add_argument("--val-size", type=int, default=10_000)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument(
        "--budget-s", type=float, default=540,
        help="start no pair that would end later than this many seconds after the start",
    )  # fmt: skip
    parser.add_argument("--root-dir", default="lightning_logs/bench_gpu", help="the fits' runs")
    parser.add_argument("--out", default="lightning_logs/bench_gpu.json")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="the same code paths on the CPU on fabricated data, in about half a minute",
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run both sides, print one table, write the JSON record."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    sys.argv = sys.argv[:1]  # the groupwise CLI inside parses its own args, not these
    return run(args, argv)


def run(
    args: argparse.Namespace,
    argv: Sequence[str] | None = None,
    table: Callable[[str, Sequence[str], Sequence[Sequence[Any]]], None] = print_table,
) -> dict[str, Any]:
    """What ``main`` does once the options are parsed (``argv``: kept in the record;
    ``table(title, header, rows)`` prints the table, e.g. a harness ``Record.table``)."""
    from groupwise.errors import ConfigError

    if args.runs is not None and args.runs < 1:
        raise ConfigError(f"--runs must be at least 1 (one pair of runs), got {args.runs}")
    if args.dry_run:
        with tempfile.TemporaryDirectory() as folder:
            return _run(args, argv, table, Path(folder))
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (or --dry-run for the CPU)")
    return _run(args, argv, table, None)


def _run(args, argv, table, dry_folder: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    autocast = AUTOCAST_DTYPES[args.autocast]
    seeds = list(range(args.runs if args.runs is not None else 1 if dry_folder else 5))
    machine = port.machine_record()
    print(f"machine: {port.machine_line(machine)}", flush=True)
    if dry_folder is not None:
        data_dir = fabricated_folder(dry_folder / "cifar10", DRY["train"] + DRY["val"])
        data = port.load_data(data_dir, DRY["val"], args.split_seed)
        val_size, batch_size, epochs = DRY["val"], DRY["batch_size"], DRY["epochs"]
        device, widths, compile_net = torch.device("cpu"), DRY["widths"], False
        port_options = dict(
            compile_backend="eager", timer_class=port.PerfCounterTimer,
            # bfloat16 is emulated on a CPU without bfloat16 instructions
            ns_dtype=port.resolve_ns_dtype("auto", device),
        )  # fmt: skip
        root, accelerator, whitening_images = dry_folder / "runs", "cpu", DRY["train"]
    else:
        torch.backends.cudnn.benchmark = True  # the original's
        data_dir, val_size = args.data_dir, args.val_size
        data = port.load_data(data_dir, val_size, args.split_seed)
        batch_size, epochs, device, widths, compile_net = 2000, 8, torch.device("cuda"), None, True
        port_options = dict(compile_backend="inductor", timer_class=port.CudaEventTimer)
        port_options["ns_dtype"] = torch.bfloat16  # the original's
        root, accelerator, whitening_images = Path(args.root_dir), "gpu", None

    host_sync = cuda_host_sync.run_test()
    print(f"CUDA host-sync test: {cuda_host_sync.row_text(host_sync)}", flush=True)

    ports = PortRuns(
        data, device=device, autocast=autocast, batch_size=batch_size, epochs=epochs,
        widths=widths, **port_options,
    )  # fmt: skip

    def recipe(seed: int) -> dict[str, Any]:
        fit = gpu_recipe.fit_args(
            seed, data_dir=data_dir, root=root, precision=PRECISIONS[args.autocast],
            accelerator=accelerator, epochs=epochs, val_size=val_size,
            split_seed=args.split_seed, compile=compile_net,
            batch_size=batch_size if dry_folder else None,  # else the config's 2000
            widths=widths, whitening_images=whitening_images,
        )  # fmt: skip
        return gpu_recipe.timed_fit(seed, fit)

    port_warmup = ports.warm_up()
    recipe_warmup = recipe(seeds[0])
    port_runs: list[dict[str, Any]] = []
    recipe_runs: list[dict[str, Any]] = []
    last_pair = 0.0
    for seed, order in zip(seeds, round_orders(["port", "groupwise"], len(seeds)), strict=True):
        elapsed = time.perf_counter() - started
        if port_runs and elapsed + 1.25 * last_pair > args.budget_s:
            break
        pair_start = time.perf_counter()
        for side in order:
            if side == "port":
                port_runs.append(ports.run(seed))
            else:
                recipe_runs.append(recipe(seed))
        last_pair = time.perf_counter() - pair_start
    pairs_note = f"{len(port_runs)} of {len(seeds)}"
    if len(port_runs) < len(seeds):
        pairs_note += f" (the next would pass --budget-s {args.budget_s:g})"
    pairs_note += f"; {time.perf_counter() - started:.0f} s in all"

    record = {
        "port": port_runs,
        "recipe": recipe_runs,
        "time_ratios": paired_ratios(
            [r["time_seconds"] for r in recipe_runs], [r["time_seconds"] for r in port_runs]
        ),
        "warmup_seconds": {
            "port": port_warmup["time_seconds"],
            "groupwise": recipe_warmup["time_seconds"],
        },
        "warmups": {"port": port_warmup, "groupwise": recipe_warmup},
        "host_sync": host_sync,
        "pairs_note": pairs_note,
        "autocast": args.autocast,
        "dry_run": dry_folder is not None,
        "machine": machine,
        "machine_line": port.machine_line(machine),
        "argv": list(sys.argv[1:] if argv is None else argv),
    }
    header, rows = table_rows(record)
    table("airbench94: the port and groupwise's recipe", header, rows)
    record["table"] = {"header": header, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record: {out}")
    return record


if __name__ == "__main__":
    from groupwise.errors import exit_on_user_error

    with exit_on_user_error():  # a missing data folder or a bad size: one line, exit 2
        main()
