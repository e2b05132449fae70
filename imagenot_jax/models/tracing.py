"""Linear-time tracing of NNX models: skip JAX's discarded `Tracer.sharding` error message.

Flax 0.12's `Variable.set_value` (every `variable[...] = value`: each RNG draw while a model is
built, each BatchNorm running-statistics update in a train step) compares
`getattr(value, "sharding", None)` with the old value's. On a tracer, jax 0.10's `Tracer.sharding`
property raises AttributeError with a message that includes `_origin_msg()`, which walks every
equation traced so far (`find_progenitors`). One probe per variable update makes building a model
under `nnx.eval_shape` and tracing its train step quadratic in the model's size (resnet152: over
three minutes on a CPU core instead of seconds).

That message is never seen: when a property raises AttributeError, Python falls back to
`Tracer.__getattr__`, which raises its own, cheap AttributeError for `sharding` ("... use
`jax.typeof(x)`"); `getattr(x, "sharding", None)` swallows either. No pattern in our modules avoids
the probe (the RNG draws happen inside flax's own layers), so this module replaces the property by
one that raises the same cheap AttributeError, without the trace walk. Behaviour is unchanged:
the same exception type, the same message users see, and `hasattr`/`getattr` work as before.
jax 0.10.2 (the last release for Python 3.11) still builds the message. The patch is installed
once, when `imagenot_jax.models` is imported, and is a no-op if JAX no longer defines the
property.
"""

from __future__ import annotations

from typing import Any


def _sharding_unavailable(tracer: Any) -> Any:
    """Tracer.sharding without the trace walk (the message `Tracer.__getattr__` also gives)."""
    raise AttributeError(
        f"The 'sharding' attribute is not available on {tracer._error_repr()}. "
        "To query sharding information on tracers, use `jax.typeof(x)`."
    )


def install_cheap_tracer_sharding() -> bool:
    """Replaces jax's `Tracer.sharding` property (see the module docstring); idempotent.

    Returns whether the cheap property is in place.
    """
    from jax._src import core

    current = vars(core.Tracer).get("sharding")
    if isinstance(current, property) and current.fget is _sharding_unavailable:
        return True
    if not isinstance(current, property):
        return False  # a JAX that changed Tracer.sharding: leave it alone
    core.Tracer.sharding = property(_sharding_unavailable, doc=current.__doc__)
    return True
