"""Preemption: SIGTERM or SIGUSR1 at a chosen step, then `--ckpt_path last`, against a run
that never stopped, bit for bit (weights, momentum buffers, every group's lr, scheduler).

The LeNet recipe (lr x0.5 at epochs 1 and 2) and the fast recipe (per-step warm-up and
decay, a narrow FastNet): 60 training images in batches of 20, so 3 steps per epoch and 9
in all. A signal sent as the batch of global step s starts stops the run after that step
(s + 1 steps done); one sent during validation stops it after that validation pass.
"""

import json
import time
from pathlib import Path

import pytest
from cli_run import LENET, ROOT, groupwise, load, quick
from test_resume import SCHEDULE, assert_same_state

pytestmark = pytest.mark.slow

FAST = str(ROOT / "configs" / "fast.yaml")
TINY = ["--model.net.init_args.widths", "[8, 16, 16]", "--model.net.init_args.stem_width", "8"]
DETERMINISTIC = ["--trainer.max_epochs", "3", "--trainer.deterministic", "true"]
RECIPES = {
    "lenet": ["--config", LENET, *SCHEDULE],
    "fast": ["--config", FAST, *TINY, *DETERMINISTIC],
}
RESUMABLE = 75  # Preemption's exit status

# (where the signal comes, the global step the checkpoint records)
POSITIONS = {
    "mid-epoch": ({"step": 4}, 5),  # 2nd batch of epoch 1
    "first-batch": ({"step": 0}, 1),
    "last-batch": ({"step": 5}, 6),  # the last batch of epoch 1: the epoch's lr step is in
    "validation": ({"during": "validation", "epoch": 1}, 6),  # end of epoch 1's validation
}
SIGNAL_TO_EXIT: dict[str, float] = {}


def signal_at(stamp: Path, signal: str = "SIGTERM", **where) -> str:
    spec = {"class_path": "fault_injection.SignalAt", "init_args": {"signal": signal,
            "stamp": str(stamp), **where}}  # fmt: skip
    return f"--trainer.callbacks+={json.dumps(spec)}"


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory) -> dict:
    finals = {}
    for name, recipe in RECIPES.items():
        root = tmp_path_factory.mktemp(f"uninterrupted-{name}")
        done = groupwise("fit", *recipe, *quick(data_dir, root))
        assert done.returncode == 0, done.stderr[-3000:]
        finals[name] = load(root / "lightning_logs/version_0/checkpoints/last.ckpt")
    return finals


def preempt_then_resume(recipe: str, data_dir: Path, root: Path, *fault: str) -> tuple:
    """The run stopped by ``fault``, then resumed: (stopped process, seconds from the
    signal to its exit, the checkpoint it left, the resumed run's final checkpoint)."""
    args = [*RECIPES[recipe], *quick(data_dir, root)]
    stopped = groupwise("fit", *args, *fault)
    exited = time.time()
    assert stopped.returncode == RESUMABLE, stopped.stderr[-3000:]
    seconds = exited - float((root / "stamp").read_text())
    saved = load(root / "lightning_logs/version_0/checkpoints/last.ckpt")
    resumed = groupwise("fit", *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load(root / "lightning_logs/version_1/checkpoints/last.ckpt")
    return stopped, seconds, saved, final


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("recipe", RECIPES)
def test_sigterm_then_resume_matches_an_uninterrupted_run(
    recipe, position, data_dir, tmp_path, uninterrupted
):
    where, step = POSITIONS[position]
    stopped, seconds, saved, final = preempt_then_resume(
        recipe, data_dir, tmp_path, signal_at(tmp_path / "stamp", **where)
    )
    assert saved["global_step"] == step  # no step lost: the one under way was finished
    assert f"Preemption (SIGTERM): saved {tmp_path}" in stopped.stderr
    assert "exit status 75: resume with --ckpt_path last" in stopped.stderr
    assert_same_state(final, uninterrupted[recipe])
    SIGNAL_TO_EXIT[f"{recipe}/{position}"] = seconds
    print(f"signal to exit, {recipe} {position}: {seconds:.2f} s")
    assert seconds < 15


def test_sigusr1_is_handled_the_same_and_other_signals_can_be_chosen(
    data_dir, tmp_path, uninterrupted
):
    fault = signal_at(tmp_path / "stamp", "SIGUSR1", step=4)
    stopped, _, saved, final = preempt_then_resume("lenet", data_dir, tmp_path, fault)
    assert saved["global_step"] == 5 and "Preemption (SIGUSR1)" in stopped.stderr
    assert_same_state(final, uninterrupted["lenet"])


def test_a_signal_left_out_of_preemption_signals_is_not_caught(data_dir, tmp_path):
    fault = signal_at(tmp_path / "stamp", "SIGUSR1", step=4)
    args = [*RECIPES["lenet"], *quick(data_dir, tmp_path), "--preemption.signals", "[SIGTERM]"]
    stopped = groupwise("fit", *args, fault)
    assert stopped.returncode == -10  # SIGUSR1's default action
    assert not list(tmp_path.glob("lightning_logs/version_0/checkpoints/*.ckpt")) or (
        load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")["global_step"] == 3
    )


def test_checkpoint_every_n_steps_then_hard_kill_resumes_exactly(data_dir, tmp_path, uninterrupted):
    """No signal (SIGKILL): `--last_checkpoint.every_n_train_steps 2` rewrote last.ckpt at
    step 4, mid-epoch 1; the resume from it is exact."""
    args = [*RECIPES["lenet"], *quick(data_dir, tmp_path)]
    kill = json.dumps({"class_path": "fault_injection.KillAtStep", "init_args": {"step": 5}})
    killed = groupwise(
        "fit", *args, "--last_checkpoint.every_n_train_steps", "2", f"--trainer.callbacks+={kill}"
    )
    assert killed.returncode == -9
    saved = load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt")
    assert saved["global_step"] == 4 and saved["epoch"] == 1
    resumed = groupwise("fit", *args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = load(tmp_path / "lightning_logs/version_1/checkpoints/last.ckpt")
    assert_same_state(final, uninterrupted["lenet"])
