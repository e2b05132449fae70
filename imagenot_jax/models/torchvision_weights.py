"""torchvision's published weights by name: `ResNet152_Weights.IMAGENET1K_V1` -> the model of our
zoo they belong to, their file in torch hub's cache (downloaded there when missing), and what
torchvision published about them (ImageNet accuracy, eval transform, classes).

The file goes through torchvision's own cache, `torch.hub.get_dir()/checkpoints/<url basename>`
($TORCH_HOME/hub, default ~/.cache/torch/hub), so a file fetched once, by torchvision or by hand,
is found again. torch and torchvision (the `curation` extra) are imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
from typing import Any
from urllib.parse import urlparse

from imagenot_jax.errors import MissingInputError, UserError
from imagenot_jax.models.registry import list_models, model_info


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    """One torchvision weights entry, resolved."""

    name: str  # "<Enum>.<member>"; DEFAULT resolved to the member it stands for
    model: str  # torchvision's builder, registered under the same name in our zoo
    url: str
    cache_path: str  # where torch.hub keeps (and looks for) the file
    num_classes: int
    metrics: dict[str, Any]  # meta["_metrics"], e.g. {"ImageNet-1K": {"acc@1": .., "acc@5": ..}}
    eval_resize: int  # torchvision's eval transform: resize the shorter side, centre crop
    eval_crop: int
    mean: tuple[float, ...]  # on the 0-1 scale, as torchvision gives them
    std: tuple[float, ...]
    interpolation: str  # of the resize: "bilinear" or "bicubic"

    def is_cached(self) -> bool:
        return os.path.exists(self.cache_path)

    def describe(self) -> dict[str, Any]:
        """What a converted workdir's config records about its weights."""
        return dataclasses.asdict(self) | {"mean": list(self.mean), "std": list(self.std)}

    def download_hint(self) -> str:
        return f"{self.url} -> {self.cache_path}"


def _torchvision() -> Any:
    try:
        import torchvision.models
    except ImportError:
        # The user's to fix (an extra not installed, e.g. by `make demo`): one line, exit 2.
        raise UserError(
            "torchvision weights need torch and torchvision: pip install -e '.[curation]' "
            "(`make test` installs them)"
        ) from None
    return torchvision.models


@functools.cache
def weight_enums() -> dict[str, tuple[type, list[str]]]:
    """torchvision's weight enums by class name: (enum, the builders taking it)."""
    tv = _torchvision()
    enums: dict[str, tuple[type, list[str]]] = {}
    for builder in tv.list_models():
        try:
            enum = tv.get_model_weights(builder)
        except ValueError:  # a builder without a typed `weights` argument
            continue
        enums.setdefault(enum.__name__, (enum, []))[1].append(builder)
    return enums


def _not_found(name: str, enums: dict[str, tuple[type, list[str]]]) -> UserError:
    """The error for an unknown name, listing the closest known ones."""
    known = {
        f"{enum_name}.{member}": builders
        for enum_name, (enum, builders) in enums.items()
        for member in [*enum.__members__]
    }
    by_builder = [n for n, builders in known.items() if name.lower() in builders]
    lowered = {n.lower(): n for n in known}
    close = difflib.get_close_matches(name.lower(), lowered, n=6, cutoff=0.6)
    suggestions = by_builder or [lowered[c] for c in close]
    hint = f"; close: {', '.join(suggestions)}" if suggestions else ""
    return UserError(
        f"--weights {name!r}: not a torchvision weights name (expected <Enum>.<member>, e.g. "
        f"ResNet152_Weights.IMAGENET1K_V1 or ResNet152_Weights.DEFAULT){hint}"
    )


def resolve(name: str) -> PublishedWeights:
    """The weights torchvision publishes as `name` (`<Enum>.<member>`, `<Enum>.DEFAULT` too), for
    a model of our zoo; UserError listing close matches for an unknown name."""
    tv = _torchvision()
    import torch.hub  # after _torchvision(): its error names the extra

    enums = weight_enums()
    enum_name, _, member = name.strip().partition(".")
    if enum_name not in enums or member not in enums[enum_name][0].__members__:
        raise _not_found(name.strip(), enums)
    weights = tv.get_weight(f"{enum_name}.{member}")
    builders = enums[enum_name][1]
    ours = [b for b in builders if b in list_models() and model_info(b).torchvision]
    if not ours:
        raise UserError(
            f"--weights {name}: weights of torchvision's {', '.join(builders)}, which our zoo "
            f"does not have (it has: {', '.join(list_models())})"
        )
    transform = weights.transforms()
    basename = os.path.basename(urlparse(weights.url).path)  # as torch.hub names the file
    return PublishedWeights(
        name=f"{enum_name}.{weights.name}",
        model=ours[0],
        url=weights.url,
        cache_path=os.path.join(torch.hub.get_dir(), "checkpoints", basename),
        num_classes=len(weights.meta["categories"]),
        metrics=dict(weights.meta.get("_metrics", {})),
        eval_resize=int(transform.resize_size[0]),
        eval_crop=int(transform.crop_size[0]),
        mean=tuple(float(m) for m in transform.mean),
        std=tuple(float(s) for s in transform.std),
        interpolation=transform.interpolation.value,
    )


def study_weights_name(model: str, member: str) -> str:
    """`<Enum>.<member>` of torchvision's weights `member` (e.g. IMAGENET1K_V1) of `model`."""
    return f"{_torchvision().get_model_weights(model).__name__}.{member}"


class DownloadError(MissingInputError):
    """Weights files neither in the cache nor downloadable: which, and why the downloads failed."""

    def __init__(self, message: str, weights: list[PublishedWeights], reasons: set[str]) -> None:
        super().__init__(message)
        self.weights = weights
        self.reasons = reasons


def fetch(weights: PublishedWeights, *, progress: bool = True) -> str:
    """Path of the weights file in torch hub's cache, downloaded there (hash-checked, as
    torchvision's builders do) when missing. DownloadError naming the URL, the cache path and
    the --torch_weights route when the download fails (offline)."""
    if weights.is_cached():
        return weights.cache_path
    tv = _torchvision()
    try:
        # torchvision's own loader: downloads into the cache (a temporary file, moved in once
        # complete and hash-checked), then loads it; the caller reads the file again itself.
        tv.get_weight(weights.name).get_state_dict(
            progress=progress, check_hash=True, map_location="cpu", weights_only=True
        )
    except OSError as err:  # urllib's URLError (offline, DNS, refused) and HTTP errors
        reason = getattr(err, "reason", None) or err
        raise DownloadError(
            f"{weights.name}: not in torch hub's cache and the download failed ({reason}); "
            f"download {weights.download_hint()} (set TORCH_HOME to move the cache), or convert "
            f"a local copy with --model {weights.model} --torch_weights PATH",
            [weights],
            {str(reason)},
        ) from None
    return weights.cache_path


def fetch_all(entries: list[PublishedWeights], *, progress: bool = True) -> list[str]:
    """`fetch` of every entry; one DownloadError listing every file that could not be had."""
    paths: list[str] = []
    missing: list[PublishedWeights] = []
    reasons: set[str] = set()
    for weights in entries:
        try:
            paths.append(fetch(weights, progress=progress))
        except DownloadError as err:
            missing += err.weights
            reasons |= err.reasons
    if missing:
        raise DownloadError(
            f"{len(missing)} of {len(entries)} weights files are not in torch hub's cache and "
            f"could not be downloaded ({'; '.join(sorted(reasons))}): "
            + "; ".join(f"{w.name}: {w.download_hint()}" for w in missing)
            + " (set TORCH_HOME to move the cache), or convert local copies one by one with "
            "--model MODEL --torch_weights PATH",
            missing,
            reasons,
        )
    return paths
