"""WordNet classes stage: which WordNet 3.0 noun synsets may become classes, and why others not.

    python -m curation.wordnet --config curation/configs/imagenot.py --workdir W

writes W/classes/candidates.parquet (one row per candidate synset, with the normalized lemmas
the match stage searches captions for) and W/classes/report.{json,md} (per-rule counts, and how
a released class list fares under the same rules). The rules are in `curation.wordnet_rules`.

WordNet comes from nltk_data (`corpora/wordnet`) when present, else from Debian's
`wordnet-base` (/usr/share/wordnet). Debian ships no `lexnames` file, which nltk's reader needs,
and nltk (3.10) refuses to read outside its data roots, symlinked files included; so such a
directory is copied once into a cache directory, with the standard `lexnames` added, and the
copy is registered as an nltk data root.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import pathlib
import shutil
import tempfile
import warnings
from collections.abc import Callable

import ml_collections
import nltk
import pyarrow as pa
from absl import logging
from nltk.corpus.reader.wordnet import WordNetCorpusReader

from curation import cli, files
from curation import wordnet_report as report_lib
from curation import wordnet_rules as rules
from curation.errors import CurationError

DEBIAN_DIR = pathlib.Path("/usr/share/wordnet")
_MISSING = (
    "WordNet 3.0 not found: install Debian's wordnet-base (`sudo apt-get install wordnet-base`, "
    "files in /usr/share/wordnet), or nltk's copy (`python -m nltk.downloader wordnet`), "
    "or set wordnet.dir to a WordNet 3.0 database directory"
)
# WordNet 3.0's lexicographer files, in file-number order (the `lexnames` file Debian omits).
# fmt: off
_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
# fmt: on
_LEX_POS = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_STAMP = "imagenot_source.json"  # in a cached copy: which files it was copied from
DOG = ("dog.n.01", "n02084071")  # a WordNet 3.0 fact that later versions do not share


def defaults() -> ml_collections.ConfigDict:
    """The `wordnet` config section."""
    c = ml_collections.ConfigDict()
    # WordNet 3.0 database dir (data.noun, index.noun, ...); '' = nltk_data's corpora/wordnet,
    # else Debian's /usr/share/wordnet. A dir without `lexnames` is copied to cache_dir first.
    c.dir = ""
    # Where such copies go; '' = $XDG_CACHE_HOME (or ~/.cache) + /imagenot_curation.
    c.cache_dir = ""
    # ImageNet-1k WNIDs, one per line; '' = the labels.txt of tensorflow-datasets' imagenet2012.
    c.imagenet_labels = ""
    # The synsets to choose from: '' = every noun synset (ImageNot); 'imagenet' = exactly the
    # ImageNet-1k synsets (LAIONet); else a WNID list file (one per line, '#' comments).
    c.classes = ""
    # Drop ImageNet-1k synsets and those within max_hops links of one (ImageNot: disjointness).
    c.exclude_imagenet = True
    # Links (hypernym/hyponym, instance ones included, either direction) that keep a synset
    # "near" ImageNet; 1 = direct parents and children of an ImageNet class are excluded.
    c.max_hops = 1
    # The candidates' imagenet_hops column is null beyond this many links (at least max_hops).
    c.imagenet_hops_cap = 3
    # No two CHOSEN classes within this many links (select applies it with wordnet_rules.spread;
    # here only reported for reference_classes). 0 = no constraint.
    c.spread_hops = 1
    # Drop a lemma shared by several synsets (a caption "crane" names neither class safely).
    c.drop_ambiguous = True
    # Among which synsets a lemma must be unique: 'candidates' (the pool that reaches the rule)
    # or 'nouns' (all WordNet nouns, so excluded ImageNet synsets also make lemmas ambiguous).
    c.ambiguous_among = "candidates"
    # Normalized lemmas shorter than this (characters) are never matched: 'a', 'i', 'in', 'us'
    # are lemmas of noun synsets (vitamin A, iodine, inch, United States) and would match
    # nearly every caption.
    c.min_lemma_chars = 3
    # A released class list (WNID file) to report on under the same rules; '' = none.
    c.reference_classes = ""
    return c


# --- loading WordNet -----------------------------------------------------------------------


class _Reader(WordNetCorpusReader):
    """nltk's reader, minus the mapping onto nltk_data's 'wordnet' package that its
    constructor builds for the multilingual Open WordNet whenever it reads any other copy: that
    package is absent here and unused; the copy read is checked to be 3.0 instead."""

    def map_wn(self, version="wordnet"):
        return None


def load(cfg: ml_collections.ConfigDict) -> WordNetCorpusReader:
    """The WordNet 3.0 reader (cached per process) for config section `cfg` (wordnet)."""
    return _load(cfg.dir, cfg.cache_dir)


@functools.lru_cache(maxsize=4)
def _load(directory: str, cache_dir: str) -> WordNetCorpusReader:
    root = _database(directory, cache_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions")
        wn = _Reader(root, None)
    version = wn.get_version()
    dog = rules.wnid_of(wn.synset(DOG[0]))
    if version != "3.0" or dog != DOG[1]:
        raise CurationError(
            f"{root}: WordNet {version} ({DOG[0]} = {dog}); expected WordNet 3.0 ({DOG[0]} = "
            f"{DOG[1]}), because ImageNet WNIDs are WordNet 3.0 offsets"
        )
    logging.info("WordNet %s from %s", version, root)
    return wn


def _database(directory: str, cache_dir: str):
    """The reader's root: a directory nltk may read, or nltk_data's (possibly zipped) copy."""
    if directory:
        path = pathlib.Path(directory).expanduser()
        if not (path / "data.noun").is_file():
            raise CurationError(f"wordnet.dir={directory!r}: no data.noun there ({_MISSING})")
        return _readable(path, cache_dir)
    for name in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        try:
            found = nltk.data.find(name)
        except LookupError:
            continue
        if isinstance(found, nltk.data.FileSystemPathPointer):
            return _readable(pathlib.Path(found.path), cache_dir)
        return found
    if (DEBIAN_DIR / "data.noun").is_file():
        return _readable(DEBIAN_DIR, cache_dir)
    raise CurationError(_MISSING)


def _readable(path: pathlib.Path, cache_dir: str) -> str:
    """`path` itself when it has `lexnames`, else its cached copy with one; either way
    registered as an nltk data root (nltk refuses to open files outside those)."""
    if not (path / "lexnames").is_file():
        path = _cached_copy(path, _cache_root(cache_dir))
    if str(path) not in nltk.data.path:
        nltk.data.path.append(str(path))
    return str(path)


def _cache_root(cache_dir: str) -> pathlib.Path:
    if cache_dir:
        return pathlib.Path(cache_dir).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return pathlib.Path(xdg) / "imagenot_curation"


def lexnames_text() -> str:
    """The standard WordNet 3.0 `lexnames` file: 'NN<tab>name<tab>pos' per lexicographer file."""
    return "".join(
        f"{i:02d}\t{name}\t{_LEX_POS[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)
    )


def _stamp(src: pathlib.Path) -> str:
    """Identifies the source files (path, sizes, times): a changed source means a new copy."""
    stats = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(src.iterdir())}
    return json.dumps({"source": str(src.resolve()), "files": stats}, sort_keys=True)


def _read_stamp(copy: pathlib.Path) -> str | None:
    try:
        return (copy / _STAMP).read_text()
    except OSError:
        return None


def _cached_copy(src: pathlib.Path, cache_root: pathlib.Path) -> pathlib.Path:
    """Copy of the database files of `src` plus `lexnames`, built in a temporary directory and
    renamed into place, so that concurrent processes (pytest-xdist) never see half a copy."""
    slug = "_".join(p for p in src.resolve().parts if p not in ("/", "")) or "root"
    dest = cache_root / "wordnet" / slug
    stamp = _stamp(src)
    if _read_stamp(dest) == stamp:
        return dest
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{slug}-", dir=dest.parent))
        for f in sorted(src.iterdir()):
            if f.is_file():
                shutil.copyfile(f, tmp / f.name)
        (tmp / "lexnames").write_text(lexnames_text())
        (tmp / _STAMP).write_text(stamp)
        _publish(tmp, dest, stamp)
    except OSError as e:
        raise CurationError(
            f"cannot copy WordNet from {src} into {dest.parent} ({e}); set wordnet.cache_dir "
            "(or XDG_CACHE_HOME) to a writable directory"
        ) from None
    logging.info("WordNet %s copied to %s with a lexnames file", src, dest)
    return dest


def _publish(tmp: pathlib.Path, dest: pathlib.Path, stamp: str) -> None:
    try:
        os.rename(tmp, dest)  # atomic; fails when dest exists (another process was first)
        return
    except OSError:
        if _read_stamp(dest) == stamp:
            shutil.rmtree(tmp, ignore_errors=True)
            return
    stale = dest.with_name(f".stale-{os.getpid()}-{dest.name}")  # an outdated copy
    os.rename(dest, stale)
    os.rename(tmp, dest)
    shutil.rmtree(stale, ignore_errors=True)


# --- WNID lists ----------------------------------------------------------------------------


def read_wnids(path: str | pathlib.Path, field: str) -> list[str]:
    """WNIDs of a list file: the first word of each line; blank lines and '#' comments skipped.
    `field` names the config field in errors."""
    path = pathlib.Path(path).expanduser()
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise CurationError(f"{field}: cannot read WNID list {path} ({e.strerror})") from None
    wnids = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if not rules.WNID_RE.fullmatch(words[0]):
            raise CurationError(f"{path}:{number}: {words[0]!r} is not a WNID (n + 8 digits)")
        wnids.append(words[0])
    if not wnids:
        raise CurationError(f"{field}: {path} lists no WNID")
    return wnids


def imagenet_labels_path(cfg: ml_collections.ConfigDict) -> pathlib.Path:
    """wordnet.imagenet_labels, or the file inside the installed tensorflow-datasets (found
    without importing it: that import takes seconds and pulls in TensorFlow)."""
    if cfg.imagenet_labels:
        return pathlib.Path(cfg.imagenet_labels).expanduser()
    spec = importlib.util.find_spec("tensorflow_datasets")
    for location in (spec and spec.submodule_search_locations) or ():
        path = pathlib.Path(location) / "datasets" / "imagenet2012" / "labels.txt"
        if path.is_file():
            return path
    raise CurationError(
        "wordnet.imagenet_labels: no ImageNet-1k WNID list; install tensorflow-datasets "
        "(it ships datasets/imagenet2012/labels.txt) or set the field to a WNID file"
    )


def imagenet_wnids(cfg: ml_collections.ConfigDict) -> list[str]:
    """ImageNet-1k's WNIDs (1,000), in label order."""
    return read_wnids(imagenet_labels_path(cfg), "wordnet.imagenet_labels")


# --- the stage -----------------------------------------------------------------------------

# wordnet.classes -> the universe of synsets to choose from; any other value is a WNID file.
_UNIVERSES: dict[str, Callable[[ml_collections.ConfigDict, dict, list], list[str]]] = {
    "": lambda cfg, nouns, imagenet: list(nouns),
    "imagenet": lambda cfg, nouns, imagenet: list(imagenet),
}


def _universe(cfg: ml_collections.ConfigDict, nouns: dict, imagenet: list[str]) -> list[str]:
    listed = _UNIVERSES.get(cfg.classes)
    if listed is None:
        return read_wnids(cfg.classes, "wordnet.classes")
    return listed(cfg, nouns, imagenet)


def check_config(cfg: ml_collections.ConfigDict) -> None:
    """One-line errors for impossible values of the wordnet section."""
    for field in ("max_hops", "spread_hops", "imagenet_hops_cap"):
        if not isinstance(cfg[field], int) or cfg[field] < 0:
            raise CurationError(f"wordnet.{field}={cfg[field]!r}: expected an integer >= 0")
    if not isinstance(cfg.min_lemma_chars, int) or cfg.min_lemma_chars < 1:
        raise CurationError(f"wordnet.min_lemma_chars={cfg.min_lemma_chars!r}: expected >= 1")
    if cfg.ambiguous_among not in rules.AMBIGUITY_SCOPES:
        raise CurationError(
            f"wordnet.ambiguous_among={cfg.ambiguous_among!r}: expected one of "
            f"{', '.join(rules.AMBIGUITY_SCOPES)}"
        )
    if cfg.classes == "imagenet" and cfg.exclude_imagenet:
        raise CurationError(
            "wordnet.classes='imagenet' needs wordnet.exclude_imagenet=False (LAIONet)"
        )


def candidates_table(
    nouns: dict, pool: rules.Pool, hops: dict[str, int | None], imagenet: set[str]
) -> pa.Table:
    """The candidates.parquet table: one row per pool synset, in WNID order."""
    wnids = sorted(pool)
    synsets = [nouns[w] for w in wnids]
    columns = {
        "wnid": pa.array(wnids, pa.string()),
        "name": pa.array([s.lemma_names()[0].replace("_", " ") for s in synsets], pa.string()),
        "lemmas": pa.array([list(pool[w]) for w in wnids], pa.list_(pa.string())),
        "gloss": pa.array([s.definition() for s in synsets], pa.string()),
        "lexname": pa.array([s.lexname() for s in synsets], pa.string()),
        "depth": pa.array(
            [s.min_depth() for s in files.progress(synsets, desc="depths")], pa.int32()
        ),
        "imagenet_hops": pa.array([hops.get(w) for w in wnids], pa.int32()),
        "in_imagenet": pa.array([w in imagenet for w in wnids], pa.bool_()),
    }
    return pa.table(columns)


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """Writes W/classes/candidates.parquet and report.{json,md}; returns the report."""
    cfg = config.wordnet
    check_config(cfg)
    wn = load(cfg)
    nouns = rules.noun_synsets(wn)
    imagenet = imagenet_wnids(cfg)
    unknown = [w for w in imagenet if w not in nouns]
    if unknown:
        raise CurationError(
            f"{imagenet_labels_path(cfg)}: {len(unknown)} WNIDs are not WordNet 3.0 noun "
            f"synsets, e.g. {unknown[0]}"
        )
    cap = max(cfg.imagenet_hops_cap, cfg.max_hops)
    hops = rules.graph(wn).distances(imagenet, cap)
    ctx = rules.Context(
        lemmas={w: tuple(s.lemma_names()) for w, s in nouns.items()}, imagenet_hops=hops, cfg=cfg
    )
    reference = (
        read_wnids(cfg.reference_classes, "wordnet.reference_classes")
        if cfg.reference_classes
        else None
    )
    steps = rules.apply_rules(_universe(cfg, nouns, imagenet), ctx, reference)
    for step in steps:
        row = step.row
        logging.info(
            "rule %-20s synsets %6d -> %6d", row["rule"], row["synsets_in"], len(step.pool)
        )
    pool = steps[-1].pool
    if not pool:
        raise CurationError("wordnet: no synset passes the rules; see the counts in the log")
    out = pathlib.Path(workdir) / "classes"
    files.write_parquet_atomic(
        candidates_table(nouns, pool, hops, set(imagenet)), out / "candidates.parquet"
    )
    summary = report_lib.build(wn, ctx, steps, reference, imagenet)
    files.write_json(out / "report.json", summary)
    files.write_text_atomic(out / "report.md", report_lib.markdown(summary))
    logging.info("%d candidate synsets in %s", len(pool), out / "candidates.parquet")
    return summary


if __name__ == "__main__":
    cli.run_stage(run)
