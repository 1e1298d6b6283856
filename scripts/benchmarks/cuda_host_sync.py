"""The CUDA host-sync test as a row of ``scripts/bench_gpu.py``'s table.

``tests/test_host_sync.py::test_ordinary_cuda_training_steps_do_not_sync`` (the fast
recipe on one GPU, its ordinary steps run under ``torch.cuda.set_sync_debug_mode("error")``)
runs in a child ``pytest`` with this process's ``PYTHONPATH`` (the same groupwise); its
outcome is read from pytest's JUnit XML report. Without a GPU the row reads "skipped (no
GPU)": :func:`run_test` starts no child then (the test would skip itself, "needs CUDA", after
~10 s of pytest's start), unless told to (``tests/test_bench_gpu.py`` does, to run this path).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, child_env

TEST = "tests/test_host_sync.py::test_ordinary_cuda_training_steps_do_not_sync"


def outcome_of(report: Path) -> tuple[str, str]:
    """(outcome, message) of the one test case in a JUnit XML report: ``passed``,
    ``failed``, ``error`` or ``skipped``, and pytest's message for the last three."""
    cases = list(ET.parse(report).getroot().iter("testcase"))
    if len(cases) != 1:
        return "error", f"the report holds {len(cases)} test cases, not 1"
    for outcome in ("failure", "error", "skipped"):
        found = cases[0].find(outcome)
        if found is not None:
            name = "failed" if outcome == "failure" else outcome
            return name, found.get("message") or ""
    return "passed", ""


def row_text(result: dict[str, Any]) -> str:
    """The table's words for a result of :func:`run_test`."""
    outcome, message = result["outcome"], result["message"]
    if outcome == "passed":
        return "passed"
    if outcome == "skipped" and "needs CUDA" in message:
        return "skipped (no GPU)"
    first = message.strip().splitlines()[0][:80] if message.strip() else ""
    return f"{outcome.upper()}: {first}" if first else outcome.upper()


def run_test(
    test: str = TEST, timeout_s: float = 300, skip_without_cuda: bool = True
) -> dict[str, Any]:
    """Run ``test`` in a child pytest; its outcome, pytest's message, exit code, seconds
    and the tail of its output (kept in the record). Without CUDA (and
    ``skip_without_cuda``): skipped, no child started."""
    import torch

    if skip_without_cuda and not torch.cuda.is_available():
        return {
            "test": test, "outcome": "skipped", "message": "needs CUDA (no child started)",
            "returncode": None, "seconds": 0.0, "output_tail": "",
        }  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.xml"
        command = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            f"--junitxml={report}", test,
        ]  # fmt: skip
        try:
            done = subprocess.run(
                command, cwd=REPO, env=child_env(), capture_output=True, text=True,
                timeout=timeout_s,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            outcome, message, code, output = "error", f"timed out after {timeout_s:g} s", None, ""
        else:
            code, output = done.returncode, done.stdout + done.stderr
            if report.is_file():
                outcome, message = outcome_of(report)
            else:
                outcome, message = "error", f"pytest exited {code} without a report"
    return {
        "test": test,
        "outcome": outcome,
        "message": message,
        "returncode": code,
        "seconds": time.perf_counter() - start,
        "output_tail": output[-2000:],
    }
