"""Train a task end to end: the diffusion prior (if the workdir has none), then the APD flow.

    python train.py                                          # the embedded default: digits denoising
    python train.py --config configs/bunny_mnist_inpaint.py --workdir runs/bunny_mnist_inpaint
    python train.py --config configs/digits_denoise.py --config.flow.training.num_steps=500
    python train.py --config configs/digits.py --stage prior  # a prior only

Rerunning the same command resumes from the last checkpoints. At the end a posterior figure (truth, y,
samples, mean, std) of held-out test measurements and its PSNR summary are written to workdir/flow/.
"""
from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "digits_denoise.py")

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file (configs/<task>.py).")
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config file name>).")
flags.DEFINE_enum("stage", "all", ["all", "prior", "flow"], "What to train: prior then flow, or one of them.")
FLAGS = flags.FLAGS


def _display(op, y):
    """A measurement shown in the signal's shape: the pseudo-inverse where the operator has one."""
    return op.pinv(y) if hasattr(op, "pinv") else y


def posterior_summary(config, workdir, sampler, dataset, num_measurements=8, num_samples=128):
    """Figure and PSNR summary of the sampler on the first test measurements; returns the summary dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from apd.eval.figures import save_dataset_figure
    from apd.eval.metrics import psnr
    from apd.measurements import measure, split_key

    n = min(num_measurements, len(dataset.test))
    x = jnp.asarray(dataset.test[:n])
    ops, y = measure(sampler.family, split_key(config.seed, "test"), x, jnp.arange(n))
    operator = ops if sampler._needs_operator else None
    samples = sampler.sample(y, num_samples, jax.random.PRNGKey(config.seed), operator=operator)
    mean, std = jnp.mean(samples, axis=1), jnp.std(samples, axis=1)
    shown_y = jax.vmap(_display)(ops, y)
    summary = {
        "num_measurements": n,
        "num_samples": num_samples,
        "psnr_measurement": float(jnp.mean(psnr(jnp.clip(shown_y, 0, 1), x))) if shown_y.shape == x.shape else None,
        "psnr_1_sample": float(jnp.mean(psnr(samples[:, 0], x))),
        f"psnr_mean_{num_samples}": float(jnp.mean(psnr(mean, x))),
    }
    rows = [("truth", x), ("y", jnp.clip(shown_y, 0, 1))]
    rows += [(f"sample {i + 1}", jnp.clip(samples[:, i], 0, 1)) for i in range(min(3, num_samples))]
    rows += [(f"mean of {num_samples}", jnp.clip(mean, 0, 1)), ("std", std)]
    path = os.path.join(workdir, "flow", "posterior.png")
    save_dataset_figure(path, dataset, [(label, np.asarray(v)) for label, v in rows])
    with open(os.path.join(workdir, "flow", "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint write at INFO
    from apd.training.sharding import maybe_initialize_distributed

    maybe_initialize_distributed()
    import jax

    from apd.data import load_dataset
    from apd.sampler import Sampler
    from apd.training.flow import train_flow
    from apd.training.prior import load_prior, prior_exists, train_prior

    config = FLAGS.config
    config_name = os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
    workdir = FLAGS.workdir or os.path.join("runs", config_name)
    dataset = load_dataset(config.data)
    print(f"{config_name}: {dataset.name} {dataset.signal_shape}, train/val/test "
          f"{len(dataset.train)}/{len(dataset.val)}/{len(dataset.test)}; workdir {workdir}")

    if FLAGS.stage == "flow":
        if not prior_exists(workdir):
            raise SystemExit(f"no trained prior in {workdir}/prior: run with --stage prior (or all) first")
        prior = load_prior(workdir)
    else:
        prior = train_prior(config, workdir, dataset)
    if FLAGS.stage == "prior" or "flow" not in config:
        return

    flow, params = train_flow(config, workdir, prior, dataset)
    if jax.process_index() == 0:
        from apd.operators import make_operator_family

        sampler = Sampler(flow, params, make_operator_family(config.operator, dataset.signal_shape), config)
        summary = posterior_summary(config, workdir, sampler, dataset)
        print(json.dumps(summary, indent=2))
        print(f"posterior figure: {os.path.join(workdir, 'flow', 'posterior.png')}")


if __name__ == "__main__":
    app.run(main)
