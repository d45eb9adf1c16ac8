"""Inference with a trained APD flow: posterior samples for new measurements in one network evaluation.

    sampler = apd.load_sampler("runs/digits_denoise")
    x = sampler.sample(y, num_samples=128, key=jax.random.PRNGKey(0))      # (128, *S) for one y
    x = sampler.sample(ys, num_samples=128, key=key)                       # (N, 128, *S) for ys (N, *M)

All samples of all measurements are one batched flow call, compiled once per (N, num_samples).
Semi-amortized (`apd.refine`): the flow refined on each measurement for a few steps of its objective first,

    params = sampler.refine_each(prior, ys, keys, operators, num_steps=100)         # leaves (N, ...)
    x = sampler.sample_each(ys, 128, keys, params=params)                          # (N, 128, *S)
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from apd import flows, refine
from apd.measurement_files import accepted_range
from apd.objective import Estimate, as_estimate, conditions, estimator_options, repeat_batch
from apd.operators import OperatorFamily, broadcast_operator, make_operator_family


@dataclasses.dataclass
class Sampler:
    """A trained conditional flow q(x | y) with its operator family.

    operator: needed only when each measurement has its own mask that the flow is told (per-measurement
    inpainting); otherwise conditions come from the family's operator for PRNGKey(0): the task's fixed
    operator, or in blind mode an Inpaint with show_mask=False, whose condition and estimate are y itself,
    so its random mask has no effect and the condition equals the one training built with the true mask.
    prior: needed only by a flow whose estimate is the prior's (config.flow.model.estimate = 'tweedie': one score
    evaluation per measurement, shared by all its samples); `load_sampler` loads it then.
    estimate: the flow's estimate (`apd.objective.Estimate`); None takes its name from config, which a 'wiener'
    flow cannot (its Gaussian fit comes from `apd.training.flow.load_estimate`, as `load_sampler` does).
    """

    flow: nn.Module
    params: Any
    family: OperatorFamily
    config: ml_collections.ConfigDict
    step: int | None = None  # the training step of the checkpoint (None: not from a checkpoint)
    prior: Any = None
    estimate: Estimate | None = None

    def __post_init__(self):
        self._reference_op = self.family.draw(jax.random.PRNGKey(0))
        self.needs_operator = bool(getattr(self._reference_op, "show_mask", False))
        self._draw = jax.jit(self._draw_samples, static_argnums=(3,))
        self._draw_each = jax.jit(jax.vmap(self._draw_one, in_axes=(None, 0, 0, None)), static_argnums=(3,))
        self._draw_each_own = jax.jit(jax.vmap(self._draw_one, in_axes=(0, 0, 0, None)), static_argnums=(3,))
        self.y_range = accepted_range(self._reference_op)  # None when the operator's range is unknown
        if self.estimate is None:
            self.estimate = as_estimate(self.config.flow.model.get("estimate", "pinv") if "flow" in self.config else "pinv")
        if self.estimate.name == "tweedie" and self.prior is None:
            raise ValueError("this flow's estimate is the prior's ('tweedie'): pass prior=")
        if self.estimate.name == "wiener" and self.estimate.mean is None:
            raise ValueError("this flow's 'wiener' estimate needs its Gaussian fit of the prior: pass estimate= "
                             "(apd.training.flow.load_estimate)")
        self._conditions = jax.jit(conditions)

    @property
    def signal_shape(self) -> tuple[int, ...]:
        return tuple(self.family.signal_shape)

    @property
    def estimator(self) -> dict:
        """The estimator keywords of the objective the flow was trained with (`apd.objective.estimator_options`)."""
        return estimator_options(self.config.flow.training)

    @property
    def measurement_shape(self) -> tuple[int, ...]:
        return tuple(self._reference_op.measurement_shape)

    def _draw_samples(self, params, cond, key, num_samples):
        x = flows.sample(self.flow, params, key, repeat_batch(cond, num_samples))
        return x.reshape((-1, num_samples) + self.signal_shape)

    def _draw_one(self, params, cond, key, num_samples):
        cond = jax.tree.map(lambda a: a[None], cond)
        return flows.sample(self.flow, params, key, repeat_batch(cond, num_samples))

    def _check(self, y) -> tuple[jax.Array, bool]:
        y = jnp.asarray(y, jnp.float32)
        shape = self.measurement_shape
        single = tuple(y.shape) == shape
        if not single and tuple(y.shape[1:]) != shape:
            raise ValueError(f"y must have shape {shape} or (N, *{shape}), got {tuple(y.shape)}")
        if not bool(jnp.all(jnp.isfinite(y))):
            raise ValueError("y contains NaN or infinite values")
        low, high = float(jnp.min(y)), float(jnp.max(y))
        if self.y_range is not None and (low < self.y_range[0] or high > self.y_range[1]):
            warnings.warn(
                f"y spans [{low:.4g}, {high:.4g}], far outside [{self.y_range[0]:.3g}, {self.y_range[1]:.3g}] where "
                "measurements of training signals (in [0, 1]) lie: the samples are extrapolations; put y on the "
                "training scale",
                stacklevel=3,
            )
        return (y[None] if single else y), single

    def _check_each(self, y, keys, name: str) -> jax.Array:
        """y (N,*M) checked, with one key per measurement."""
        y, single = self._check(y)
        if single or keys.shape[0] != y.shape[0]:
            raise ValueError(f"{name} needs y (N, *M) and N keys, got y {tuple(y.shape)} and keys {keys.shape}")
        return y

    def condition(self, y: jax.Array, operator=None) -> flows.FlowCondition:
        """The flow's condition for measurements y (N,*M).

        operator: None for tasks with one fixed operator or blind ones (see the class); else a batch of N
        operators (leading axis N, e.g. from OperatorFamily.draw_batch) when each measurement has its own
        mask that the flow is told.
        """
        if operator is None:
            if self.needs_operator:
                raise ValueError(
                    "this task draws a mask per measurement and the flow is told it: pass operator= "
                    "(the Inpaint operator of each measurement)"
                )
            operator = broadcast_operator(self._reference_op, y.shape[0])
        return self._conditions(operator, y, self.prior, self.estimate)

    def sample(self, y, num_samples: int = 128, key: jax.Array | None = None, operator=None) -> jax.Array:
        """Posterior samples: (num_samples, *S) for one y of shape M, (N, num_samples, *S) for y (N, *M).

        operator: for per-measurement masks, the measurement's operator (one y) or a batch of N operators.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        key = jax.random.PRNGKey(0) if key is None else key
        dtype = getattr(key, "dtype", None)
        if dtype is None or not (dtype == jnp.uint32 or jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)):
            raise ValueError(f"key must be a JAX random key, e.g. jax.random.PRNGKey(0), got {key!r}")
        y, single = self._check(y)
        if single and operator is not None:
            operator = broadcast_operator(operator, 1)
        x = self._draw(self.params, self.condition(y, operator), key, int(num_samples))
        return x[0] if single else x

    def sample_each(self, y, num_samples: int, keys: jax.Array, operator=None, params=None) -> jax.Array:
        """Posterior samples (N, num_samples, *S) for y (N,*M), measurement i's drawn with keys[i] (keys (N, 2))
        alone: the same key gives the same samples whichever measurements share the call.

        operator: as in `sample`, a batch of N operators where the flow is told each measurement's mask.
        params: None (the trained flow), or parameters per measurement (every leaf with a leading axis N, from
        `refine_each`).
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        y = self._check_each(y, keys, "sample_each")
        cond = self.condition(y, operator)
        if params is None:
            return self._draw_each(self.params, cond, keys, int(num_samples))
        return self._draw_each_own(params, cond, keys, int(num_samples))

    def refine_each(self, prior, y, keys: jax.Array, operator, num_steps: int, lr: float = refine.LR,
                    batch_size: int = refine.BATCH_SIZE):
        """The flow's parameters refined on each measurement y (N,*M) (`apd.refine.refine_each`, with the estimator
        of the flow's training): every leaf with a leading axis N, for `sample_each(..., params=)`.

        Measurement i is refined with fold_in(keys[i], 1), so the same keys (N, 2) then draw its samples.
        operator: the N operators of y (leading axis N; the likelihood needs each one's mask where it has one).
        """
        y = self._check_each(y, keys, "refine_each")
        refine_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, 1)
        return refine.refine_each(self.flow, self.params, prior, operator, y, refine_keys, num_steps, lr=lr,
                                  batch_size=batch_size, estimate=self.estimate, **self.estimator)

    def posterior_mean_and_std(self, y, num_samples: int = 128, key: jax.Array | None = None, operator=None):
        """Mean and std over num_samples posterior samples, each shaped like the samples without their axis."""
        if num_samples == 1:
            warnings.warn("the posterior std of one sample is 0: pass num_samples > 1", stacklevel=2)
        x = self.sample(y, num_samples, key, operator)
        axis = 0 if x.ndim == len(self.signal_shape) + 1 else 1
        return jnp.mean(x, axis=axis), jnp.std(x, axis=axis)


def load_sampler(workdir: str, step: int | None = None) -> Sampler:
    """The trained sampler in workdir: EMA parameters of the flow checkpoint at `step` (default: the latest)."""
    from apd.training.flow import flow_estimate, load_estimate, load_flow

    flow, params, config, step = load_flow(workdir, step)
    family = make_operator_family(config.operator, tuple(config.flow.signal_shape))
    prior = None
    if flow_estimate(config) == "tweedie":
        from apd.training.prior import load_prior

        prior = load_prior(workdir)
    return Sampler(flow, jax.device_put(params), family, config, step, prior, load_estimate(workdir, config))
