"""DDP stops together: a NaN loss on one rank stops every rank at the same step, with the
same message, and no checkpoint is written after it.

Two gloo CPU processes, started the way a cluster scheduler or ``torchrun`` starts them
(each with ``LOCAL_RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR``/``MASTER_PORT``, a port the OS
picks free), so that each process's exit status and output are its own. 60 training images,
batches of 5 per rank: 6 steps per epoch. Only rank 1 gets a NaN batch, at the first batch
of epoch 1 (global step 7, counted after it); the gradient all-reduce carries the NaN into
rank 0's weights, whose loss is NaN from step 8 on. ``FiniteLossGuard`` reads its check on
the logging steps (every 4 steps: after steps 4, 8, ...), so both ranks find a bad loss at
step 8 and must agree on the first one: rank 1's, at step 7.
"""

import json
import os
import re
import socket
import subprocess
import time

import pytest
import torch
from cli_run import GROUPWISE, LENET, ROOT, quick
from fake_cifar import write_image_folder

from groupwise.checkpoint.io import load_checkpoint_file

pytestmark = pytest.mark.slow

MESSAGE = re.compile(r"^(?:\[rank \d\] )?error: (training loss .*)", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_nan_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    data_dir = write_image_folder(tmp_path / "cifar", n_per_class=8)
    root = tmp_path / "run"
    poison = {
        "class_path": "fault_injection.NaNBatchOnRank",
        "init_args": {"rank": 1, "step": 6, "out": str(tmp_path)},
    }
    args = [GROUPWISE, "fit", "--config", LENET]
    args += quick(data_dir, root, "--data.batch_size=5", "--trainer.max_epochs=3")
    args += ["--trainer.log_every_n_steps=4", "--trainer.strategy=ddp", "--trainer.devices=2"]
    args += [f"--trainer.callbacks+={json.dumps(poison)}"]
    port = str(free_port())
    ranks, logs = [], []
    for rank in (0, 1):
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT / "tests"),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            WORLD_SIZE="2",
            NODE_RANK="0",
            LOCAL_RANK=str(rank),
        )
        log = open(tmp_path / f"rank{rank}.log", "w")  # noqa: SIM115 (closed below)
        ranks.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
        logs.append(log)
    ended: dict[int, float] = {}
    deadline = time.time() + 600  # a hang fails the test instead of stalling the suite
    while len(ended) < 2 and time.time() < deadline:
        for rank, process in enumerate(ranks):
            if rank not in ended and process.poll() is not None:
                ended[rank] = time.time()
        time.sleep(0.2)
    for process, log in zip(ranks, logs, strict=True):
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()
    outputs = [(tmp_path / f"rank{rank}.log").read_text() for rank in (0, 1)]
    assert len(ended) == 2, "a rank still ran 10 minutes after the start:\n" + outputs[0][-3000:]
    injected = float((tmp_path / "injected.txt").read_text())
    for rank, process in enumerate(ranks):
        assert process.returncode != 0, f"rank {rank} exited 0:\n{outputs[rank][-3000:]}"
        assert ended[rank] - injected < 60, (
            f"rank {rank} stopped {ended[rank] - injected:.0f} s later"
        )
    messages = [MESSAGE.findall(output) for output in outputs]
    assert messages[0] == messages[1], outputs
    (message,) = set(messages[0])
    assert message.startswith(
        "training loss is nan at epoch 1, batch 0, global step 7 on rank 1; learning rates: "
        "features=0.005, classifier=0.05. Training stopped; the last good checkpoint is kept: "
    )
    # nothing written after the NaN: the checkpoints of epoch 0 (6 steps), finite
    checkpoints = sorted((root / "lightning_logs/version_0/checkpoints").glob("*.ckpt"))
    names = [path.name for path in checkpoints]
    assert len(names) == 2 and names[0].startswith("epoch000-") and names[1] == "last.ckpt"
    for path in checkpoints:
        checkpoint = load_checkpoint_file(path)
        assert (checkpoint["epoch"], checkpoint["global_step"]) == (0, 6), path
        assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values()), path
        assert str(path) in message
