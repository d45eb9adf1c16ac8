"""Variance-preserving SDE (Song et al. 2021) on signals of any shape.

    dx = -beta(t)/2 x dt + sqrt(beta(t)) dW,   beta(t) = beta_min + t (beta_max - beta_min),  t in [0, 1]
    x_t = alpha_t x_0 + sigma_t e,   alpha_t = exp(-B(t)/2),  sigma_t^2 = 1 - alpha_t^2,  B(t) = int_0^t beta

Arrays of signals carry a leading batch axis; times are one per signal, shape (B,).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x (B,*S), t (B,)) -> score (B,*S)


def _expand(t: jax.Array, x: jax.Array) -> jax.Array:
    """Reshape per-signal values t (B,) so they broadcast against x (B, *S)."""
    return jnp.reshape(t, jnp.shape(t) + (1,) * (x.ndim - jnp.ndim(t)))


@dataclasses.dataclass(frozen=True)
class VPSDE:
    """The VP-SDE with a linear beta schedule; hashable, so it can be a static jit argument."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3  # smallest time used by training, the ELBO and the samplers

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t):
        """B(t) = int_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha(self, t):
        """Mean scale of the marginal, alpha_t = exp(-B(t)/2)."""
        return jnp.exp(-0.5 * self.integrated_beta(t))

    def sigma(self, t):
        """Std of the marginal, sigma_t = sqrt(1 - alpha_t^2) (computed stably for small t)."""
        return jnp.sqrt(-jnp.expm1(-self.integrated_beta(t)))

    def time_of_integrated_beta(self, b):
        """Inverse of B: the t with B(t) = b."""
        slope = self.beta_max - self.beta_min
        return (-self.beta_min + jnp.sqrt(self.beta_min**2 + 2.0 * slope * b)) / slope

    def marginal(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
        """x_t = alpha_t x0 + sigma_t noise, with x0, noise (B,*S) and t (B,)."""
        return _expand(self.alpha(t), x0) * x0 + _expand(self.sigma(t), x0) * noise

    def prior_log_prob(self, x: jax.Array) -> jax.Array:
        """log N(x; 0, I) per signal, (B,*S) -> (B,), the terminal distribution."""
        flat = x.reshape(x.shape[0], -1)
        d = flat.shape[1]
        return -0.5 * jnp.sum(flat**2, axis=1) - 0.5 * d * math.log(2 * math.pi)

    # Likelihood-weighting importance density q(t) ∝ g(t)^2 / sigma_t^2 = beta(t) / (1 - exp(-B(t))) on
    # [t_min, 1]. Its antiderivative is log(exp(B(t)) - 1), so the normaliser and the inverse CDF are closed-form.

    def _log_expm1_integrated_beta(self, t):
        b = self.integrated_beta(t)
        return b + jnp.log(-jnp.expm1(-b))

    def importance_normaliser(self) -> jax.Array:
        """Z = int_{t_min}^1 beta(t) / sigma_t^2 dt = log((e^{B(1)} - 1) / (e^{B(t_min)} - 1))."""
        return self._log_expm1_integrated_beta(1.0) - self._log_expm1_integrated_beta(self.t_min)

    def importance_density(self, t: jax.Array) -> jax.Array:
        """q(t) = beta(t) / (sigma_t^2 Z) on [t_min, 1]."""
        return self.beta(t) / (self.sigma(t) ** 2 * self.importance_normaliser())

    def sample_importance_time(self, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """Times drawn from q(t), shape `shape`."""
        return self.importance_time(jax.random.uniform(key, shape))

    def importance_time(self, u: jax.Array) -> jax.Array:
        """The time at CDF level u in [0, 1] of q(t), by inverting log(e^{B(t)} - 1) = log(e^{B(t_min)} - 1) + u Z."""
        level = self._log_expm1_integrated_beta(self.t_min) + u * self.importance_normaliser()
        b = level + jnp.log1p(jnp.exp(-level))  # B = log(1 + e^level), stable for large levels
        return jnp.clip(self.time_of_integrated_beta(b), self.t_min, 1.0)

    # Samplers of the prior ----------------------------------------------------------------------------

    def sample(
        self,
        score_fn: ScoreFn,
        key: jax.Array,
        shape: tuple[int, ...],
        num_steps: int = 500,
        method: str = "euler_maruyama",
    ) -> jax.Array:
        """Samples (B,*S) of the prior from x_1 ~ N(0, I) down to t_min.

        method: "euler_maruyama" for the reverse-time SDE, "ode" for the probability-flow ODE (Euler).
        The last step returns the Tweedie mean at t_min (noise-free output).
        """
        if method not in ("euler_maruyama", "ode"):
            raise ValueError(f"unknown sampling method {method!r}; use 'euler_maruyama' or 'ode'")
        key, init_key = jax.random.split(key)
        x = jax.random.normal(init_key, shape)
        times = jnp.linspace(1.0, self.t_min, num_steps + 1)
        batch = shape[0]

        def step(x, inputs):
            t, t_next, step_key = inputs
            dt = t_next - t  # negative
            tb = jnp.full((batch,), t)
            score = score_fn(x, tb)
            beta = self.beta(t)
            if method == "ode":
                drift = -0.5 * beta * (x + score)
                return x + drift * dt, None
            drift = -0.5 * beta * x - beta * score
            noise = jax.random.normal(step_key, x.shape)
            return x + drift * dt + jnp.sqrt(beta * -dt) * noise, None

        keys = jax.random.split(key, num_steps)
        x, _ = jax.lax.scan(step, x, (times[:-1], times[1:], keys))
        t_end = jnp.full((batch,), self.t_min)
        score = score_fn(x, t_end)
        sigma, alpha = self.sigma(self.t_min), self.alpha(self.t_min)
        return (x + sigma**2 * score) / alpha
