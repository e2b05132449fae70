"""Input pipeline throughput: grain over ArrayRecord vs a torchvision DataLoader on the same JPEGs.

    python -m benchmarks.input_pipeline [--images 3000] [--workers 1,2] [--repeats 3]
        [--batches 40] [--policy-batches 10] [--policy-repeats 2] [--transforms all|rrc]

Dataset: real photographs from scikit-image (astronaut, coffee, chelsea, rocket, ...), randomly
cropped and resized to shorter side 256, JPEG quality 90: the `imagenot/256` storage format. It is
packaged by the project's own ImageNot builder into ArrayRecord (which keeps these JPEG bytes
unchanged) and also written as one file per image for the PyTorch loader.

Both sides do the same work per image: decode, RandomResizedCrop(224) (scale 0.08-1, ratio 3/4-4/3),
horizontal flip, uint8 output, batches of 64, with the same number of worker processes and one
thread each. The PyTorch side is torchvision's reference recipe: PIL decode, v1 transforms,
PILToTensor, DataLoader with shuffle. A per-stage profile of one grain worker shows what bounds it.

Then each study recipe's own train transform (configs/<model>.py: input.image_size,
input.auto_augment, input.random_erase), grouped where recipes share one, against torchvision's
v1 AutoAugment / RandAugment / TrivialAugmentWide / RandomErasing on the PyTorch side (as its
reference `presets.ClassificationPresetTrain` applies them: policy on the PIL image, erasing on
the uint8 tensor). The projection to a 16-core host is the 1-worker rate x 15 workers
(input.num_workers=-1 leaves one core to the trainer).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
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
HOST_WORKERS = 15  # a 16-core host with input.num_workers=-1 (one core left to the trainer)
STUDY = ("resnet50", "resnet152", "vgg19", "densenet161", "alexnet", "inception_v3",
         "mobilenet_v3_large", "vit_b_16", "convnext_large", "efficientnet_v2_l")  # fmt: skip
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


# --- the recipes' train transforms ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Transform:
    """What a recipe's train transform does after decode (torchvision reference semantics)."""

    size: int = CROP
    policy: str | None = None  # "imagenet" (AutoAugment), "ra", "ta_wide"
    erase: float = 0.0
    ra_magnitude: int = 9
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = (123.675, 116.28, 103.53)

    @property
    def label(self) -> str:
        parts = [f"RRC {self.size} + flip"]
        if self.policy:
            parts.append({"imagenet": "AutoAugment", "ra": f"RandAugment({self.ra_magnitude})",
                          "ta_wide": "TrivialAugmentWide"}[self.policy])  # fmt: skip
        if self.erase:
            parts.append(f"RandomErasing({self.erase})")
        return " + ".join(parts)


def _recipe_config(model: str):
    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / f"{model}.py"
    spec = importlib.util.spec_from_file_location(f"_config_{model}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("")


def recipe_transforms(models=STUDY) -> dict[Transform, list[str]]:
    """Each distinct train transform of the study recipes, with the models that use it."""
    groups: dict[Transform, list[str]] = {}
    for model in models:
        cfg = _recipe_config(model).input
        transform = Transform(
            cfg.image_size, cfg.get("auto_augment"), float(cfg.get("random_erase") or 0.0),
            cfg.get("ra_magnitude", 9), cfg.get("auto_augment_interpolation", "bilinear"),
            tuple(cfg.mean),
        )  # fmt: skip
        groups.setdefault(transform, []).append(model)
    return groups


# --- the two loaders --------------------------------------------------------------------------


def grain_config(data_dir: pathlib.Path, workers: int, transform: Transform = Transform()):
    from imagenot_jax.data import input_pipeline

    config = input_pipeline.default_config()
    config.data.name = "imagenot/256"
    config.data.data_dir = str(data_dir)
    config.input.global_batch_size = BATCH
    config.input.image_size = transform.size
    config.input.auto_augment = transform.policy
    config.input.random_erase = transform.erase
    config.input.ra_magnitude = transform.ra_magnitude
    config.input.auto_augment_interpolation = transform.interpolation
    config.input.mean = transform.mean
    config.input.num_workers = workers
    config.input.read_threads = 1  # one thread per worker process, as a DataLoader worker
    return config


def time_grain(
    data_dir: pathlib.Path, workers: int, batches: int, transform: Transform = Transform()
) -> float:
    from imagenot_jax.data import input_pipeline

    config = grain_config(data_dir, workers, transform)
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


def torch_transform(transform: Transform):
    """torchvision reference presets.ClassificationPresetTrain, up to uint8 (as grain's output)."""
    from torchvision import transforms

    mode = transforms.InterpolationMode(transform.interpolation)
    steps = [transforms.RandomResizedCrop(transform.size, antialias=True),
             transforms.RandomHorizontalFlip()]  # fmt: skip
    if transform.policy == "imagenet":
        steps.append(transforms.AutoAugment(interpolation=mode))
    elif transform.policy == "ra":
        steps.append(transforms.RandAugment(magnitude=transform.ra_magnitude, interpolation=mode))
    elif transform.policy == "ta_wide":
        steps.append(transforms.TrivialAugmentWide(interpolation=mode))
    steps.append(transforms.PILToTensor())
    if transform.erase:
        steps.append(transforms.RandomErasing(p=transform.erase))
    return transforms.Compose(steps)


def time_torch(
    files: pathlib.Path, workers: int, batches: int, transform: Transform = Transform()
) -> float:
    import torch

    loader = torch.utils.data.DataLoader(
        _JpegFolder(files, torch_transform(transform)),
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


def profile_stages(data_dir: pathlib.Path, n: int = 1024) -> dict[str, float]:
    """Microseconds per image for each stage of the grain train transform, in one process.

    Records are read as the pipeline reads them (one batched ArrayRecord read per batch, then the
    proto parse); "TFDS read + deserialize" is the one-record-per-call path it replaced, for
    reference, and is not part of the total.
    """
    from imagenot_jax.data import image_ops, input_pipeline

    source = input_pipeline.open_source("imagenot/256", "train", str(data_dir))
    reader = input_pipeline.RecordReader(source)
    rng = np.random.default_rng(0)
    indices = [int(i) for i in rng.permutation(len(source))[:n]]
    names = ("read (batched)", "parse", "decode", "crop box", "crop + resize", "flip")
    stages = dict.fromkeys(names, 0.0)
    t0 = time.perf_counter()
    for i in indices:
        source[i]
    tfds_path = time.perf_counter() - t0
    for start in range(0, n, BATCH):
        t0 = time.perf_counter()
        raws = source.data_source.__getitems__(indices[start : start + BATCH])
        stages["read (batched)"] += time.perf_counter() - t0
        for raw in raws:
            t0 = time.perf_counter()
            data = input_pipeline._parse(raw).image
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
            for name, seconds in zip(names[1:], times, strict=True):
                stages[name] += seconds
    assert reader.fast  # the profile shows the path the pipeline takes
    profile = {name: 1e6 * seconds / n for name, seconds in stages.items()}
    return {**profile, "reference: TFDS read + deserialize": 1e6 * tfds_path / n}


# --- main -------------------------------------------------------------------------------------


def measure(data_dir, files, transform: Transform, workers: int, batches: int, repeats: int):
    """Medians of `repeats` interleaved grain / torch runs (both see the same machine load)."""
    grain_runs, torch_runs = [], []
    for _ in range(repeats):
        grain_runs.append(time_grain(data_dir, workers, batches, transform))
        torch_runs.append(time_torch(files, workers, batches, transform))
    grain_ips, torch_ips = statistics.median(grain_runs), statistics.median(torch_runs)
    return {
        "transform": transform.label,
        "workers": workers,
        "grain_images_per_s": grain_ips,
        "torch_images_per_s": torch_ips,
        "grain_per_worker": grain_ips / workers,
        "torch_per_worker": torch_ips / workers,
        "ratio": grain_ips / torch_ips,
        "grain_runs": grain_runs,
        "torch_runs": torch_runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--batches", type=int, default=40, help="timed batches, RRC 224 + flip")
    parser.add_argument("--policy-batches", type=int, default=10, help="timed batches, others")
    parser.add_argument("--policy-repeats", type=int, default=2, help="repeats, others")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--transforms", choices=("all", "rrc"), default="all")
    args = parser.parse_args()

    data_dir, files = make_dataset(args.images)
    groups = recipe_transforms() if args.transforms == "all" else {Transform(): ["resnet50"]}
    rows = []
    for transform, models in groups.items():
        plain = transform == Transform()
        batches = args.batches if plain else args.policy_batches
        repeats = args.repeats if plain else args.policy_repeats
        for workers in (int(w) for w in args.workers.split(",")):
            row = measure(data_dir, files, transform, workers, batches, repeats)
            rows.append({**row, "models": models, "size": transform.size})
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "images": args.images,
        "batch": BATCH,
        "rows": rows,
        "profile_us_per_image": profile_stages(data_dir),
    }
    ROOT.mkdir(parents=True, exist_ok=True)
    (ROOT / "result.json").write_text(json.dumps(result, indent=2))
    print_table(result)


def print_table(result: dict) -> None:
    print(f"{result['images']} JPEGs (shorter side 256, q90), batch {result['batch']}, "
          f"{result['machine']}; medians of repeated runs")  # fmt: skip
    rrc = [row for row in result["rows"] if row["transform"] == Transform().label]
    print("\nRRC 224 + flip (ResNet-50's transform):")
    print("| workers | grain img/s | grain img/s/worker "
          "| torch img/s | torch img/s/worker | grain/torch |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rrc:
        print(
            f"| {row['workers']} | {row['grain_images_per_s']:,.0f} | "
            f"{row['grain_per_worker']:,.0f} | {row['torch_images_per_s']:,.0f} | "
            f"{row['torch_per_worker']:,.0f} | {row['ratio']:.2f}x |"
        )
    print_recipe_table(result["rows"])
    print("\ngrain train transform, one process, microseconds per image:")
    profile = dict(result["profile_us_per_image"])
    reference = {k: profile.pop(k) for k in list(profile) if k.startswith("reference")}
    for stage, micros in profile.items():
        print(f"  {stage:36s} {micros:8.1f}")
    print(f"  {'total':36s} {sum(profile.values()):8.1f}")
    for stage, micros in reference.items():
        print(f"  {stage:36s} {micros:8.1f}")


def print_recipe_table(rows: list[dict]) -> None:
    """One line per transform: per-worker rates at each worker count, projection to 16 cores."""
    by_transform: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_transform.setdefault(row["transform"], {})[row["workers"]] = row
    counts = sorted({row["workers"] for row in rows})
    print(f"\nPer recipe (img/s/worker, grain vs torch; 16-core host = 1-worker rate x "
          f"{HOST_WORKERS}):")  # fmt: skip
    head = " | ".join(f"grain @{w} | torch @{w}" for w in counts)
    print(f"| recipes | transform | {head} | grain/torch @1 | 16-core host img/s |")
    print("| --- | --- |" + " ---: |" * (2 * len(counts) + 2))
    for label, per_count in by_transform.items():
        first = per_count[min(per_count)]
        cells = " | ".join(
            f"{per_count[w]['grain_per_worker']:,.0f} | {per_count[w]['torch_per_worker']:,.0f}"
            if w in per_count else "- | -"
            for w in counts
        )  # fmt: skip
        print(
            f"| {', '.join(first['models'])} | {label} | {cells} | {first['ratio']:.2f}x | "
            f"{first['grain_per_worker'] * HOST_WORKERS:,.0f} |"
        )


if __name__ == "__main__":
    main()
