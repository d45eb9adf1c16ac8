"""A convolution whose input gradient is itself a channels-last convolution, for networks differentiated inside
loops.

XLA on CPU runs the transposed-layout convolution that autodiff emits for a convolution's input gradient about 7x
slower inside a while loop (lax.scan) than outside it (jax issue #12868), and every guided diffusion sampler
(DPS, MCG, PiGDM, C-PiGDM) differentiates the prior's network at each of its steps inside a scan. Here the input
gradient is the forward convolution of the output gradient with the flipped, channel-swapped kernel, in the
channels-last layout (kernel (*K, in, out)) that XLA runs fast everywhere. The kernel gradient stays autodiff's:
parameters are trained outside loops, where it is fast (a forward-convolution form of it, 24x faster inside a
scan, is recorded in docs/results/loop_speed/kernel_gradient_as_conv.json but not kept). Same parameters,
initialisation and result as flax's nn.Conv with explicit padding.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["Conv", "conv_channels_last"]


def _dimension_numbers(nd: int) -> jax.lax.ConvDimensionNumbers:
    """Channels last: x (B, *L, C), kernel (*K, C_in, C_out), out (B, *L, C_out)."""
    spatial = tuple(range(1, nd + 1))
    return jax.lax.ConvDimensionNumbers(lhs_spec=(0, nd + 1, *spatial), rhs_spec=(nd + 1, nd, *range(nd)),
                                        out_spec=(0, nd + 1, *spatial))


def _plain(x, kernel, padding):
    nd = x.ndim - 2
    return jax.lax.conv_general_dilated(x, kernel, (1,) * nd, padding, dimension_numbers=_dimension_numbers(nd))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _stride_one(x, kernel, padding):
    return _plain(x, kernel, padding)


def _stride_one_fwd(x, kernel, padding):
    return _plain(x, kernel, padding), (x, kernel)


def _stride_one_bwd(padding, residuals, g):
    x, kernel = residuals
    nd = x.ndim - 2
    sizes = kernel.shape[:nd]
    flipped = jnp.swapaxes(jnp.flip(kernel, axis=tuple(range(nd))), -1, -2)
    pads = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(sizes, padding)]
    # an output position o sees inputs o - lo .. o - lo + k - 1: the gradient pads g by k - 1 - lo in front;
    # where the output was shorter than the input (hi < k - 1 - lo), the far end is padded up to the input length
    grad_x = _plain(g, flipped, pads)
    _, pull = jax.vjp(lambda w: _plain(x, w, padding), kernel)
    return grad_x, pull(g)[0]


_stride_one.defvjp(_stride_one_fwd, _stride_one_bwd)


def conv_channels_last(x: jax.Array, kernel: jax.Array, stride: int, padding: tuple[tuple[int, int], ...]) -> jax.Array:
    """x (B, *L, C_in) * kernel (*K, C_in, C_out) with explicit padding [(lo, hi)] per spatial axis and one stride
    on every axis -> (B, *L', C_out). A stride s > 1 takes every s-th output of the stride-1 convolution with the
    same padding (s^d times the arithmetic of a strided one, paid once per downsampling)."""
    out = _stride_one(x, kernel, tuple(tuple(p) for p in padding))
    if stride == 1:
        return out
    return out[(slice(None), *(slice(None, None, stride),) * (x.ndim - 2))]


class Conv(nn.Module):
    """nn.Conv with explicit padding (its parameter names, shapes and default initialisers), through
    `conv_channels_last`: x (B, *L, C_in) -> (B, *L', features)."""

    features: int
    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if len(set(self.strides)) != 1:
            raise ValueError(f"Conv takes one stride for every axis, got {self.strides}")
        kernel = self.param("kernel", self.kernel_init, (*self.kernel_size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return conv_channels_last(x, kernel, self.strides[0], self.padding) + bias
