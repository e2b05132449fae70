"""Evaluation views: class maps (LAIONet-style class subsets), ReaL multi-label accuracy and
ImageNetV2 as just another dataset, end to end through imagenot_jax.evaluate.evaluation.

The real datasets need manual downloads, and tfds.testing.mock_data cannot stand in for them: its
builders are not `is_prepared()` (open_source refuses them) and its examples are random. So each
is a tiny real TFDS dataset built here as ArrayRecord: subclasses of TFDS's own imagenet_v2 and
imagenet2012_real builders (same name, config, version and features) write our examples, and
`tfds.builder(name)` then reads them through the registered builder, as it would the real ones.
The model is a randomly initialised 1000-class resnet_mini written as a checkpoint; its logits on
the test images are computed here directly (unsharded, outside the eval pipeline), the labels are
chosen from them so that every metric has hits and misses, and every metric is recomputed in
numpy from the logits the evaluation saved (checked against the direct ones).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx
from PIL import Image

from configs import demo
from imagenot_jax.data import datasets, image_ops
from imagenot_jax.evaluate import evaluation, views
from imagenot_jax.models import convert
from imagenot_jax.train import steps, trainer
from tests.conftest import REPO

# End-to-end runs: see the fast_compile fixture.
pytestmark = pytest.mark.usefixtures("fast_compile")


N = 21  # examples per dataset; no multiple of the eval batch (8)
NUM_X = 1000  # the model's classes: ImageNet's
X_NAMES = tfds.builder_cls("imagenet2012")(data_dir="/nonexistent").info.features["label"].names
Y_CLASSES = 6  # the LAIONet-like dataset's classes


class _WritesExamples:
    """Mixed into a TFDS builder (before it): its one split `split` holds `examples` (set by
    `_build`), keyed by file name, instead of what the real builder downloads."""

    split = "test"
    examples: list[dict] = []

    def _split_generators(self, dl_manager):
        return {self.split: self._generate_examples()}

    def _generate_examples(self):
        for example in self.examples:
            yield example["file_name"], example


class FakeImagenetV2(_WritesExamples, tfds.builder_cls("imagenet_v2"), skip_registration=True):
    name = "imagenet_v2"


class FakeImagenetReal(
    _WritesExamples, tfds.builder_cls("imagenet2012_real"), skip_registration=True
):
    name = "imagenet2012_real"
    split = "validation"


def fake_laionet(class_names: list[str]) -> type:
    """A LAIONet-like dataset builder: its own label space named by ImageNet WNIDs."""

    class FakeLaionet(_WritesExamples, tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "laionet_fake"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = {
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=class_names),
                "file_name": tfds.features.Text(),
            }
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

    return FakeLaionet


def _build(builder, examples):
    builder.examples = examples
    builder.download_and_prepare(file_format="array_record")


def _jpegs() -> list[bytes]:
    """Test images of assorted sizes (the eval transform resizes and crops), one grayscale."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(N):
        height, width = (40, 48) if i % 3 == 0 else (52, 36) if i % 3 == 1 else (36, 36)
        # Different colours and gradients (not just noise), so that the model tells them apart.
        ramp = np.linspace(0, 1, width)[None, :, None] * rng.uniform(-120, 120, 3)
        noise = rng.normal(0, 20, (height, width, 3))
        pixels = np.clip(rng.uniform(40, 215, 3) + ramp + noise, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels[..., 0] if i == 5 else pixels)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        out.append(buffer.getvalue())
    return out


def _random_model(config) -> nnx.Module:
    """The model with random weights drawn in numpy: XLA takes ~10 s on 2 cores to compile the
    model's own initialisers. Positive scales and variances; He-scaled kernels."""
    rng = np.random.default_rng(1)

    def draw(path, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        name = path[-2].key
        if name in ("scale", "var"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if name == "kernel" else 100
        return (rng.normal(0, 1, leaf.shape) * np.sqrt(2 / fan_in)).astype(leaf.dtype)

    abstract = nnx.eval_shape(lambda: trainer.build_model(config, NUM_X))
    graph, *states = nnx.split(abstract, nnx.Param, nnx.BatchStat, ...)
    return nnx.merge(graph, *[jax.tree_util.tree_map_with_path(draw, s) for s in states])


def _name(i: int) -> str:
    return f"{i % 10}/img_{i:03d}.jpeg"  # ImageNetV2's file_name layout: class/file


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A checkpoint, the direct logits on the test images, and the three datasets."""
    root = tmp_path_factory.mktemp("views")
    config = demo.get_config()
    config.data.name = "imagenet2012"  # the training data: only its class names are read
    config.data.data_dir = str(root / "data")
    config.input.mean, config.input.std = datasets.IMAGENET_MEAN, datasets.IMAGENET_STD
    config.input.eval_resize, config.input.eval_crop = 36, 32
    config.input.eval_batch_size, config.input.num_workers = 8, 0
    config.model.kwargs.widths = (4, 8, 8)
    config = convert.conversion_config("resnet_mini", NUM_X, config)
    model = _random_model(config)
    workdir = convert.write_checkpoint(model, config, str(root / "workdir"))

    jpegs = _jpegs()
    resize, crop = config.input.eval_resize, config.input.eval_crop
    crops = np.stack([image_ops.decode_resize_center_crop(j, resize, crop, 3) for j in jpegs])
    model.eval()
    inputs = steps.normalize(jnp.asarray(crops), config.input, jnp.float32)
    logits = np.asarray(nnx.jit(lambda m, x: m(x).logits)(model, inputs))
    ranks = np.argsort(-logits, axis=1)
    # Label i is the (i % 6)-th guess: top-1 hits, top-5 hits and misses.
    v2_labels = ranks[np.arange(N), np.arange(N) % 6]
    _build(
        FakeImagenetV2(config="matched-frequency", data_dir=config.data.data_dir),
        [
            {"image": j, "label": int(v2_labels[i]), "file_name": _name(i)}
            for i, j in enumerate(jpegs)
        ],
    )

    # ReaL: sets with the top-1 guess, with other guesses only, and empty ones.
    sets = [
        [] if i % 4 == 0 else ranks[i, :2].tolist() if i % 4 == 1 else [int(ranks[i, 1 + i % 2])]
        for i in range(N)
    ]
    _build(
        FakeImagenetReal(data_dir=config.data.data_dir),
        [
            {
                "image": j,
                "original_label": int(ranks[i, i % 3]),
                "real_label": sets[i],
                "file_name": _name(i),
            }
            for i, j in enumerate(jpegs)
        ],
    )

    # LAIONet-like: 6 of ImageNet's classes (ones the model favours, so that there are hits),
    # renumbered; label i is the (i % 6)-th guess among them.
    favoured = [int(c) for c in dict.fromkeys(ranks[:, :3].T.ravel())][:Y_CLASSES]
    favoured += [c for c in range(NUM_X) if c not in favoured][: Y_CLASSES - len(favoured)]
    y_to_x = np.array(favoured[::-1])  # Y label -> X class
    among = y_to_x[np.argsort(-logits[:, y_to_x], axis=1)]  # the subset ranked per image
    x_labels = among[np.arange(N), np.arange(N) % Y_CLASSES]
    y_labels = np.array([int(np.flatnonzero(y_to_x == x)[0]) for x in x_labels])
    _build(
        fake_laionet([X_NAMES[x] for x in y_to_x])(data_dir=config.data.data_dir),
        [
            {"image": j, "label": int(y_labels[i]), "file_name": _name(i)}
            for i, j in enumerate(jpegs)
        ],
    )
    return {
        "workdir": str(workdir),
        "logits": logits,
        "v2_labels": v2_labels,
        "real_original": np.array([ranks[i, i % 3] for i in range(N)]),
        "real_sets": sets,
        "y_to_x": y_to_x,
        "y_labels": y_labels,
    }


def _examples(path) -> dict[str, np.ndarray]:
    with np.load(path.parent / f"{path.name.removesuffix('.json')}.examples.npz") as npz:
        return dict(npz)


def _order(keys: np.ndarray) -> np.ndarray:
    """The generation index of each evaluated example (records are stored in hash order)."""
    return np.array([int(str(k).split("img_")[1][:3]) for k in keys])


def _expected(logits: np.ndarray, labels: np.ndarray, classes: np.ndarray | None = None):
    """top-1, top-5 and mean per-class recall in numpy, optionally among `classes` only."""
    classes = np.arange(logits.shape[1]) if classes is None else classes
    ranked = classes[np.argsort(-logits[:, classes], axis=1)][:, :5]
    hit1 = ranked[:, 0] == labels
    recalls = [hit1[labels == c].mean() for c in np.unique(labels)]
    return hit1.mean(), (ranked == labels[:, None]).any(axis=1).mean(), float(np.mean(recalls))


def test_imagenet_v2_is_another_dataset_and_identity_subset_restricts_logits(setup):
    result, path = evaluation.evaluate_checkpoint(
        setup["workdir"], dataset="imagenet_v2/matched-frequency", split="test", save_logits=True
    )
    assert path.name == "imagenet_v2_matched-frequency-test-0.json"
    assert result["n"] == N and result["class_map"] is None and result["dataset_version"] == "3.0.0"
    examples = _examples(path)
    order = _order(examples["key"])
    assert sorted(order) == list(range(N)) and examples["key"][0].count("/") == 1
    # The saved logits are the model's on the run's eval transform (resize 36, crop 32).
    expected_logits = setup["logits"][order]
    scale = np.abs(expected_logits).max()
    np.testing.assert_allclose(examples["logits"], expected_logits, atol=1e-4 * scale)
    labels = setup["v2_labels"][order]
    np.testing.assert_array_equal(examples["label"], labels)
    top1, top5, mean_recall = _expected(examples["logits"], labels)
    assert 0 < top1 < top5 < 1
    assert result["top1"] == pytest.approx(top1) and result["top5"] == pytest.approx(top5)
    assert result["mean_per_class_recall"] == pytest.approx(mean_recall)
    assert result["mean_per_class_recall"] != pytest.approx(result["top1"])  # unequal classes
    assert "equal-weighted accuracy (mean per-class recall)" in evaluation.format_result(result)

    # --class_map identity: the labels are ImageNet indices; the model answers among those seen.
    subset, path = evaluation.evaluate_checkpoint(
        setup["workdir"], dataset="imagenet_v2/matched-frequency", split="test",
        class_map="identity",
    )  # fmt: skip
    assert path.name == "imagenet_v2_matched-frequency-test-0-classmap_identity.json"
    classes = np.unique(labels)
    assert subset["class_map"] == {
        "source": "identity", "num_classes": len(classes), "num_labels": len(classes),
    }  # fmt: skip
    top1_sub, top5_sub, recall_sub = _expected(examples["logits"], labels, classes)
    assert subset["top1"] == pytest.approx(top1_sub) and subset["top1"] > top1
    assert subset["top5"] == pytest.approx(top5_sub)
    assert subset["mean_per_class_recall"] == pytest.approx(recall_sub)
    assert subset["unrestricted_top1"] == pytest.approx(top1)
    assert json.loads(path.read_text())["top1"] == pytest.approx(top1_sub)
    sub_examples = _examples(path)
    assert set(np.unique(sub_examples["top5"])) <= set(classes.tolist())


def test_real_multilabel_accuracy_counts_excluded_images(setup):
    result, path = evaluation.evaluate_checkpoint(
        setup["workdir"], dataset="imagenet2012_real", split="validation", save_logits=True
    )
    examples = _examples(path)
    order = _order(examples["key"])
    top1 = examples["logits"].argmax(axis=1)
    original = setup["real_original"][order]
    sets = [set(setup["real_sets"][i]) for i in order]
    valid = np.array([bool(s) for s in sets])
    real_hits = np.array([p in s for p, s in zip(top1, sets, strict=True)])
    assert result["label_feature"] == "original_label"
    assert result["top1"] == pytest.approx(np.mean(top1 == original))
    assert result["real_n"] == valid.sum() and result["real_excluded"] == N - valid.sum() > 0
    assert 0 < result["real_top1"] < 1
    assert result["real_top1"] == pytest.approx(real_hits[valid].mean())
    np.testing.assert_array_equal(examples["real_valid"], valid)
    np.testing.assert_array_equal(examples["real_correct"], real_hits & valid)
    assert "ReaL top-1" in evaluation.format_result(result)
    with pytest.raises(ValueError, match="has no 'real_label' feature"):
        evaluation.evaluate_checkpoint(
            setup["workdir"], dataset="imagenet_v2/matched-frequency", split="test", real=True
        )


def test_class_map_file_json_and_wnid_give_the_subset_metrics(setup, tmp_path):
    y_to_x = setup["y_to_x"]
    tsv = tmp_path / "laionet_map.tsv"
    lines = ["# y_label<TAB>imagenet class (index or WNID)"]
    for y, x in enumerate(y_to_x):  # by Y name and index; by X index and WNID
        lines.append(f"{X_NAMES[x]}\t{x}" if y % 2 else f"{y}\t{X_NAMES[x]}")
    tsv.write_text("\n".join(lines) + "\n")
    js = tmp_path / "map.json"
    js.write_text(json.dumps({str(y): int(x) for y, x in enumerate(y_to_x)}))

    results = {}
    for spec in (str(tsv), str(js), "wnid"):
        results[spec], path = evaluation.evaluate_checkpoint(
            setup["workdir"], dataset="laionet_fake", split="test", class_map=spec,
            save_logits=True,
        )  # fmt: skip
    result = results[str(tsv)]
    assert path.name == "laionet_fake-test-0-classmap_wnid.json"
    assert result["class_map"] == {"source": str(tsv), "num_classes": 6, "num_labels": 6}
    examples = _examples(path)
    order = _order(examples["key"])
    labels = y_to_x[setup["y_labels"][order]]
    np.testing.assert_array_equal(examples["label"], labels)
    np.testing.assert_array_equal(examples["y_label"], setup["y_labels"][order])
    top1, top5, recall = _expected(examples["logits"], labels, np.sort(y_to_x))
    assert 0 < result["top1"] < result["top5"] < 1  # the 6th guess misses the top-5
    assert result["top1"] == pytest.approx(top1) and result["top5"] == pytest.approx(top5)
    assert result["mean_per_class_recall"] == pytest.approx(recall)
    for spec, other in results.items():
        for field in ("top1", "top5", "loss", "mean_per_class_recall", "unrestricted_top1"):
            assert other[field] == pytest.approx(result[field]), (spec, field)
    assert results["wnid"]["class_map"]["source"] == "wnid"
    assert "restricted to the 6 classes" in evaluation.format_result(result)

    with pytest.raises(ValueError, match=r"has 6 classes and the model 1000.*--class_map"):
        evaluation.evaluate_checkpoint(setup["workdir"], dataset="laionet_fake", split="test")

    command = [
        sys.executable, "-m", "imagenot_jax.evaluate", f"--workdir={setup['workdir']}",
        "--dataset=laionet_fake", "--split=test", f"--class_map={tsv}",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"restricted to the 6 classes of class map {tsv}" in run.stdout
    assert run.stdout.strip().endswith("laionet_fake-test-0-classmap_laionet_map.json")


# --- class maps in numpy: parsing and one-line errors -----------------------------------------


def _file_map(path, text, **kwargs):
    path.write_text(text)
    options = {"y_names": ["cat", "dog", "fox"], "num_y": 3, "x_names": X_NAMES, "num_x": NUM_X}
    return views.file_map(str(path), **(options | kwargs))


def test_file_map_parsing(tmp_path):
    mapping = _file_map(tmp_path / "m.tsv", "# comment\ncat\t7\n1 n01440764\n\n2\t7  # again\n")
    np.testing.assert_array_equal(mapping.y_to_x, [7, 0, 7])  # many-to-one allowed
    np.testing.assert_array_equal(mapping.classes, [0, 7])
    assert mapping.describe() == {"source": str(tmp_path / "m.tsv"), "num_classes": 2,
                                  "num_labels": 3}  # fmt: skip
    np.testing.assert_array_equal(mapping.map_labels(np.array([2, 1, 5, -1])), [7, 0, -1, -1])
    (tmp_path / "ints.tsv").write_text("0\t3\n2\t5\n1\t3\n")  # no label space known
    mapping = views.file_map(str(tmp_path / "ints.tsv"), y_names=None, num_y=None,
                                  x_names=None, num_x=10)  # fmt: skip
    np.testing.assert_array_equal(mapping.y_to_x, [3, 3, 5])
    identity = views.identity_map(np.array([4, 2, 4]), NUM_X)
    np.testing.assert_array_equal(identity.classes, [2, 4])
    assert identity.map_labels(np.array([4, 3]))[1] == -1


@pytest.mark.parametrize(
    "text, message",
    [
        ("cat\t1\ndog\t2\n", r"m.tsv: no entry for 1 of the dataset's 3 labels \(2\)"),
        ("0\t1\ncat\t2\n1\t1\n2\t1\n", r"m.tsv:2: label 0 is mapped twice"),
        ("0\t1\n1\t1000\n2\t1\n", r"m.tsv:2: model class 1000 is out of range \(0..999\)"),
        ("0\t1\nwolf\t1\n", r"m.tsv:2: label 'wolf' is neither an index nor a class name"),
        ("0\t1\t2\n", r"m.tsv:1: expected `y_label<TAB>x_class`"),
        ("# nothing\n", r"m.tsv: no entries"),
        ('{"0": 1, "1": "n99999999", "2": 3}', r"key '1': model class 'n99999999' is neither"),
        ("[1, 2]", r"not valid JSON|expected a JSON object"),
    ],
)
def test_bad_class_maps_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(ValueError, match=message) as error:
        _file_map(tmp_path / "m.tsv", text)
    assert "\n" not in str(error.value)


def test_missing_map_file_and_bad_identity_or_wnid_maps(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.tsv: class map file not found"):
        views.file_map(str(tmp_path / "nope.tsv"), y_names=None, num_y=None,
                            x_names=None, num_x=10)  # fmt: skip
    with pytest.raises(ValueError, match=r"labels \[10\] are not classes of the model"):
        views.identity_map(np.array([1, 10]), 10)
    with pytest.raises(ValueError, match="1 of the dataset's 2 classes are not classes of the mo"):
        views.wnid_map(["n01440764", "n00000000"], X_NAMES)
    with pytest.raises(ValueError, match="evaluated dataset's `label` feature has no class names"):
        views.wnid_map(["0", "1"], X_NAMES)


def test_real_metrics_in_numpy():
    sets = views.map_label_sets([np.array([3, 1]), np.array([], np.int64), [5]], None)
    result = views.real_metrics(np.array([1, 1, 4]), sets)
    assert result == {"real_n": 2, "real_correct": 1, "real_top1": 0.5, "real_excluded": 1}
    np.testing.assert_array_equal(views.pad_label_sets(sets), [[1, 3], [-1, -1], [5, -1]])
    mapping = views.identity_map(np.array([3]), 10)  # label 1 unmapped: dropped
    assert [s.tolist() for s in views.map_label_sets([[3, 1], [1]], mapping)] == [[3], []]
