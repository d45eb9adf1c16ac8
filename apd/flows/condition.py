"""What a conditional flow sees of a measurement."""
from __future__ import annotations

from typing import NamedTuple

import jax


class FlowCondition(NamedTuple):
    """features (B,*C): the input of the conditioners (y, plus the mask where it is shown);
    estimate (B,*S): a signal-space estimate x0(y) that the flow adds at its output (per-entry gain)."""

    features: jax.Array
    estimate: jax.Array


def split_condition(cond, gain: jax.Array, signal_batch_shape: tuple[int, ...]):
    """(features, offset) of a FlowCondition or of a plain feature array.

    offset: gain * estimate, the estimate reshaped to (B, *gain.shape), for a FlowCondition whose estimate has
    signal_batch_shape (B,*S); 0 for a plain array (no estimate).
    """
    if not isinstance(cond, FlowCondition):
        return cond, 0.0
    if cond.estimate.shape != tuple(signal_batch_shape):
        raise ValueError(f"estimate shape {cond.estimate.shape} != signal batch shape {tuple(signal_batch_shape)}")
    return cond.features, gain * cond.estimate.reshape((signal_batch_shape[0],) + gain.shape)
