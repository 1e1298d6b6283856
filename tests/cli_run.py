"""Running the `groupwise` command in tests, and reading what a run leaves behind."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

ROOT = Path(__file__).resolve().parents[1]
LENET = str(ROOT / "configs" / "lenet.yaml")
RESNET18 = str(ROOT / "configs" / "resnet18.yaml")
GROUPWISE = str(Path(sys.executable).with_name("groupwise"))


def quick(data_dir: Path, root: Path, *extra: str) -> list[str]:
    """Arguments for a small CPU run: 60 train / 20 val images in batches of 20."""
    return [
        "--data.data_dir", str(data_dir),
        "--data.val_size", "20",
        "--data.batch_size", "20",
        "--trainer.default_root_dir", str(root),
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.log_every_n_steps", "1",
        *extra,
    ]  # fmt: skip


def groupwise(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`groupwise ARGS` as a user runs it, with tests/ importable for fault injection;
    ``env`` adds variables (``GROUPWISE_DEBUG`` is unset unless given there)."""
    base = {k: v for k, v in os.environ.items() if k != "GROUPWISE_DEBUG"}
    full = {**base, "PYTHONPATH": str(ROOT / "tests"), **(env or {})}
    return subprocess.run([GROUPWISE, *args], capture_output=True, text=True, env=full)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a TensorBoard run as (step, value) pairs, via tensorboard's reader."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def f32(values: list[float]) -> list[float]:
    """Values as TensorBoard stores them (float32)."""
    return [float(torch.tensor(v, dtype=torch.float32)) for v in values]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def tensorboard_hparams(run_dir: Path) -> dict:
    """The hyper-parameters TensorBoard's hparams tab shows for a run."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    for content in events.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            hparams = data.session_start_info.hparams  # each value: one of number/string/bool
            return {key: getattr(value, value.WhichOneof("kind")) for key, value in hparams.items()}
    return {}
