"""Reproducible measurement sets: signal i of a split gets its operator and noise from fold_in(key, i).

A training set of measurements is thus fixed (the same y_i every time example i is drawn) without storing
per-measurement masks, and test measurements use another key, so they never coincide with training ones.
"""
from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

from apd.operators import OperatorFamily


def split_key(seed: int, split: str) -> jax.Array:
    """The base key of a split's measurements ('train', 'val', 'test', ...), stable across runs."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(split.encode()) & 0x7FFFFFFF)


def measure(family: OperatorFamily, base_key: jax.Array, x: jax.Array, index: jax.Array):
    """Operators (batched, leading axis B) and measurements y (B,*M) of signals x (B,*S) with indices (B,)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(index)
    op_keys, noise_keys = jnp.split(jax.vmap(jax.random.split)(keys), 2, axis=1)
    ops = jax.vmap(family.draw)(op_keys[:, 0])
    y = jax.vmap(lambda op, k, xx: op.measure(k, xx))(ops, noise_keys[:, 0], x)
    return ops, y
