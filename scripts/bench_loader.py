"""Benchmark the CIFAR-10 DataModule against torchvision's ImageFolder pipeline.

Run from the repository root:

    .venv/bin/python scripts/bench_loader.py --data-dir data/cifar10-jpeg

If ``--data-dir`` is missing and the shared archive exists, it is extracted first.
Measures, on the image-folder JPEGs:

* cold start: cache deleted, ``prepare_data()`` + ``setup("fit")`` (decode + write cache),
  median of ``--cold-runs``;
* cached start: the same with the cache in place (median of ``--cached-runs``);
  each start runs in a fresh process and excludes the interpreter's imports;
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

REPO = Path(__file__).resolve().parents[1]
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
    out = subprocess.run(
        [sys.executable, __file__, "--data-dir", str(data_dir), "--start-once"],
        check=True,
        capture_output=True,
        text=True,
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data/cifar10-jpeg"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--cold-runs", type=int, default=1, help="fresh processes, median")
    parser.add_argument("--cached-runs", type=int, default=5, help="fresh processes, median")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of each loader, median")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[0, 2], help="num_workers of both loaders"
    )
    parser.add_argument("--start-once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data_dir: Path = args.data_dir

    if args.start_once:  # child process of start_in_fresh_process
        print(timed_start(data_dir))
        return

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
    ours = {
        w: template_images_per_s(data_dir, args.batch_size, w, args.epochs) for w in args.workers
    }
    baseline = {
        w: torchvision_images_per_s(data_dir, args.batch_size, w, args.epochs) for w in args.workers
    }
    per_sample = {
        w: template_images_per_s(data_dir, args.batch_size, w, args.epochs, per_sample=True)
        for w in args.workers
    }

    rows = [
        (
            f"cold start, decode + write cache (median of {len(cold)})",
            f"{statistics.median(cold):.2f} s",
        ),
        (f"cached start (median of {len(cached)})", f"{statistics.median(cached):.2f} s"),
    ]
    for w in args.workers:
        rows += [
            (f"template loader + batched augment, {w} workers", f"{ours[w]:,.0f} img/s"),
            (f"ImageFolder + per-sample transforms, {w} workers", f"{baseline[w]:,.0f} img/s"),
            (f"ratio template / ImageFolder, {w} workers", f"{ours[w] / baseline[w]:.1f}x"),
            (
                f"template per-sample path (data.train_transform), {w} workers",
                f"{per_sample[w]:,.0f} img/s",
            ),
        ]
    best, best_base = max(ours, key=ours.get), max(baseline, key=baseline.get)
    rows.append(
        (
            f"ratio best template ({best} workers) / best ImageFolder ({best_base} workers)",
            f"{ours[best] / baseline[best_base]:.1f}x",
        )
    )
    width = max(len(name) for name, _ in rows)
    print(
        f"\n{data_dir}, batch size {args.batch_size}, start = prepare_data() + setup('fit'),"
        f" images/s = median of {args.epochs} epochs"
    )
    for name, value in rows:
        print(f"{name:<{width}}  {value:>14}")
    print(f"cold starts: {', '.join(f'{t:.2f}' for t in cold)} s")
    print(f"cached starts: {', '.join(f'{t:.2f}' for t in cached)} s")


if __name__ == "__main__":
    main()
