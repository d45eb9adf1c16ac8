"""Train a task end to end: the diffusion prior (if the workdir has none), then the APD flow.

    python train.py                                          # the embedded default: digits denoising
    python train.py --config configs/bunny_mnist_inpaint.py --workdir runs/bunny_mnist_inpaint
    python train.py --config configs/digits_denoise.py --config.flow.training.num_steps=500
    python train.py --config configs/digits.py --stage prior  # a prior only

Rerunning the same command resumes from the last checkpoints. At the end the sampler is evaluated on 16
held-out test measurements (`evaluate.py` without baselines): tables and a figure (truth, y, samples, mean,
std) in workdir/eval/.

From measurements alone (no clean signal in the flow stage; the prior must exist):

    python train.py --config configs/digits_denoise.py --stage flow --config.flow.training.measurements=y.npz

y.npz as `sample.py` reads it; the flow then has no ground truth to be evaluated on, so sample your
measurements with `python sample.py --workdir <workdir> --measurements y.npz`.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "digits_denoise.py")

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Experiment config file (configs/<task>.py).")
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config file name>).")
flags.DEFINE_enum("stage", "all", ["all", "prior", "flow"], "What to train: prior then flow, or one of them.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint write at INFO
    from apd.training.sharding import maybe_initialize_distributed

    maybe_initialize_distributed()
    import jax

    from apd.config_check import check_config

    from apd.data import load_dataset
    from apd.data.base import SignalsWithheld
    from apd.evaluation import run_evaluation
    from apd.eval.report import format_markdown, write_outputs
    from apd.training.flow import train_flow
    from apd.training.prior import load_prior, prior_exists, train_prior

    config = FLAGS.config
    sections = ["data"] + (["prior"] if FLAGS.stage != "flow" else [])
    if FLAGS.stage != "prior" and "flow" in config:
        sections += ["operator", "flow"]
    try:
        check_config(config, sections)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
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

    measurements = config.flow.training.get("measurements")
    if measurements:
        dataset = SignalsWithheld(dataset, "flow.training.measurements is set, so the flow stage uses no clean signal")
    try:
        train_flow(config, workdir, prior, dataset)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    if measurements:
        print(f"flow trained on {measurements}; sample it: python sample.py --workdir {workdir} --measurements "
              f"{measurements}")
    elif jax.process_index() == 0:
        results = run_evaluation(config, workdir, num_measurements=16, num_samples=128)
        paths = write_outputs(results, os.path.join(workdir, "eval"))
        print(format_markdown(results))
        print(f"posterior figure and tables: {os.path.dirname(paths['results.md'])}")


if __name__ == "__main__":
    app.run(main)
