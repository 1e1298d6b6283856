"""`groupwise sweep` with real processes and real storage: two workers on one SQLite file
run every trial exactly once; a worker SIGKILLed in the middle of a trial, then the same
command: the trial is retried and its fit resumes from its own checkpoint, ending with the
weights of a fit that was never interrupted; a worker SIGTERMed in the middle of a trial
(Preemption saves after the step under way, exit 75), then the same command: the trial is
taken up again at the next step, no step lost, with the same final weights; two workers on
a PostgreSQL server started here on 127.0.0.1 (installed by scripts/postgres_for_tests.sh)."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
import torch
from cli_run import LENET, ROOT, free_port, groupwise, load, quick

pytestmark = pytest.mark.slow
LR = "model.optimizer.init_args.lr"
RESUMABLE = 75  # Preemption's exit status


def sweep(data_dir: Path, root: Path, *extra: str):
    space = root / "space.yaml"
    space.write_text(json.dumps({LR: {"log_float": [0.005, 0.05]}}))
    return groupwise(
        "sweep", "--config", LENET, "--space", str(space), "--dir", str(root / "sweep"),
        *quick(data_dir, root / "unused"), "--trainer.max_epochs", "2", *extra,
    )  # fmt: skip


def study_of(root: Path, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(
        study_name="space", storage=storage or f"sqlite:///{root}/sweep/study.db"
    )


def assert_each_trial_ran_once(root: Path, trials: int) -> None:
    for number in range(trials):
        runs = list((root / f"sweep/trial_{number:04d}/lightning_logs").iterdir())
        assert [r.name for r in runs] == ["version_0"]


def test_two_workers_on_one_sqlite_file_run_every_trial_once(data_dir, tmp_path):
    done = sweep(data_dir, tmp_path, "--trials", "4", "--workers", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    trials = study_of(tmp_path).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert_each_trial_ran_once(tmp_path, 4)


def test_a_killed_worker_s_trial_is_retried_and_resumes_from_its_checkpoint(data_dir, tmp_path):
    """3 steps per epoch, 6 in all; last.ckpt after every step; SIGKILL after step 4."""
    stamp = tmp_path / "killed"
    kill = {"class_path": "sweep_faults.KillOnceAtStep",
            "init_args": {"step": 4, "stamp": str(stamp)}}  # fmt: skip
    args = ["--trials", "2", "--heartbeat", "1", "--last_checkpoint.every_n_train_steps", "1",
            f"--trainer.callbacks+={json.dumps(kill)}"]  # fmt: skip
    killed = sweep(data_dir, tmp_path, *args)
    assert killed.returncode == -9 and stamp.read_text() == "4"
    run = tmp_path / "sweep/trial_0000"
    saved = load(run / "lightning_logs/version_0/checkpoints/last.ckpt")
    again = sweep(data_dir, tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = study_of(tmp_path).get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1  # the stopped one
    stopped = next(t for t in trials if t.state.name == "FAIL")
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == stopped.number)
    assert retry.state.name == "COMPLETE" and retry.user_attrs["run_dir"] == str(run)
    assert f"trial {retry.number} retries trial_0000: its fit resumes" in again.stdout
    resumed_from = saved["global_step"]
    print(f"killed after step 4, resumed from step {resumed_from}: {4 - resumed_from} lost")
    assert resumed_from >= 3  # at most the step under way is lost
    # the resumed fit ends with the weights of the same config's uninterrupted fit
    whole = groupwise("fit", "--config", str(run / "config.yaml"),
                      "--trainer.default_root_dir", str(tmp_path / "whole"))  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]
    final = load(run / "lightning_logs/version_1/checkpoints/last.ckpt")
    reference = load(tmp_path / "whole/lightning_logs/version_0/checkpoints/last.ckpt")
    assert final["global_step"] == reference["global_step"] == 6
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name
    assert "STOPPED (retried as" in (tmp_path / "sweep/summary.md").read_text()


@pytest.mark.parametrize("signal", ["SIGTERM", "SIGUSR1"])
def test_a_preempted_worker_s_trial_is_taken_up_again_at_the_next_step(signal, data_dir, tmp_path):
    """3 steps per epoch, 6 in all; SIGTERM (or SIGUSR1) as step 4 (0-based, epoch 1)
    starts: Preemption finishes that step, saves last.ckpt at global step 5 and the worker
    exits 75; the same command again takes the trial up at step 5, and its fit ends as an
    uninterrupted one."""
    stamp, steps = tmp_path / "signalled", tmp_path / "steps.log"
    term = {"class_path": "sweep_faults.SignalOnceAtStep",
            "init_args": {"signal": signal, "step": 4, "stamp": str(stamp)}}  # fmt: skip
    log = {"class_path": "sweep_faults.StepLog", "init_args": {"path": str(steps)}}
    args = ["--trials", "2", "--heartbeat", "1", f"--trainer.callbacks+={json.dumps(term)}",
            f"--trainer.callbacks+={json.dumps(log)}"]  # fmt: skip
    stopped = sweep(data_dir, tmp_path, *args)
    assert stopped.returncode == RESUMABLE and stamp.read_text() == "4", stopped.stderr[-3000:]
    assert f"Preemption ({signal}): saved" in stopped.stderr
    assert [t.state.name for t in study_of(tmp_path).get_trials()] == ["RUNNING"]
    run = tmp_path / "sweep/trial_0000"
    saved = load(run / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert saved["global_step"] == 5  # the step under way when the signal came was finished
    again = sweep(data_dir, tmp_path, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = study_of(tmp_path).get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1  # the stopped one
    stopped_trial = next(t for t in trials if t.state.name == "FAIL")
    assert stopped_trial.number == 0 and "error" not in stopped_trial.user_attrs
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state.name == "COMPLETE" and retry.user_attrs["run_dir"] == str(run)
    assert f"trial {retry.number} retries trial_0000: its fit resumes" in again.stdout
    # trial 0's steps, by process: 0-4 in the signalled worker, 5 in the next one
    taken: dict[str, list[int]] = {}
    for pid, root, step in (line.split() for line in steps.read_text().splitlines()):
        if root == str(run):
            taken.setdefault(pid, []).append(int(step))
    assert list(taken.values()) == [[0, 1, 2, 3, 4], [5]]
    done, resumed_at = len(next(iter(taken.values()))), list(taken.values())[1][0]
    lost = done - saved["global_step"]  # steps taken before the exit, not in the checkpoint
    print(f"{signal} as step 4 started: {done} steps done, saved at {saved['global_step']},"
          f" resumed at {resumed_at}: {lost} lost")  # fmt: skip
    # the resumed fit ends with the weights of the same config's uninterrupted fit
    whole = groupwise("fit", "--config", str(run / "config.yaml"),
                      "--trainer.default_root_dir", str(tmp_path / "whole"))  # fmt: skip
    assert whole.returncode == 0, whole.stderr[-3000:]
    final = load(run / "lightning_logs/version_1/checkpoints/last.ckpt")
    reference = load(tmp_path / "whole/lightning_logs/version_0/checkpoints/last.ckpt")
    assert final["global_step"] == reference["global_step"] == 6
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), name
    assert "STOPPED (retried as" in (tmp_path / "sweep/summary.md").read_text()


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


@pytest.fixture
def postgres_url():
    """A PostgreSQL server on 127.0.0.1 at a free port, run by the unprivileged
    ``postgres`` user from a temporary folder, stopped and removed afterwards."""
    if postgres_bin() is None or shutil.which("runuser") is None:
        if os.geteuid() != 0:
            pytest.skip("PostgreSQL is not installed and installing it needs root")
        subprocess.run(["bash", str(ROOT / "scripts/postgres_for_tests.sh"), sys.executable],
                       check=True)  # fmt: skip
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        subprocess.run(["bash", str(ROOT / "scripts/postgres_for_tests.sh"), sys.executable],
                       check=True)  # fmt: skip
    bin_dir = postgres_bin()
    home = Path(tempfile.mkdtemp(prefix="groupwise-pg-"))
    shutil.chown(home, "postgres")
    port = free_port()

    def as_postgres(*command: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *command], check=True,
                       capture_output=True)  # fmt: skip

    as_postgres(str(bin_dir / "initdb"), "-D", f"{home}/data", "--auth=trust", "-U", "postgres")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {home}"
    as_postgres(str(bin_dir / "pg_ctl"), "-D", f"{home}/data", "-o", options, "-w",
                "-l", f"{home}/log", "start")  # fmt: skip
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        as_postgres(str(bin_dir / "pg_ctl"), "-D", f"{home}/data", "-m", "fast", "stop")
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_on_a_postgresql_server_run_every_trial_once(data_dir, tmp_path, postgres_url):
    done = sweep(data_dir, tmp_path, "--trials", "4", "--workers", "2", "--storage", postgres_url)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = study_of(tmp_path, postgres_url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert_each_trial_ran_once(tmp_path, 4)
