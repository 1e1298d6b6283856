"""Running the `groupwise` command in tests, and reading what a run leaves behind."""

import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

ROOT = Path(__file__).resolve().parents[1]
LENET = str(ROOT / "configs" / "lenet.yaml")
RESNET18 = str(ROOT / "configs" / "resnet18.yaml")
GROUPWISE = str(Path(sys.executable).with_name("groupwise"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


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
    full = subprocess_env(**(env or {}))
    return subprocess.run([GROUPWISE, *args], capture_output=True, text=True, env=full)


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment a `groupwise` subprocess gets: ours, tests/ importable for fault
    injection, this checkout's package, no cluster variables of the machine running the
    tests and no ``GROUPWISE_DEBUG``, plus ``extra``."""
    drop = ("SLURM_", "TORCHELASTIC_", "GROUPWISE_DEBUG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    # src/ too: the package of this checkout, not the one the environment has installed
    # (an editable install points to another checkout's src/)
    path = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src")])
    return dict(env, PYTHONPATH=path, **extra)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_all(commands: Sequence[Sequence[str]], envs: Sequence[Mapping[str, str]], cwd: Path):
    """Start every command at once, wait for all (10 minutes at most); their completed
    processes, in order."""
    procs = [
        subprocess.Popen(
            list(c), env=dict(e), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for c, e in zip(commands, envs, strict=True)
    ]
    done = []
    for command, proc in zip(commands, procs, strict=True):
        try:
            out, err = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise
        done.append(subprocess.CompletedProcess(list(command), proc.returncode, out, err))
    return done


def torchrun_nodes(
    nnodes: int, args: Sequence[str], cwd: Path, **env: str
) -> list[subprocess.CompletedProcess]:
    """`python -m groupwise ARGS` on ``nnodes`` torchrun agents, one process each, as on
    ``nnodes`` machines: c10d rendezvous on 127.0.0.1 at a free port, node i's arguments
    with every ``{node}`` replaced by i; ``env``: extra environment variables."""
    endpoint = f"127.0.0.1:{free_port()}"
    commands = [
        [
            TORCHRUN,
            "--nnodes",
            str(nnodes),
            "--nproc-per-node",
            "1",
            "--node-rank",
            str(node),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-id",
            "groupwise-test",
            "-m",
            "groupwise",
            *(a.replace("{node}", str(node)) for a in args),
        ]  # fmt: skip
        for node in range(nnodes)
    ]
    return run_all(commands, [subprocess_env(**env)] * nnodes, cwd)


def slurm_env(ntasks: int, task: int, port: int) -> dict[str, str]:
    """The variables ``srun`` sets for task ``task`` of ``ntasks``, one task per node, on
    nodes that are all this machine (127.0.0.1, 127.0.0.2, ...: every 127.x address is
    the loopback). Lightning's ``SLURMEnvironment`` derives the rendezvous port from the
    job id (15000 + its last four digits), so the id is chosen to give ``port``."""
    if not 15000 <= port < 25000:
        raise ValueError(f"SLURM's port scheme reaches only 15000-24999, not {port}")
    return {
        "SLURM_JOB_ID": f"77{port - 15000:04d}",
        "SLURM_JOB_NAME": "groupwise",
        "SLURM_NTASKS": str(ntasks),
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": str(ntasks),
        "SLURM_JOB_NUM_NODES": str(ntasks),
        "SLURM_NODELIST": ",".join(f"127.0.0.{i + 1}" for i in range(ntasks)),
        "SLURM_PROCID": str(task),
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": str(task),
    }


def free_slurm_port() -> int:
    """A free port in the range SLURM's job-id scheme gives (15000-24999)."""
    start = 15000 + os.getpid() % 10000  # other test processes start elsewhere
    for port in [*range(start, 25000), *range(15000, start)]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 15000-24999")


def srun(
    ntasks: int, args: Sequence[str], cwd: Path, **env: str
) -> list[subprocess.CompletedProcess]:
    """`groupwise ARGS` as ``srun --ntasks-per-node 1 --nodes NTASKS`` starts it: one
    process per task with SLURM's variables (see ``slurm_env``), each task's arguments
    with ``{node}`` replaced by its node id; ``env``: extra environment variables."""
    port = free_slurm_port()
    commands = [
        [GROUPWISE, *(a.replace("{node}", str(task)) for a in args)] for task in range(ntasks)
    ]
    envs = [subprocess_env(**slurm_env(ntasks, task, port), **env) for task in range(ntasks)]
    return run_all(commands, envs, cwd)


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
