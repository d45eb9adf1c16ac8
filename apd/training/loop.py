"""The step loop shared by prior and flow training: batches, averaged metrics, checkpoints, progress bar."""
from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from apd.training.checkpoint import CONFIG_FILE, Checkpointer
from apd.training.metrics_log import MetricsWriter
from apd.optim import learning_rate_schedule


def batch_indices(n: int, seed: int, stream: int, step: int, batch_size: int) -> np.ndarray:
    """This process's rows of the global batch of `step`, drawn with replacement from n; the same on resume.

    stream separates the draws of different loops run with one seed.
    """
    idx = np.random.default_rng([seed, stream, step]).integers(0, n, size=batch_size)
    per_process = batch_size // jax.process_count()
    start = jax.process_index() * per_process
    return idx[start : start + per_process]


MAX_BAD_STEPS = 10  # default of training.max_bad_steps


class TrainingStopped(RuntimeError):
    """A run stopped on purpose (too many consecutive non-finite steps); its last checkpoint is intact."""


def _window_means(window: list[dict]) -> dict:
    """Means of the metrics over the window's good steps; 'skipped' becomes the count 'skipped_steps'."""
    values = {k: np.array([float(jax.device_get(m[k])) for m in window]) for k in window[0]}
    skipped = values.pop("skipped", np.zeros(len(window)))
    good = skipped == 0
    logged = {k: float(np.mean(v[good])) if good.any() else float("nan") for k, v in values.items()}
    logged["skipped_steps"] = float(np.sum(skipped))
    return logged


def _stop_message(desc: str, bad_run: int, last: int, max_bad: int, checkpointer: Checkpointer) -> str:
    latest = checkpointer.latest_step()  # waits for a pending save
    kept = "no checkpoint was saved" if latest is None else f"the last checkpoint, step {latest}, is intact"
    return (f"{desc}: {bad_run} consecutive steps ({last - bad_run + 1} to {last}) had a non-finite loss or gradient "
            f"and were skipped (training.max_bad_steps = {max_bad}); stopped: {kept} in {checkpointer.directory}; "
            "lower the learning rate or check the data")


def run_steps(
    state: dict,
    step_fn: Callable[..., tuple[dict, dict]],
    batch_fn: Callable[[int], tuple],
    training_cfg,
    checkpointer: Checkpointer,
    logdir: str,
    desc: str,
    extra_metrics: Callable[[int, dict], dict] | None = None,
) -> dict:
    """Run step_fn(state, *batch_fn(step)) from state["step"] to training_cfg.num_steps.

    Every log_every steps the metrics are averaged over the window's good steps, the count of skipped steps
    (metric 'skipped' of step_fn: a non-finite loss or gradient, parameters left alone) logged as
    skipped_steps, the learning rate and extra_metrics(done, state) (e.g. validation PSNR) added, and written
    to logdir (JSONL and TensorBoard, main process only); every ckpt_every steps and at the end the state is
    checkpointed. After training_cfg.max_bad_steps (default 10) consecutive skipped steps the run raises
    TrainingStopped, saving nothing more: the last checkpoint stays as it was. Data order and the state's key
    depend only on the step, so a run resumed from a checkpoint continues bit for bit. Returns the final state.
    """
    is_main = jax.process_index() == 0
    schedule = learning_rate_schedule(training_cfg)
    max_bad = int(training_cfg.get("max_bad_steps", MAX_BAD_STEPS))
    start, total = int(state["step"]), int(training_cfg.num_steps)
    writer = MetricsWriter(logdir, resume_step=start) if is_main else None
    window: list[dict] = []
    bad_run, previous = 0, None  # consecutive skipped steps; the 'skipped' flag of the step before
    try:
        with tqdm(total=total, initial=start, desc=desc, disable=not is_main) as bar:
            for step in range(start, total):
                state, metrics = step_fn(state, *batch_fn(step))
                window.append(metrics)
                done = step + 1
                if previous is not None:  # read one step late, so that the device runs ahead of the host
                    bad_run = bad_run + 1 if float(jax.device_get(previous)) else 0
                    if bad_run >= max_bad:
                        raise TrainingStopped(_stop_message(desc, bad_run, step, max_bad, checkpointer))
                previous = metrics.get("skipped")
                if done % training_cfg.log_every == 0 or done == total:
                    logged = _window_means(window)
                    logged["lr"] = float(schedule(step))
                    window = []
                    if extra_metrics is not None:
                        logged.update(extra_metrics(done, state))
                    bar.set_postfix({k: f"{v:.4g}" for k, v in logged.items() if k == "loss" or k.startswith("val_")})
                    if writer is not None:
                        writer.write(done, logged)
                if done % training_cfg.ckpt_every == 0 or done == total:
                    checkpointer.save(done, state)
                bar.update(1)
    finally:  # also on an error or Ctrl-C: a checkpoint being written is completed
        checkpointer.close()
        if writer is not None:
            writer.close()
    return state


def has_checkpoint(run_dir: str, checkpoint_dir: str) -> bool:
    """Whether run_dir holds a saved config and checkpoint_dir at least one checkpoint."""
    if not (os.path.exists(os.path.join(run_dir, CONFIG_FILE)) and os.path.isdir(checkpoint_dir)):
        return False
    checkpointer = Checkpointer(checkpoint_dir, 1)
    latest = checkpointer.latest_step()
    checkpointer.close()
    return latest is not None
