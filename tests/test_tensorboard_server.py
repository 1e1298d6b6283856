"""The real TensorBoard server, started on a run's logs, lists every group's lr tag."""

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cli_run import LENET, quick
from fake_cifar import write_image_folder

from groupwise.cli import run

pytestmark = pytest.mark.slow

TENSORBOARD = str(Path(sys.executable).with_name("tensorboard"))
EXPECTED = {"lr-SGD/features", "lr-SGD/classifier"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scalar_tags(port: int, deadline: float) -> dict:
    """``/data/plugin/scalars/tags`` once it lists a run with the expected tags (or the
    last answer at the deadline); the server loads event files in the background."""
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
    answer: dict = {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                answer = json.load(response)
            if any(set(tags) >= EXPECTED for tags in answer.values()):
                return answer
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # not listening yet
        time.sleep(0.5)
    return answer


def test_tensorboard_lists_every_group_lr(tmp_path):
    data_dir = write_image_folder(tmp_path / "cifar", n_per_class=8)
    cli = run(["fit", "--config", LENET, *quick(data_dir, tmp_path, "--trainer.max_epochs", "1")])
    logdir = tmp_path / "lightning_logs"
    assert Path(cli.trainer.log_dir) == logdir / "version_0"
    port = free_port()
    server = subprocess.Popen(
        [TENSORBOARD, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        answer = scalar_tags(port, deadline=time.monotonic() + 90)
        assert server.poll() is None, server.stderr.read()[-3000:]
        assert set(answer) == {"version_0"}, answer
        assert set(answer["version_0"]) >= EXPECTED, sorted(answer["version_0"])
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
