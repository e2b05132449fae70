"""Scoring stages (curation.text_score, curation.clip_score) with tiny random models: scores
equal direct computations, resume, webdataset and .npy image embeddings, one-line errors."""

from __future__ import annotations

import io
import pathlib
import tarfile

import ml_collections
import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from curation import clip_score, encoders, text_score, tiny
from curation.errors import CurationError

GLOSS = {
    "n02084071": ("dog", ["dog", "domestic dog"], "a member of the genus Canis"),
    "n02121808": ("cat", ["cat", "true cat"], "feline mammal usually having thick soft fur"),
    "n03126707": ("crane", ["crane"], "lifts and moves heavy objects"),
}
# (shard, wnid, lemma, caption); the first caption is exactly its class text.
ROWS = [
    ("laion_0000", "n02084071", "dog", "dog: a member of the genus Canis"),
    ("laion_0000", "n02121808", "cat", "A grey cat sleeping on a sofa"),
    ("laion_0000", "n03126707", "crane", "Construction crane at sunset over the harbour"),
    ("laion_0000", "n02084071", "domestic dog", None),
    ("laion_0001", "n02121808", "true cat", "true cat"),
    ("laion_0001", "n02084071", "dog", "Puppy!! dog toys 50% off, free shipping " * 3),
    ("laion_0001", "n03126707", "crane", "crane"),
]
CLASS_TEXT = "{lemma}: {gloss}"


def _match_table(rows: list[tuple]) -> pa.Table:
    n = len(rows)
    return pa.table(
        {
            "key": [f"{r[0]}-{i:09d}" for i, r in enumerate(rows)],
            "wnid": [r[1] for r in rows],
            "lemma": [r[2] for r in rows],
            "url": [f"http://x/{i}.jpg" for i in range(n)],
            "caption": [r[3] for r in rows],
            "width": pa.array([64] * n, pa.int64()),
            "height": pa.array([48] * n, pa.int64()),
            "punsafe": pa.array([0.01] * n, pa.float32()),
            "nsfw": ["UNLIKELY"] * n,
            "similarity": pa.array([0.3] * n, pa.float32()),
            "source": [r[0] for r in rows],
            "row": pa.array(list(range(n)), pa.int64()),
        }
    )


def _write_candidates(workdir: pathlib.Path) -> None:
    (workdir / "classes").mkdir()
    pq.write_table(
        pa.table(
            {
                "wnid": list(GLOSS),
                "name": [v[0] for v in GLOSS.values()],
                "lemmas": [v[1] for v in GLOSS.values()],
                "gloss": [v[2] for v in GLOSS.values()],
            }
        ),
        workdir / "classes" / "candidates.parquet",
    )


@pytest.fixture
def workdir(tmp_path: pathlib.Path) -> pathlib.Path:
    """A workdir with candidates and two match shards (keys `{source}-{row:09d}`)."""
    _write_candidates(tmp_path)
    (tmp_path / "match").mkdir()
    for shard in ("laion_0000", "laion_0001"):
        rows = [r for r in ROWS if r[0] == shard]
        pq.write_table(_match_table(rows), tmp_path / "match" / f"{shard}.parquet")
    return tmp_path


def _config(**text) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.text_score = text_score.defaults()
    config.text_score.update(
        model="tiny-random:roberta", batch_size=2, device="cpu", clip_model="tiny-random"
    )
    config.text_score.clip_pretrained = ""
    config.text_score.update(text)
    config.clip_score = clip_score.defaults()
    config.clip_score.update(
        enabled=True, model="tiny-random", pretrained="", batch_size=2, device="cpu"
    )
    return config


def _scores(workdir: pathlib.Path, stage: str) -> pa.Table:
    shards = sorted((workdir / stage).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(s) for s in shards])


def _class_text(wnid: str, lemma: str) -> str:
    return CLASS_TEXT.format(lemma=lemma, gloss=GLOSS[wnid][2])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).item()


def _mean_pool_by_hand(name: str, text: str) -> torch.Tensor:
    model, tokenizer = tiny.text_model(name)
    tokens = tokenizer([text], truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).last_hidden_state
    return hidden[0].mean(0)  # One unpadded text: masked mean = plain mean.


@pytest.mark.parametrize("name", ["tiny-random:roberta", "tiny-random:mpnet"])
def test_text_score_mean_pool_matches_direct_computation(workdir, tmp_path_factory, name):
    summary = text_score.run(_config(model=name), workdir)
    table = _scores(workdir, "text_score")
    scores = table["text_score"].to_numpy()
    assert table.column_names == [*_match_table(ROWS).column_names, "text_score"]
    assert table["text_score"].type == pa.float32() and len(table) == len(ROWS)
    captions = table["caption"].to_pylist()
    assert np.isnan(scores[captions.index(None)])
    assert summary["null_captions_now"] == 1 and summary["text_score"]["nan"] == 1
    finite = scores[~np.isnan(scores)]
    assert np.all(np.abs(finite) <= 1 + 1e-6) and finite.std() > 0
    assert scores[0] == pytest.approx(1.0, abs=1e-5)  # Caption identical to its class text.
    for i in (1, 5):  # A short and a long (batched with padding) caption.
        wnid, lemma = table["wnid"][i].as_py(), table["lemma"][i].as_py()
        direct = _cos(
            _mean_pool_by_hand(name, captions[i]),
            _mean_pool_by_hand(name, _class_text(wnid, lemma)),
        )
        assert scores[i] == pytest.approx(direct, abs=1e-5)
    other = tmp_path_factory.mktemp("again")  # Deterministic: a fresh run gives the same.
    for sub in ("classes", "match"):
        (other / sub).symlink_to(workdir / sub)
    text_score.run(_config(model=name), other)
    np.testing.assert_array_equal(_scores(other, "text_score")["text_score"].to_numpy(), scores)


def test_text_score_encodes_a_caption_kept_for_several_synsets_once(tmp_path, monkeypatch):
    caption = "A crane and a dog in the harbour"  # multi_synset='best': one row per synset
    rows = [
        ("laion_0000", "n03126707", "crane", caption),
        ("laion_0000", "n02084071", "dog", caption),
        ("laion_0000", "n02121808", "cat", "A grey cat"),
    ]
    _write_candidates(tmp_path)
    (tmp_path / "match").mkdir()
    pq.write_table(_match_table(rows), tmp_path / "match" / "laion_0000.parquet")
    encoded: list[str] = []
    load = text_score.load_encoder

    def counting_load(section):
        encode = load(section)
        return lambda texts: (encoded.extend(texts), encode(texts))[1]

    monkeypatch.setattr(text_score, "load_encoder", counting_load)
    text_score.run(_config(), tmp_path)
    assert encoded.count(caption) == 1 and encoded.count("A grey cat") == 1
    scores = _scores(tmp_path, "text_score")["text_score"].to_numpy()
    for i, (_, wnid, lemma, text) in enumerate(rows):
        direct = _cos(
            _mean_pool_by_hand("tiny-random:roberta", text),
            _mean_pool_by_hand("tiny-random:roberta", _class_text(wnid, lemma)),
        )
        assert scores[i] == pytest.approx(direct, abs=1e-5)


def test_text_score_local_folder_equals_in_process_model(workdir, tmp_path):
    text_score.run(_config(model="tiny-random:mpnet"), workdir)
    in_process = _scores(workdir, "text_score")["text_score"].to_numpy()
    folder = tiny.save_text_model("tiny-random:mpnet", tmp_path / "mpnet")
    for shard in (workdir / "text_score").glob("*.parquet"):
        shard.unlink()
    text_score.run(_config(model=str(folder)), workdir)
    local = _scores(workdir, "text_score")["text_score"].to_numpy()
    np.testing.assert_allclose(local, in_process, atol=1e-6)


def test_text_score_clip_text_text_matches_open_clip(workdir):
    text_score.run(_config(encoder="clip"), workdir)
    table = _scores(workdir, "text_score")
    scores = table["text_score"].to_numpy()
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    model, tokenizer = tiny.clip_model(), open_clip.get_tokenizer(tiny.CLIP_MODEL)
    i = 2
    with torch.no_grad():
        a, b = model.encode_text(
            tokenizer([table["caption"][i].as_py(), _class_text("n03126707", "crane")])
        )
    assert scores[i] == pytest.approx(_cos(a, b), abs=1e-5)


def test_text_score_dtypes_on_cpu(workdir):
    text_score.run(_config(), workdir)
    float32 = _scores(workdir, "text_score")["text_score"].to_numpy()
    for dtype, tolerance in (("float16", 0.0), ("bfloat16", 0.05)):  # float16 -> float32 on CPU
        for shard in (workdir / "text_score").glob("*.parquet"):
            shard.unlink()
        text_score.run(_config(dtype=dtype), workdir)
        scores = _scores(workdir, "text_score")["text_score"].to_numpy()
        np.testing.assert_allclose(scores, float32, atol=tolerance)


def test_text_score_resumes_without_recomputing(workdir, monkeypatch):
    out = workdir / "text_score"
    text_score.run(_config(), workdir)
    first = {p.name: (pq.read_table(p), p.stat().st_mtime_ns) for p in out.glob("*.parquet")}
    (out / "laion_0001.parquet").unlink()
    calls = []
    original = encoders.MeanPoolEncoder.encode_batch
    monkeypatch.setattr(
        encoders.MeanPoolEncoder,
        "encode_batch",
        lambda self, texts: calls.append(texts) or original(self, texts),
    )
    summary = text_score.run(_config(), workdir)
    assert summary["shards_processed_now"] == 1 and summary["rows_scored_now"] == 3
    assert all("Construction crane" not in t for batch in calls for t in batch)
    assert out.joinpath("laion_0000.parquet").stat().st_mtime_ns == first["laion_0000.parquet"][1]
    for name, (table, _) in first.items():
        again = pq.read_table(out / name)
        assert again.drop_columns(["text_score"]).equals(table.drop_columns(["text_score"]))
        np.testing.assert_array_equal(again["text_score"], table["text_score"])  # NaN == NaN

    def no_model(*args, **kwargs):
        raise AssertionError("all shards are done: no model should be loaded")

    monkeypatch.setattr(encoders, "load_mean_pool", no_model)
    assert text_score.run(_config(), workdir)["shards_processed_now"] == 0


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_tar(path: pathlib.Path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _direct_clip(images: list[bytes], texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalized open_clip image and text embeddings computed without the stage."""
    tiny.register_clip()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tiny.SEED)
        model, _, preprocess = open_clip.create_model_and_transforms(tiny.CLIP_MODEL)
    tokenizer = open_clip.get_tokenizer(tiny.CLIP_MODEL)
    with torch.no_grad():
        image = None
        if images:
            pixels = torch.stack([preprocess(Image.open(io.BytesIO(b))) for b in images])
            image = model.encode_image(pixels, normalize=True).numpy()
        text = model.encode_text(tokenizer(texts), normalize=True).numpy()
    return image, text


def test_clip_score_from_webdataset_images(workdir, tmp_path):
    text_score.run(_config(), workdir)
    keys = _scores(workdir, "text_score")["key"].to_pylist()
    images = {k: _jpeg(i) for i, k in enumerate(keys)}
    missing, corrupt = keys[1], keys[4]
    members = {f"{k}.jpg": v for k, v in images.items() if k not in (missing, corrupt)}
    members[f"{corrupt}.jpg"] = b"\xff\xd8 not really a jpeg"
    members[f"{keys[0]}.json"] = b"{}"  # Not an image member: ignored.
    names = list(members)
    _write_tar(tmp_path / "images" / "00000.tar", {n: members[n] for n in names[:4]})
    _write_tar(tmp_path / "images" / "00001.tar", {n: members[n] for n in names[4:]})
    index = clip_score.ImageIndex(tmp_path / "images")
    listed = dict(index.load(index.members))
    assert set(listed) == set(keys) - {missing} and listed[corrupt] is None

    config = _config()
    config.clip_score.images = str(tmp_path / "images")
    summary = clip_score.run(config, workdir)
    assert summary["missing_images_now"] == 1 and summary["corrupt_images_now"] == 1
    assert summary["clip_score"]["nan"] == 2
    table = _scores(workdir, "clip_score")
    assert table.column_names[-2:] == ["text_score", "clip_score"]
    embeddings = np.concatenate(
        [
            np.load(workdir / "clip_score" / f"{s}.embeddings.npy")
            for s in ("laion_0000", "laion_0001")
        ]
    )
    assert embeddings.dtype == np.float16 and embeddings.shape == (len(keys), 32)
    good = [i for i, k in enumerate(keys) if k not in (missing, corrupt)]
    texts = [
        _class_text(w, lemma)
        for w, lemma in zip(table["wnid"].to_pylist(), table["lemma"].to_pylist(), strict=True)
    ]
    image, text = _direct_clip([images[keys[i]] for i in good], texts)
    scores = table["clip_score"].to_numpy()
    np.testing.assert_allclose(scores[good], np.sum(image * text[good], axis=1), atol=1e-5)
    np.testing.assert_allclose(embeddings[good], image, atol=2e-3)
    bad = [keys.index(missing), keys.index(corrupt)]
    assert np.isnan(scores[bad]).all() and np.isnan(embeddings[bad]).all()


def test_clip_score_from_npy_embeddings_and_local_checkpoint(workdir, tmp_path):
    text_score.run(_config(), workdir)
    table = _scores(workdir, "text_score")
    rng = np.random.default_rng(0)
    stored = {}
    for index in ("0000", "0001"):
        stored[index] = rng.normal(size=(6, 32)).astype(np.float16)
        np.save(tmp_path / f"img_emb_{index}.npy", stored[index])
    stored["0001"][0] = np.nan  # A sample LAION has no embedding for.
    np.save(tmp_path / "img_emb_0001.npy", stored["0001"])
    config = _config()
    config.clip_score.update(
        source="embeddings",
        embeddings=str(tmp_path / "img_emb_{index}.npy"),
        pretrained=str(tiny.save_clip_checkpoint(tmp_path / "tiny_clip.pt")),
    )
    summary = clip_score.run(config, workdir)
    assert summary["nan_embeddings_now"] == 1 and summary["clip_score"]["nan"] == 1
    expected_images = np.stack(
        [
            stored[s[-4:]][r]
            for s, r in zip(table["source"].to_pylist(), table["row"].to_pylist(), strict=True)
        ]
    ).astype(np.float32)
    expected_images /= np.linalg.norm(expected_images, axis=1, keepdims=True)
    texts = [
        _class_text(w, lemma)
        for w, lemma in zip(table["wnid"].to_pylist(), table["lemma"].to_pylist(), strict=True)
    ]
    _, text = _direct_clip([], texts)
    scores = _scores(workdir, "clip_score")["clip_score"].to_numpy()
    np.testing.assert_allclose(scores, np.sum(expected_images * text, axis=1), atol=1e-5)
    assert np.isnan(scores).sum() == 1


def _one_line_error(match: str, call, *args) -> None:
    with pytest.raises(CurationError, match=match) as error:
        call(*args)
    assert "\n" not in str(error.value)


def test_bad_inputs_give_one_line_errors(workdir, tmp_path):
    table = pq.read_table(workdir / "match" / "laion_0000.parquet")
    pq.write_table(table.drop_columns(["caption"]), workdir / "match" / "laion_0000.parquet")
    _one_line_error(
        r"laion_0000.parquet: missing column 'caption'", text_score.run, _config(), workdir
    )
    pq.write_table(table, workdir / "match" / "laion_0000.parquet")
    _one_line_error(
        r"unknown placeholder \{definition\}",
        text_score.run,
        _config(class_text="{definition}"),
        workdir,
    )
    _one_line_error(r"text_score.encoder='bert'", text_score.run, _config(encoder="bert"), workdir)
    _one_line_error(
        r"text_score.model='sentence-transformers/all-roberta-large-v1' is not available offline",
        text_score.run,
        _config(model="sentence-transformers/all-roberta-large-v1"),
        workdir,
    )
    text_score.run(_config(), workdir)

    config = _config()
    config.clip_score.update(source="embeddings", embeddings=str(tmp_path / "emb_{index}.npy"))
    _one_line_error(r"emb_0000.npy: embedding file not found", clip_score.run, config, workdir)
    np.save(tmp_path / "emb_0000.npy", np.zeros((9, 16), np.float16))
    _one_line_error(
        r"emb_0000.npy: embeddings of shape \(9, 16\), expected \[rows, 32\]",
        clip_score.run,
        config,
        workdir,
    )
    config.clip_score.embeddings = str(tmp_path / "emb.npy")
    _one_line_error(r"clip_score.embeddings=.*\{source\}", clip_score.run, config, workdir)
    config.clip_score.update(
        embeddings=str(tmp_path / "emb_{source}.npy"),
        model="ViT-B-32",
        pretrained="laion2b_s34b_b79k",
    )
    _one_line_error(
        r"clip_score.pretrained='laion2b_s34b_b79k'.*not in the local cache",
        clip_score.run,
        config,
        workdir,
    )
    config.clip_score.update(pretrained="")
    _one_line_error(r"clip_score.pretrained is empty", clip_score.run, config, workdir)
    config = _config()
    config.clip_score.images = str(tmp_path / "no_images")
    _one_line_error(r"no_images: image folder not found", clip_score.run, config, workdir)
    assert not list((workdir / "clip_score").glob("*.parquet"))


def test_clip_score_disabled_does_nothing(workdir):
    config = _config()
    config.clip_score.enabled = False
    assert clip_score.run(config, workdir) == {"enabled": False}
    assert not (workdir / "clip_score").exists()
