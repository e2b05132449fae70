"""Tiny randomly initialized models for tests and smoke configs: nothing is downloaded.

Text models ("tiny-random:roberta", "tiny-random:mpnet") are transformers models built from
configs (2 layers, hidden 32) with a byte-level BPE tokenizer built in-process by the
`tokenizers` library (256 byte tokens + specials, no merges). The CLIP model "tiny-random" is an
open_clip JSON model config registered at runtime (ViT with 1 layer, width 32, patch 8, 32x32
images; text tower 1 layer, width 32, with open_clip's bundled BPE vocabulary). Every build is
seeded, so repeated loads give identical weights; `save_text_model` / `save_clip_checkpoint`
write them to disk so the local-path routes can be tested against the in-process models.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

SEED = 0  # Seed of every tiny model's initialization.
CLIP_MODEL = "tiny-random"  # open_clip model name of the tiny CLIP.
CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# RoBERTa's special-token ids; the padding id 1 is also what RoBERTa/MPNet position ids assume.
_SPECIALS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
_HIDDEN = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 514,  # Position ids start after the padding id (offset 2).
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


def byte_level_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """RoBERTa-style tokenizer without a vocabulary download: every byte is one token."""
    vocab = dict(_SPECIALS)
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):  # (returned in random order)
        vocab.setdefault(char, len(vocab))
    vocab["<mask>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), add_prefix_space=False
    )
    return transformers.RobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )


@contextlib.contextmanager
def seeded() -> Iterator[None]:
    """torch.manual_seed(SEED) inside the block, so random initializations are identical on
    every build; the caller's random state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        yield


def _roberta(vocab_size: int) -> torch.nn.Module:
    config = transformers.RobertaConfig(vocab_size=vocab_size, **_HIDDEN)
    return transformers.RobertaModel(config, add_pooling_layer=False)


def _mpnet(vocab_size: int) -> torch.nn.Module:
    config = transformers.MPNetConfig(vocab_size=vocab_size, **_HIDDEN)
    return transformers.MPNetModel(config, add_pooling_layer=False)


_TEXT_ARCHITECTURES: dict[str, Callable[[int], torch.nn.Module]] = {
    "tiny-random:roberta": _roberta,
    "tiny-random:mpnet": _mpnet,
}
TEXT_MODELS = tuple(_TEXT_ARCHITECTURES)  # Model names the text encoders build in-process.


def text_model(name: str) -> tuple[torch.nn.Module, transformers.PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer) of a tiny text model named in TEXT_MODELS."""
    tokenizer = byte_level_tokenizer()
    with seeded():
        model = _TEXT_ARCHITECTURES[name](len(tokenizer)).eval()
    return model, tokenizer


def save_text_model(name: str, directory: pathlib.Path) -> pathlib.Path:
    """Write a tiny text model + tokenizer as a transformers folder (AutoModel-loadable)."""
    model, tokenizer = text_model(name)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def register_clip() -> None:
    """Make "tiny-random" an open_clip model name (idempotent) via open_clip.add_model_config."""
    import open_clip  # slow to import (~5 s): only when a CLIP model is used

    if CLIP_MODEL in open_clip.list_models():
        return
    folder = pathlib.Path(tempfile.mkdtemp(prefix="tiny_open_clip_"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # open_clip has read it by then
    (folder / f"{CLIP_MODEL}.json").write_text(json.dumps(CLIP_CONFIG))
    open_clip.add_model_config(folder / f"{CLIP_MODEL}.json")


def clip_model() -> torch.nn.Module:
    """The seeded tiny open_clip model (random weights, eval mode)."""
    import open_clip

    register_clip()
    with seeded():
        return open_clip.create_model(CLIP_MODEL, pretrained=None).eval()


def save_clip_checkpoint(path: pathlib.Path) -> pathlib.Path:
    """Write the tiny CLIP's state dict: usable as `pretrained` (a local checkpoint file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(clip_model().state_dict(), path)
    return path
