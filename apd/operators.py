"""Forward operators y = A(x) + n, n ~ N(0, s^2 I), acting on ONE signal in its natural shape S.

Every operator is a pytree (flax struct dataclass): the arrays that define it (a mask, a kernel) are leaves,
so a batch of per-measurement operators is one operator with a leading axis, used under `jax.vmap`.

Common interface (x has shape S = `signal_shape`, y has shape `measurement_shape`):
  apply(x) -> y_clean            log_likelihood(y, x) -> scalar, nats, with every constant
  measure(key, x) -> y           condition(y) -> array the conditional flow sees (y, plus the mask where
  noise_std, num_measured         masks differ per measurement and the flow is told them)
Linear operators (`linear = True`) add adjoint(y), pinv(y), and where cheap the SVD form
  A = U diag(s) V^T:  singular_values() (spectral shape), v_t(x), v(c), u_t(y), u(c).

`OperatorFamily.draw(key)` gives the operator of one measurement: fixed operators ignore the key; random
masks drawn per measurement come from it, reproducibly.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct


def _gaussian_log_norm(num: float, noise_std: float) -> float:
    return -0.5 * num * math.log(2 * math.pi * noise_std**2)


class _Gaussian:
    """Gaussian likelihood and measurement shared by all operators (needs apply, noise_std, num_measured)."""

    def log_likelihood(self, y: jax.Array, x: jax.Array) -> jax.Array:
        """log N(y; A(x), s^2 I) in nats for one signal x and one measurement y."""
        r = y - self.apply(x)
        return -0.5 * jnp.sum(r**2) / self.noise_std**2 + _gaussian_log_norm(self.num_measured, self.noise_std)

    def measure(self, key: jax.Array, x: jax.Array) -> jax.Array:
        y = self.apply(x)
        return y + self.noise_std * jax.random.normal(key, y.shape, y.dtype)

    def condition(self, y: jax.Array) -> jax.Array:
        return y


@struct.dataclass
class Denoise(_Gaussian):
    """A = I."""

    noise_std: float = struct.field(pytree_node=False)
    signal_shape: tuple[int, ...] = struct.field(pytree_node=False)
    linear = True

    @property
    def measurement_shape(self):
        return self.signal_shape

    @property
    def num_measured(self) -> int:
        return math.prod(self.signal_shape)

    def apply(self, x):
        return x

    adjoint = pinv = apply

    def singular_values(self):
        return jnp.ones(self.signal_shape)

    v_t = v = u_t = u = apply


@struct.dataclass
class Inpaint(_Gaussian):
    """A = diag(mask), zero-filled: y has the signal's shape and is 0 where the mask is 0.

    mask: shape S, 1 where the entry is observed. show_mask: whether the flow's condition includes the mask
    (True when masks differ per measurement, False for a fixed mask or in blind mode).
    """

    mask: jax.Array
    noise_std: float = struct.field(pytree_node=False)
    show_mask: bool = struct.field(pytree_node=False, default=False)
    linear = True

    @property
    def signal_shape(self):
        return self.mask.shape

    measurement_shape = signal_shape

    @property
    def num_measured(self):
        return jnp.sum(self.mask)

    def apply(self, x):
        return self.mask * x

    adjoint = pinv = apply

    def measure(self, key, x):
        return self.mask * (x + self.noise_std * jax.random.normal(key, x.shape, x.dtype))

    def condition(self, y):
        return jnp.concatenate([y, self.mask], axis=-1) if self.show_mask else y

    def singular_values(self):
        return self.mask

    def v_t(self, x):
        return x

    v = u_t = u = v_t


def random_mask(key: jax.Array, signal_shape: tuple[int, ...], hidden_fraction, per_channel: bool = False):
    """Mask of shape S with round(hidden_fraction * n) entries hidden (0), the rest 1.

    Entries are pixels/vertices: all channels of one entry share its value unless per_channel.
    hidden_fraction may be a traced scalar (blind mode draws it per measurement).
    """
    entry_shape = signal_shape if per_channel else signal_shape[:-1]
    n = math.prod(entry_shape)
    ranks = jnp.argsort(jax.random.uniform(key, (n,)))
    num_hidden = jnp.round(hidden_fraction * n)
    mask = (ranks >= num_hidden).astype(jnp.float32).reshape(entry_shape)
    if not per_channel:
        mask = jnp.broadcast_to(mask[..., None], signal_shape)
    return mask


@dataclasses.dataclass(frozen=True)
class OperatorFamily:
    """How the operator of each measurement is made: `draw(key)` -> operator (a pytree)."""

    draw: Callable[[jax.Array], Any]
    signal_shape: tuple[int, ...]

    def draw_batch(self, key: jax.Array, n: int):
        """n operators stacked along a leading axis (use with jax.vmap)."""
        return jax.vmap(self.draw)(jax.random.split(key, n))


def make_operator_family(cfg, signal_shape: tuple[int, ...]) -> OperatorFamily:
    """Build the operator family named by cfg.name from an ml_collections config section.

    Recognised names and their settings:
      denoise                      noise_std
      inpaint                      noise_std, hidden_fraction, mask_seed, per_measurement (draw a mask per y)
      inpaint_blind                noise_std, hidden_min, hidden_max (mask level per y, not shown to the flow)
    """
    name = cfg.name
    signal_shape = tuple(signal_shape)
    s = float(cfg.noise_std)
    if name == "denoise":
        op = Denoise(noise_std=s, signal_shape=signal_shape)
        return OperatorFamily(lambda key: op, signal_shape)
    if name == "inpaint":
        if cfg.get("per_measurement", False):
            return OperatorFamily(
                lambda key: Inpaint(random_mask(key, signal_shape, cfg.hidden_fraction), s, show_mask=True),
                signal_shape,
            )
        op = Inpaint(random_mask(jax.random.PRNGKey(cfg.mask_seed), signal_shape, cfg.hidden_fraction), s)
        return OperatorFamily(lambda key: op, signal_shape)
    if name == "inpaint_blind":

        def draw(key):
            k_level, k_mask = jax.random.split(key)
            level = jax.random.uniform(k_level, (), minval=cfg.hidden_min, maxval=cfg.hidden_max)
            return Inpaint(random_mask(k_mask, signal_shape, level), s, show_mask=False)

        return OperatorFamily(draw, signal_shape)
    raise ValueError(f"unknown operator {name!r}; known: denoise, inpaint, inpaint_blind")


def broadcast_operator(op, n: int):
    """The same operator n times along a leading axis, the batched form the samplers take."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + jnp.shape(a)), op)
