"""Model zoo: `get_model(name, num_classes=..., dtype=..., rngs=...)` and `list_models()`.

Each family lives in its own module and registers its variants with `@register_model`; importing
this package imports every family module so the registry is complete.
"""

from imagenot_jax.models.registry import get_model, list_models, register_model

__all__ = ["get_model", "list_models", "register_model"]

# Family modules register themselves on import; keep these last.
from imagenot_jax.models import (  # noqa: F401
    alexnet,
    convnext,
    densenet,
    efficientnet,
    inception,
    mobilenet_v3,
    resnet,
    vgg,
    vit,
)
