"""The resume guarantees as properties over generated runs and faults (issue 21).

**Resume.** A small run (LeNet-5, 60 training images in batches of 10, 2 epochs, lr x0.5 at
epoch 1, deterministic, in this process through ``groupwise.cli.run``) of a generated shape
(gradient accumulation 1 or 2, ``val_check_interval`` 1.0 or 0.5, ``limit_train_batches``
all or 4) is stopped at a generated point: SIGTERM (or SIGUSR1) as any training batch
starts (inside an accumulation window, at an epoch's last batch), during validation
(mid-epoch too), or a kill right after a step, with ``last.ckpt`` also rewritten every k
steps. It is then resumed from the ``last.ckpt`` it left, and the final checkpoint must
equal an uninterrupted run's bit for bit: weights, momentum buffers, every group's lr,
the scheduler, the step and epoch, and the random states.

**Resume settings.** From one saved run, a resume that changes a generated setting of the
optimizer, the scheduler or the trainer that alters the trajectory is refused, the error
naming that setting; a change of logging or display settings (log interval, progress bar,
model summary) resumes.

The quick suite runs few examples (a fixed seed, so always the same cases, within ~60 s
for both properties); the ``slow`` variants (CI) run more.
"""

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cli_run import LENET, quick
from fault_injection import Killed
from hypothesis import HealthCheck, event, example, given, seed, settings
from hypothesis import strategies as st
from test_resume import assert_same_state, same

from groupwise.checkpoint.io import CheckpointError, load_checkpoint_file
from groupwise.cli import run

RESUMABLE = 75  # Preemption's exit status
BATCHES = 6  # per epoch: 60 images in batches of 10
EPOCHS = 2
SCHEDULE = [
    "--data.batch_size", "10",
    "--trainer.max_epochs", str(EPOCHS),
    "--trainer.deterministic", "true",
    "--model.optimizer.init_args.lr", "0.01",
    "--model.scheduler.init_args.milestones", "[1]",
    "--model.scheduler.init_args.gamma", "0.5",
]  # fmt: skip
LAST = "lightning_logs/version_0/checkpoints/last.ckpt"
QUICK = settings(
    max_examples=5,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SLOW = settings(QUICK, max_examples=40)


@dataclass(frozen=True)
class Shape:
    accumulate: int = 1
    val_check_interval: float = 1.0
    limit_train_batches: int | None = None  # None: all BATCHES

    @property
    def batches(self) -> int:
        return self.limit_train_batches or BATCHES

    def args(self) -> list[str]:
        args = ["--trainer.accumulate_grad_batches", str(self.accumulate),
                "--trainer.val_check_interval", str(self.val_check_interval)]  # fmt: skip
        if self.limit_train_batches:
            args += ["--trainer.limit_train_batches", str(self.limit_train_batches)]
        return args


def fit(data_dir: Path, root: Path, shape: Shape, *extra: str) -> int:
    """A fit in this process; its exit status (0, or Preemption's 75)."""
    try:
        run(["fit", "--config", LENET, *quick(data_dir, root, *SCHEDULE, *shape.args(), *extra)])
    except SystemExit as stop:
        return stop.code
    return 0


def callback(name: str, **init_args) -> str:
    spec = {"class_path": f"fault_injection.{name}", "init_args": init_args}
    return f"--trainer.callbacks+={json.dumps(spec)}"


class Runs:
    """Fresh run directories under one root, and each shape's uninterrupted final
    checkpoint, made once."""

    def __init__(self, data_dir: Path, root: Path) -> None:
        self.data_dir, self.root = data_dir, root
        self.finals: dict[Shape, dict] = {}

    def fresh(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.root))

    def uninterrupted(self, shape: Shape) -> dict:
        if shape not in self.finals:
            root = self.fresh()
            assert fit(self.data_dir, root, shape) == 0
            self.finals[shape] = load_checkpoint_file(root / LAST)
        return self.finals[shape]

    def stop_and_resume(self, shape: Shape, *fault: str) -> tuple[dict | None, dict]:
        """The run stopped by ``fault`` and resumed from its ``last.ckpt``: (the checkpoint
        it left, or None where it left none; the resumed run's final checkpoint)."""
        root = self.stopped = self.fresh()
        try:
            status = fit(self.data_dir, root, shape, *fault)
        except Killed:
            status = "killed"
        assert status in (RESUMABLE, "killed", 0), status
        saved_path = root / LAST
        if status == 0:  # a signal at the run's last batch: it finished, nothing to resume
            final = load_checkpoint_file(saved_path)
            return final, final
        saved = load_checkpoint_file(saved_path) if saved_path.is_file() else None
        resume = ["--ckpt_path", str(saved_path)] if saved is not None else []
        again = self.fresh()
        # neither the fault nor the checkpoint cadence it came with: with
        # every_n_train_steps, Lightning's last.ckpt is not rewritten at epoch ends
        assert fit(self.data_dir, again, shape, *resume) == 0
        return saved, load_checkpoint_file(again / LAST)


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory) -> Runs:
    return Runs(data_dir, tmp_path_factory.mktemp("resume-properties"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny fits run ~2x faster on one thread on a loaded 2-core machine; the
    uninterrupted and the resumed runs all run under it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_resumed_exactly(final: dict, expected: dict) -> None:
    assert_same_state(final, expected)
    assert same(final["rng_states"], expected["rng_states"])


# ---- faults ---------------------------------------------------------------------------------


@st.composite
def shapes(draw) -> Shape:
    return Shape(
        accumulate=draw(st.sampled_from([1, 2])),
        val_check_interval=draw(st.sampled_from([1.0, 0.5])),
        limit_train_batches=draw(st.sampled_from([None, 4])),
    )


@st.composite
def faults(draw, shape: Shape) -> tuple[str, ...]:
    """A signal as a training batch or a validation batch starts, or a kill after a step
    (with last.ckpt every k steps): the arguments that inject it."""
    kind = draw(st.sampled_from(["batch", "validation", "kill"]))
    stamp = str(Path(tempfile.gettempdir()) / "groupwise-signal-stamp")
    epoch = draw(st.integers(0, EPOCHS - 1))
    name = draw(st.sampled_from(["SIGTERM", "SIGUSR1"]))
    if kind == "batch":
        batch = draw(st.integers(0, shape.batches - 1))
        return (callback("SignalAt", signal=name, stamp=stamp, during="batch", epoch=epoch,
                         batch=batch),)  # fmt: skip
    if kind == "validation":
        batch = draw(st.integers(0, 1))  # 20 validation images: 2 batches
        return (callback("SignalAt", signal=name, stamp=stamp, during="validation",
                         epoch=epoch, batch=batch),)  # fmt: skip
    steps = EPOCHS * -(-shape.batches // shape.accumulate)
    every = draw(st.integers(1, 3))
    step = draw(st.integers(1, steps - 1))
    return (callback("RaiseAtStep", step=step),
            "--last_checkpoint.every_n_train_steps", str(every))  # fmt: skip


def check_resume(runs: Runs, data) -> None:
    shape = data.draw(shapes(), label="shape")
    fault = data.draw(faults(shape), label="fault")
    kind = json.loads(fault[0].split("=", 1)[1])
    event(f"fault: {kind['init_args'].get('during', 'kill')}")
    event(f"accumulate {shape.accumulate}, val_check_interval {shape.val_check_interval}")
    expected = runs.uninterrupted(shape)
    saved, final = runs.stop_and_resume(shape, *fault)
    if saved is not None and "RaiseAtStep" not in fault[0]:
        # a signal is acted on at an optimizer-step boundary: whole windows only
        done = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]
        assert done % shape.accumulate == 0 or done % shape.batches == 0, done
    assert_resumed_exactly(final, expected)


@seed(21)
@QUICK
@given(data=st.data())
def test_a_stopped_run_resumes_to_the_uninterrupted_runs_state(runs, data):
    check_resume(runs, data)


@pytest.mark.slow
@SLOW
@given(data=st.data())
def test_a_stopped_run_resumes_to_the_uninterrupted_runs_state_many(runs, data):
    check_resume(runs, data)


# ---- the cases the properties are about, as examples ----------------------------------------


def test_sigterm_inside_an_accumulation_window_finishes_the_window(runs):
    """Issue 21, item 1: SIGTERM as the first batch of a window starts (batch 2, window
    [2, 3]) saved after that batch, without the gradient accumulated so far."""
    shape = Shape(accumulate=2)
    stamp = str(runs.root / "stamp")
    fault = callback("SignalAt", signal="SIGTERM", stamp=stamp, during="batch", epoch=0, batch=2)
    saved, final = runs.stop_and_resume(shape, fault)
    assert saved["global_step"] == 2  # the window of batches 2 and 3 finished: step 2
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert progress["processed"] == 4  # batches 0-3 (Lightning completes it after the hooks)
    assert_resumed_exactly(final, runs.uninterrupted(shape))


def test_sigterm_in_a_mid_window_validation_waits_for_the_window(runs):
    """With val_check_interval 0.5 validation runs after batch 2, inside the window [2, 3]:
    a signal there is acted on after batch 3, the window's optimizer step."""
    shape = Shape(accumulate=2, val_check_interval=0.5)
    stamp = str(runs.root / "stamp")
    fault = callback("SignalAt", signal="SIGTERM", stamp=stamp, during="validation", epoch=0)
    saved, final = runs.stop_and_resume(shape, fault)
    assert saved["global_step"] == 2
    assert_resumed_exactly(final, runs.uninterrupted(shape))


def test_a_resume_after_the_last_batch_of_a_limited_epoch_starts_the_next_at_its_first(runs):
    """Found by the property: with limit_train_batches 4 (of 6), a checkpoint after epoch
    0's 4th and last batch (here SIGTERM as it starts) resumed into an epoch 1 of 2 batches
    (global step 6, not 8): the loader skipped the 4 batches of its saved position."""
    shape = Shape(limit_train_batches=4)
    stamp = str(runs.root / "stamp")
    fault = callback("SignalAt", signal="SIGTERM", stamp=stamp, during="batch", epoch=0, batch=3)
    saved, final = runs.stop_and_resume(shape, fault)
    assert saved["global_step"] == 4
    assert final["global_step"] == 8
    assert_resumed_exactly(final, runs.uninterrupted(shape))


@pytest.mark.parametrize(
    "shape, batch",
    [(Shape(), 5), (Shape(accumulate=2, val_check_interval=0.5, limit_train_batches=4), 2)],
    ids=["last batch", "last window, validation twice an epoch"],
)
def test_a_signal_at_the_runs_last_batch_lets_it_finish(runs, shape, batch):
    """Found by the property: a checkpoint saved after the run's last batch (or after the
    validation that follows it) resumed into a run with nothing left to do: no final
    validation, no final checkpoint (``last.ckpt ... does not exist``). The run now
    finishes (exit status 0) with its last validation and checkpoints."""
    stamp = str(runs.root / "stamp")
    signal = callback("SignalAt", signal="SIGTERM", stamp=stamp, during="batch", epoch=1,
                      batch=batch)  # fmt: skip
    root = runs.fresh()
    assert fit(runs.data_dir, root, shape, signal) == 0
    assert_resumed_exactly(load_checkpoint_file(root / LAST), runs.uninterrupted(shape))


def test_sigterm_before_a_mid_epoch_validation_is_acted_on_after_it(runs):
    """val_check_interval 0.5: validation after batch 2. A signal as batch 2 starts stops
    the run after that validation, so its val/acc and best checkpoint are written."""
    shape = Shape(val_check_interval=0.5)
    stamp = str(runs.root / "stamp")
    fault = callback("SignalAt", signal="SIGTERM", stamp=stamp, during="batch", epoch=0, batch=2)
    saved, final = runs.stop_and_resume(shape, fault)
    assert saved["global_step"] == 3
    (best,) = (runs.stopped / "lightning_logs/version_0/checkpoints").glob("epoch*.ckpt")
    assert load_checkpoint_file(best)["global_step"] == 3
    assert_resumed_exactly(final, runs.uninterrupted(shape))


# ---- resume settings ------------------------------------------------------------------------

# (arguments of the change, the setting the error must name); each alters the trajectory
REFUSED = {
    "lr": (["--model.optimizer.init_args.lr", "0.02"], "group features: lr"),
    "momentum": (["--model.optimizer.init_args.momentum", "0.5"], "group features: momentum"),
    "weight decay": (["--model.optimizer.init_args.weight_decay", "0.001"],
                     "group features: weight_decay"),
    "nesterov": (["--model.optimizer.init_args.nesterov", "true"], "group features: nesterov"),
    "optimizer": (["--model.optimizer", '{"class_path": "torch.optim.AdamW"}'], "optimizer:"),
    "milestones": (["--model.scheduler.init_args.milestones", "[2]"],
                   "scheduler MultiStepLR: milestones"),
    "gamma": (["--model.scheduler.init_args.gamma", "0.1"], "scheduler MultiStepLR: gamma"),
    "scheduler": (["--model.scheduler", "null"], "scheduler:"),
    "interval": (["--model.scheduler_interval", "step"], "model.scheduler_interval"),
    "accumulation": (["--trainer.accumulate_grad_batches", "3"],
                     "trainer.accumulate_grad_batches"),
    "clipping": (["--trainer.gradient_clip_val", "0.1"], "trainer.gradient_clip_val"),
    "clipping algorithm": (["--trainer.gradient_clip_val", "1.0",
                            "--trainer.gradient_clip_algorithm", "value"],
                           "trainer.gradient_clip_algorithm"),
    "batches per epoch": (["--trainer.limit_train_batches", "3"],
                          "trainer.limit_train_batches"),
    "loss reduction": (["--model.loss_reduction", "sum"], "model.loss_reduction"),
    "label smoothing": (["--model.label_smoothing", "0.1"], "model.label_smoothing"),
    "group lr scale": (["--model.param_groups", json.dumps(
        [{"name": "features", "modules": ["features"]},
         {"name": "classifier", "modules": ["classifier"], "lr_scale": 3}])],
        "group classifier: lr"),
}  # fmt: skip
# lenet.yaml's classifier lr_scale is 10 (lr 0.01 x 10 = 0.1); a scale of 3 changes the
# classifier's lr with or without the "lr" change (0.03, or 0.02 x 3 = 0.06). A scale of 5
# made the pair ("lr", "group lr scale") no change to the classifier at all (0.02 x 5 = 0.1).
ALLOWED = {
    "log interval": ["--trainer.log_every_n_steps", "3"],
    "progress bar": ["--trainer.enable_progress_bar", "true"],
    "model summary": ["--trainer.enable_model_summary", "true"],
    "group stats interval": ["--group_stats.every_n_steps", "2"],
    "test-time augmentation": ["--model.tta", "mirror"],
}
SAVED_WITH = ["--trainer.max_epochs", "1", "--trainer.gradient_clip_val", "1.0"]


@pytest.fixture(scope="module")
def saved_run(data_dir, runs) -> Path:
    """One epoch of the run, with gradient clipping (so that its algorithm is a setting)."""
    root = runs.fresh()
    assert fit(data_dir, root, Shape(), *SAVED_WITH) == 0
    return root / LAST


def check_settings_change(runs: Runs, saved: Path, changes: tuple[list[str], list[str]]) -> None:
    """Resume ``saved`` with the ``REFUSED`` and ``ALLOWED`` changes named in ``changes``."""
    refused, allowed = changes
    args = [a for c in refused for a in REFUSED[c][0]] + [a for c in allowed for a in ALLOWED[c]]
    event("refused" if refused else "allowed")
    root = runs.fresh()
    resume = [*SAVED_WITH, "--trainer.max_epochs", "2", "--ckpt_path", str(saved), *args]
    if not refused:
        assert fit(runs.data_dir, root, Shape(), *resume) == 0
        final = load_checkpoint_file(root / LAST)  # it went on from the end of epoch 0
        assert (final["epoch"], final["global_step"]) == (1, 2 * BATCHES)
        return
    with pytest.raises(CheckpointError) as error:
        fit(runs.data_dir, root, Shape(), *resume)
    message = str(error.value)
    assert message.startswith(f"checkpoint {saved} was trained with other ")
    for change in refused:
        assert f"  {REFUSED[change][1]}" in message, (change, message)
    for key in ("log_every_n_steps", "progress_bar", "model_summary", "every_n_steps", "tta"):
        assert key not in message  # what may change is not named
    assert not list(root.rglob("*.ckpt"))  # stopped before training: nothing saved


def compatible(refused: list[str]) -> bool:
    """Another optimizer class takes other options, no scheduler has none, and both
    clipping changes set the clip value: such a pair would not be two changes."""
    return len(refused) < 2 or not (
        {"optimizer", "scheduler"} & set(refused)
        or {"clipping", "clipping algorithm"} <= set(refused)
    )


changes = st.tuples(
    st.lists(st.sampled_from(sorted(REFUSED)), max_size=2, unique=True).filter(compatible),
    st.lists(st.sampled_from(sorted(ALLOWED)), max_size=2, unique=True),
).filter(lambda c: c[0] or c[1])


@seed(21)
@settings(QUICK, max_examples=15)
@given(changes=changes)
@example(changes=(["lr", "group lr scale"], []))  # both groups' lr change, each named
def test_a_resume_refuses_each_change_of_the_trajectory_and_allows_the_rest(
    runs, saved_run, changes
):
    check_settings_change(runs, saved_run, changes)


@pytest.mark.slow
@settings(SLOW, max_examples=40)
@given(changes=changes)
def test_a_resume_refuses_each_change_of_the_trajectory_and_allows_the_rest_many(
    runs, saved_run, changes
):
    check_settings_change(runs, saved_run, changes)
