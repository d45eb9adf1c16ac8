"""Optimiser (clipped Adam with linear warm-up), the exponential moving average of parameters, and the
training state every loop in apd checkpoints: a dict with params, ema_params, opt_state, step, rng.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(cfg) -> optax.Schedule:
    """lr(step): linear from 0 at step 0 to cfg.lr at cfg.warmup_steps, then constant, or with
    cfg.cosine_decay (optional, default False) a cosine decay to 0 at cfg.num_steps."""
    if cfg.warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {cfg.warmup_steps}")
    if cfg.get("cosine_decay", False):
        after = optax.cosine_decay_schedule(cfg.lr, max(cfg.num_steps - cfg.warmup_steps, 1))
    else:
        after = optax.constant_schedule(cfg.lr)
    if cfg.warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, after], [cfg.warmup_steps])


def make_optimizer(cfg) -> optax.GradientTransformation:
    """Clip the global gradient norm to cfg.grad_clip, then Adam at `learning_rate_schedule(cfg)`.

    cfg needs lr, warmup_steps, grad_clip (any training ConfigDict with these fields).
    """
    if cfg.grad_clip <= 0:
        raise ValueError(f"grad_clip must be positive, got {cfg.grad_clip}")
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), optax.adam(learning_rate_schedule(cfg)))


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """decay * ema + (1 - decay) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def init_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> dict:
    """{params, ema_params (a copy of params), opt_state, step (int32 0), rng (a raw uint32 key)}."""
    return {
        "params": params,
        "ema_params": jax.tree.map(jnp.copy, params),
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": rng,
    }


def all_finite(*trees: Any) -> jax.Array:
    """A 0-d bool array: whether every entry of every array in `trees` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)]))


def apply_gradients(
    state: dict,
    grads: Any,
    tx: optax.GradientTransformation,
    ema_decay: float,
    rng: jax.Array,
    finite: jax.Array | None = None,
) -> dict:
    """One optimiser step on state["params"], the EMA after it, step + 1, and the next key `rng`.

    finite: a 0-d bool (e.g. `all_finite(loss, grads)`); where it is False the step is skipped: params,
    ema_params and opt_state stay exactly as they were, while step and rng still advance (the next step draws
    a new batch and new noise).
    """
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {"params": params, "ema_params": ema_update(state["ema_params"], params, ema_decay), "opt_state": opt_state}
    if finite is not None:
        new = jax.tree.map(lambda n, old: jnp.where(finite, n, old), new, {k: state[k] for k in new})
    return {**new, "step": state["step"] + 1, "rng": rng}
