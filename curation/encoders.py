"""Text and image encoders of the scoring stages: RoBERTa-family mean pooling (transformers) and
open_clip towers, loaded from local files only.

Nothing here downloads: transformers gets `local_files_only=True` and model loads run with the
Hugging Face hub in offline mode; open_clip pretrained tags are resolved to files already in the
local caches (else a CurationError names the config field). Model names of `curation.tiny`
build seeded random models in-process, for tests and smoke configs.

torch and transformers load with this module, so the stages import it only inside the functions
that build or run a model: configs (which import every stage) and CPU-only stages stay light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import transformers
from absl import logging
from PIL import Image

from curation import files, tiny
from curation.errors import CurationError
from curation.scoring import l2_normalize

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --- device and precision -------------------------------------------------------------------


def resolve_device(value: str, field: str) -> torch.device:
    """'' -> cuda when available, else cpu; otherwise the named torch device (checked)."""
    if not value:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise CurationError(
            f"{field}={value!r} is not a torch device (e.g. '', 'cpu', 'cuda:0')"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CurationError(f"{field}={value!r} but no CUDA device is available (use '' or 'cpu')")
    return device


def resolve_dtype(value: str, device: torch.device, field: str) -> torch.dtype:
    """Model precision; float16 on the CPU falls back to float32 (CPU half kernels are slow or
    missing), with a warning, because the same config should run on a laptop and a GPU."""
    if value not in DTYPES:
        raise CurationError(f"{field}={value!r}; expected one of {', '.join(DTYPES)}")
    if value == "float16" and device.type == "cpu":
        logging.warning("%s=float16 is not supported on the CPU: using float32", field)
        return torch.float32
    return DTYPES[value]


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hugging Face hub offline mode while loading: any attempt to reach the hub fails fast."""
    from huggingface_hub import constants

    saved_env, saved_flag = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved_flag
        if saved_env is None:
            del os.environ["HF_HUB_OFFLINE"]
        else:
            os.environ["HF_HUB_OFFLINE"] = saved_env


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# --- batching -------------------------------------------------------------------------------


def encode_by_length(
    texts: Sequence[str],
    batch_size: int,
    encode_batch: Callable[[list[str]], np.ndarray],
    desc: str,
) -> np.ndarray:
    """[N, D] float32 embeddings in input order. Texts are batched longest first, so a batch
    pads to similar lengths (less wasted compute); rows are scattered back to input order."""
    if batch_size < 1:
        raise CurationError(f"batch_size={batch_size}; expected a positive number of texts")
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out: np.ndarray | None = None
    starts = range(0, len(texts), batch_size)
    for start in files.progress(starts, desc=desc, unit="batch", leave=False):
        rows = order[start : start + batch_size]
        embedded = encode_batch([texts[i] for i in rows])
        if out is None:
            out = np.empty((len(texts), embedded.shape[1]), np.float32)
        out[rows] = embedded
    return out if out is not None else np.zeros((0, 0), np.float32)


# --- RoBERTa-family text encoders (mean pooling) --------------------------------------------


@dataclasses.dataclass
class MeanPoolEncoder:
    """transformers encoder + attention-masked mean of the last hidden states: the
    sentence-transformers recipe of all-roberta-large-v1 / all-mpnet-base-v2."""

    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    max_length: int

    @torch.inference_mode()
    def encode_batch(self, texts: list[str]) -> np.ndarray:
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return pooled.cpu().numpy()


def _pretrained_text_model(name: str, field: str) -> tuple[torch.nn.Module, Any]:
    """AutoModel + AutoTokenizer from a local folder or the local Hugging Face cache."""
    try:
        with offline():
            tokenizer = transformers.AutoTokenizer.from_pretrained(name, local_files_only=True)
            model = transformers.AutoModel.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise CurationError(
            f"{field}={name!r} is not available offline (neither a local model folder nor in the "
            f"Hugging Face cache; nothing is downloaded): {_first_line(e)}"
        ) from None
    return model.eval(), tokenizer


def load_mean_pool(
    name: str, device: torch.device, dtype: torch.dtype, max_length: int, field: str
) -> MeanPoolEncoder:
    """A tiny in-process model (`curation.tiny.TEXT_MODELS`) or a local/cached transformers one."""
    if name in tiny.TEXT_MODELS:
        model, tokenizer = tiny.text_model(name)
    else:
        model, tokenizer = _pretrained_text_model(name, field)
    model = model.to(device=device, dtype=dtype)
    return MeanPoolEncoder(model, tokenizer, device, max_length)


# --- open_clip --------------------------------------------------------------------------------


@dataclasses.dataclass
class ClipModel:
    """An open_clip model with its inference image transform and tokenizer."""

    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    dtype: torch.dtype


_HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _cached_tag_file(tag_cfg: dict) -> str | None:
    """Local file of an open_clip pretrained tag, looked up in the caches open_clip downloads
    to (Hugging Face hub cache, ~/.cache/clip), without downloading."""
    from huggingface_hub import try_to_load_from_cache

    if tag_cfg.get("hf_hub"):
        repo, filename = os.path.split(tag_cfg["hf_hub"])
        names = [filename] if filename else list(_HF_WEIGHT_NAMES)
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return found
    url_file = os.path.expanduser(f"~/.cache/clip/{os.path.basename(tag_cfg.get('url', ''))}")
    return url_file if tag_cfg.get("url") and os.path.isfile(url_file) else None


def _clip_weights(model: str, pretrained: str, fields: tuple[str, str]) -> dict[str, Any]:
    """create_model_and_transforms kwargs for the weights: a checkpoint file, a cached tag (its
    preprocessing and QuickGELU setting kept), or none for seeded random test models."""
    if model.startswith("local-dir:"):
        return {}  # open_clip reads config and weights from that folder.
    if not pretrained:
        if model == tiny.CLIP_MODEL:  # seeded random weights are the point of this test model
            return {}
        raise CurationError(f"{fields[1]} is empty: give an open_clip tag or a checkpoint file")
    if os.path.isfile(pretrained):
        return {"pretrained": pretrained}
    import open_clip  # slow to import (~5 s): only when a CLIP model is loaded

    tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
    if not tag_cfg:
        raise CurationError(
            f"{fields[1]}={pretrained!r} is neither a file nor an open_clip tag of {model!r} "
            f"(tags: {', '.join(open_clip.list_pretrained_tags_by_model(model)) or 'none'})"
        )
    path = _cached_tag_file(tag_cfg)
    if path is None:
        raise CurationError(
            f"{fields[1]}={pretrained!r}: weights of {model!r} are not in the local cache and "
            "nothing is downloaded; fetch them beforehand or give a checkpoint file"
        )
    return {
        "pretrained": path,
        "force_quick_gelu": tag_cfg.get("quick_gelu", False),
        "image_mean": tag_cfg.get("mean"),
        "image_std": tag_cfg.get("std"),
        "image_interpolation": tag_cfg.get("interpolation"),
        "image_resize_mode": tag_cfg.get("resize_mode"),
    }


def load_clip_model(
    model: str, pretrained: str, device: torch.device, dtype: torch.dtype, fields: tuple[str, str]
) -> ClipModel:
    """open_clip model `model` (built-in name, 'tiny-random' or 'local-dir:PATH') with weights
    `pretrained` (tag in the local cache, checkpoint file, or '' for 'tiny-random');
    `fields` name the two config fields in errors."""
    import open_clip  # slow to import (~5 s): only when a CLIP model is loaded

    if model == tiny.CLIP_MODEL:
        tiny.register_clip()  # open_clip knows the tiny model's name only once registered
    if model.startswith("hf-hub:"):
        raise CurationError(
            f"{fields[0]}={model!r}: hf-hub models are not loaded (no network); "
            "use 'local-dir:PATH' of a downloaded copy"
        )
    if not model.startswith("local-dir:") and model not in open_clip.list_models():
        raise CurationError(f"{fields[0]}={model!r} is not an open_clip model name")
    kwargs = _clip_weights(model, pretrained, fields)
    try:
        with offline(), tiny.seeded():  # identical random weights on every load
            net, _, preprocess = open_clip.create_model_and_transforms(model, **kwargs)
            tokenizer = open_clip.get_tokenizer(model)
    except (RuntimeError, OSError, ValueError, KeyError) as e:
        raise CurationError(
            f"{fields[0]}={model!r}, {fields[1]}={pretrained!r}: cannot load ({_first_line(e)})"
        ) from None
    net = net.to(device=device, dtype=dtype).eval()
    return ClipModel(net, preprocess, tokenizer, device, dtype)


def _clip_text_batch(clip: ClipModel, texts: list[str]) -> np.ndarray:
    tokens = clip.tokenizer(texts).to(clip.device)
    return clip.model.encode_text(tokens).float().cpu().numpy()


@torch.inference_mode()
def encode_texts(
    clip: ClipModel, texts: Sequence[str], batch_size: int, normalize: bool = True
) -> np.ndarray:
    """[N, D] float32 CLIP text embeddings (L2-normalized unless normalize=False)."""
    out = encode_by_length(
        list(texts), batch_size, lambda batch: _clip_text_batch(clip, batch), "clip texts"
    )
    return l2_normalize(out) if normalize else out


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.inference_mode()
def encode_images(clip: ClipModel, images: Iterable[Image.Image], batch_size: int) -> np.ndarray:
    """[N, D] float32 L2-normalized CLIP image embeddings; `images` is consumed as a stream,
    batch by batch, so a long iterator never holds more than one batch of decoded images."""
    if batch_size < 1:
        raise CurationError(f"batch_size={batch_size}; expected a positive number of images")
    out = []
    for batch in files.progress(
        _batches(images, batch_size), desc="clip images", unit="batch", leave=False
    ):
        pixels = torch.stack([clip.preprocess(image) for image in batch])
        pixels = pixels.to(device=clip.device, dtype=clip.dtype)
        out.append(clip.model.encode_image(pixels).float().cpu().numpy())
    if not out:
        return np.zeros((0, 0), np.float32)
    return l2_normalize(np.concatenate(out))


class EmbeddingCache:
    """Embeddings of texts seen before, so each distinct class text is encoded once per run
    (not once per row or per shard)."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray]):
        self._encode = encode
        self._rows: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self._rows]
        if new:
            self._rows.update(zip(new, self._encode(new), strict=True))
        if not texts:
            return np.zeros((0, 0), np.float32)
        return np.stack([self._rows[t] for t in texts]).astype(np.float32)
