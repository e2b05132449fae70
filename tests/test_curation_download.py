"""Download stage end to end: a local HTTP server -> img2dataset -> `tfds build` -> grain batch.

The server on 127.0.0.1 serves fixture images (JPEG and PNG of several sizes), one file that is
not an image, and one URL that 404s. TensorFlow is imported lazily (tests/conftest.py imports
torchvision first: TF-then-torch aborts).
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import threading

import ml_collections
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curation import clip_score, download
from curation.errors import CurationError
from tfds_imagenot.imagenot import shards
from tfds_imagenot.imagenot.testing import ClassRow, ManifestRow, jpeg_bytes, write_manual_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
CLASSES = (
    ClassRow(0, "n00000001", "alpha", "the first class"),
    ClassRow(1, "n00000002", "beta", "the second class"),
    ClassRow(2, "n00000003", "gamma", "the third class"),
)
IMAGE_SIZE = 64  # config.download.image_size in these tests
# key -> (split, label, served file or None for a 404, file bytes)
FIXTURES = {
    "tr-big": ("train", 0, "big.jpg", jpeg_bytes(300, 200, seed=1)),  # resized to 96x64
    "tr-small": ("train", 1, "small.jpg", jpeg_bytes(40, 30, seed=2)),  # kept byte for byte
    "tr-broken": ("train", 2, "broken.jpg", b"<html>not an image</html>"),
    "tr-png": ("train", 0, "rgba.png", jpeg_bytes(50, 50, mode="RGBA", fmt="PNG", seed=3)),
    "tr-missing": ("train", 1, None, b""),
    "tr-gray": ("train", 2, "gray.jpg", jpeg_bytes(90, 70, mode="L", seed=4)),
    "va-0": ("validation", 0, "va0.jpg", jpeg_bytes(80, 64, seed=5)),
    "va-1": ("validation", 2, "va1.png", jpeg_bytes(30, 40, fmt="PNG", seed=6)),
    "te-0": ("test", 1, "te0.jpg", jpeg_bytes(64, 48, seed=7)),
    "te-1": ("test", 0, "te1.jpg", jpeg_bytes(120, 64, seed=8)),
}
FAILED = {"tr-broken", "tr-missing"}
GOOD = sorted(set(FIXTURES) - FAILED)
PER_SHARD = 4  # 10 rows -> shards 00000 (4), 00001 (4), 00002 (2)


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []  # replaced per server

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, list of requested paths) of a server on 127.0.0.1 over the fixture files."""
    root = tmp_path_factory.mktemp("www")
    for _, _, name, data in FIXTURES.values():
        if name:
            (root / name).write_bytes(data)
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    os.environ["no_proxy"] = "127.0.0.1,localhost"  # urllib must not route through a proxy
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.requests
    httpd.shutdown()
    httpd.server_close()


def _config(**overrides) -> ml_collections.ConfigDict:
    """Small and quick: one process, a few threads, no retries, shards of PER_SHARD rows."""
    config = ml_collections.ConfigDict({"seed": 0, "download": download.defaults()})
    small = dict(processes=1, threads=3, timeout=5, retries=0, max_shard_retry=0)
    config.download.update(small, image_size=IMAGE_SIZE, number_sample_per_shard=PER_SHARD)
    config.download.update(overrides)
    return config


def _write_workdir(workdir: pathlib.Path, base_url: str) -> None:
    """manifest.parquet (URLs on the server; the missing one 404s) and classes.tsv."""
    rows = []
    for key, (split, label, name, _) in FIXTURES.items():
        url = f"{base_url}/{name or 'nothing-here.jpg'}"
        rows.append(ManifestRow(key, CLASSES[label].wnid, label, split, url, f"a photo of {key}"))
    write_manual_dir(workdir, CLASSES, rows, {})  # no images: that is the download's job
    shutil.rmtree(workdir / "images")


@pytest.fixture(scope="module")
def downloaded(server, tmp_path_factory):
    """(workdir, summary, number of HTTP requests) after one download."""
    workdir = tmp_path_factory.mktemp("work")
    _write_workdir(workdir, server[0])
    summary = download.run(_config(), workdir)
    return workdir, summary, len(server[1])


def _members(images_dir: pathlib.Path) -> dict[str, bytes]:
    """{member name: bytes} over all tars; a name repeated across tars fails the test."""
    out: dict[str, bytes] = {}
    for path in sorted(images_dir.glob("*.tar")):
        with tarfile.open(path) as tar:
            for info in tar.getmembers():
                assert info.name not in out, f"{info.name} twice"
                out[info.name] = tar.extractfile(info).read()
    return out


def _images(images_dir: pathlib.Path) -> dict[str, bytes]:
    """{manifest key: image bytes} as the TFDS builder finds them (shards.index_shards)."""
    paths = shards.find_shards(images_dir)
    index = shards.index_shards(paths, threads=2)
    keys = index.keys.to_pylist()
    assert len(set(keys)) == len(keys), "a key twice"
    return {
        key: shards.read_member(paths[s], o, n)
        for key, s, o, n in zip(keys, index.shard, index.offset, index.size, strict=True)
    }


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_tars_stay_as_downloaded_and_the_builder_finds_every_image_by_manifest_key(downloaded):
    workdir, _, _ = downloaded
    members = _members(workdir / "images")
    # img2dataset's own names (10 * shard + row): no tar was rewritten.
    assert all(n.split(".")[0].isdigit() for n in members), sorted(members)
    assert sorted(p.name for p in (workdir / "images").glob("*.tar")) == [
        "00000.tar", "00001.tar", "00002.tar"
    ]  # fmt: skip
    images = _images(workdir / "images")
    assert sorted(images) == sorted(GOOD)
    meta = json.loads(members["000021.json"])
    assert meta["manifest_key"] == "te-1" and meta["key"] == "000021"
    assert members["000021.txt"] == b"a photo of te-1"
    assert images["te-1"] == members["000021.jpg"]
    # The CLIP stage and the diagnostics look images up by manifest key the same way.
    assert sorted(clip_score.ImageIndex(workdir / "images").members) == sorted(GOOD)


def test_images_are_resized_reencoded_or_kept(downloaded):
    images = _images(downloaded[0] / "images")
    assert images["tr-small"] == FIXTURES["tr-small"][3]  # no resize, already JPEG
    sizes = {k: _image(images[k]).size for k in GOOD}
    assert sizes["tr-big"] == (96, 64) and sizes["te-1"] == (120, 64)  # shorter side = 64
    assert sizes["tr-png"] == (50, 50) and sizes["tr-gray"] == (82, 64)
    for key in ("tr-png", "va-1"):  # PNG sources are re-encoded to match the .jpg name
        assert _image(images[key]).format == "JPEG"


def test_summary_counts_every_failure(downloaded):
    workdir, summary, _ = downloaded
    assert summary == json.loads((workdir / "download" / "summary.json").read_text())
    expected = dict(
        manifest_rows=10, shards=3, shards_complete=3, incomplete_shards=[], count=10,
        successes=8, failed_to_download=1, failed_to_resize=1, images=8, unnamed_samples=0,
        shards_downloaded_now=3,
    )  # fmt: skip
    assert {k: summary[k] for k in expected} == expected
    assert sum(summary["errors"].values()) == 2
    assert any("404" in message for message in summary["errors"])


def test_rerun_downloads_nothing_and_keeps_the_tars(downloaded, server):
    workdir, first, requests = downloaded
    tars = {p.name: p.read_bytes() for p in (workdir / "images").glob("*.tar")}
    summary = download.run(_config(), workdir)
    assert len(server[1]) == requests  # no HTTP request at all
    assert {p.name: p.read_bytes() for p in (workdir / "images").glob("*.tar")} == tars
    assert summary["shards_downloaded_now"] == 0
    assert {k: v for k, v in summary.items() if not k.endswith("_now")} == {
        k: v for k, v in first.items() if not k.endswith("_now")
    }


def test_a_killed_shard_is_downloaded_again_without_duplicates(downloaded, server, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(downloaded[0], workdir)
    before = _members(workdir / "images")
    images = workdir / "images"
    # Killed while downloading shard 00001: no stats yet, a truncated tar.
    (images / "00001_stats.json").unlink()
    tar = images / "00001.tar"
    tar.write_bytes(tar.read_bytes()[:1000])
    requests = len(server[1])
    summary = download.run(_config(), workdir)
    assert len(server[1]) - requests == PER_SHARD  # shard 00001 only
    assert summary["shards_downloaded_now"] == 1
    assert summary["successes"] == summary["images"] == 8
    after = _members(images)  # also asserts that no member name repeats
    assert sorted(after) == sorted(before)
    assert all(after[n] == before[n] for n in after if not n.endswith(".json"))
    assert sorted(_images(images)) == sorted(GOOD)


def test_tfds_build_and_grain_batch(downloaded, tmp_path):
    workdir, _, _ = downloaded
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [
            str(pathlib.Path(sys.executable).with_name("tfds")),
            "build", "tfds_imagenot/imagenot", f"--manual_dir={workdir}",
            f"--data_dir={data_dir}", "--file_format=array_record", "--config=256",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    import tensorflow_datasets as tfds

    from imagenot_jax.data import input_pipeline
    from imagenot_jax.data.input_pipeline import ProcessShard

    info = tfds.builder("imagenot/256", data_dir=str(data_dir)).info
    assert {s: info.splits[s].num_examples for s in info.splits} == {
        "train": 4, "validation": 2, "test": 2
    }  # fmt: skip
    assert info.metadata["skipped"]["train"] == {"missing": 2, "undecodable": 0}

    config = input_pipeline.default_config()
    config.data.name = "imagenot/256"
    config.data.data_dir = str(data_dir)
    config.data.eval_split = "test"
    config.input.update(dict(eval_batch_size=2, eval_resize=36, eval_crop=32))
    (batch,) = list(input_pipeline.make_eval_dataset(config, shard=ProcessShard()))
    assert batch["image"].shape == (2, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["mask"].all() and batch["image"].std() > 5
    labels = {k.decode(): int(v) for k, v in zip(batch["key"], batch["label"], strict=True)}
    assert labels == {"te-0": 1, "te-1": 0}


BAD_MANIFESTS = {
    "no_url_column": (lambda t: t.drop_columns(["url"]), ["missing column 'url'"]),
    "duplicate_key": (lambda t: t.set_column(0, "key", [["a", "a"]]), ["duplicate key 'a'"]),
    "slash_in_key": (lambda t: t.set_column(0, "key", [["a", "b/c"]]), ["'b/c'", "'/'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifest_is_a_one_line_error(case, tmp_path):
    rows = [ManifestRow(k, CLASSES[0].wnid, 0, "train", f"http://127.0.0.1:9/{k}") for k in "ab"]
    write_manual_dir(tmp_path, CLASSES, rows, {})
    edit, fragments = BAD_MANIFESTS[case]
    pq.write_table(
        edit(pq.read_table(tmp_path / "manifest.parquet")), tmp_path / "manifest.parquet"
    )
    with pytest.raises(CurationError) as error:
        download.run(_config(), tmp_path)
    message = str(error.value)
    assert "\n" not in message and "manifest.parquet" in message, message
    assert all(fragment in message for fragment in fragments), message
    assert not (tmp_path / "download").exists()  # refused before writing anything


def test_changed_manifest_over_existing_shards_is_refused(downloaded, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(downloaded[0], workdir)
    table = pq.read_table(workdir / "manifest.parquet")
    pq.write_table(table.slice(1), workdir / "manifest.parquet")
    with pytest.raises(CurationError, match="holds shards of another manifest"):
        download.run(_config(), workdir)
    with pytest.raises(CurationError, match="holds shards of another manifest"):
        download.run(_config(number_sample_per_shard=5), downloaded[0])


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("resize_mode", "squash", "config.download.resize_mode='squash'"),
        ("encode_format", "gif", "expected one of jpg, png, webp"),
        ("distributor", "spark", "config.download.distributor='spark'"),
        ("threads", 0, "config.download.threads=0"),
    ],
)
def test_bad_config_is_a_one_line_error(field, value, fragment, tmp_path):
    _write_workdir(tmp_path, "http://127.0.0.1:9")
    with pytest.raises(CurationError) as error:
        download.run(_config(**{field: value}), tmp_path)
    assert fragment in str(error.value) and "\n" not in str(error.value)
