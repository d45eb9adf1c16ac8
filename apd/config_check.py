"""Checks of an experiment config before any work starts: every problem is found at once and reported in one
line, so a bad setting never costs a training stage first.

    check_config(config, ("data", "prior", "operator", "flow"))   # raises ValueError('invalid config: ...; ...')

Sections: 'data' (a known data set, only its declared options, caps and source valid), 'prior' (prior.training
sizes), 'operator' (a known operator with settings in range, its mask or kernel file present), 'flow'
(flow.training sizes and options, its measurement file present). Shapes that depend on the data (an SR factor that divides
the image) are checked where the operator is built.
"""
from __future__ import annotations

import math
import os
from typing import Iterable

import jax

from apd.data import DATA_OPTIONS, DATASETS, SOURCES
from apd.data.mesh_order import ORDERS
from apd.operators import OPERATOR_NAMES
from apd.objective import ESTIMATES, PRIOR_GRADIENTS
from apd.training.flow import FIT_OUTPUT_MODES

SECTIONS = ("data", "prior", "operator", "flow")


def _number(value) -> float | None:
    """value as a finite float, or None when it is not a finite number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _positive_ints(section, prefix: str, names: Iterable[str]) -> list[str]:
    problems = []
    for name in names:
        value = section.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{prefix}.{name} must be a positive integer, got {value!r}")
    return problems


def _positive_numbers(section, prefix: str, names: Iterable[str], why: str = "") -> list[str]:
    """Problems of the named fields that are not finite numbers > 0."""
    return [
        f"{prefix}.{name} must be a number > 0{why}, got {section.get(name)!r}"
        for name in names
        if (_number(section.get(name)) or 0.0) <= 0
    ]


def _training_problems(section, prefix: str) -> list[str]:
    """Sizes shared by the prior and flow loops: steps, batch, intervals, learning rate, warm-up."""
    if section is None:
        return [f"{prefix} is missing"]
    sizes = ("num_steps", "batch_size", "log_every", "ckpt_every", "keep_checkpoints", "max_bad_steps")
    problems = _positive_ints(section, prefix, sizes)
    problems += _positive_numbers(section, prefix, ("lr",))
    warmup = section.get("warmup_steps", 0)
    if not isinstance(warmup, int) or warmup < 0:
        problems.append(f"{prefix}.warmup_steps must be an integer >= 0, got {warmup!r}")
    batch = section.get("batch_size")
    devices = jax.device_count()
    if isinstance(batch, int) and batch > 0 and batch % devices:
        problems.append(f"{prefix}.batch_size {batch} must be divisible by the {devices} devices it is sharded over")
    return problems


def _data_problems(data) -> list[str]:
    name = None if data is None else data.get("name")
    if name not in DATASETS:
        return [f"data.name {name!r} is unknown; known: {', '.join(DATASETS)}"]
    options = DATA_OPTIONS[name]
    problems = [f"data.{key} is not an option of {name}; options: {', '.join(options)}"
                for key in data if key != "name" and key not in options]
    problems += _positive_ints(data, "data", [k for k in ("max_train", "max_eval") if k in options])
    if "source" in options and data.get("source", "file") not in SOURCES:
        problems.append(f"data.source must be one of {SOURCES}, got {data.get('source')!r}")
    if "vertex_order" in options and data.get("vertex_order", "file") not in ORDERS:
        problems.append(f"data.vertex_order must be one of {ORDERS}, got {data.get('vertex_order')!r}")
    return problems


def _file_problem(section, prefix: str, key: str) -> list[str]:
    """A problem when section.key names a file that does not exist."""
    path = section.get(key)
    if path and not os.path.isfile(os.path.expanduser(str(path))):
        return [f"{prefix}.{key} {path} does not exist"]
    return []


def _operator_problems(op) -> list[str]:
    if op is None:
        return ["operator is missing (the flow stage and evaluation need one)"]
    name = op.get("name")
    if name not in OPERATOR_NAMES:
        return [f"operator.name {name!r} is unknown; known: {', '.join(OPERATOR_NAMES)}"]
    problems = _positive_numbers(op, "operator", ("noise_std",), " (the likelihood needs noise)")

    def fraction(key: str) -> float | None:
        value = _number(op.get(key))
        if value is None or not 0 <= value < 1:
            problems.append(f"operator.{key} must be in [0, 1), got {op.get(key)!r}")
            return None
        return value

    if name in ("inpaint", "impute") and op.get("mask_file"):
        problems += _file_problem(op, "operator", "mask_file")
        if op.get("per_measurement", False):
            problems.append("operator.mask_file gives one shared mask; per_measurement draws one per measurement: "
                            "set only one")
    elif name in ("inpaint", "impute"):
        fraction("hidden_fraction")
    elif name == "inpaint_blind":
        low, high = fraction("hidden_min"), fraction("hidden_max")
        if low is not None and high is not None and low > high:
            problems.append(f"operator.hidden_min {low} must not exceed hidden_max {high}")
    elif name == "sr":
        problems += _positive_ints(op, "operator", ("factor",))
    elif name == "deblur" and op.get("kernel_file"):
        problems += _file_problem(op, "operator", "kernel_file")
    elif name == "deblur":
        size = op.get("kernel_size")
        if not isinstance(size, int) or size < 1 or size % 2 == 0:
            problems.append(f"operator.kernel_size must be a positive odd integer, got {size!r}")
        problems += _positive_numbers(op, "operator", ("width",))
    elif name == "saturate":
        problems += _positive_numbers(op, "operator", ("gain",))
    return problems


def _flow_problems(flow) -> list[str]:
    if flow is None:
        return ["flow is missing"]
    training = flow.get("training")
    problems = _training_problems(training, "flow.training")
    if training is None:
        return problems
    problems += _positive_ints(training, "flow.training", ("num_z", "elbo_draws", "eval_every", "eval_num_samples"))
    prior_signals = training.get("prior_signals", 0)
    if not isinstance(prior_signals, int) or prior_signals < 0:
        problems.append(f"flow.training.prior_signals must be a whole number >= 0, got {prior_signals!r}")
    if not training.get("data_signals", True) and (not isinstance(prior_signals, int) or prior_signals <= 0
                                                   or training.get("measurements")):
        problems.append("flow.training.data_signals=False trains on prior samples alone: set "
                        "flow.training.prior_signals > 0 (training on signals, not a measurement file)")
    warm = training.get("forward_kl_steps", 0)
    if not isinstance(warm, int) or warm < 0:
        problems.append(f"flow.training.forward_kl_steps must be a whole number >= 0, got {warm!r}")
    elif warm and (not isinstance(prior_signals, int) or prior_signals <= 0 or training.get("measurements")):
        problems.append("flow.training.forward_kl_steps draws its pairs from prior samples: set "
                        "flow.training.prior_signals > 0 (training on clean signals, not a measurement file)")
    elif warm and isinstance(training.get("num_steps"), int) and warm >= training.num_steps:
        problems.append(f"flow.training.forward_kl_steps {warm} must be below num_steps {training.num_steps}")
    gradient = training.get("prior_gradient", "elbo")
    if gradient not in PRIOR_GRADIENTS:
        problems.append(f"flow.training.prior_gradient must be one of {PRIOR_GRADIENTS}, got {gradient!r}")
    score_time = training.get("score_time", 0.01)
    if not isinstance(score_time, (int, float)) or not 0 < score_time <= 1:
        problems.append(f"flow.training.score_time must be in (0, 1], got {score_time!r}")
    mode = training.get("fit_output", "prior")
    if mode not in FIT_OUTPUT_MODES:
        problems.append(f"flow.training.fit_output must be one of {FIT_OUTPUT_MODES}, got {mode!r}")
    if training.get("measurements"):
        problems += _file_problem(training, "flow.training", "measurements")
        if mode == "data":
            problems.append("flow.training.fit_output='data' fits clean signals, which training from "
                            "flow.training.measurements does not use: use 'prior' or 'none'")
    log_every, eval_every = training.get("log_every"), training.get("eval_every")
    if isinstance(log_every, int) and isinstance(eval_every, int) and log_every > 0 and eval_every % log_every:
        problems.append(f"flow.training.eval_every {eval_every} must be a multiple of log_every {log_every}")
    return problems


WIENER_OPERATORS = ("denoise", "sr", "deblur", "inpaint", "impute", "inpaint_box")  # one fixed linear operator


def _estimate_problems(config) -> list[str]:
    """flow.model.estimate: a known one; the prior's Tweedie estimate only for denoising, the Wiener estimate
    (a gain fitted for one operator) only for a task with one fixed linear operator."""
    model = (config.get("flow") or {}).get("model") or {}
    estimate = model.get("estimate", "pinv")
    if estimate not in ESTIMATES:
        return [f"flow.model.estimate must be one of {ESTIMATES}, got {estimate!r}"]
    operator = (config.get("operator") or {}).get("name")
    if estimate == "tweedie" and operator in OPERATOR_NAMES and operator != "denoise":  # unknown ones: named above
        return [f"flow.model.estimate='tweedie' is the prior's denoiser: it needs operator 'denoise', not {operator!r}"]
    per_measurement = bool((config.get("operator") or {}).get("per_measurement", False))
    if estimate == "wiener" and operator in OPERATOR_NAMES and (operator not in WIENER_OPERATORS or per_measurement):
        return [f"flow.model.estimate='wiener' needs one fixed linear operator ({', '.join(WIENER_OPERATORS)}, "
                f"without per_measurement), not {operator!r}" + (" with per_measurement" if per_measurement else "")]
    return []


def config_problems(config, sections: Iterable[str] = SECTIONS) -> list[str]:
    """Every problem of the named sections of config, one sentence each (empty when the config is sound)."""
    sections = tuple(sections)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown config sections {unknown}; known: {SECTIONS}")
    problems = []
    if "data" in sections:
        problems += _data_problems(config.get("data"))
    if "prior" in sections:
        prior = config.get("prior")
        problems += _training_problems(None if prior is None else prior.get("training"), "prior.training")
    if "operator" in sections:
        problems += _operator_problems(config.get("operator"))
    if "flow" in sections:
        problems += _flow_problems(config.get("flow"))
        problems += _estimate_problems(config)
    return problems


def check_config(config, sections: Iterable[str] = SECTIONS) -> None:
    """Raise ValueError('invalid config: <problem>; <problem>; ...') when config_problems finds any."""
    problems = config_problems(config, sections)
    if problems:
        raise ValueError("invalid config: " + "; ".join(problems))
