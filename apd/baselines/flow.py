"""Per-measurement flow (DPI with the surrogate ELBO prior; Feng et al. ICCV 2023, Feng & Bouman TMLR 2024;
METHODS.md Section 9).

For ONE fixed measurement y a RealNVP x = G_phi(z), z ~ N(0, I), is trained by Adam on

    L(phi) = mean_b [ lambda_data(k) (-log p(y | x_b)) - ELBO(x_b) - log|det dG_phi/dz (z_b)| ],   x_b = G_phi(z_b)

which is `apd.objective.apd_terms` / `apd_loss` (the amortized flow's objective, the same ELBO) with one
measurement and num_z = batch_size, run by `apd.refine.fit_measurement` (which also refines the amortized flow
on one measurement). -log p(y|x) = ||y - A x||^2 / (2 s^2) + a constant that does not move the gradient. The
flow is `ConditionalRealNVP` given the CONSTANT condition c = flows.condition_of(A, y): a fixed input to the
coupling MLPs only shifts their first-layer biases, and the estimate pinv(y) a constant added at the output
(gain 1 at the start, learned), so the flow is unconditional in effect.

Data-weight annealing (official `train_dpi.py`: 1/(1 + exp(-0.002 (k - 12000))) over 20,000 steps) is
rescaled to num_steps: centre 0.6 num_steps, slope 0.002 * 20000 / num_steps, so the weight goes from
about 4e-11 at k = 0 through 0.5 at 0.6 num_steps to 1 - 1e-7 at num_steps, for every num_steps.

N measurements train N independent flows in one compiled call: the whole training (a `lax.scan` over steps)
is vmapped over measurements, parameters carrying a leading axis N; measurement i uses fold_in(key, i), so it
gets the same flow alone or inside any batch.

    result = fit(prior, operator, y, key, **settings)       # N flows
    samples = sample(result, key, num_samples)              # (N, num_samples, *S), one batched pass each
    samples, nfe = solve(prior, operator, y, key, **settings)  # registry form: fit, then one sample each
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from apd import flows
from apd.baselines import common
from apd.flows import ConditionalRealNVP
from apd.optim import make_optimizer
from apd.refine import fit_measurement, score_evaluations

_OFFICIAL_STEPS = 20_000  # train_dpi.py: n_iter, anneal centre 12,000 and slope 0.002 refer to it


@dataclasses.dataclass(frozen=True)
class Settings:
    """Training settings; defaults are the official ones of METHODS 9.1 where they exist.

    num_steps: Adam steps (official 20,000).
    batch_size: flow samples per step (official 64).
    lr: Adam learning rate (official 1e-5, for the official flow with batch norm). The identity-initialised
      flow here moves slowly at 1e-5: a practical setting on small problems is lr 1e-3 with 2,000 steps.
    warmup_steps: linear warm-up of lr from 0; None means num_steps // 4 (official 5,000 of 20,000).
    grad_clip: global gradient-norm clip (official 1).
    anneal: sigmoid data-weight annealing rescaled to num_steps (official on); False keeps the weight at 1.
    elbo_draws: (t, e) draws of the prior ELBO per flow sample (official dsm_nt = 1).
    num_couplings, width, depth, scale_bound: the RealNVP (official 32 flow steps; width and depth are this
      project's dense coupling MLP, see apd.flows.realnvp).
    """

    num_steps: int = _OFFICIAL_STEPS
    batch_size: int = 64
    lr: float = 1e-5
    warmup_steps: int | None = None
    grad_clip: float = 1.0
    anneal: bool = True
    elbo_draws: int = 1
    num_couplings: int = 32
    width: int = 256
    depth: int = 2
    scale_bound: float = 2.0

    def __post_init__(self):
        for name in ("num_steps", "batch_size", "elbo_draws", "num_couplings", "width", "depth"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0 or None, got {self.warmup_steps}")
        for name in ("lr", "grad_clip", "scale_bound"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def warmup(self) -> int:
        return self.num_steps // 4 if self.warmup_steps is None else int(self.warmup_steps)

    @property
    def nfe(self) -> int:
        """Score evaluations of one training: num_steps * batch_size * 2 * elbo_draws (see `solve`)."""
        return score_evaluations(self.num_steps, self.batch_size, self.elbo_draws)


class FlowFit(NamedTuple):
    """Trained per-measurement flows for N measurements."""

    flow: ConditionalRealNVP  # the module (shared structure)
    params: Any  # its parameters, every leaf with a leading axis N
    cond: flows.FlowCondition  # leaves with a leading axis N: the constant condition flows.condition_of(A_i, y_i)
    loss: jax.Array  # (N, num_steps) training loss of every step, nats


def data_weight(step, num_steps: int, anneal: bool = True) -> jax.Array:
    """lambda_data(step) = 1 / (1 + exp(-(0.002 * 20000 / num_steps) (step - 0.6 num_steps))); 1 if not anneal.

    At num_steps = 20,000 this is the official 1 / (1 + exp(-0.002 (step - 12000))).
    """
    if not anneal:
        return jnp.ones(jnp.shape(step), jnp.float32)
    slope = 0.002 * _OFFICIAL_STEPS / num_steps
    return jax.nn.sigmoid(slope * (jnp.asarray(step, jnp.float32) - 0.6 * num_steps))


def make_flow(signal_shape, settings: Settings) -> ConditionalRealNVP:
    """The RealNVP of `settings` on signals of signal_shape."""
    sizes = {k: getattr(settings, k) for k in ("num_couplings", "width", "depth", "scale_bound")}
    return flows.make_flow(ml_collections.ConfigDict(dict(name="realnvp", **sizes)), signal_shape)


def fit(prior, operator, y, key, **settings) -> FlowFit:
    """Train one flow per measurement: y (N, *M), operator a batch of N (leading axis N). See `Settings`."""
    s = Settings(**settings)
    if y.ndim < 1:
        raise ValueError(f"y needs a leading measurement axis (N, *M), got shape {y.shape}")
    flow = make_flow(prior.signal_shape, s)
    params, cond, loss = _fit(prior, operator, y, key, jnp.float32(s.lr), flow=flow, settings=_structure(s))
    return FlowFit(flow, params, cond, loss)


def sample(result: FlowFit, key, num_samples: int) -> jax.Array:
    """(N, num_samples, *S): num_samples draws from each measurement's flow, measurement i with fold_in(key, i)."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    return _sample(result.params, result.cond, key, flow=result.flow, num_samples=int(num_samples))


def solve(prior, operator, y, key, *, num_samples: int | None = None, **settings):
    """(samples, nfe): `fit` with fit_key, then `sample` with sample_key, (fit_key, sample_key) = split(key).

    samples: (N, *S), one per measurement, when num_samples is None (the registry form); otherwise
      (N, num_samples, *S) from the same trained flows.
    nfe = num_steps * batch_size * 2 * elbo_draws score evaluations per measurement: each ELBO draw calls the
      score twice (inside the time integral and in the decoder term at t_min), each with a backward pass
      through the network (the gradient reaches the flow through the score). Drawing samples costs no
      score evaluation.
    """
    fit_key, sample_key = jax.random.split(key)
    result = fit(prior, operator, y, fit_key, **settings)
    samples = sample(result, sample_key, 1 if num_samples is None else num_samples)
    if num_samples is None:
        samples = samples[:, 0]
    return samples, Settings(**settings).nfe


def _structure(s: Settings) -> Settings:
    """The static half of the settings, warm-up resolved; lr is traced, so it is set to a placeholder 1.0 here
    and every lr shares one compiled program."""
    return dataclasses.replace(s, lr=1.0, warmup_steps=s.warmup)


@functools.partial(jax.jit, static_argnames=("flow", "settings"))
def _fit(prior, operator, y, key, lr, flow, settings):
    tx = make_optimizer(
        ml_collections.ConfigDict(dict(lr=lr, warmup_steps=settings.warmup_steps, grad_clip=settings.grad_clip))
    )

    def one(op, y_i, key_i):
        init_key, train_key = jax.random.split(key_i)
        cond = flows.condition_of(op, y_i)
        cond_1 = jax.tree.map(lambda a: a[None], cond)
        params = flow.init(init_key, jnp.zeros((1,) + tuple(flow.signal_shape)), cond_1)["params"]
        params, loss = fit_measurement(
            flow, params, tx, prior, op, y_i, train_key, settings.num_steps, settings.batch_size,
            data_weight=lambda k: data_weight(k, settings.num_steps, settings.anneal), elbo_draws=settings.elbo_draws,
        )
        return params, cond, loss

    return common.map_measurements(one, operator, y, key)


@functools.partial(jax.jit, static_argnames=("flow", "num_samples"))
def _sample(params, cond, key, flow, num_samples):
    def one(params_i, cond_i, key_i):
        cond_k = jax.tree.map(lambda a: jnp.broadcast_to(a, (num_samples,) + a.shape), cond_i)
        return flows.sample(flow, params_i, key_i, cond_k)

    return jax.vmap(one)(params, cond, common.measurement_keys(key, cond.features.shape[0]))
