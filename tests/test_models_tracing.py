"""Building and tracing a model never walks the trace for an unseen error message (tracing.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax._src.interpreters import partial_eval

from imagenot_jax import models
from imagenot_jax.models import tracing


@pytest.fixture
def trace_walks(monkeypatch):
    """Counts calls of JAX's trace walk behind tracer error messages (the real one still runs)."""
    calls = []
    walk = partial_eval.JaxprStackFrame.find_progenitors

    def counted(self, tracer):
        calls.append(tracer)
        return walk(self, tracer)

    monkeypatch.setattr(partial_eval.JaxprStackFrame, "find_progenitors", counted)
    return calls


def test_model_build_and_train_forward_do_not_walk_the_trace(trace_walks):
    """Each walk is linear in the trace so far and flax probes once per RNG draw / BatchNorm
    update: any walk per variable makes tracing quadratic in model size."""
    build = lambda: models.get_model("resnet18", num_classes=3, rngs=nnx.Rngs(0))  # noqa: E731
    model = nnx.eval_shape(build)
    assert not trace_walks
    model.train()
    graphdef, state = nnx.split(model)
    jax.make_jaxpr(lambda s: nnx.merge(graphdef, s)(jnp.zeros((2, 32, 32, 3))))(state)
    assert not trace_walks


def test_tracer_sharding_still_raises_attribute_error():
    assert tracing.install_cheap_tracer_sharding()  # installed (and idempotent)

    def probe(x):
        y = x + 1
        assert getattr(y, "sharding", None) is None and not hasattr(y, "sharding")
        with pytest.raises(AttributeError, match=r"use `jax\.typeof"):
            y.sharding  # noqa: B018
        return y

    jax.make_jaxpr(probe)(1.0)


def test_concretization_errors_keep_their_origin_hint():
    """Only `.sharding` changed: other tracer errors still say where the tracer came from."""

    def concretize(x):
        return (x + 1).tolist()

    with pytest.raises(jax.errors.ConcretizationTypeError, match="depends on the value"):
        jax.jit(concretize)(1.0)
