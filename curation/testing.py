"""Synthetic LAION-like data for tests and benchmarks. Other tests import it: keep it stable.

- `write_candidates(path, synsets)`: a W/classes/candidates.parquet as the wordnet stage writes.
- `write_laion_shard(path, captions, ...)` / `write_laion_shards(dir, captions, ...)`: LAION
  metadata parquet holding given captions (other columns made up, deterministic).
- `synthetic_captions(n, lexicon, seed)`: LAION-like alt texts with lemmas of `lexicon` in them.
- `write_laion_fixture(dir)`: two small shards (both column spellings) whose every expected
  match is known: `LaionFixture.expected(multi_synset)` is the exact match output.
- `CAPTION_RULES_*`: synsets and captions for the caption rules (nested lemmas, the three
  multi-synset policies), with the synsets each policy gives each caption.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation import files
from curation.match import SCHEMA
from curation.text import normalize

# Column spellings: LAION-400M/5B metadata, and lower case as in Re-LAION and img2dataset.
STYLES: Mapping[str, Mapping[str, str]] = {
    "laion": {
        "id": "SAMPLE_ID",
        "url": "URL",
        "caption": "TEXT",
        "height": "HEIGHT",
        "width": "WIDTH",
        "license": "LICENSE",
        "nsfw": "NSFW",
        "similarity": "similarity",
        "punsafe": "punsafe",
        "pwatermark": "pwatermark",
    },
    "relaion": {
        "id": "key",
        "url": "url",
        "caption": "caption",
        "width": "width",
        "height": "height",
        "similarity": "similarity",
        "nsfw": "NSFW",
    },
}


def write_candidates(
    path: pathlib.Path, synsets: Sequence[tuple[str, str, Sequence[str]]]
) -> pa.Table:
    """candidates.parquet from (wnid, name, lemmas) triples, lemmas normalized here; gloss,
    lexname and depth are placeholders."""
    table = pa.table(
        {
            "wnid": [w for w, _, _ in synsets],
            "name": [n for _, n, _ in synsets],
            "lemmas": pa.array([[normalize(m) for m in ms] for _, _, ms in synsets]),
            "gloss": [f"gloss of {n}" for _, n, _ in synsets],
            "lexname": ["noun.artifact"] * len(synsets),
            "depth": pa.array([8] * len(synsets), pa.int32()),
        }
    )
    files.write_parquet_atomic(table, path)
    return table


def laion_columns(
    captions: Sequence[str | bytes | None], *, style: str = "laion", seed: int = 0, start: int = 0
) -> dict[str, pa.Array]:
    """The columns of a LAION metadata file holding `captions` (binary if any is bytes), keyed
    by the style's column names; row i gets id start + i and a made-up URL, size and scores."""
    n, names = len(captions), STYLES[style]
    rng = np.random.default_rng(seed)
    ids = np.arange(start, start + n)
    binary = any(isinstance(c, bytes) for c in captions)
    width, tags = rng.integers(64, 2048, n), rng.integers(0, 10**9, n)
    values = {
        "id": pa.array(ids) if style == "laion" else pa.array([f"{i:012d}" for i in ids]),
        "url": pa.array(
            [
                f"https://img{i % 7}.example.com/p/{i}/{r}.jpg"
                for i, r in zip(ids, tags, strict=True)
            ]
        ),
        "caption": pa.array(captions, pa.binary() if binary else pa.string()),
        "width": pa.array(width, mask=ids % 8 == 3),  # some nulls
        "height": pa.array((width * rng.uniform(0.5, 1.5, n)).astype(np.int64)),
        "license": pa.array(["?"] * n),
        "nsfw": pa.array(rng.choice(["UNLIKELY", "UNSURE", "NSFW"], n, p=[0.9, 0.07, 0.03])),
        "similarity": pa.array(rng.uniform(0.28, 0.45, n)),
        "punsafe": pa.array(rng.beta(0.5, 8, n)),
        "pwatermark": pa.array(rng.beta(0.5, 4, n)),
    }
    if style == "relaion":  # sizes as float64, missing ones NaN (seen in LAION derivatives)
        values["width"] = pa.array(np.where(ids % 8 == 3, np.nan, width * 1.0))
        values["height"] = values["height"].cast(pa.float64())
    return {names[k]: v for k, v in values.items() if k in names}


def write_laion_shard(
    path: pathlib.Path,
    captions: Sequence[str | bytes | None],
    *,
    style: str = "laion",
    row_group_size: int = 1 << 20,
    seed: int = 0,
    start: int = 0,
) -> pathlib.Path:
    """A LAION metadata parquet file holding `captions` (see `laion_columns`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(laion_columns(captions, style=style, seed=seed, start=start))
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_laion_shards(
    directory: pathlib.Path,
    captions: Sequence[str | bytes | None],
    *,
    rows_per_shard: int,
    row_group_size: int,
    style: str = "laion",
    prefix: str = "part",
) -> list[pathlib.Path]:
    """`captions` split into files {prefix}-00000.parquet, ... of `rows_per_shard` rows."""
    return [
        write_laion_shard(
            directory / f"{prefix}-{i:05d}.parquet",
            captions[start : start + rows_per_shard],
            style=style,
            row_group_size=row_group_size,
            seed=i,
            start=start,
        )
        for i, start in enumerate(range(0, len(captions), rows_per_shard))
    ]


def _split(words: str) -> tuple[str, ...]:
    return tuple(words.split())


# LAION alt texts: product listings, stock photos, titles; many nouns; some other languages.
_WORDS = _split(
    "the a of and with in on for to at from by is your our my this new best free 2 3 10 100 "
    "stock photo image picture vector illustration isolated white background royalty design "
    "logo icon set collection pattern seamless texture abstract art print poster wall decor "
    "home kitchen garden living room bedroom modern vintage style fashion women men kids "
    "dress shirt cotton summer winter sale shipping size small large black red blue green gold "
    "silver leather bag shoes car house flower tree beach sunset mountain city street night "
    "view landscape portrait girl boy woman man child baby family friends wedding party "
    "birthday christmas card gift box toy game phone case laptop screen food recipe chicken "
    "salad chocolate coffee cup table chair bed book cover page map travel hotel beautiful "
    "happy young old little big hot cold top high quality premium handmade diy easy how ideas"
)
_TOKENS = _split(  # ASCII
    "2019 2020 2021 12x16 3pcs 100% #1 4K HD www.example.com https://shop.example/p/123 | - "
    ", ! : ( ) ... & / + $19.99 5-pack 1080p"
)
_NON_ASCII = _split(  # other languages, typography
    "Schöne Straße Größe für maison à vendre été niño año cámara фото погода красивый 日本の "
    "風景 写真 美しい 한국 사진 सुंदर جميل naïve café crème Ελλάδα ΘΑΛΑΣΣΑ İstanbul "
    "\u2013 \u2014 \u2019s \u201cnew\u201d \u00ae \u2122 \u2022 \u00b7"
)


def synthetic_captions(n: int, lexicon: Sequence[str], seed: int = 0) -> list[str]:
    """`n` LAION-like captions: 5-20 words (common English words, numbers, URLs, punctuation;
    about one caption in nine has a non-ASCII word or sign), mixed case, and 0-2 entries of
    `lexicon` (WordNet-style lemmas; '_' -> ' ') in random case each, placed anywhere."""
    rng = np.random.default_rng(seed)
    lemmas = [m.replace("_", " ") for m in lexicon]
    pools = [_WORDS, _TOKENS, _NON_ASCII]
    lengths = rng.integers(5, 21, n)
    pool = rng.choice(3, lengths.sum(), p=[0.88, 0.11, 0.01])
    pick = rng.random(lengths.sum())
    case = rng.choice(3, lengths.sum() + 2 * n, p=[0.6, 0.3, 0.1])
    cases = (str.lower, str.title, str.upper)
    inserted = rng.choice(3, n, p=[0.3, 0.5, 0.2])
    which = rng.integers(0, max(len(lemmas), 1), 2 * n)
    where = rng.random(2 * n)
    captions, k = [], 0
    for i in range(n):
        words = [
            cases[case[j]](pools[pool[j]][int(pick[j] * len(pools[pool[j]]))])
            for j in range(k, k + lengths[i])
        ]
        k += lengths[i]
        for m in range(inserted[i] if lemmas else 0):
            lemma = cases[case[-1 - 2 * i - m]](lemmas[which[2 * i + m]])
            words.insert(int(where[2 * i + m] * (len(words) + 1)), lemma)
        captions.append(" ".join(words))
    return captions


@dataclasses.dataclass(frozen=True)
class LaionFixture:
    """Files of `write_laion_fixture` and what matching them must give."""

    candidates: pathlib.Path  # W/classes/candidates.parquet
    shards: tuple[pathlib.Path, ...]
    styles: tuple[str, ...]  # column spelling of each shard (a key of STYLES)
    paths: str  # config.laion.paths for the shards (a glob)
    matches: tuple[tuple[int, int, str, str], ...]  # (shard index, row, wnid, lemma)
    multi_synset: tuple[tuple[int, int, str, str], ...]  # the same, of multi-synset captions
    counts: Mapping[str, int]  # summary counts with the default config.match

    def expected(self, multi_synset: str = "drop") -> pa.Table:
        """The exact match output (all shards, in file then row then candidates order) with
        longest-match suppression and the policy `multi_synset` (its multi-synset captions
        have no head noun of one sense: head_noun drops them too)."""
        rows = sorted(self.matches + (self.multi_synset if multi_synset == "best" else ()))
        order = {w: i for i, w in enumerate(pq.read_table(self.candidates)["wnid"].to_pylist())}
        rows.sort(key=lambda r: (r[0], r[1], order[r[2]]))
        out = []
        for shard_index, row, wnid, lemma in rows:
            shard, names = self.shards[shard_index], STYLES[self.styles[shard_index]]
            source = pq.read_table(shard).slice(row, 1).to_pylist()[0]
            value = {role: source.get(column) for role, column in names.items()}
            caption = value["caption"]
            if isinstance(caption, bytes):
                caption = caption.decode("utf-8", errors="replace")
            size = [
                None if v is None or v != v else int(v) for v in (value["width"], value["height"])
            ]
            name = files.shard_name(shard)
            out.append(
                {
                    "key": f"{name}-{row:09d}",
                    "wnid": wnid,
                    "lemma": lemma,
                    "url": value["url"],
                    "caption": caption,
                    "width": size[0],
                    "height": size[1],
                    "punsafe": value.get("punsafe"),
                    "nsfw": value.get("nsfw"),
                    "similarity": value.get("similarity"),
                    "source": name,
                    "row": row,
                }
            )
        return pa.Table.from_pylist(out, schema=SCHEMA)


# (wnid, name, lemmas): "hot dog" holds the lemma "dog" (nested: not counted); "bank" is in two
# synsets.
FIXTURE_SYNSETS = (
    ("n02084071", "dog", ["dog", "domestic dog", "Canis familiaris"]),
    ("n02121808", "domestic cat", ["domestic cat", "house cat", "Felis domesticus"]),
    ("n03417042", "garbage truck", ["garbage truck", "dustcart"]),
    ("n07697537", "hotdog", ["hotdog", "hot dog", "red hot"]),
    ("n03590841", "jack-o'-lantern", ["jack-o'-lantern"]),
    ("n02948072", "café", ["café", "coffeehouse"]),
    ("n08954611", "Istanbul", ["Istanbul", "Constantinople"]),
    ("n09213565", "bank", ["bank"]),
    ("n08420278", "depository financial institution", ["depository financial institution", "bank"]),
)
# Shard 0: LAION spelling, string captions, row groups of 4.
FIXTURE_CAPTIONS_0 = (
    "A DOG on the beach!",  # dog
    "hotdog-stand: Hot Dog & fries",  # hotdog ("hot dog": longest); its "dog" is nested
    None,
    "Jack-O'-Lantern!!! (carved)",  # punctuation inside a lemma
    "dogma and catalogs",  # no whole word
    "Red Hot chili",  # hotdog via "red hot"
    "Garbage\ttruck  at   dawn",  # multi-word lemma over tab and spaces
    "my house cat and domestic cat",  # one synset, two lemmas: the longest
)
# Shard 1: Re-LAION spelling, binary captions, row groups of 3.
FIXTURE_CAPTIONS_1 = (
    "CAFÉ de Flore".encode(),  # non-ASCII lemma, upper case
    b"\xff\xfe dog house",  # invalid UTF-8: decoded with replacement, still matches
    b"River bank",  # two synsets of one lemma: multi
    "İSTANBUL at night".encode(),  # dotted capital I
    None,
    b"dustcart...",  # garbage truck via its second lemma
)


def write_laion_fixture(directory: pathlib.Path) -> LaionFixture:
    """Candidates at directory/work/classes/candidates.parquet and two LAION shards under
    directory/laion/, covering case, punctuation, multi-word lemmas, multi-synset captions,
    nulls, non-ASCII text and invalid UTF-8."""
    directory = pathlib.Path(directory)
    candidates = directory / "work" / "classes" / "candidates.parquet"
    write_candidates(candidates, FIXTURE_SYNSETS)
    shards = (
        write_laion_shard(directory / "laion" / "part-00000.parquet", FIXTURE_CAPTIONS_0,
                          style="laion", row_group_size=4),
        write_laion_shard(directory / "laion" / "part-00001.snappy.parquet", FIXTURE_CAPTIONS_1,
                          style="relaion", row_group_size=3, seed=1),
    )  # fmt: skip
    matches = (
        (0, 0, "n02084071", "dog"),
        (0, 1, "n07697537", "hot dog"),
        (0, 3, "n03590841", "jack o lantern"),
        (0, 5, "n07697537", "red hot"),
        (0, 6, "n03417042", "garbage truck"),
        (0, 7, "n02121808", "domestic cat"),
        (1, 0, "n02948072", "café"),
        (1, 1, "n02084071", "dog"),
        (1, 3, "n08954611", "istanbul"),
        (1, 5, "n03417042", "dustcart"),
    )
    multi_synset = (
        (1, 2, "n09213565", "bank"),
        (1, 2, "n08420278", "bank"),
    )
    counts = {
        "captions": 14,
        "null_captions": 2,
        "invalid_utf8_captions": 1,
        "nested_lemmas_suppressed": 1,
        "matched_captions": 11,
        "multi_synset_captions": 1,
        "kept_multi_synset": 0,
        "dropped_multi_synset": 1,
        "rows": 10,
    }
    paths = str(directory / "laion" / "*.parquet")
    styles = ("laion", "relaion")
    return LaionFixture(candidates, shards, styles, paths, matches, multi_synset, counts)


# The caption rules on captions that need them: (wnid, name, lemmas).
CAPTION_RULES_SYNSETS = (
    ("n1", "sunset", ["sunset", "sundown"]),
    ("n2", "ocean", ["ocean", "sea"]),
    ("n3", "dog", ["dog"]),
    ("n4", "hotdog", ["hot dog", "hotdog"]),
    ("n5", "cat", ["cat", "house cat"]),
    ("n6", "beach", ["beach"]),
    ("n7", "bank", ["bank"]),
    ("n8", "depository financial institution", ["bank"]),
)
# (caption, {policy: wnids of its output rows}); "nested" is the policy drop without
# longest-match suppression.
CAPTION_RULES_CAPTIONS = (
    ("Sunset over the ocean", {"drop": [], "best": ["n1", "n2"], "head_noun": ["n1"]}),
    ("hot dog with mustard", {"drop": ["n4"], "best": ["n4"], "head_noun": ["n4"], "nested": []}),
    ("A dog on the beach at sunset", {"drop": [], "best": ["n1", "n3", "n6"], "head_noun": ["n3"]}),
    ("house cat, dog and ocean", {"drop": [], "best": ["n2", "n3", "n5"], "head_noun": ["n5"]}),
    ("dog and cat", {"drop": [], "best": ["n3", "n5"], "head_noun": ["n5"]}),
    ("In the ocean, a dog", {"drop": [], "best": ["n2", "n3"], "head_noun": ["n2"]}),
    ("river bank by the sea", {"drop": [], "best": ["n2", "n7", "n8"], "head_noun": []}),
    ("Dog!", {"drop": ["n3"], "best": ["n3"], "head_noun": ["n3"]}),
    ("no synset here", {"drop": [], "best": [], "head_noun": []}),
)
