"""The amortized posterior distillation (APD) objective.

For measurements y_b with operators A_b and z ~ N(0, I), x = G(z, c_b) with c_b = flows.condition_of(A_b, y_b):

    L = mean_{b,k} [ w * (-log p(y_b | x)) - ELBO_prior(x) - log|det dG/dz| ]

-log p(y|x) is the Gaussian negative log-likelihood with its constants (= ||y - A x||^2 / (2 s^2) + const),
w the data weight (1 unless annealed). Since E_q[log N(z)] does not depend on the flow,
L + E[log N(z)] = E_y KL(q(.|y) || p(.|y)) - E_y log p(y) (up to the ELBO gap), which `kl_plus_evidence`
reports.

Two variance levers change the gradient, not the optimum (../shared/POSTERIOR_GAP.md, levers 2 and 3):
- prior_gradient='score': the prior term's gradient in x is the score network at a small time t_s,
  a_s * score(a_s x + s_s e, t_s) (the gradient of the prior smoothed at t_s), in place of the gradient of a
  one-draw ELBO: no (t, e) noise and no backward pass through the score network. Its loss value is a surrogate
  (<score, x>, not an ELBO), so the run logs `prior_surrogate` instead of `prior_elbo`.
- path_gradient=True: the entropy term is log q(x) evaluated with the flow's parameters held fixed, so its
  gradient reaches the parameters through x only ("sticking the landing", Roeder et al. 2017): its variance
  vanishes as q reaches the posterior. One inverse pass more.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from apd import flows
from apd.elbo import elbo
from apd.operators import Denoise
from apd.priors.base import Prior, denoised_mean


PRIOR_GRADIENTS = ("elbo", "score")
ESTIMATES = ("pinv", "tweedie", "wiener")  # what the flow's condition holds as its signal-space estimate x0(y)


@struct.dataclass
class Estimate:
    """The flow's signal-space estimate x0(y), by name (ESTIMATES); a pytree whose name is static.

    mean (*S), gain (d, m): 'wiener' only, x0(y) = mean + gain (y - A mean) on flattened signals (d entries) and
    measurements (m), the posterior mean under a Gaussian fit of the prior (`fit_wiener`).
    """

    name: str = struct.field(pytree_node=False, default="pinv")
    mean: Any = None
    gain: Any = None


def as_estimate(estimate: str | Estimate) -> Estimate:
    """An Estimate from a name or an Estimate; one-line ValueError for an unknown name."""
    estimate = estimate if isinstance(estimate, Estimate) else Estimate(estimate)
    if estimate.name not in ESTIMATES:
        raise ValueError(f"flow.model.estimate must be one of {ESTIMATES}, got {estimate.name!r}")
    return estimate


WIENER_SHRINKAGE = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # the rho grid of `fit_wiener`


def _matrix(fn, shape: tuple[int, ...]) -> np.ndarray:
    """The matrix (rows: outputs, columns: the d = prod(shape) inputs) of a linear map on signals of `shape`."""
    d = int(np.prod(shape))
    columns = jax.vmap(fn)(jnp.eye(d, dtype=jnp.float32).reshape((d,) + tuple(shape)))
    return np.asarray(columns, np.float64).reshape(d, -1).T


def _gaussian_log_density(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> float:
    """Mean log N(x_i; mean, cov) over rows of x (n, d), nats."""
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (x - mean).T)
    logdet = 2.0 * np.sum(np.log(np.diag(chol)))
    return float(-0.5 * (np.sum(z**2) / x.shape[0] + logdet + x.shape[1] * np.log(2 * np.pi)))


def fit_wiener(operator: Any, x: jax.Array, held_out: float = 0.125,
               shrinkage: tuple[float, ...] = WIENER_SHRINKAGE) -> tuple[Estimate, float]:
    """(the 'wiener' estimate, rho) of a fixed linear operator with an SVD, fitted to prior samples x (n,*S).

    The prior's Gaussian fit N(mean, C) has C = (1 - rho) S + rho V diag(var) V^T: the sample covariance S, shrunk
    towards its diagonal in the operator's SVD basis (var = E[(V^T (x - mean))^2]), which holds for any n. rho is
    the value of `shrinkage` (rho = 1: the diagonal fit alone) whose fit to the first (1 - held_out) of the samples
    gives the rest the highest Gaussian likelihood (prior samples only); the estimate is then refitted to all, with
    gain = C A^T (A C A^T + sigma^2 I)^-1 (float64 NumPy, once per task).
    """
    shape = tuple(x.shape[1:])
    samples = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    basis = _matrix(operator.v, shape)  # columns: the right singular vectors
    forward = _matrix(operator.apply, shape)  # A

    def moments(rows):
        mean = rows.mean(axis=0)
        centred = rows - mean
        diagonal = (basis * np.mean((centred @ basis) ** 2, axis=0)) @ basis.T
        return mean, centred.T @ centred / rows.shape[0], diagonal

    def shrunk(sample_cov, diagonal, rho):
        return (1.0 - rho) * sample_cov + rho * diagonal + 1e-8 * np.eye(sample_cov.shape[0])

    n_fit = int(round(samples.shape[0] * (1.0 - held_out)))
    mean_fit, cov_fit, diag_fit = moments(samples[:n_fit])
    scores = [_gaussian_log_density(samples[n_fit:], mean_fit, shrunk(cov_fit, diag_fit, rho))
              for rho in shrinkage]
    rho = shrinkage[int(np.argmax(scores))]
    mean, sample_cov, diagonal = moments(samples)
    cov = shrunk(sample_cov, diagonal, rho)
    gram = forward @ cov @ forward.T + operator.noise_std**2 * np.eye(forward.shape[0])
    gain = np.linalg.solve(gram, forward @ cov).T  # C A^T (A C A^T + s^2 I)^-1, both symmetric
    estimate = Estimate("wiener", jnp.asarray(mean.reshape(shape), jnp.float32), jnp.asarray(gain, jnp.float32))
    return estimate, rho


def wiener_estimate(operator: Any, y: jax.Array, mean: jax.Array, gain: jax.Array) -> jax.Array:
    """mean + gain (y - A mean) (*S) for ONE measurement y: the posterior mean under the prior's Gaussian fit."""
    residual = (y - operator.apply(mean)).reshape(-1)
    return mean + (gain @ residual).reshape(mean.shape)


def conditions(operators: Any, y: jax.Array, prior: Prior | None = None,
               estimate: str | Estimate = "pinv") -> flows.FlowCondition:
    """The flow's conditions for measurements y (B,*M) with batched operators (leading axis B).

    estimate (a name or an `Estimate`): 'pinv', each operator's own estimate (`flows.condition_of`); 'tweedie'
    (denoising only), the prior's posterior mean E[x | y] by Tweedie's formula (`apd.priors.base.denoised_mean`):
    one score evaluation per measurement, no clean signal, and for denoising the mean a perfect flow should reach;
    'wiener' (one fixed linear operator with an SVD), the posterior mean under a Gaussian fit of the prior
    (`fit_wiener`, from prior samples): noise-aware where the pseudo-inverse amplifies noise (deblurring) and an
    interpolation where it leaves entries empty (super-resolution).
    """
    estimate = as_estimate(estimate)
    cond = jax.vmap(flows.condition_of)(operators, y)
    if estimate.name == "pinv":
        return cond
    if estimate.name == "wiener":
        if estimate.mean is None:
            raise ValueError("flow.model.estimate='wiener' needs its Gaussian fit of the prior (apd.objective.fit_wiener)")
        x0 = jax.vmap(wiener_estimate, in_axes=(0, 0, None, None))(operators, y, estimate.mean, estimate.gain)
        return cond._replace(estimate=x0)
    if not isinstance(operators, Denoise) or prior is None:
        raise ValueError("flow.model.estimate='tweedie' needs a denoising operator and the prior")
    return cond._replace(estimate=jax.lax.stop_gradient(denoised_mean(prior, cond.estimate, operators.noise_std)))


class APDTerms(NamedTuple):
    """Per-measurement averages, each (B,): the loss is data_weight * fidelity - prior_elbo + entropy."""

    fidelity: jax.Array  # -log p(y|x), nats
    prior_elbo: jax.Array  # lower bound on log p(x), nats (prior_gradient='score': the surrogate <score, x>)
    logdet: jax.Array  # log|det dG/dz|
    log_q: jax.Array  # log q(x|y) = log N(z) - logdet
    entropy: jax.Array  # the term whose gradient is the entropy's: -logdet, or log q at fixed parameters


def score_surrogate(prior: Prior, x: jax.Array, key: jax.Array, score_time: float) -> jax.Array:
    """(B,) values whose gradient in x (B,*S) is a_s * score(a_s x + s_s e, t_s), t_s = score_time: the gradient
    of log p_{t_s}(a_s x + s_s e), i.e. of log p(x) smoothed at t_s; no gradient reaches the score network."""
    sde = prior.sde
    t = jnp.full((x.shape[0],), score_time, x.dtype)
    e = jax.random.normal(key, x.shape, x.dtype)
    x_s = jax.lax.stop_gradient(sde.marginal(x, t, e))
    grad = jax.lax.stop_gradient(sde.alpha(score_time) * prior.score(x_s, t))
    return jnp.sum((grad * x).reshape(x.shape[0], -1), axis=1)


def repeat_batch(tree: Any, k: int) -> Any:
    """Repeat every leaf k times along the leading axis: (B, ...) -> (B*k, ...), each row k times in a row."""
    return jax.tree.map(lambda a: jnp.repeat(a, k, axis=0), tree)


def apd_terms(
    flow: nn.Module,
    flow_params: Any,
    prior: Prior,
    operators: Any,
    y: jax.Array,
    key: jax.Array,
    num_z: int = 1,
    elbo_draws: int = 1,
    prior_gradient: str = "elbo",
    score_time: float = 0.01,
    path_gradient: bool = False,
    estimate: str | Estimate = "pinv",
) -> APDTerms:
    """Terms of the objective for measurements y (B,*M) with batched operators (leading axis B).

    num_z: flow samples per measurement; elbo_draws: (t, e) draws of the prior bound per sample;
    prior_gradient, score_time, path_gradient: the estimator (module docstring); estimate: the flow's
    signal-space estimate (`conditions`).
    """
    if prior_gradient not in PRIOR_GRADIENTS:
        raise ValueError(f"prior_gradient must be one of {PRIOR_GRADIENTS}, got {prior_gradient!r}")
    k_z, k_elbo = jax.random.split(key)
    batch = y.shape[0]
    cond = conditions(operators, y, prior, estimate)
    cond_k, ops_k, y_k = repeat_batch((cond, operators, y), num_z)
    z = jax.random.normal(k_z, (batch * num_z,) + tuple(flow.signal_shape))
    x, logdet = flow.apply({"params": flow_params}, z, cond_k)
    log_lik = jax.vmap(lambda op, yy, xx: op.log_likelihood(yy, xx))(ops_k, y_k, x)
    if prior_gradient == "score":
        prior_bound = score_surrogate(prior, x, k_elbo, score_time)
    else:
        prior_bound = elbo(prior, x, k_elbo, num_draws=elbo_draws)
    log_q = flows.normal_log_prob(z) - logdet
    if path_gradient:
        entropy = flows.log_prob(flow, jax.lax.stop_gradient(flow_params), x, cond_k)
    else:
        entropy = -logdet

    def per_y(v):
        return jnp.mean(v.reshape(batch, num_z), axis=1)

    return APDTerms(per_y(-log_lik), per_y(prior_bound), per_y(logdet), per_y(log_q), per_y(entropy))


def forward_kl_loss(flow: nn.Module, flow_params: Any, operators: Any, y: jax.Array, x: jax.Array,
                    prior: Prior | None = None, estimate: str | Estimate = "pinv") -> jax.Array:
    """-mean log q(x_b | y_b) over simulated pairs, x (B,*S) with y_b measured from x_b: maximum likelihood,
    the mass-covering direction (KL(p || q) up to a constant), needing no score (POSTERIOR_GAP.md lever 5).
    With x drawn from the prior it uses nothing beyond the prior and the operator. prior, estimate: `conditions`."""
    cond = conditions(operators, y, prior, estimate)
    return -jnp.mean(flows.log_prob(flow, flow_params, x, cond))


def estimator_options(settings) -> dict:
    """apd_terms' estimator keywords from an object or ConfigDict with elbo_draws, prior_gradient, score_time,
    path_gradient (missing ones at their defaults)."""
    get = settings.get if hasattr(settings, "get") else lambda name, default: getattr(settings, name, default)
    return dict(elbo_draws=int(get("elbo_draws", 1)), prior_gradient=get("prior_gradient", "elbo"),
                score_time=float(get("score_time", 0.01)), path_gradient=bool(get("path_gradient", False)))


def apd_loss(terms: APDTerms, data_weight: float | jax.Array = 1.0) -> jax.Array:
    """Scalar loss: mean over measurements of data_weight * fidelity - prior_elbo + entropy term."""
    return jnp.mean(data_weight * terms.fidelity - terms.prior_elbo + terms.entropy)


def kl_plus_evidence(terms: APDTerms) -> jax.Array:
    """Estimate of KL(q(.|y) || p(.|y)) - log p(y) per measurement (B,), in nats (the ELBO in place of log p(x))."""
    return terms.log_q + terms.fidelity - terms.prior_elbo


def data_weight_schedule(step: jax.Array, anneal_steps: int) -> jax.Array:
    """Linear ramp of the data weight from 0 to exactly 1 over anneal_steps; 1 throughout when anneal_steps is 0."""
    if anneal_steps <= 0:
        return jnp.ones((), jnp.float32)
    return jnp.clip(step / anneal_steps, 0.0, 1.0)
