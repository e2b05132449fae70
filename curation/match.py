"""Match stage: which LAION captions name which candidate synset.

Every normalized lemma of every candidate synset (W/classes/candidates.parquet) goes, padded
with spaces, into one Aho-Corasick automaton; a row group's captions are normalized as whole
Arrow columns and joined into one string, and a single pass of the automaton over it finds
every whole-word occurrence of every lemma, overlapping ones included (`curation.text`).
A lemma occurrence nested in a longer matched one does not count (`match.longest_match`, on by
default): "hot dog" is not also "dog". A caption whose lemmas belong to more than one synset is
dropped, or kept once per synset, or kept for the synset of its head noun
(`match.multi_synset`: drop, best, head_noun; see `curation.caption_rules`); a synset matched by
several lemmas of the same caption gives one row, with the longest of them (ties: the one listed
first for the synset).

Tasks are (input file, row group), run by `curation.engine`; each writes
W/match/_parts/<shard>.rgNNNNN.parquet atomically; then each shard's parts are concatenated in
row-group order into W/match/<shard>.parquet (its parts then deleted), one engine task per
shard. A rerun
skips finished shards and finished parts: killing the stage at any point loses at most the
running tasks. Counts travel in each file's parquet metadata, so summary.json covers shards done
by earlier runs too.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import pathlib
import time
from typing import Any

import ml_collections
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from absl import logging

from curation import caption_rules, cli, engine, files, laion
from curation.errors import CurationError
from curation.text import (
    Found,
    Lexicon,
    build_lexicon,
    decode_utf8,
    find_spans,
    joined_text,
    resolve,
)

OUT_DIR = "match"
PARTS_DIR = "_parts"
SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("wnid", pa.string()),
        ("lemma", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("punsafe", pa.float32()),
        ("nsfw", pa.string()),
        ("similarity", pa.float32()),
        ("source", pa.string()),
        ("row", pa.int64()),
    ]
)
# Per-file counts, summed into summary.json (captions = rows read, null ones included).
COUNTS = (
    "captions",
    "null_captions",
    "invalid_utf8_captions",
    "nested_lemmas_suppressed",
    "matched_captions",
    "multi_synset_captions",
    "kept_multi_synset",
    "dropped_multi_synset",
    "rows",
)
_METADATA = b"curation.match"
# Seconds each task sleeps first: lets tests kill a run in the middle. Never set it otherwise.
DELAY_ENV = "CURATION_MATCH_TEST_DELAY_S"


def defaults() -> ml_collections.ConfigDict:
    """config.match: how lemma matches become (sample, class) rows."""
    c = ml_collections.ConfigDict()
    # A lemma occurrence inside a longer matched one does not count ("hot dog" is not "dog").
    c.longest_match = True
    # Captions whose lemmas belong to more than one candidate synset: "drop" them (ambiguous
    # samples); "best": keep one row per synset (select keeps each sample's best-scoring
    # class); "head_noun": keep the synset of the last matched lemma before the first
    # preposition or comma after the first match ("sunset over the ocean" -> sunset).
    c.multi_synset = "drop"
    return c


def check_config(config: ml_collections.ConfigDict) -> None:
    policy = config.match.multi_synset
    if policy not in caption_rules.MULTI_SYNSET_POLICIES:
        known = ", ".join(caption_rules.MULTI_SYNSET_POLICIES)
        raise CurationError(f"config.match.multi_synset={policy!r}: expected one of {known}")


def load_lexicon(path: pathlib.Path) -> Lexicon:
    """The lexicon of a candidates file, built once per process (and per file version)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise CurationError(f"{path}: not found; run the wordnet stage first") from None
    return _load_lexicon(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _load_lexicon(path: str, mtime_ns: int, size: int) -> Lexicon:
    schema = files.read_schema(pathlib.Path(path))
    files.check_columns(pathlib.Path(path), schema, {"wnid": "string", "lemmas": "list"})
    table = pq.read_table(path, columns=["wnid", "lemmas"])
    wnids = table.column("wnid").to_pylist()
    repeated = [w for w, n in collections.Counter(wnids).items() if n > 1 or w is None]
    if repeated:
        raise CurationError(f"{path}: column 'wnid' has a null or repeated value {repeated[0]!r}")
    return build_lexicon(wnids, [m or [] for m in table.column("lemmas").to_pylist()])


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """Matches config.laion.paths against W/classes/candidates.parquet into W/match/."""
    workdir = pathlib.Path(workdir)
    out_dir, candidates = workdir / OUT_DIR, workdir / files.CANDIDATES
    check_config(config)
    lexicon = load_lexicon(candidates)  # before forking: workers inherit it
    if not str(config.laion.paths).strip():
        raise CurationError("config.laion.paths is empty: give the LAION parquet files (globs)")
    paths = files.input_shards(config.laion.paths)
    shards = [laion.open_shard(p, config.laion.columns) for p in paths]
    settings = _settings(candidates, config)
    pending = [s for s in shards if not _finished(s, out_dir, settings)]
    tasks = [t for s in pending for t in _tasks(s, out_dir, candidates, settings, config)]
    logging.info("match: %d of %d shards to do (%d row groups)", len(pending), len(shards),
                 len(tasks))  # fmt: skip
    results = engine.run_tasks(tasks, match_row_group, config.engine, desc="match")
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        raise CurationError(errors[0])
    finishing = [dict(shard=s, out_dir=out_dir, settings=settings) for s in pending]
    engine.run_tasks(finishing, finish_shard, config.engine, desc="match: shards")
    summary = _summarize(shards, out_dir, lexicon, config)
    files.write_json(out_dir / "summary.json", summary, indent=1)
    logging.info("match: %s", {k: summary[k] for k in (*COUNTS, "samples", "classes_matched")})
    return summary


def match_row_group(task: dict[str, Any]) -> dict[str, Any]:
    """The engine's task: match one row group, write its part; returns its counts (or
    {"error": one line} for bad input, which both engines hand back the same way)."""
    time.sleep(float(os.environ.get(DELAY_ENV) or 0))
    try:
        table, counts = match_table(task)
    except CurationError as e:
        return {"error": str(e)}
    info = {"counts": counts, "settings": task["settings"], "input": task["input"]}
    files.write_parquet_atomic(table.replace_schema_metadata(_metadata(info)), task["part"])
    return counts


def match_table(task: dict[str, Any]) -> tuple[pa.Table, dict[str, int]]:
    """The output rows of one row group and its counts."""
    shard: laion.Shard = task["shard"]
    lexicon = load_lexicon(task["candidates"])
    table = laion.read_row_group(shard, task["row_group"])
    captions, invalid = decode_utf8(table.column("caption"))
    found, counts = match_captions(lexicon, captions, task["longest_match"], task["multi_synset"])
    out = output_table(lexicon, shard, task["row_group"], table, captions, found)
    counts = {
        "captions": len(captions),
        "null_captions": captions.null_count,
        "invalid_utf8_captions": invalid,
        **counts,
        "rows": len(out),
    }
    return out, counts


def match_captions(
    lexicon: Lexicon, captions: pa.Array, longest_match: bool, multi_synset: str
) -> tuple[Found, dict[str, int]]:
    """The (caption, synset, lemma) rows of a batch of decoded captions under the caption rules,
    and the rules' counts."""
    text, ends = joined_text(captions)
    caption, lemma, end = find_spans(lexicon, text, ends)
    nested = 0
    if longest_match:
        keep = caption_rules.outermost(lexicon, lemma, end)
        nested = int(len(keep) - keep.sum())
        caption, lemma, end = caption[keep], lemma[keep], end[keep]
    head = None
    if multi_synset == "head_noun":
        cuts = caption_rules.boundaries(captions, text, ends)
        head = caption_rules.heads(caption, end, cuts, ends)
    found = resolve(lexicon, caption, lemma, multi_synset, head)
    kept = found.kept_multi
    return found, {
        "nested_lemmas_suppressed": nested,
        "matched_captions": found.matched,
        "multi_synset_captions": found.multi,
        "kept_multi_synset": kept,
        "dropped_multi_synset": found.multi - kept,
    }


def output_table(
    lexicon: Lexicon,
    shard: laion.Shard,
    row_group: int,
    table: pa.Table,
    captions: pa.Array,
    found: Found,
) -> pa.Table:
    """The output rows (SCHEMA) of resolved matches of one row group (`table`, its columns
    named by role; `captions` decoded)."""
    rows = pa.array(found.caption)
    matched = table.drop_columns(["caption"]).take(rows)  # decoded `captions` replace it
    row = pa.array(found.caption + shard.starts[row_group], pa.int64())
    columns = {
        "key": _keys(shard, matched, row),
        "wnid": lexicon.wnids.take(found.wnid),
        "lemma": lexicon.lemmas.take(found.lemma),
        "caption": captions.take(rows),
        **laion.standardize(matched),
        "source": pa.repeat(pa.scalar(shard.name), len(rows)),
        "row": row,
    }
    return pa.table([columns[f.name] for f in SCHEMA], schema=SCHEMA)


def _keys(shard: laion.Shard, matched: pa.Table, row: pa.Array) -> pa.Array:
    """f"{shard}-{row:09d}", or the id column's values made file-name safe (`matched`: the
    output rows' source rows, `row` their indices in the file)."""
    if not shard.columns["id"]:
        digits = pc.utf8_lpad(row.cast(pa.string()), 9, "0")
        return pc.binary_join_element_wise(f"{shard.name}-", digits, "")
    ids = matched.column("id")
    ids, _ = decode_utf8(ids.cast(pa.string()) if pa.types.is_integer(ids.type) else ids)
    empty = pc.fill_null(pc.equal(ids, ""), True)
    if pc.any(empty).as_py():
        bad = row[pc.index(empty, True).as_py()].as_py()
        raise CurationError(
            f"{shard.path}: column {shard.columns['id']!r} is null or empty at row {bad} "
            "(config.laion.columns.id must name a column of unique sample ids)"
        )
    return pc.replace_substring_regex(ids, files.UNSAFE_CHARS, "_")


def _tasks(shard, out_dir, candidates, settings, config) -> list[dict[str, Any]]:
    """The row groups of `shard` whose part is not written yet (from this version of the input
    file, with these settings)."""
    stat = shard.path.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}"  # a rewritten input file invalidates parts
    tasks = []
    for index in range(len(shard.sizes)):
        part = _part_path(out_dir, shard, index)
        info = _file_info(part) if part.exists() else {}
        if info.get("settings") == settings and info.get("input") == stamp:
            continue
        tasks.append(
            dict(
                shard=shard,
                row_group=index,
                part=part,
                candidates=candidates,
                longest_match=bool(config.match.longest_match),
                multi_synset=str(config.match.multi_synset),
                settings=settings,
                input=stamp,
            )
        )
    return tasks


def _part_path(out_dir: pathlib.Path, shard: laion.Shard, index: int) -> pathlib.Path:
    return out_dir / PARTS_DIR / f"{shard.name}.rg{index:05d}.parquet"


def finish_shard(task: dict[str, Any]) -> None:
    """The engine's task once all row groups are done: concatenates the shard's parts in
    row-group order into its output, then deletes them."""
    shard, out_dir = task["shard"], task["out_dir"]
    parts = [_part_path(out_dir, shard, i) for i in range(len(shard.sizes))]
    tables = [pq.read_table(p) for p in parts]
    infos = [json.loads(t.schema.metadata[_METADATA]) for t in tables]
    counts = {k: sum(info["counts"][k] for info in infos) for k in COUNTS}
    plain = [t.replace_schema_metadata() for t in tables]
    table = pa.concat_tables(plain) if plain else SCHEMA.empty_table()
    info = {"counts": counts, "settings": task["settings"]}
    files.write_parquet_atomic(
        table.replace_schema_metadata(_metadata(info)), files.output_path(out_dir, shard.name)
    )
    for part in parts:
        part.unlink()


def _settings(candidates: pathlib.Path, config: ml_collections.ConfigDict) -> str:
    """What the output depends on besides the inputs: an output made with other settings is
    never mixed in (finished shards: an error; parts: redone)."""
    digest = hashlib.sha256(candidates.read_bytes()).hexdigest()[:16]
    return json.dumps(
        {
            "candidates_sha256": digest,
            "longest_match": bool(config.match.longest_match),
            "multi_synset": str(config.match.multi_synset),
            "columns": config.laion.columns.to_dict(),
        },
        sort_keys=True,
    )


def _metadata(info: dict[str, Any]) -> dict[bytes, str]:
    return {_METADATA: json.dumps(info)}


def _file_info(path: pathlib.Path) -> dict[str, Any]:
    """What `_metadata` stored in a part or output file ({} if none)."""
    metadata = pq.read_schema(path).metadata or {}
    return json.loads(metadata[_METADATA]) if _METADATA in metadata else {}


def _finished(shard: laion.Shard, out_dir: pathlib.Path, settings: str) -> bool:
    out = files.output_path(out_dir, shard.name)
    if not out.exists():
        return False
    if _file_info(out).get("settings") != settings:
        raise CurationError(
            f"{out}: made with other candidates, config.match or config.laion.columns; "
            f"delete {out_dir} to match again"
        )
    for stale in (out_dir / PARTS_DIR).glob(f"{shard.name}.rg*.parquet"):
        stale.unlink()  # killed between writing the output and deleting its parts
    return True


def _summarize(shards, out_dir: pathlib.Path, lexicon: Lexicon, config) -> dict[str, Any]:
    """Counts over all shards' outputs (this run's and earlier ones')."""
    counts = collections.Counter()
    per_class = collections.Counter(dict.fromkeys(lexicon.wnids.to_pylist(), 0))
    samples, id_keys = 0, []
    for shard in shards:
        # Keys from an id column are unique only if the ids are: those are checked too.
        keys = ["key", "source"] if shard.columns["id"] else []
        path = files.output_path(out_dir, shard.name)
        table = pq.read_table(path, columns=["wnid", "row", *keys])
        counts.update(json.loads(table.schema.metadata[_METADATA])["counts"])
        for item in pc.value_counts(table.column("wnid")).to_pylist():
            per_class[item["values"]] += item["counts"]
        samples += pc.count_distinct(table.column("row")).as_py()
        if keys:
            id_keys.append(table.select(["key", "source", "row"]).replace_schema_metadata())
    if id_keys:
        _check_unique_keys(pa.concat_tables(id_keys), config.laion.columns.id)
    return {
        **{k: counts[k] for k in COUNTS},
        "samples": samples,
        "shards": len(shards),
        "row_groups": sum(len(s.sizes) for s in shards),
        "candidate_classes": len(lexicon.wnids),
        "candidate_lemmas": len(lexicon.lemmas),
        "classes_matched": sum(1 for n in per_class.values() if n),
        "longest_match": bool(config.match.longest_match),
        "multi_synset": str(config.match.multi_synset),
        "engine": config.engine.name,
        "per_class": dict(sorted(per_class.items())),
    }


def _check_unique_keys(keys: pa.Table, id_column: str) -> None:
    """Error if two source rows got the same key (two equal ids, or ids equal once made
    file-name safe): keys name the image files."""
    distinct = keys.group_by(["key", "source", "row"]).aggregate([])
    per_key = distinct.group_by("key").aggregate([("row", "count")])
    clash = per_key.filter(pc.greater(per_key.column("row_count"), 1))
    if len(clash):
        key = clash.column("key")[0].as_py()
        rows = distinct.filter(pc.equal(distinct.column("key"), key))
        rows = rows.sort_by([("source", "ascending"), ("row", "ascending")]).to_pylist()[:2]
        where = " and ".join(f"{r['source']} row {r['row']}" for r in rows)
        raise CurationError(
            f"sample id {key!r} (config.laion.columns.id={id_column!r}) is not unique: {where}"
        )


if __name__ == "__main__":
    cli.run_stage(run)
