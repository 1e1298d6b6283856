"""DDP on CPU (gloo) against one process, with the same global batch and seed; and the same
DDP run launched as two nodes, by torchrun and by SLURM, on this one machine.

60 training images, 20 validation images; one process takes batches of 20, each of the
two DDP ranks batches of 10, so every optimizer step averages the same 20 images. The same
for the batch-norm net of the fast recipe (narrow), which normalises each rank's half batch
with its own statistics (no ``sync_batchnorm``: torch runs SyncBatchNorm on GPUs only), and
a DDP run whose 61 training and 19 validation images do not divide by 2.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from cli_run import LENET, ROOT, groupwise, load, quick, scalars, srun, torchrun_nodes
from fake_cifar import write_image_folder

pytestmark = pytest.mark.slow

FAST = str(ROOT / "configs" / "fast.yaml")
EPOCHS = ["--trainer.max_epochs", "3", "--model.scheduler.init_args.milestones", "[1, 2]"]
FAST_EPOCHS = ["--trainer.max_epochs", "3", "--model.net.init_args.widths", "[8, 16, 16]"]
FAST_EPOCHS += ["--model.net.init_args.stem_width", "8"]
DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2"]
RUNS = {
    "single": [LENET, *EPOCHS, "--data.batch_size", "20"],
    "ddp": [LENET, *EPOCHS, "--data.batch_size", "10", *DDP],
    "padded": [LENET, *EPOCHS, "--data.batch_size", "10", "--data.val_size", "19", *DDP],
    "fast_single": [FAST, *FAST_EPOCHS, "--data.batch_size", "20"],
    "fast_ddp": [FAST, *FAST_EPOCHS, "--data.batch_size", "10", *DDP],
}
TWO_NODES = ["--data.batch_size", "10", "--trainer.strategy", "ddp"]
TWO_NODES += ["--trainer.num_nodes", "2", "--trainer.devices", "1"]


def record(out: Path) -> str:
    spec = {"class_path": "fault_injection.RecordRank", "init_args": {"out": str(out)}}
    return f"--trainer.callbacks+={json.dumps(spec)}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("cifar"), n_per_class=8)


def results(root: Path, ranks: Path) -> dict:
    """What a run under ``root`` left: each rank's record (in ``ranks``), the TensorBoard
    scalars, last.ckpt. Under SLURM the run directory is ``version_<job id>``."""
    (run,) = (root / "lightning_logs").iterdir()
    return {
        "ranks": [load(path) for path in sorted(ranks.glob("rank*.pt"))],
        "scalars": scalars(run),
        "last": load(run / "checkpoints/last.ckpt"),
        "run": run,
    }


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict:
    found = {}
    for name, (config, *extra) in RUNS.items():
        root = tmp_path_factory.mktemp(name)
        args = quick(data, root, *extra, record(root / "ranks"))
        done = groupwise("fit", "--config", config, *args)
        assert done.returncode == 0, done.stderr[-4000:]
        found[name] = results(root, root / "ranks")
    return found


def two_node_run(data: Path, root: Path, launch, environment: str) -> dict:
    """The DDP run on two nodes started by ``launch`` (``torchrun_nodes`` or ``srun``), each
    node with its own ``default_root_dir`` (``root/node0``, ``root/node1``) as on machines
    that share no disk. One thread per process, as Lightning gives each of the two local
    ranks on this 2-core machine: another thread count sums the convolutions in another
    order (and so differs in the last bits)."""
    args = quick(data, root / "node{node}", *EPOCHS, *TWO_NODES, record(root / "ranks"))
    command = ["fit", "--config", LENET, *args]
    for node, done in enumerate(launch(2, command, root, OMP_NUM_THREADS="1")):
        assert done.returncode == 0, f"node {node}:\n{done.stderr[-4000:]}"
    found = results(root / "node0", root / "ranks")
    assert [rank["node_rank"] for rank in found["ranks"]] == [0, 1]
    # Lightning's own cluster detection wired the ranks up
    assert [rank["environment"] for rank in found["ranks"]] == [environment] * 2
    return {**found, "root": root}


@pytest.fixture(scope="module")
def torchrun_run(data, tmp_path_factory) -> dict:
    return two_node_run(
        data, tmp_path_factory.mktemp("torchrun"), torchrun_nodes, "TorchElasticEnvironment"
    )


@pytest.fixture(scope="module")
def slurm_run(data, tmp_path_factory) -> dict:
    return two_node_run(data, tmp_path_factory.mktemp("slurm"), srun, "SLURMEnvironment")


def test_each_rank_sees_a_disjoint_half_of_the_training_data_each_epoch(runs):
    rank0, rank1 = runs["ddp"]["ranks"]
    (single,) = runs["single"]["ranks"]
    for epoch in range(3):
        seen0, seen1 = rank0["seen"][epoch], rank1["seen"][epoch]
        assert len(seen0) == len(seen1) == 30
        assert not set(seen0) & set(seen1)
        assert set(seen0) | set(seen1) == set(range(60))
        # Together the ranks walk the one-process order: step k averages the same images.
        order = single["seen"][epoch]
        for step in range(3):
            part = slice(10 * step, 10 * step + 10)
            assert set(seen0[part] + seen1[part]) == set(order[20 * step : 20 * step + 20])


def test_weights_are_identical_across_ranks(runs):
    rank0, rank1 = runs["ddp"]["ranks"]
    for key, value in rank0["state_dict"].items():
        assert torch.equal(value, rank1["state_dict"][key]), key


def test_logged_metrics_are_synchronised_across_ranks(runs):
    rank0, rank1 = runs["ddp"]["ranks"]
    for name in ("val/acc", "val/loss", "train/acc"):
        assert rank0["metrics"][name] == rank1["metrics"][name], name
    # 20 validation images: the synchronised accuracy is a whole number of them.
    right = rank0["metrics"]["val/acc"] * 20
    assert right == pytest.approx(round(right))


def test_two_processes_match_one_process(runs):
    """Same global batch, seed and augmentation: the same training up to float summation
    order. Stated tolerance: weights within 1e-5, validation accuracy within one image."""
    single, ddp = runs["single"], runs["ddp"]
    for tag in ("lr-SGD/features", "lr-SGD/classifier", "lr-SGD/features-momentum"):
        assert ddp["scalars"][tag] == single["scalars"][tag], tag
    for key, value in single["last"]["state_dict"].items():
        torch.testing.assert_close(ddp["last"]["state_dict"][key], value, atol=1e-5, rtol=1e-4)
    accuracy = [run["ranks"][0]["metrics"]["val/acc"] for run in (single, ddp)]
    assert abs(accuracy[0] - accuracy[1]) <= 1 / 20


@pytest.mark.parametrize("launch", ["torchrun_run", "slurm_run"])
def test_two_nodes_train_exactly_as_two_local_processes(runs, launch, request):
    """Two torchrun agents (c10d rendezvous) or two SLURM tasks, one process per node: the
    same images per rank and step, the same lrs and bit-identical weights as the two ranks
    on one node that `--trainer.devices 2` starts."""
    nodes, local = request.getfixturevalue(launch), runs["ddp"]
    for got, want in zip(nodes["ranks"], local["ranks"], strict=True):
        assert got["seen"] == want["seen"]
        assert got["metrics"] == want["metrics"]
    assert nodes["scalars"]["lr-SGD/features"] == local["scalars"]["lr-SGD/features"]
    assert nodes["scalars"]["lr-SGD/classifier"] == local["scalars"]["lr-SGD/classifier"]
    for key, value in local["last"]["state_dict"].items():
        assert torch.equal(nodes["last"]["state_dict"][key], value), key


@pytest.mark.parametrize("launch", ["torchrun_run", "slurm_run"])
def test_two_nodes_write_one_run_directory_from_rank_zero_only(launch, request):
    nodes = request.getfixturevalue(launch)
    root = nodes["root"]
    # node 1 never created its root directory: no logs, config or checkpoints there
    assert not (root / "node1").exists()
    run = nodes["run"]
    assert list((root / "node0/lightning_logs").iterdir()) == [run]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    rank0, rank1 = nodes["ranks"]
    assert rank1["saves"] == []
    saved = {Path(p) for p in rank0["saves"]}
    assert {p for p in (run / "checkpoints").iterdir()} <= saved
    assert run / "checkpoints/last.ckpt" in saved


def test_slurm_preemption_signal_stops_both_tasks_at_one_step_and_resumes_exactly(
    data, tmp_path, slurm_run
):
    """SIGUSR1 (`#SBATCH --signal=SIGUSR1@90`) reaching task 1 alone, as the batch of step 4
    starts: both tasks finish that step, rank 0 writes last.ckpt, Lightning's SLURM
    auto-requeue handler runs at that same boundary (its hpc checkpoint, `scontrol
    requeue`, absent here), both exit 75; `--ckpt_path last` on both tasks then ends with
    the weights of the run that never stopped. The tasks share one root directory, as on
    a cluster's shared filesystem."""
    spec = {
        "class_path": "fault_injection.SignalAt",
        "init_args": {"signal": "SIGUSR1", "stamp": str(tmp_path / "stamp"), "step": 4, "rank": 1},
    }
    args = ["fit", "--config", LENET, *quick(data, tmp_path / "root", *EPOCHS, *TWO_NODES)]
    stopped = srun(
        2, [*args, f"--trainer.callbacks+={json.dumps(spec)}"], tmp_path, OMP_NUM_THREADS="1"
    )
    assert [done.returncode for done in stopped] == [75, 75], stopped[0].stderr[-3000:]
    assert "Preemption (SIGUSR1): saved" in stopped[0].stderr
    assert "Requeuing SLURM job" in stopped[0].stderr  # Lightning's handler, at the boundary
    (run,) = (tmp_path / "root/lightning_logs").iterdir()
    assert load(run / "checkpoints/last.ckpt")["global_step"] == 5
    (hpc,) = (tmp_path / "root").glob("hpc_ckpt_*.ckpt")
    assert load(hpc)["global_step"] == 5

    resumed = srun(2, [*args, "--ckpt_path", "last"], tmp_path, OMP_NUM_THREADS="1")
    assert [done.returncode for done in resumed] == [0, 0], resumed[0].stderr[-3000:]
    (second,) = set((tmp_path / "root/lightning_logs").iterdir()) - {run}
    final = load(second / "checkpoints/last.ckpt")
    assert final["global_step"] == 9
    for key, value in slurm_run["last"]["state_dict"].items():
        assert torch.equal(final["state_dict"][key], value), key


def test_train_loss_is_the_mean_over_ranks(runs):
    """Each logged ``train/loss`` of the 2 ranks (each the mean over its 10 images) is the
    mean over the ranks, reduced on the device on the logging steps: the one-process curve
    over the same 20 images. Stated tolerance: 1e-5 (float32 summation order; the weights
    themselves agree within 1e-5)."""
    single, ddp = runs["single"]["scalars"]["train/loss"], runs["ddp"]["scalars"]["train/loss"]
    assert [step for step, _ in ddp] == [step for step, _ in single] == list(range(9))
    for (step, two), (_, one) in zip(ddp, single, strict=True):
        assert abs(two - one) <= 1e-5, (step, two, one)


def test_batch_norm_ranks_use_their_own_statistics_without_sync_batchnorm(runs):
    """The README's warning: a batch-norm net on 2 ranks with per-device statistics is
    not the one-process training at the same global batch (each rank normalises 10 images,
    not 20). The LeNet runs above agree within 1e-5; these differ by far more."""
    single, ddp = runs["fast_single"]["last"], runs["fast_ddp"]["last"]
    gap = max(
        (ddp["state_dict"][key].float() - value.float()).abs().max().item()
        for key, value in single["state_dict"].items()
        if value.is_floating_point()
    )
    assert gap > 1e-3
    rank0, rank1 = runs["fast_ddp"]["ranks"]  # the ranks still agree with each other
    for key, value in rank0["state_dict"].items():
        assert torch.equal(value, rank1["state_dict"][key]), key


def test_a_dataset_that_does_not_divide_by_the_ranks_is_padded_with_repeated_images(runs):
    """61 training and 19 validation images on 2 ranks: Lightning's DistributedSampler gives
    each rank ceil(n / 2) images, repeating the first image(s) of the epoch's order. Each
    epoch trains on 62 images (one twice: the first of the epoch's permutation, the one a
    single process would also start with), and validation evaluates 20 (the first
    validation image twice), so val/acc is over 20 predictions."""
    rank0, rank1 = runs["padded"]["ranks"]
    for epoch in range(3):
        seen0, seen1 = rank0["seen"][epoch], rank1["seen"][epoch]
        assert len(seen0) == len(seen1) == math.ceil(61 / 2) == 31
        assert set(seen0) | set(seen1) == set(range(61))
        first = torch.randperm(61, generator=torch.Generator().manual_seed(epoch))[0].item()
        assert sorted(seen0 + seen1) == sorted([*range(61), first])
    last_val = max(rank0["val_seen"])
    val0, val1 = rank0["val_seen"][last_val], rank1["val_seen"][last_val]
    assert val0 == list(range(0, 19, 2)) and val1 == [*range(1, 19, 2), 0]
    assert rank0["confusion_total"] == rank1["confusion_total"] == [20]
    right = rank0["metrics"]["val/acc"] * 20
    assert right == pytest.approx(round(right))
    assert runs["padded"]["last"]["global_step"] == 3 * math.ceil(31 / 10)


def test_ordinary_ddp_steps_make_no_host_read(data, tmp_path):
    """Two gloo ranks, 3 images per rank per step (10 steps per epoch), 2 epochs, logging
    and ``GroupStats`` every 5 steps: on every other step that is not an epoch's last, no
    rank reads a tensor on the host or makes one from Python data (``host_reads.py``).
    Lightning 2.6 broadcasts and reads a SIGTERM flag before every DDP step; the
    preemption callback, which handles SIGTERM, turns that off and agrees on a signal on
    the logging steps only. The logging steps themselves do read (the test can see)."""
    spec = {"class_path": "host_reads.RankReads", "init_args": {"out": str(tmp_path / "reads")}}
    args = quick(data, tmp_path, "--data.batch_size", "3", "--trainer.max_epochs", "2", *DDP)
    args += ["--trainer.log_every_n_steps", "5", "--group_stats.every_n_steps", "5"]
    done = groupwise("fit", "--config", LENET, *args, f"--trainer.callbacks+={json.dumps(spec)}")
    assert done.returncode == 0, done.stderr[-4000:]
    ordinary = [s for s in range(20) if (s + 1) % 5 and s % 5 and (s + 1) % 10]
    assert ordinary == [1, 2, 3, 6, 7, 8, 11, 12, 13, 16, 17, 18]
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"reads/rank{rank}.json").read_text())
        reads = {int(s): n for s, n in seen["reads"].items()}
        made = {int(s): n for s, n in seen["made"].items()}
        where = {k: v for k, v in seen["where"].items() if k.startswith("step ")}
        assert [s for s in ordinary if reads.get(s) or made.get(s)] == [], where
        assert all(reads.get(s) for s in (4, 9, 14, 19)), reads  # the logging steps read


def test_a_sigterm_on_one_rank_stops_both_at_the_next_agreement_step(data, tmp_path):
    """Under DDP the ranks agree on a signal every ``preemption.every_n_steps`` steps: SIGTERM
    reaching rank 1 alone as the batch of global step 1 starts stops both ranks after
    step 2 (the 3rd batch) with ``every_n_steps`` 3, and last.ckpt records global step 3."""
    spec = {
        "class_path": "fault_injection.SignalAt",
        "init_args": {"signal": "SIGTERM", "stamp": str(tmp_path / "stamp"), "step": 1, "rank": 1},
    }
    args = quick(data, tmp_path, *EPOCHS, "--data.batch_size", "10", *DDP)
    args += ["--preemption.every_n_steps", "3", f"--trainer.callbacks+={json.dumps(spec)}"]
    done = groupwise("fit", "--config", LENET, *args)
    assert done.returncode == 75, done.stderr[-3000:]
    assert "Preemption (SIGTERM): saved" in done.stderr
    (run,) = (tmp_path / "lightning_logs").iterdir()
    assert load(run / "checkpoints/last.ckpt")["global_step"] == 3
