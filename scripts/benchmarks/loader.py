"""The CIFAR-10 DataModule's loader against torchvision's ImageFolder pipeline: starts and images/s.

If ``--data-dir`` is missing and the shared archive exists, it is extracted first.
Measures, on the image-folder JPEGs:

* cold start: cache deleted, ``prepare_data()`` + ``setup("fit")`` (decode + write cache),
  median of ``--cold-runs``;
* cached start: the same with the cache in place (median of ``--cached-runs``);
  each start runs in a fresh process (``python -m benchmarks.loader DIR``) and excludes
  the interpreter's imports;
* images/s over one training epoch of (a) this template's loader + the DataModule's
  batched crop/flip/normalize (``on_after_batch_transfer`` as in training), median of
  ``--epochs``; (b) torchvision ``ImageFolder`` with per-sample ``RandomCrop(32, 4)``,
  ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` and a ``DataLoader`` over the same
  training images (worker start-up included), median of ``--epochs``. Both run with the
  same ``num_workers``, once for each count in ``--workers`` (default 0 and 2), and the
  ratio is reported per count and best against best. (c) The template's per-sample path:
  the same DataModule with ``data.train_transform`` set to the usual v2 pipeline (crop,
  flip, to float, normalise) on its in-memory uint8 images.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from benchmarks.harness import REPO, Record, Spread, add_data_dir, child_env

ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg-train.tar.gz"


def timed_start(data_dir: Path) -> float:
    """Seconds from DataModule construction through ``setup("fit")``."""
    from groupwise.data.cifar10 import CIFAR10DataModule

    start = time.perf_counter()
    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) > 0
    return time.perf_counter() - start


def start_in_fresh_process(data_dir: Path) -> float:
    env = child_env()
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.loader", str(data_dir)],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def per_sample_transform():
    """The usual torchvision training pipeline, on uint8 tensors (the per-sample path)."""
    import torch
    from torchvision.transforms import v2

    from groupwise.data.batch_augment import CIFAR10_MEAN, CIFAR10_STD

    return v2.Compose(
        [
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )


def template_images_per_s(
    data_dir: Path, batch_size: int, workers: int, epochs: int, per_sample: bool = False
) -> float:
    from groupwise.data.cifar10 import CIFAR10DataModule

    dm = CIFAR10DataModule(
        data_dir=str(data_dir),
        download=False,
        batch_size=batch_size,
        num_workers=workers,
        train_transform=per_sample_transform() if per_sample else None,
    )
    dm.prepare_data()
    dm.setup("fit")
    dm.trainer = SimpleNamespace(training=True, current_epoch=0)  # what the hook reads
    rates = []
    for _ in range(epochs):
        n, start = 0, time.perf_counter()
        for batch in dm.train_dataloader():
            images, labels = dm.on_after_batch_transfer(batch, 0)
            n += len(labels)
        rates.append(n / (time.perf_counter() - start))
    assert images.dtype.is_floating_point
    return statistics.median(rates)


def torchvision_images_per_s(data_dir: Path, batch_size: int, workers: int, epochs: int) -> float:
    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    from groupwise.data.batch_augment import CIFAR10_MEAN, CIFAR10_STD
    from groupwise.data.cifar10 import CIFAR10DataModule

    dm = CIFAR10DataModule(data_dir=str(data_dir), download=False)
    dm.setup("fit")  # the same 45,000 training images
    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ]
    )
    dataset = Subset(ImageFolder(str(data_dir / "train"), transform), dm.train_indices.tolist())
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    rates = []
    for _ in range(epochs):
        n, start = 0, time.perf_counter()
        for batch in loader:
            n += len(batch[1])
        rates.append(n / (time.perf_counter() - start))
    assert batch[0].dtype == torch.float32
    return statistics.median(rates)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_dir(parser)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cold-runs", type=int, default=1, help="fresh processes, median")
    parser.add_argument("--cached-runs", type=int, default=5, help="fresh processes, median")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each loader, median")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="num_workers of both loaders"
    )


def run(args: argparse.Namespace, record: Record) -> None:
    data_dir: Path = args.data_dir
    if not data_dir.exists():
        if not ARCHIVE.is_file():
            sys.exit(f"{data_dir} does not exist and there is no archive at {ARCHIVE}")
        from torchvision.datasets.utils import extract_archive

        print(f"extracting {ARCHIVE} into {data_dir.parent} ...", flush=True)
        extract_archive(str(ARCHIVE), str(data_dir.parent))  # gives cifar10-jpeg/train/...
    if not (data_dir / "train").is_dir():
        sys.exit(f"no {data_dir / 'train'}: the benchmark needs the image-folder layout")

    cold = []
    for _ in range(args.cold_runs):
        shutil.rmtree(data_dir / ".groupwise_cache", ignore_errors=True)
        cold.append(start_in_fresh_process(data_dir))
    cached = [start_in_fresh_process(data_dir) for _ in range(args.cached_runs)]
    size, epochs = args.batch_size, args.epochs
    ours = {w: template_images_per_s(data_dir, size, w, epochs) for w in args.workers}
    baseline = {w: torchvision_images_per_s(data_dir, size, w, epochs) for w in args.workers}
    per_sample = {
        w: template_images_per_s(data_dir, size, w, epochs, per_sample=True) for w in args.workers
    }
    record.add("cold_s", cold)
    record.add("cached_s", cached)
    record.add(
        "images_per_s", {"template": ours, "imagefolder": baseline, "per_sample": per_sample}
    )

    rows = [
        [
            f"cold start, decode + write cache (median of {len(cold)})",
            Spread.of(cold).format(".2f"),
        ],
        [f"cached start (median of {len(cached)})", Spread.of(cached).format(".2f")],
    ]
    for w in args.workers:
        rows += [
            [f"template loader + batched augment, {w} workers", f"{ours[w]:,.0f} img/s"],
            [f"ImageFolder + per-sample transforms, {w} workers", f"{baseline[w]:,.0f} img/s"],
            [f"ratio template / ImageFolder, {w} workers", f"{ours[w] / baseline[w]:.1f}x"],
            [
                f"template per-sample path (data.train_transform), {w} workers",
                f"{per_sample[w]:,.0f} img/s",
            ],
        ]
    best, best_base = max(ours, key=ours.get), max(baseline, key=baseline.get)
    rows.append([
        f"ratio best template ({best} workers) / best ImageFolder ({best_base} workers)",
        f"{ours[best] / baseline[best_base]:.1f}x",
    ])  # fmt: skip
    record.table(
        f"{data_dir}, batch size {size}, start = prepare_data() + setup('fit') in seconds"
        f" (median, range), images/s = median of {epochs} epochs",
        ["", "figure"],
        rows,
    )


if __name__ == "__main__":  # one start, in the fresh process of start_in_fresh_process
    print(timed_start(Path(sys.argv[1])))
