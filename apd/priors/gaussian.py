"""Exact priors whose diffused scores are analytic: the ground truth the tests and benchmarks compare against.

Diffusing N(m, C) by the VPSDE gives p_t = N(alpha_t m, alpha_t^2 C + sigma_t^2 I), so with the
eigendecomposition C = U diag(lam) U^T every quantity is a rotation and a diagonal scaling.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from apd.sde import VPSDE


def _covariance(eigvals, eigvecs) -> np.ndarray:
    """U diag(lam) U^T in float64 from eigenvalues (..., d) and eigenvector columns (..., d, d)."""
    lam, vecs = np.asarray(eigvals, np.float64), np.asarray(eigvecs, np.float64)
    return np.einsum("...ij,...j,...kj->...ik", vecs, lam, vecs)


def _eigh(cov: np.ndarray) -> tuple[jax.Array, jax.Array]:
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        raise ValueError(f"covariance must be a square matrix, got shape {cov.shape}")
    lam, vecs = np.linalg.eigh(0.5 * (cov + cov.T))
    if lam.min() <= 0:
        raise ValueError(f"covariance must be positive definite; smallest eigenvalue {lam.min():.3g}")
    return jnp.asarray(lam, jnp.float32), jnp.asarray(vecs, jnp.float32)


def _linear_gaussian_posterior(mean, cov, matrix, y, noise_std: float):
    """Posterior of x ~ N(mean, cov) given y = matrix @ x + N(0, noise_std^2 I), float64 NumPy.

    mean (d,), cov (d, d), matrix (m, d), y (m,). Returns (posterior mean (d,), posterior cov (d, d),
    log N(y; matrix mean, matrix cov matrix^T + noise_std^2 I) in nats): Sigma = (C^-1 + A^T A / s^2)^-1,
    mu = Sigma (C^-1 m + A^T y / s^2).
    """
    a = np.asarray(matrix, np.float64)
    mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
    y = np.asarray(y, np.float64).ravel()
    prec = np.linalg.inv(cov)
    post_cov = np.linalg.inv(prec + a.T @ a / noise_std**2)
    post_mean = post_cov @ (prec @ mean + a.T @ y / noise_std**2)
    y_cov = a @ cov @ a.T + noise_std**2 * np.eye(a.shape[0])
    r = y - a @ mean
    log_evidence = -0.5 * (r @ np.linalg.solve(y_cov, r) + np.linalg.slogdet(y_cov)[1] + len(y) * math.log(2 * math.pi))
    return post_mean, post_cov, log_evidence


@struct.dataclass
class GaussianPrior:
    """N(mean, cov) over signals of shape `signal_shape` (cov is d x d with d = prod(signal_shape))."""

    mean: jax.Array  # (d,)
    eigvals: jax.Array  # (d,)
    eigvecs: jax.Array  # (d, d), columns are eigenvectors
    sde: VPSDE = struct.field(pytree_node=False, default=VPSDE())
    signal_shape: tuple[int, ...] = struct.field(pytree_node=False, default=())

    @classmethod
    def create(cls, mean, cov, signal_shape=None, sde: VPSDE = VPSDE()) -> "GaussianPrior":
        mean = jnp.asarray(mean, jnp.float32).reshape(-1)
        lam, vecs = _eigh(cov)
        if lam.shape[0] != mean.shape[0]:
            raise ValueError(f"mean has {mean.shape[0]} entries but cov is {lam.shape[0]}x{lam.shape[0]}")
        shape = tuple(signal_shape) if signal_shape is not None else (mean.shape[0],)
        if math.prod(shape) != mean.shape[0]:
            raise ValueError(f"signal_shape {shape} does not hold {mean.shape[0]} entries")
        return cls(mean=mean, eigvals=lam, eigvecs=vecs, sde=sde, signal_shape=shape)

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @property
    def cov(self) -> jax.Array:
        return (self.eigvecs * self.eigvals) @ self.eigvecs.T

    def _flat(self, x):
        return x.reshape(x.shape[0], self.dim)

    def score(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """-(alpha^2 C + sigma^2 I)^{-1} (x - alpha m), x (B,*S), t (B,)."""
        flat = self._flat(x)
        alpha, sigma = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        centred = (flat - alpha * self.mean) @ self.eigvecs
        scaled = centred / (alpha**2 * self.eigvals + sigma**2)
        return (-scaled @ self.eigvecs.T).reshape(x.shape)

    def log_prob(self, x: jax.Array) -> jax.Array:
        """log N(x; m, C) in nats, (B,*S) -> (B,)."""
        centred = (self._flat(x) - self.mean) @ self.eigvecs
        quad = jnp.sum(centred**2 / self.eigvals, axis=1)
        return -0.5 * (quad + jnp.sum(jnp.log(self.eigvals)) + self.dim * math.log(2 * math.pi))

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        z = jax.random.normal(key, (n, self.dim))
        x = self.mean + (z * jnp.sqrt(self.eigvals)) @ self.eigvecs.T
        return x.reshape((n,) + self.signal_shape)

    def posterior(self, matrix, y, noise_std: float) -> "GaussianPrior":
        """The exact posterior p(x | y) for y = matrix @ x + N(0, noise_std^2 I), as a GaussianPrior (float64 algebra).

        matrix: (m, d); y: (m,). Sigma = (C^-1 + A^T A / s^2)^-1, mu = Sigma (C^-1 m + A^T y / s^2).
        """
        cov = _covariance(self.eigvals, self.eigvecs)
        mean, cov, _ = _linear_gaussian_posterior(self.mean, cov, matrix, y, noise_std)
        return GaussianPrior.create(mean, cov, self.signal_shape, self.sde)


@struct.dataclass
class GaussianMixturePrior:
    """sum_k w_k N(means_k, covs_k) over signals of shape `signal_shape`."""

    log_weights: jax.Array  # (K,)
    means: jax.Array  # (K, d)
    eigvals: jax.Array  # (K, d)
    eigvecs: jax.Array  # (K, d, d)
    sde: VPSDE = struct.field(pytree_node=False, default=VPSDE())
    signal_shape: tuple[int, ...] = struct.field(pytree_node=False, default=())

    @classmethod
    def create(cls, weights, means, covs, signal_shape=None, sde: VPSDE = VPSDE()) -> "GaussianMixturePrior":
        weights = np.asarray(weights, np.float64)
        if np.any(weights <= 0):
            raise ValueError("mixture weights must be positive")
        means = jnp.asarray(means, jnp.float32)
        covs = np.asarray(covs)
        if means.ndim != 2 or covs.shape != (means.shape[0], means.shape[1], means.shape[1]):
            raise ValueError(f"means (K,d) and covs (K,d,d) disagree: {means.shape} vs {covs.shape}")
        if weights.shape != (means.shape[0],):
            raise ValueError(f"weights {weights.shape} must be ({means.shape[0]},)")
        lams, vecs = zip(*[_eigh(c) for c in covs])
        shape = tuple(signal_shape) if signal_shape is not None else (means.shape[1],)
        if math.prod(shape) != means.shape[1]:
            raise ValueError(f"signal_shape {shape} does not hold {means.shape[1]} entries")
        log_w = jnp.asarray(np.log(weights / weights.sum()), jnp.float32)
        return cls(log_w, means, jnp.stack(lams), jnp.stack(vecs), sde=sde, signal_shape=shape)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _component_terms(self, flat, alpha, sigma):
        """Per-component log-densities (B,K) and scores (B,K,d) of the diffused mixture."""
        var = alpha[:, None, None] ** 2 * self.eigvals[None] + sigma[:, None, None] ** 2  # (B,K,d)
        centred = jnp.einsum("bkd,kde->bke", flat[:, None, :] - alpha[:, None, None] * self.means[None], self.eigvecs)
        log_comp = -0.5 * (
            jnp.sum(centred**2 / var, axis=-1) + jnp.sum(jnp.log(var), axis=-1) + self.dim * math.log(2 * math.pi)
        )
        scores = -jnp.einsum("bke,kde->bkd", centred / var, self.eigvecs)
        return log_comp, scores

    def score(self, x: jax.Array, t: jax.Array) -> jax.Array:
        """Responsibility-weighted component scores, x (B,*S), t (B,)."""
        flat = x.reshape(x.shape[0], self.dim)
        log_comp, scores = self._component_terms(flat, self.sde.alpha(t), self.sde.sigma(t))
        resp = jax.nn.softmax(self.log_weights + log_comp, axis=1)
        return jnp.einsum("bk,bkd->bd", resp, scores).reshape(x.shape)

    def _log_joint(self, x):
        """log w_k + log N(x; m_k, C_k), (B,*S) -> (B,K)."""
        flat = x.reshape(x.shape[0], self.dim)
        log_comp, _ = self._component_terms(flat, jnp.ones(flat.shape[0]), jnp.zeros(flat.shape[0]))
        return self.log_weights + log_comp

    def log_prob(self, x: jax.Array) -> jax.Array:
        return jax.nn.logsumexp(self._log_joint(x), axis=1)

    def responsibilities(self, x: jax.Array) -> jax.Array:
        """p(component k | x), (B,*S) -> (B,K)."""
        return jax.nn.softmax(self._log_joint(x), axis=1)

    def posterior(self, matrix, y, noise_std: float) -> "GaussianMixturePrior":
        """The exact posterior p(x | y) for y = matrix @ x + N(0, noise_std^2 I), as a GaussianMixturePrior (float64).

        matrix: (m, d); y: (m,). Component k keeps its Gaussian posterior (see GaussianPrior.posterior) with
        weight proportional to w_k N(y; A m_k, A C_k A^T + s^2 I).
        """
        covs = _covariance(self.eigvals, self.eigvecs)
        parts = [_linear_gaussian_posterior(m, c, matrix, y, noise_std) for m, c in zip(np.asarray(self.means), covs)]
        means, post_covs, log_evidence = (np.stack(v) for v in zip(*parts))
        log_w = np.asarray(self.log_weights, np.float64) + log_evidence
        log_w -= np.logaddexp.reduce(log_w)
        mixture = GaussianMixturePrior.create(np.ones(len(log_w)), means, post_covs, self.signal_shape, self.sde)
        return mixture.replace(log_weights=jnp.asarray(log_w, jnp.float32))

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        k_comp, k_z = jax.random.split(key)
        comp = jax.random.categorical(k_comp, self.log_weights, shape=(n,))
        z = jax.random.normal(k_z, (n, self.dim)) * jnp.sqrt(self.eigvals[comp])
        x = self.means[comp] + jnp.einsum("bkd,bd->bk", self.eigvecs[comp], z)
        return x.reshape((n,) + self.signal_shape)
