"""A CPU fit touches no freshly mapped host memory in a steady training step.

glibc's adaptive thresholds hand the freed activations of each step back to the kernel and
map them afresh in the next: thousands of minor page faults per FastNet step at batch 128
(``groupwise.runtime.host_memory``). The fits run as a user runs them (``groupwise fit`` in a
subprocess: the thresholds are per process and cannot be unset), one epoch of 1,980
fabricated training images in batches of 128 (16 steps), logging every 50 steps (so no
step in it logs); the faults are counted from the start of one step to the start of the
next, and the median over the seventh to the fifteenth step is compared (the sixteenth is
a shorter batch; with the allocator left alone, their mean). Before that the heap is still
growing to the size a step needs, and now and then it still grows later (one step in a
run, by a few MiB).
"""

import json
import os
import statistics

import pytest
from cli_run import ROOT, groupwise, quick
from fake_cifar import write_image_folder

from groupwise.runtime.host_memory import allocator_configured

FAST = str(ROOT / "configs" / "fast.yaml")
PROBE = json.dumps({"class_path": "page_faults.StepFaults"})


@pytest.fixture(scope="module")
def images_2000(tmp_path_factory):
    """2,000 images (200 per class): 1,980 for training after 20 held out."""
    return write_image_folder(tmp_path_factory.mktemp("cifar2000"), n_per_class=200)


def faults_per_step(data_dir, root, **env: str) -> list[int]:
    """Minor page faults of each training step of a FastNet fit but the last."""
    out = root / "faults.json"
    done = groupwise(
        "fit",
        "--config", FAST,
        *quick(data_dir, root, "--data.batch_size=128", "--trainer.log_every_n_steps=50"),
        "--group_stats.every_n_steps=50",
        "--trainer.max_epochs=1",
        f"--trainer.callbacks+={PROBE}",
        env={"PAGE_FAULTS_OUT": str(out), **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    counts = json.loads(out.read_text())
    assert len(counts) == 16, counts
    return [later[2] - now[2] for now, later in zip(counts, counts[1:], strict=False)]


def steady(faults: list[int]) -> float:
    """The median over the seventh to the fifteenth step."""
    return statistics.median(faults[6:15])


@pytest.mark.slow  # ~13 s: a fit in a child process, its page faults read per step
def test_a_cpu_fit_touches_no_fresh_host_memory_per_step(images_2000, tmp_path):
    # With glibc's adaptive thresholds (kept by MALLOC_ARENA_MAX, which sets no threshold)
    # the same fit faults on the order of 10,000 times per step on the machines we use.
    faults = faults_per_step(images_2000, tmp_path)
    assert steady(faults) < 50, f"minor page faults per step: {faults}"


@pytest.mark.slow  # ~13 s: a fit in a child process, its page faults read per step
def test_an_allocator_configured_by_the_environment_is_left_alone(images_2000, tmp_path):
    # glibc's adaptive thresholds fault in bursts: a step maps thousands of pages afresh,
    # the next one or two none (one run: 0, 0, 1949, 3844, 0, 0, 10540, 3783, 2), so the
    # mean over the same steps, not their median, tells them from kept memory
    faults = faults_per_step(images_2000, tmp_path, MALLOC_ARENA_MAX="8")
    assert statistics.mean(faults[6:15]) > 500, f"minor page faults per step: {faults}"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"MALLOC_ARENA_MAX": "8"}, "MALLOC_ARENA_MAX"),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "GLIBC_TUNABLES"),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, "LD_PRELOAD"),
        ({"GLIBC_TUNABLES": "glibc.rtld.nns=4", "LD_PRELOAD": "libfoo.so", "HOME": "/"}, None),
    ],
)
def test_which_environments_configure_the_allocator(environ, named):
    assert allocator_configured(environ) == named


def test_no_allocator_variable_leaks_into_the_tests():
    # the fault test above runs with the environment of the test run itself
    assert allocator_configured(os.environ) is None
