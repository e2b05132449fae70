"""Label views of an evaluation: class maps and multi-label (ReaL) scoring, in numpy.

A class map evaluates a model trained on dataset X on a dataset Y whose labels stand for a subset
of X's classes (LAIONet: ImageNet's classes, some of them, possibly renumbered). As in LAIONet and
ImageNet-A/R, the model may only answer among the mapped classes: its logits are restricted to them
(argmax and top-5 over the subset) and scored against the mapped label, so that classes Y never
asks about cannot cost accuracy. Specs (`--class_map`):

- `identity`: Y's labels are X's class indices; the subset is the labels that occur in Y's split.
- `wnid`: Y's and X's `label` class names are both WordNet ids; Y's class `n` maps to X's class
  of the same name.
- a file: JSON `{"y_label": x_class, ...}` or text with one `y_label<TAB>x_class` line per Y
  label (`#` comments and blank lines are skipped; a line without a tab splits on whitespace).
  Either side is an integer index or a class name of its dataset's `label` feature.

ReaL (Beyer et al. 2020, TFDS `imagenet2012_real`): each image has a set of correct labels; a top-1
prediction is right when it is in the set. Images with an empty set (no label agreed on) are
excluded and counted.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from imagenot_jax.data import data_dirs, datasets, input_pipeline
from imagenot_jax.errors import MissingInputError, UserError

IDENTITY, WNID = "identity", "wnid"
REAL_FEATURE = "real_label"  # TFDS imagenet2012_real: Sequence(ClassLabel) of ImageNet classes
# For datasets without a registry entry. The single-label feature, by preference:
# imagenet2012_real calls ImageNet's label `original_label` (beside its multi-label `real_label`).
LABEL_FEATURES = ("label", "original_label")
KEY_FEATURES = ("key", "file_name")  # stable example ids, by preference


@dataclasses.dataclass(frozen=True)
class ClassMap:
    """Y label -> X class, and the X classes the model's logits are restricted to."""

    source: str  # "identity", "wnid" or the map file's path
    y_to_x: np.ndarray  # int32 [num Y labels]: X class of each Y label, -1 where unmapped
    classes: np.ndarray  # int32, sorted and unique: the X classes the model may answer

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict[str, Any]:
        """What the eval JSON records about the mapping."""
        return {
            "source": self.source,
            "num_classes": self.num_classes,
            "num_labels": int(np.sum(self.y_to_x >= 0)),
        }

    def tag(self) -> str:
        """A file-name-safe name of the view (identity, wnid, or the map file's stem)."""
        if self.source in (IDENTITY, WNID):
            return self.source
        stem = epath.Path(self.source).stem
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)

    def map_labels(self, labels: np.ndarray) -> np.ndarray:
        """X classes of Y labels; -1 for labels the map does not cover."""
        labels = np.asarray(labels, np.int64)
        known = (labels >= 0) & (labels < len(self.y_to_x))
        return np.where(known, self.y_to_x[np.clip(labels, 0, len(self.y_to_x) - 1)], -1)


def _make(source: str, y_to_x: np.ndarray) -> ClassMap:
    y_to_x = np.asarray(y_to_x, np.int32)
    classes = np.unique(y_to_x[y_to_x >= 0]).astype(np.int32)
    if not len(classes):
        raise UserError(f"class map {source}: maps no label")
    return ClassMap(source, y_to_x, classes)


def default_names(names: Sequence[str] | None) -> bool:
    """True for ClassLabel(num_classes=N)'s placeholder names "0", "1", ... (or none at all)."""
    return names is None or list(names) == [str(i) for i in range(len(names))]


def identity_map(present_labels: np.ndarray, num_x: int) -> ClassMap:
    """Y labels are X's indices; the model answers among the labels that occur."""
    present = np.unique(np.asarray(present_labels, np.int64))
    outside = present[(present < 0) | (present >= num_x)]
    if len(outside):
        raise UserError(
            f"--class_map identity: labels {outside[:5].tolist()} are not classes of the model "
            f"(0..{num_x - 1})"
        )
    y_to_x = np.full(num_x, -1, np.int32)
    y_to_x[present] = present
    return _make(IDENTITY, y_to_x)


def wnid_map(y_names: Sequence[str] | None, x_names: Sequence[str] | None) -> ClassMap:
    """Y's class `n` is X's class named `n` (both `label` features named by WordNet id)."""
    if default_names(y_names) or default_names(x_names):
        side = "evaluated" if default_names(y_names) else "training"
        raise UserError(
            f"--class_map wnid: the {side} dataset's `label` feature has no class names"
        )
    index = {name: i for i, name in enumerate(x_names)}
    missing = [name for name in y_names if name not in index]
    if missing:
        raise UserError(
            f"--class_map wnid: {len(missing)} of the dataset's {len(y_names)} classes are not "
            f"classes of the model ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''})"
        )
    return _make(WNID, np.array([index[name] for name in y_names]))


def _resolve(token: str, names: Sequence[str] | None, size: int | None, what: str, where: str):
    """An integer index, or the index of a class name; checked against the label space."""
    try:
        value = int(token)
    except ValueError:
        if default_names(names) or token not in names:
            raise UserError(
                f"{where}: {what} {token!r} is neither an index nor a class name of its dataset"
            ) from None
        return list(names).index(token)
    if value < 0 or (size is not None and value >= size):
        limit = f"0..{size - 1}" if size is not None else "non-negative"
        raise UserError(f"{where}: {what} {value} is out of range ({limit})")
    return value


def _map_entries(path: epath.Path) -> list[tuple[str, str, str]]:
    """(y token, x token, location) of every entry of a JSON or text map file."""
    text = path.read_text()
    if path.suffix == ".json" or text.lstrip()[:1] in ("{", "["):
        try:
            content = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(content, dict):
            raise UserError(f"{path}: expected a JSON object {{y_label: x_class}}")
        return [(str(y), str(x), f"{path} key {y!r}") for y, x in content.items()]
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
        if len(fields) != 2:
            raise UserError(f"{path}:{number}: expected `y_label<TAB>x_class`, got {line!r}")
        entries.append((fields[0], fields[1], f"{path}:{number}"))
    return entries


def file_map(
    path: str,
    *,
    y_names: Sequence[str] | None,
    num_y: int | None,
    x_names: Sequence[str] | None,
    num_x: int,
) -> ClassMap:
    """Reads a map file; every Y class (when Y's label space is known) needs an entry."""
    file = epath.Path(path)
    if not file.exists():
        raise MissingInputError(f"{path}: class map file not found")
    mapping: dict[int, int] = {}
    for y_token, x_token, where in _map_entries(file):
        y = _resolve(y_token, y_names, num_y, "label", where)
        x = _resolve(x_token, x_names, num_x, "model class", where)
        if y in mapping:
            raise UserError(f"{where}: label {y} is mapped twice")
        mapping[y] = x
    if not mapping:
        raise UserError(f"{path}: no entries")
    size = num_y if num_y is not None else max(mapping) + 1
    missing = sorted(set(range(size)) - set(mapping))
    if missing:
        raise UserError(
            f"{path}: no entry for {len(missing)} of the dataset's {size} labels "
            f"({', '.join(map(str, missing[:5]))}{', ...' if len(missing) > 5 else ''})"
        )
    y_to_x = np.full(size, -1, np.int32)
    for y, x in mapping.items():
        y_to_x[y] = x
    return _make(path if "://" in path else os.path.abspath(path), y_to_x)


def load_class_map(
    spec: str,
    *,
    y_names: Sequence[str] | None,
    num_y: int | None,
    x_names: Sequence[str] | None,
    num_x: int,
    present_labels: Callable[[], np.ndarray],
) -> ClassMap:
    """The class map a `--class_map` value names. `present_labels` reads the labels occurring
    in Y's split; it is only called for `identity` (a pass over the split's records)."""
    if spec == IDENTITY:
        return identity_map(present_labels(), num_x)
    if spec == WNID:
        return wnid_map(y_names, x_names)
    return file_map(spec, y_names=y_names, num_y=num_y, x_names=x_names, num_x=num_x)


# ---------------------------------------------------------------------------------------------
# The evaluated dataset's side.
# ---------------------------------------------------------------------------------------------


class _Relabeled:
    """A data source whose records carry their label under another feature's name."""

    def __init__(self, source: Any, feature: str):
        self.source, self.feature = source, feature

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = dict(self.source[index])
        record["label"] = record[self.feature]
        return record


@dataclasses.dataclass(frozen=True)
class EvalData:
    """An evaluated split: its data source and what its features say about labels and ids."""

    name: str
    split: str
    source: Any  # the TFDS data source (image bytes undecoded)
    label_feature: str  # "label" or imagenet2012_real's "original_label"
    names: list[str] | None  # the label's class names (None: not a ClassLabel)
    num_classes: int | None
    key_feature: str | None  # "key" / "file_name", or None: keys are split:index
    real_feature: str | None  # the ReaL multi-label feature (`real_label`), if any

    @property
    def has_real(self) -> bool:
        return self.real_feature is not None

    @property
    def eval_source(self) -> Any:
        """The source as the eval pipeline reads it: the label under `label`."""
        if self.label_feature == "label":
            return input_pipeline.RecordReader(self.source)
        return _Relabeled(self.source, self.label_feature)

    def present_labels(self) -> np.ndarray:
        """Every record's label (a pass over the split's records)."""
        indices = np.arange(len(self.source))
        return np.asarray(
            read_fields(self.source, indices, [self.label_feature])[self.label_feature]
        )


def open_eval_data(name: str, split: str, data_dir: str | None) -> EvalData:
    """Opens a prepared split. Its label, id and ReaL features are those of its registry entry
    (imagenot_jax/data/datasets.py); for a dataset nobody registered, by convention: `label`
    else `original_label`, `key` else `file_name`, and `real_label`."""
    source = input_pipeline.open_source(name, split, data_dir)
    features = source.dataset_info.features
    spec = datasets.find_by_tfds_name(name)
    if spec is not None:
        label, key, real = spec.label_feature, spec.key_feature, spec.real_feature
    else:
        label = next((f for f in LABEL_FEATURES if f in features), None)
        key = next((f for f in KEY_FEATURES if f in features), None)
        real = REAL_FEATURE if REAL_FEATURE in features else None
    if label is None:
        raise UserError(
            f"dataset {name!r} has none of the label features {LABEL_FEATURES} "
            f"(it has {sorted(features.keys())})"
        )
    missing = [f for f in (label, key, real) if f is not None and f not in features]
    if missing:
        raise UserError(
            f"dataset {name!r} lacks the features {missing} its registry entry names "
            f"(it has {sorted(features.keys())})"
        )
    names, num_classes = class_label(features, label)
    return EvalData(
        name=name,
        split=split,
        source=source,
        label_feature=label,
        names=names,
        num_classes=num_classes,
        key_feature=key,
        real_feature=real,
    )


def class_label(features: Any, name: str) -> tuple[list[str] | None, int | None]:
    """(names, num_classes) of a ClassLabel feature; (None, None) for a plain integer."""
    feature = features[name]
    if isinstance(feature, tfds.features.ClassLabel):
        return list(feature.names), feature.num_classes
    return None, None


def training_class_names(name: str, data_dir: str | None) -> list[str] | None:
    """The training dataset's class names, when its TFDS info can be read here (a registered
    builder or a prepared copy); None otherwise: the training data need not be on this machine."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)  # TFDS warns about an unprepared dataset's folder
    try:
        builder = tfds.builder(name, data_dir=data_dirs.resolve_data_dir(data_dir))
        features = builder.info.features
    except (tfds.core.registered.DatasetNotFoundError, OSError, ValueError, KeyError):
        return None
    finally:
        logging.set_verbosity(verbosity)
    if features is None or "label" not in features:
        return None
    return class_label(features, "label")[0]


def check_label_space(data: EvalData, x_names: Sequence[str] | None, num_x: int) -> None:
    """Without a class map the dataset's labels must be the model's classes, in its order."""
    if data.num_classes is not None and data.num_classes != num_x:
        raise UserError(
            f"dataset {data.name!r} has {data.num_classes} classes and the model {num_x}; to "
            "evaluate on a subset of the model's classes pass --class_map identity|wnid|FILE"
        )
    if default_names(data.names) or default_names(x_names) or data.names == list(x_names):
        return
    if sorted(data.names) == sorted(x_names):
        raise UserError(
            f"dataset {data.name!r} has the training data's class names in another order; "
            "pass --class_map wnid"
        )
    logging.warning("dataset %s: class names differ from the training data's", data.name)


def example_keys(data: EvalData, records: dict[str, list], indices: np.ndarray) -> np.ndarray:
    """Stable per-example ids: the dataset's `key` (or `file_name`), else split:index."""
    if data.key_feature is None:
        return np.array([f"{data.split}:{i}" for i in indices])
    return np.array([bytes(k).decode() for k in records[data.key_feature]])


def read_fields(
    source: Any, indices: np.ndarray, fields: Sequence[str], chunk: int = 256
) -> dict[str, list[Any]]:
    """Fields of the records at `indices` of a TFDS data source, read in batches."""
    out: dict[str, list[Any]] = {name: [] for name in fields}
    indices = [int(i) for i in indices]
    for start in range(0, len(indices), chunk):
        for record in source.__getitems__(indices[start : start + chunk]):
            for name in fields:
                out[name].append(record[name])
    return out


# ---------------------------------------------------------------------------------------------
# Multi-label (ReaL) scoring.
# ---------------------------------------------------------------------------------------------


def map_label_sets(sets: Iterable[np.ndarray], class_map: ClassMap | None) -> list[np.ndarray]:
    """Label sets in the model's class space (labels a class map leaves unmapped dropped)."""
    out = []
    for labels in sets:
        labels = np.asarray(labels, np.int64).reshape(-1)
        if class_map is not None:
            labels = class_map.map_labels(labels)
            labels = labels[labels >= 0]
        out.append(np.unique(labels))
    return out


def multilabel_correct(top1: np.ndarray, sets: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """(correct, valid) per example: top-1 in the set; valid = the set is not empty."""
    valid = np.array([len(s) > 0 for s in sets], bool)
    correct = np.array([bool(np.isin(p, s)) for p, s in zip(top1, sets, strict=True)], bool)
    return correct & valid, valid


def real_metrics(top1: np.ndarray, sets: Sequence[np.ndarray]) -> dict[str, Any]:
    """ReaL accuracy: over the examples whose label set is not empty; the others counted."""
    correct, valid = multilabel_correct(top1, sets)
    n = int(valid.sum())
    hits = int(correct.sum())
    return {
        "real_n": n,
        "real_correct": hits,
        "real_top1": hits / n if n else float("nan"),
        "real_excluded": int(len(valid) - n),
    }


def pad_label_sets(sets: Sequence[np.ndarray]) -> np.ndarray:
    """The sets as one int32 array [n, longest], padded with -1 (for the .examples.npz)."""
    width = max([len(s) for s in sets] + [1])
    out = np.full((len(sets), width), -1, np.int32)
    for row, labels in enumerate(sets):
        out[row, : len(labels)] = labels
    return out
