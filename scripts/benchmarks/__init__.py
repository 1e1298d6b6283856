"""The benchmarks of ``scripts/bench.py``, one module each; how to write one is in
``benchmarks/harness.py``. Adding one is its module and one line here."""

#: subcommand name -> module (imported only when that subcommand runs)
REGISTRY: dict[str, str] = {
    "fast": "benchmarks.fast",
    "ema": "benchmarks.ema",
    "parity": "benchmarks.parity",
    "step_time": "benchmarks.step_time",
    "step_ops": "benchmarks.step_ops",
    "recipes": "benchmarks.recipes",
    "loader": "benchmarks.loader",
    "memory": "benchmarks.memory",
    "host_memory": "benchmarks.host_memory",
    "group_stats": "benchmarks.group_stats",
    "step_cost": "benchmarks.step_cost",
    "muon_ns": "benchmarks.muon_ns",
    "airbench": "benchmarks.airbench",
    "airbench_fit": "benchmarks.airbench_fit",
    "gpu": "benchmarks.gpu",
}
