"""Model zoo: `get_model(name, num_classes=..., dtype=..., rngs=...)`, `list_models()` and
`model_info(name)`; every model returns a `ModelOutput` (logits, features, aux_logits).

Each family lives in its own module and registers its variants with `@register_model(...)`;
importing this package imports every family module so the registry is complete.
"""

from imagenot_jax.models.registry import (
    ModelInfo,
    ModelOutput,
    get_model,
    list_models,
    model_info,
    register_model,
)
from imagenot_jax.models.tracing import install_cheap_tracer_sharding

__all__ = [
    "ModelInfo",
    "ModelOutput",
    "get_model",
    "list_models",
    "model_info",
    "register_model",
]

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

# Linear-time model builds and step traces with flax 0.12 (see models/tracing.py).
install_cheap_tracer_sharding()
