"""Input pipeline throughput: grain over ArrayRecord vs a torchvision DataLoader on the same JPEGs.

    python -m benchmarks.input_pipeline [--images 3000] [--workers 1,2] [--repeats 3]

Dataset: real photographs from scikit-image (astronaut, coffee, chelsea, rocket, ...), randomly
cropped and resized to shorter side 256, JPEG quality 90: the `imagenot/256` storage format. It is
packaged by the project's own ImageNot builder into ArrayRecord (which keeps these JPEG bytes
unchanged) and also written as one file per image for the PyTorch loader.

Both sides do the same work per image: decode, RandomResizedCrop(224) (scale 0.08-1, ratio 3/4-4/3),
horizontal flip, uint8 output, batches of 64, with the same number of worker processes and one
thread each. The PyTorch side is torchvision's reference recipe: PIL decode, v1 transforms,
PILToTensor, DataLoader with shuffle. A per-stage profile of one grain worker shows what bounds it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import platform
import statistics
import time

import numpy as np
import torchvision  # noqa: F401  (before TensorFlow: TF-then-torch aborts on LLVM options)
from PIL import Image

BATCH = 64
CROP = 224
ROOT = pathlib.Path(__file__).resolve().parent / "results" / "input_pipeline"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry",
          "retina", "motorcycle_left", "motorcycle_right", "cat")  # fmt: skip


# --- the dataset ----------------------------------------------------------------------------


def _photos() -> list[Image.Image]:
    import skimage.data

    photos = []
    for name in PHOTOS:
        if name.startswith("motorcycle"):
            left, right, _ = skimage.data.stereo_motorcycle()
            photos.append(Image.fromarray(left if name.endswith("left") else right))
        else:
            photos.append(Image.fromarray(getattr(skimage.data, name)()).convert("RGB"))
    return photos


def _random_view(photo: Image.Image, rng: np.random.Generator) -> bytes:
    """A random crop (30-100% of the area, aspect 3:4-4:3) resized to shorter side 256."""
    width, height = photo.size
    area = rng.uniform(0.3, 1.0) * width * height
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    w = int(min(width, round(np.sqrt(area * aspect))))
    h = int(min(height, round(np.sqrt(area / aspect))))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    view = photo.crop((left, top, left + w, top + h))
    scale = 256 / min(w, h)
    view = view.resize((max(256, round(w * scale)), max(256, round(h * scale))), Image.BICUBIC)
    buffer = io.BytesIO()
    view.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_dataset(num_images: int) -> tuple[pathlib.Path, pathlib.Path]:
    """(TFDS data dir with imagenot/256, folder of the same JPEGs); reused when already built."""
    import tensorflow_datasets as tfds

    from tfds_imagenot.imagenot import Builder
    from tfds_imagenot.imagenot.testing import ClassRow, ManifestRow, write_manual_dir

    root = ROOT / f"{num_images}"
    data_dir, files = root / "tfds", root / "jpeg"
    builder = Builder(config="256", data_dir=str(data_dir))
    if builder.is_prepared() and files.is_dir():
        return data_dir, files
    rng = np.random.default_rng(0)
    photos = _photos()
    classes = [ClassRow(i, f"n{i:08d}", name, f"views of {name}") for i, name in enumerate(PHOTOS)]
    rows, images = [], {}
    for i in range(num_images):
        label = i % len(photos)
        key = f"img{i:06d}"
        rows.append(ManifestRow(key, classes[label].wnid, label, "train"))
        images[key] = _random_view(photos[label], rng)
        (files / str(label)).mkdir(parents=True, exist_ok=True)
        (files / str(label) / f"{key}.jpg").write_bytes(images[key])
    manual = write_manual_dir(root / "manual", classes, rows, images)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)),
    )
    return data_dir, files


# --- the two loaders --------------------------------------------------------------------------


def grain_config(data_dir: pathlib.Path, workers: int):
    from imagenot_jax import input_pipeline

    config = input_pipeline.default_config()
    config.data.name = "imagenot/256"
    config.data.data_dir = str(data_dir)
    config.input.global_batch_size = BATCH
    config.input.image_size = CROP
    config.input.num_workers = workers
    config.input.read_threads = 1  # one thread per worker process, as a DataLoader worker
    return config


def time_grain(data_dir: pathlib.Path, workers: int, batches: int) -> float:
    from imagenot_jax import input_pipeline

    config = grain_config(data_dir, workers)
    iterator = iter(input_pipeline.make_train_dataset(config, input_pipeline.ProcessShard()))
    return _time_batches(iterator, batches, close=iterator.close)


class _JpegFolder:
    """torchvision ImageFolder's work: open the file, PIL decode to RGB, transform."""

    def __init__(self, folder: pathlib.Path, transform):
        self.paths = sorted(folder.glob("*/*.jpg"))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), int(path.parent.name)


def time_torch(files: pathlib.Path, workers: int, batches: int) -> float:
    import torch
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(CROP, antialias=True),
            transforms.RandomHorizontalFlip(),
            transforms.PILToTensor(),
        ]
    )
    loader = torch.utils.data.DataLoader(
        _JpegFolder(files, transform),
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=True,
        generator=torch.Generator().manual_seed(0),
    )

    def forever():
        while True:
            yield from loader

    return _time_batches(forever(), batches)


def _time_batches(iterator, batches: int, close=None) -> float:
    """Images/s over `batches` batches, after warm-up batches that absorb worker start-up."""
    for _ in range(4):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    if close:
        close()
    return batches * BATCH / seconds


# --- profile ----------------------------------------------------------------------------------


def profile_stages(data_dir: pathlib.Path, n: int = 1000) -> dict[str, float]:
    """Microseconds per image for each stage of the grain train transform, in one process."""
    from imagenot_jax import image_ops, input_pipeline

    source = input_pipeline.open_source("imagenot/256", "train", str(data_dir))
    rng = np.random.default_rng(0)
    indices = rng.permutation(len(source))[:n]
    names = ("read + deserialize", "decode", "crop box", "crop + resize", "flip")
    stages = dict.fromkeys(names, 0.0)
    for index in indices:
        t0 = time.perf_counter()
        data = source[int(index)]["image"]
        t1 = time.perf_counter()
        height, width = image_ops.image_size(data)
        image = image_ops.decode(data, 3)
        t2 = time.perf_counter()
        box = image_ops.random_resized_crop_box(height, width, (0.08, 1.0), (3 / 4, 4 / 3), rng)
        t3 = time.perf_counter()
        out = image_ops.resize(image_ops.crop(image, box), CROP, CROP)
        t4 = time.perf_counter()
        image_ops.hflip(out)
        t5 = time.perf_counter()
        times = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
        for name, seconds in zip(names, times, strict=True):
            stages[name] += seconds
    return {name: 1e6 * seconds / n for name, seconds in stages.items()}


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    data_dir, files = make_dataset(args.images)
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        grain_runs, torch_runs = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            grain_runs.append(time_grain(data_dir, workers, args.batches))
            torch_runs.append(time_torch(files, workers, args.batches))
        grain_ips, torch_ips = statistics.median(grain_runs), statistics.median(torch_runs)
        rows.append(
            {
                "workers": workers,
                "grain_images_per_s": grain_ips,
                "torch_images_per_s": torch_ips,
                "grain_per_worker": grain_ips / workers,
                "torch_per_worker": torch_ips / workers,
                "ratio": grain_ips / torch_ips,
                "grain_runs": grain_runs,
                "torch_runs": torch_runs,
            }
        )
    profile = profile_stages(data_dir)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "images": args.images,
        "batch": BATCH,
        "rows": rows,
        "profile_us_per_image": profile,
    }
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "result.json").write_text(json.dumps(result, indent=2))
    print_table(result)


def print_table(result: dict) -> None:
    print(f"{result['images']} JPEGs (shorter side 256, q90), batch {result['batch']}, "
          f"{result['machine']}; medians of repeated runs")  # fmt: skip
    print(
        "| workers | grain img/s | grain img/s/worker "
        "| torch img/s | torch img/s/worker | grain/torch |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in result["rows"]:
        print(
            f"| {row['workers']} | {row['grain_images_per_s']:,.0f} | "
            f"{row['grain_per_worker']:,.0f} | {row['torch_images_per_s']:,.0f} | "
            f"{row['torch_per_worker']:,.0f} | {row['ratio']:.2f}x |"
        )
    print("\ngrain train transform, one process, microseconds per image:")
    for stage, micros in result["profile_us_per_image"].items():
        print(f"  {stage:20s} {micros:8.1f}")
    print(f"  {'total':20s} {sum(result['profile_us_per_image'].values()):8.1f}")


if __name__ == "__main__":
    main()
