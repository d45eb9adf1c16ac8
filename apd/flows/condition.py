"""What a conditional flow sees of a measurement."""
from __future__ import annotations

from typing import NamedTuple

import jax


class FlowCondition(NamedTuple):
    """features (B,*C): the input of the conditioners (y, plus the mask where it is shown);
    estimate (B,*S): a signal-space estimate x0(y) that the flow adds at its output (per-entry gain)."""

    features: jax.Array
    estimate: jax.Array


def split_condition(cond) -> tuple[jax.Array, jax.Array | None]:
    """(features, estimate or None) of a FlowCondition or of a plain feature array."""
    if isinstance(cond, FlowCondition):
        return cond.features, cond.estimate
    return cond, None
