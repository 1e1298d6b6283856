"""What every benchmark shares: the machine line, back-to-back rounds in alternating
order, medians and ranges, the printed table and its JSON record.

Written here because no installed library does this as a whole: ``torch.utils.benchmark``
times one statement in one process (no rounds of whole fits in rotating order, no machine
line, no record), and Lightning's profilers time hooks inside one fit.

How a subcommand is written (``scripts/bench.py NAME`` runs it):

1. One module ``scripts/benchmarks/NAME.py``. Its docstring's first line is the
   subcommand's one-line help (``python scripts/bench.py --help`` lists it without
   importing the module); the rest says what is measured and how.
2. ``add_arguments(parser)`` adds its options to its ``argparse`` subparser; call
   :func:`add_data_dir` when it reads CIFAR-10 (``bash scripts/bench.sh`` sets
   ``DATA_DIR``, the default of ``--data-dir``).
3. ``run(args, record)`` measures and prints. Compared variants run back to back with
   :func:`run_rounds` (orders from :func:`round_orders`: A B, B A, ... for two), figures
   are reported as :class:`Spread` (median and range) and per-round ratios with
   :func:`paired_ratios`; the table goes through :meth:`Record.table` (printed, and kept in
   the record), raw numbers through :meth:`Record.add`. ``bench.py`` prints the machine
   line first and writes the record (``bench_results/NAME-<UTC time>.json``, path printed)
   when ``run`` returns.
4. One line in ``REGISTRY`` (``scripts/benchmarks/__init__.py``): ``"NAME": "benchmarks.NAME"``.
5. Name the command that produced each figure in ``docs/benchmarks.md``
   (``bash scripts/bench.sh NAME ...``); ``tests/test_benchmarks.py`` runs its ``--help``.

A benchmark timed on a GPU reads the clock after ``torch.cuda.synchronize()`` (kernels run
asynchronously); the machine line names the GPU. One that runs on a CPU only says so in its
docstring.

A callback that must run inside a ``groupwise fit`` child process lives in the module and
is named by class path (``benchmarks.NAME.Probe``): ``fits.child_fit`` puts ``scripts/`` on
the child's ``PYTHONPATH``. Keep this module and ``__init__.py`` free of heavy imports at
load time (torch is imported inside :func:`machine`).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
RESULTS = REPO / "bench_results"
#: the CPU flags that decide which kernels torch can use here (bf16 and AMX matmuls)
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """CPU model name and which of :data:`FLAGS` it has, from ``/proc/cpuinfo`` (the text
    can be passed in; elsewhere than Linux the model is ``platform.processor()``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    return {
        "model": fields.get("model name") or platform.processor() or "unknown",
        "flags": {flag: flag in flags for flag in FLAGS},
    }


def memory_gib() -> float | None:
    """Total memory of the machine in GiB (``/proc/meminfo``), None where unreadable."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def git_commit() -> str | None:
    """The repository's commit, ``+dirty`` when tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """Everything the machine line says, as data (kept in the record)."""
    import lightning
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_info(),
        "cores": cores,
        "memory_gib": memory_gib(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "gpu": gpu,
        "commit": git_commit(),
    }


def machine_line(info: dict[str, Any]) -> str:
    """One line: CPU model, its flags, cores, memory, versions, GPU (or none)."""
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in info["cpu"]["flags"].items())
    memory = f", {info['memory_gib']:.0f} GiB" if info.get("memory_gib") else ""
    return (
        f"machine: {info['cpu']['model']} ({flags}), {info['cores']} cores{memory}; "
        f"torch {info['torch']} ({info['torch_threads']} threads), "
        f"lightning {info['lightning']}, Python {info['python']}; "
        f"GPU: {info['gpu'] or 'none'}; commit {info['commit'] or 'unknown'}"
    )


def round_orders(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of each round: ``names`` rotated by one more each round, so every variant
    runs first equally often (two names: A B, B A, A B, ...)."""
    if not names:
        raise ValueError("round_orders needs at least one name")
    return [list(names[r % len(names) :]) + list(names[: r % len(names)]) for r in range(rounds)]


@dataclass
class Rounds:
    """What :func:`run_rounds` measured: each round's order, and each name's results in
    round order (``results[name][r]`` is round ``r``'s, whatever its place in the order)."""

    orders: list[list[str]]
    results: dict[str, list[Any]]

    def as_json(self) -> list[dict[str, Any]]:
        return [
            {"round": r, "order": order, "results": {n: self.results[n][r] for n in order}}
            for r, order in enumerate(self.orders)
        ]


def run_rounds(
    names: Sequence[str],
    rounds: int,
    measure: Callable[[str], Any],
    describe: Callable[[str, Any], str] | None = None,
) -> Rounds:
    """``measure(name)`` for every name in every round, back to back in the orders of
    :func:`round_orders`; prints one line per round (``describe(name, result)`` per name,
    in the order of ``names``) as it goes, since runs are long."""
    orders = round_orders(names, rounds)
    results: dict[str, list[Any]] = {name: [] for name in names}
    for r, order in enumerate(orders):
        for name in order:
            results[name].append(measure(name))
        if describe is not None:
            parts = ", ".join(describe(name, results[name][-1]) for name in names)
            print(f"round {r} ({' -> '.join(order)}): {parts}", flush=True)
    return Rounds(orders, results)


@dataclass(frozen=True)
class Spread:
    """Median and range of a list of figures."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("Spread.of needs at least one value")
        return cls(statistics.median(values), min(values), max(values))

    def format(self, spec: str = ".3f") -> str:
        """``median (low-high)``, each with the format ``spec`` (``low to high`` when the
        range has a negative end, where a dash would read as a minus sign)."""
        dash = " to " if self.low < 0 or self.high < 0 else "-"
        return f"{self.median:{spec}} ({self.low:{spec}}{dash}{self.high:{spec}})"


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """``numerators[r] / denominators[r]`` for each round ``r``: the ratio of runs made back
    to back, the only comparison that holds on a machine whose speed drifts."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell; the first left-aligned, the others right."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in cells
    ]
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """``value`` with paths as strings and tuples as lists, for ``json.dumps``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class Record:
    """One run of one benchmark: its command, machine, options, tables and raw results,
    written as JSON beside the printed table (:meth:`write`)."""

    name: str
    argv: list[str]
    args: dict[str, Any]
    machine: dict[str, Any]
    started: str = field(default_factory=lambda: utc_now())
    tables: list[dict[str, Any]] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, value: Any) -> None:
        """Keep a raw result (per-round figures, per-seed rows) under ``key``."""
        self.results[key] = jsonable(value)

    def table(self, title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Print a table under its title, and keep it in the record."""
        text = format_table(header, rows)
        print(f"\n{title}\n{text}" if title else f"\n{text}", flush=True)
        self.tables.append({"title": title, "header": list(header), "rows": jsonable(rows)})

    def write(self, folder: Path | None = None) -> Path:
        """Write the record to ``folder/NAME-<UTC time>.json`` (default ``bench_results/``)
        and return its path."""
        folder = RESULTS if folder is None else folder
        folder.mkdir(parents=True, exist_ok=True)
        stamp = self.started.replace("-", "").replace(":", "")
        path = folder / f"{self.name}-{stamp}.json"
        serial = 1
        while path.exists():
            serial += 1
            path = folder / f"{self.name}-{stamp}-{serial}.json"
        record = {
            "benchmark": self.name,
            "command": self.argv,
            "started": self.started,
            "finished": utc_now(),
            "machine": self.machine,
            "args": jsonable(self.args),
            "tables": self.tables,
            "results": self.results,
        }
        path.write_text(json.dumps(record, indent=1) + "\n")
        return path


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) with ``scripts/`` and this process's
    ``sys.path`` on ``PYTHONPATH``: a child process imports the same groupwise and the
    benchmark modules (``python -m benchmarks.NAME``, callbacks by class path)."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(SCRIPTS), *sys.path])
    return env


def default_data_dir() -> Path:
    """``$DATA_DIR`` (set by ``bash scripts/bench.sh``), else ``data/cifar10-jpeg``."""
    return Path(os.environ.get("DATA_DIR") or REPO / "data" / "cifar10-jpeg")


def add_data_dir(parser) -> None:
    """The ``--data-dir`` option of every benchmark that reads CIFAR-10."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help="CIFAR-10 folder (default: $DATA_DIR, else data/cifar10-jpeg)",
    )


def require_data(data_dir: Path) -> None:
    """Exit with one line when ``data_dir`` is not a folder."""
    if not data_dir.is_dir():
        sys.exit(f"no CIFAR-10 at {data_dir}; pass --data-dir (see the README)")
