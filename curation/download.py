"""Download stage: img2dataset fetches the manifest's images into webdataset tars named by key.

    W/manifest.parquet ──> W/download/urls.parquet ──img2dataset──> W/images/NNNNN.tar
                                                                    (+ _stats.json, .parquet)

img2dataset names samples by its own sequential key (shard * 10**k + row) and reserves the
column name `key`, so the manifest key travels as the extra column `manifest_key` into each
sample's .json and into the per-shard parquet img2dataset writes beside each tar
(`NNNNN.parquet`: its key, status, manifest_key). The TFDS builder maps members to manifest keys
through that parquet (tfds_imagenot/imagenot/shards.py), so the tars stay as img2dataset wrote
them: nothing is rewritten, no second copy of the images.

Resuming: img2dataset's incremental mode skips every shard with a `NNNNN_stats.json`, which it
writes only after the tar is closed, so a killed shard has no stats and is downloaded again from
scratch (never duplicated).
Shards are numbered by row position in urls.parquet, so resuming with a different manifest or
shard size would mix two layouts: that is refused (see `_write_url_list`).
"""

from __future__ import annotations

import collections
import json
import math
import os
import pathlib
import signal
from collections.abc import Mapping

import ml_collections
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from absl import logging

from curation import cli, engine, files
from curation.errors import CurationError

KEY_COLUMN = "manifest_key"  # img2dataset forbids `key` in save_additional_columns
OOM_SHARD_COUNT = 5  # img2dataset's shard-name width: 00000.tar ... 99999.tar
RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")
ENCODE_FORMATS = ("jpg", "png", "webp")  # img2dataset's; the TFDS builder reads all three
TOP_ERRORS = 20  # error messages listed in the summary
DISTRIBUTORS = ("multiprocessing", "ray")  # img2dataset's distributors that this stage runs
_STATS_FIELDS = ("count", "successes", "failed_to_download", "failed_to_resize")


def defaults() -> ml_collections.ConfigDict:
    """config.download: img2dataset options (https://github.com/rom1504/img2dataset)."""
    c = ml_collections.ConfigDict()
    # Folder of the tars; '' = W/images, where `tfds build --manual_dir=W` looks (elsewhere, e.g.
    # a bigger disk, must be linked to W/images before building).
    c.output_dir = ""
    # img2dataset distributor: 'multiprocessing' | 'ray' | '' (= 'ray' when config.engine.name
    # is 'ray', e.g. with --ray_address, else 'multiprocessing'). img2dataset 1.47's ray
    # distributor retries nothing: failed shards show up as incomplete in the summary (rerun).
    c.distributor = ""
    # Worker processes (multiprocessing distributor); 0 = the cores this process may use (its
    # CPU affinity, e.g. under taskset or a container's limit).
    c.processes = 0
    # Download threads per process (img2dataset's default is 256; many threads need a fast
    # local DNS resolver, see img2dataset's README).
    c.threads = 64
    c.number_sample_per_shard = 10000  # manifest rows per tar shard
    # Images are stored with the shorter side at most image_size px ('keep_ratio' resizes the
    # shorter side, only downscaling with resize_only_if_bigger). The builder's default config
    # re-resizes the shorter side to 256, so keeping 512 leaves it (and `full`) sharp, while
    # 'keep_ratio_largest' would shrink elongated images' short side below 256.
    c.image_size = 512  # px
    c.resize_mode = "keep_ratio"  # one of RESIZE_MODES; 'no' keeps the original size
    c.resize_only_if_bigger = True  # never upscale
    # Keep the downloaded bytes when no resize is needed and the format already matches (no
    # second JPEG generation loss; EXIF orientation, applied by the builder, is kept).
    c.skip_reencode = True
    c.encode_format = "jpg"  # one of ENCODE_FORMATS; members are named {key}.{encode_format}
    c.encode_quality = 95  # JPEG/WebP quality 0-100 (PNG: compression 0-9)
    # Filters (failures are counted as failed_to_resize with the reason): shorter side (px);
    # pixels (guards memory against decompression bombs); longer/shorter side.
    c.min_image_size = 0
    c.max_image_area = 1e8
    c.max_aspect_ratio = float("inf")
    c.timeout = 10  # seconds per HTTP request
    c.retries = 1  # extra attempts per image after a failed download
    c.max_shard_retry = 1  # extra attempts per shard after it failed (multiprocessing only)
    # Identifies the crawler in the User-Agent and selects X-Robots-Tag directives addressed to
    # it ("img2dataset: noai"); '' = a plain browser User-Agent.
    c.user_agent_token = "img2dataset"
    # Comma-separated X-Robots-Tag directives whose images are not downloaded (img2dataset's
    # default list; the opt-out of site owners). '' honours none: do not, unless you may.
    c.disallowed_header_directives = "noai,noimageai,noindex,noimageindex"
    return c


def run(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict:
    """Download the manifest's images into webdataset tars; returns (and writes to
    W/download/summary.json) the success and failure counts."""
    cfg = config.download
    _check_config(cfg)
    state_dir = workdir / "download"
    images_dir = pathlib.Path(cfg.output_dir) if cfg.output_dir else workdir / "images"
    urls = url_table(workdir)
    num_shards = math.ceil(urls.num_rows / cfg.number_sample_per_shard)
    _forget_broken_shards(images_dir)
    urls_path = _write_url_list(urls, state_dir, images_dir, cfg.number_sample_per_shard)
    done = before = complete_shards(images_dir)
    if len(set(before) & set(shard_names(num_shards))) < num_shards:
        # img2dataset imports albumentations, whose import checks PyPI for a newer version (a
        # network request, in every worker): off, here and in the workers, which inherit it.
        os.environ.update(engine.WORKER_ENV)  # before any worker (process or Ray) starts
        distributor = _distributor(config)
        if distributor == "ray":
            engine.init_ray((config.get("engine") or {}).get("ray_address") or "")
        _img2dataset(**img2dataset_kwargs(cfg, urls_path, images_dir, distributor))
        done = complete_shards(images_dir)
    summary = summarize(images_dir, urls.num_rows, num_shards, done)
    summary["shards_downloaded_now"] = len(set(done) - set(before))
    _report(summary)
    state_dir.mkdir(parents=True, exist_ok=True)
    files.write_json(state_dir / "summary.json", summary)
    return summary


# --- inputs --------------------------------------------------------------------------------


def _check_config(cfg: ml_collections.ConfigDict) -> None:
    choices = {"resize_mode": RESIZE_MODES, "encode_format": ENCODE_FORMATS}
    for field, allowed in choices.items():
        if cfg[field] not in allowed:
            raise CurationError(
                f"config.download.{field}={cfg[field]!r}; expected one of {', '.join(allowed)}"
            )
    for field in ("number_sample_per_shard", "threads"):
        if cfg[field] < 1:
            raise CurationError(f"config.download.{field}={cfg[field]}; expected >= 1")
    if cfg.processes < 0:
        raise CurationError(f"config.download.processes={cfg.processes}; expected >= 0")


def url_table(workdir: pathlib.Path) -> pa.Table:
    """img2dataset's input, in manifest row order: url, caption, manifest_key."""
    tables = []
    for path in files.manifest_files(workdir):
        schema = files.read_schema(path)
        # caption is optional (img2dataset stores it as the .txt member)
        columns = ["key", "url", "caption"] if "caption" in schema.names else ["key", "url"]
        files.check_columns(path, schema, dict.fromkeys(columns, "string"))
        table = pq.read_table(path, columns=columns)
        _check_keys(path, table.column("key"))
        caption = table.column("caption") if "caption" in columns else pa.nulls(table.num_rows)
        url = table.column("url").cast(pa.string())
        tables.append(
            pa.table(
                {
                    "url": pc.fill_null(url, ""),
                    "caption": pc.fill_null(caption.cast(pa.string()), ""),
                    KEY_COLUMN: table.column("key").cast(pa.string()),
                }
            )
        )
    urls = pa.concat_tables(tables).combine_chunks()
    if len(tables) > 1:  # keys unique across the files too
        _check_keys(workdir / "manifest", urls.column(KEY_COLUMN))
    return urls


def _check_keys(path: pathlib.Path, keys: pa.ChunkedArray) -> None:
    """Keys name tar members: non-null, non-empty, without '/', unique."""
    if keys.null_count:
        raise CurationError(f"{path}: column 'key' has {keys.null_count} null(s)")
    bad = pc.filter(keys, pc.or_(pc.equal(keys, ""), pc.match_substring(keys, "/")))
    if len(bad):
        raise CurationError(f"{path}: key {bad[0].as_py()!r} is empty or contains '/'")
    counts = pc.value_counts(keys).flatten()
    repeated = pc.filter(counts[0], pc.greater(counts[1], 1))
    if len(repeated):
        raise CurationError(f"{path}: duplicate key {repeated[0].as_py()!r} (must be unique)")


def _write_url_list(
    urls: pa.Table, state_dir: pathlib.Path, images_dir: pathlib.Path, per_shard: int
) -> pathlib.Path:
    """W/download/urls.parquet (+ layout.json), left as it is when unchanged. Shards are rows
    [i * per_shard, (i + 1) * per_shard) of it, so another list (or shard size) over downloaded
    shards is refused: img2dataset's incremental mode would keep the shards of the old one."""
    path, layout_path = state_dir / "urls.parquet", state_dir / "layout.json"
    layout = {"rows": urls.num_rows, "number_sample_per_shard": per_shard}
    same = (
        layout_path.is_file()
        and json.loads(layout_path.read_text()) == layout
        and path.is_file()
        and pq.read_table(path).equals(urls)
    )
    if same:
        return path
    if _stats_files(images_dir) or list(images_dir.glob("*.tar")):
        raise CurationError(
            f"{images_dir} holds shards of another manifest or number_sample_per_shard than "
            f"{path}; remove {images_dir} and {path.parent} or set config.download.output_dir "
            "to a new folder"
        )
    files.write_parquet_atomic(urls, path)
    files.write_json(layout_path, layout, indent=None)
    return path


# --- img2dataset -----------------------------------------------------------------------------


def shard_names(num_shards: int) -> list[str]:
    return [f"{i:0{OOM_SHARD_COUNT}d}" for i in range(num_shards)]


def _stats_files(images_dir: pathlib.Path) -> list[pathlib.Path]:
    return sorted(images_dir.glob("*_stats.json")) if images_dir.is_dir() else []


def _read_stats(path: pathlib.Path) -> dict | None:
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, dict) and "successes" in stats else None


def complete_shards(images_dir: pathlib.Path) -> dict[str, dict]:
    """{shard name: img2dataset stats} of shards whose stats and tar are both written."""
    done = {}
    for path in _stats_files(images_dir):
        name = path.name.removesuffix("_stats.json")
        stats = _read_stats(path)
        if stats is not None and (images_dir / f"{name}.tar").is_file():
            done[name] = stats
    return done


def _forget_broken_shards(images_dir: pathlib.Path) -> None:
    """Delete stats whose tar is gone or that cannot be read, so that img2dataset (which skips
    every shard with a stats file) downloads those shards again."""
    for path in _stats_files(images_dir):
        tar = path.with_name(path.name.removesuffix("_stats.json") + ".tar")
        if _read_stats(path) is None or not tar.is_file():
            logging.warning("download: %s is unreadable or has no tar; redoing the shard", path)
            path.unlink()


def _distributor(config: ml_collections.ConfigDict) -> str:
    name = config.download.distributor
    if not name:
        engine = config.get("engine") or {}
        name = "ray" if engine.get("name") == "ray" else "multiprocessing"
    if name not in DISTRIBUTORS:
        raise CurationError(
            f"config.download.distributor={name!r}; expected one of {', '.join(DISTRIBUTORS)} or ''"
        )
    return name


def img2dataset_kwargs(
    cfg: ml_collections.ConfigDict, urls: pathlib.Path, images_dir: pathlib.Path, distributor: str
) -> dict:
    """Arguments of `img2dataset.download` for config.download."""
    directives = [d.strip() for d in cfg.disallowed_header_directives.split(",") if d.strip()]
    return dict(
        url_list=str(urls),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=[KEY_COLUMN],
        output_folder=str(images_dir),
        output_format="webdataset",
        incremental_mode="incremental",
        number_sample_per_shard=cfg.number_sample_per_shard,
        oom_shard_count=OOM_SHARD_COUNT,
        distributor=distributor,
        processes_count=cfg.processes or engine.cpu_count() or 1,
        thread_count=cfg.threads,
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        skip_reencode=cfg.skip_reencode,
        encode_format=cfg.encode_format,
        encode_quality=cfg.encode_quality,
        min_image_size=cfg.min_image_size,
        max_image_area=cfg.max_image_area,
        max_aspect_ratio=cfg.max_aspect_ratio,
        timeout=cfg.timeout,
        retries=cfg.retries,
        max_shard_retry=cfg.max_shard_retry,
        user_agent_token=cfg.user_agent_token or None,
        disallowed_header_directives=directives,  # img2dataset: [] honours none, None defaults
        enable_wandb=False,
        compute_hash="sha256",
    )


def _img2dataset(**kwargs) -> None:
    """img2dataset.download, whose SIGINT handler (it deletes W/images/_tmp, then exits) must
    not outlive the call."""
    from img2dataset import download

    handler = signal.getsignal(signal.SIGINT)
    try:
        download(**kwargs)
    finally:
        signal.signal(signal.SIGINT, handler)


# --- summary ---------------------------------------------------------------------------------


def summarize(
    images_dir: pathlib.Path, rows: int, num_shards: int, done: Mapping[str, dict]
) -> dict:
    """Counts over all complete shards (`done`: complete_shards, this run's and earlier ones)
    from img2dataset's stats and per-shard parquet."""
    names = [n for n in shard_names(num_shards) if n in done]
    stats = [done[n] for n in names]
    errors = collections.Counter()
    for s in stats:
        errors.update({k: v for k, v in s.get("status_dict", {}).items() if k != "success"})
    keyed = [_keyed_images(images_dir / f"{n}.parquet") for n in names]
    return {
        "images_dir": str(images_dir),
        "manifest_rows": rows,
        "shards": num_shards,
        "shards_complete": len(names),
        "incomplete_shards": sorted(set(shard_names(num_shards)) - set(names)),
        **{f: sum(int(s.get(f, 0)) for s in stats) for f in _STATS_FIELDS},
        "images": sum(k["images"] for k in keyed),
        "unnamed_samples": sum(k["unnamed"] for k in keyed),
        "errors": dict(errors.most_common(TOP_ERRORS)),
    }


def _keyed_images(path: pathlib.Path) -> dict[str, int]:
    """Successful samples of one shard's parquet, and those of them without a manifest key
    (which the builder cannot place)."""
    try:
        table = pq.read_table(path, columns=["status", KEY_COLUMN])
    except (pa.ArrowException, OSError, KeyError) as e:
        raise CurationError(
            f"{path}: unreadable ({e}); delete its shard to download it again"
        ) from None
    ok = pc.equal(table.column("status"), "success")
    unnamed = pc.and_(
        ok, pc.invert(pc.fill_null(pc.not_equal(table.column(KEY_COLUMN), ""), False))
    )
    return {"images": pc.sum(ok).as_py() or 0, "unnamed": pc.sum(unnamed).as_py() or 0}


def _report(summary: dict) -> None:
    failed = summary["failed_to_download"] + summary["failed_to_resize"]
    logging.info(
        "download: %d of %d images downloaded, %d failed (%d to download, %d to decode/resize); "
        "%d of %d shards complete (%d downloaded now)",
        summary["successes"], summary["count"], failed, summary["failed_to_download"],
        summary["failed_to_resize"], summary["shards_complete"], summary["shards"],
        summary["shards_downloaded_now"],
    )  # fmt: skip
    if failed:
        top = "; ".join(f"{n} x {msg}" for msg, n in list(summary["errors"].items())[:5])
        logging.warning("download: %d images failed; most common: %s", failed, top)
    if summary["incomplete_shards"]:
        logging.warning(
            "download: shards %s are incomplete (failed); rerun the stage to retry them",
            ", ".join(summary["incomplete_shards"][:10]),
        )
    if summary["images"] != summary["successes"] or summary["unnamed_samples"]:
        logging.warning(
            "download: %d image members (%d without %s) for %d successes",
            summary["images"], summary["unnamed_samples"], KEY_COLUMN, summary["successes"],
        )  # fmt: skip


if __name__ == "__main__":
    cli.run_stage(run)
