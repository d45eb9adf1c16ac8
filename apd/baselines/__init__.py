"""Baseline posterior samplers (METHODS.md), one module per method, each with

    solve(prior, operator, y, key, **settings) -> (samples (N, *S), nfe)

for a batch of N measurements y (N, *measurement_shape) and a batch of N operators (leading axis N, e.g.
`broadcast_operator(op, N)`): one sample per measurement, measurement i drawn with fold_in(key, i), so a
measurement gives the same sample alone or inside any batch. Each module compiles once per shape and per
structural setting (step count, flags); continuous weights (zeta, eta, lr, ...) are traced, so tuning them does
not recompile. Modules are imported on first use.
"""
from __future__ import annotations

import importlib
from types import ModuleType

BASELINES = {
    "dps": "apd.baselines.dps",
    "mcg": "apd.baselines.mcg",
    "pigdm": "apd.baselines.pigdm",
    "cpigdm": "apd.baselines.cpigdm",
    "ddrm": "apd.baselines.ddrm",
    "reddiff": "apd.baselines.reddiff",
    "noise2score": "apd.baselines.noise2score",
    "flow": "apd.baselines.flow",
}

# Operator features each method needs (METHODS 10); see common.has_feature.
_REQUIREMENTS = {
    "dps": (),  # A only, A^T by autodiff
    "mcg": ("linear", "pinv"),  # A, A^+ and the projector P = A^+ A
    "pigdm": ("linear", "pinv"),  # noisy y: also the SVD (or a solve)
    "cpigdm": ("linear", "pinv"),  # exactly idempotent P
    "ddrm": ("linear", "svd"),
    "reddiff": ("pinv",),  # A, A^T by autodiff, A^+ for the initialisation
    "noise2score": ("denoise",),  # A = I only
    "flow": (),  # A only
}


def _check(name: str) -> None:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(sorted(BASELINES))}")


def get_baseline(name: str) -> ModuleType:
    """The module of baseline `name`; call its solve(prior, operator, y, key, **settings)."""
    _check(name)
    return importlib.import_module(BASELINES[name])


def requirements(name: str) -> tuple[str, ...]:
    """Operator features baseline `name` needs: a subset of 'linear', 'pinv', 'svd', 'denoise'."""
    _check(name)
    return _REQUIREMENTS[name]


__all__ = ["BASELINES", "get_baseline", "requirements"]
