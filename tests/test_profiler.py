"""The default profiler: Lightning's "no profiling" without a context manager per call;
a profiler the user sets is kept and still profiles."""

from cli_run import LENET, quick
from lightning.pytorch.profilers import SimpleProfiler

from groupwise.cli import run
from groupwise.runtime.profiler import NoProfiler


def test_the_default_profiler_hands_out_one_shared_no_op_context(data_dir, tmp_path):
    cli = run(["--config", LENET, *quick(data_dir, tmp_path)], run=False)
    profiler = cli.trainer.profiler
    assert type(profiler) is NoProfiler
    assert profiler.profile("run_training_batch") is profiler.profile("optimizer_step")
    with profiler.profile("anything") as entered:
        assert entered is None


def test_a_profiler_set_by_the_user_is_kept_and_profiles(data_dir, tmp_path):
    args = [*quick(data_dir, tmp_path), "--trainer.max_steps", "2", "--trainer.profiler", "simple"]
    args += ["--trainer.limit_val_batches", "0"]
    cli = run(["fit", "--config", LENET, *args])
    profiler = cli.trainer.profiler
    assert type(profiler) is SimpleProfiler
    assert len(profiler.recorded_durations["run_training_batch"]) == 2
