"""Train a task end to end: the diffusion prior (if the workdir has none), then the APD flow.

    python train.py                                          # the embedded default: digits denoising
    python train.py --config configs/bunny_mnist_inpaint.py --workdir runs/bunny_mnist_inpaint
    python train.py --config configs/digits_denoise.py --config.flow.training.num_steps=500
    python train.py --config configs/digits.py --stage prior  # a prior only

Rerunning the same command resumes from the last checkpoints; settings that change what was trained are refused
then, and when the latest checkpoint is damaged the command names the newest intact one, from which
`--stage <prior|flow> --resume_from=STEP` continues. Errors in what was asked are one line (`--verbose`: the
traceback). At the end the sampler is evaluated on 16 held-out test measurements (`evaluate.py` without
baselines): tables and a figure (truth, y, samples, mean, std) in workdir/eval/.

From measurements alone (no clean signal in the flow stage; the prior must exist):

    python train.py --config configs/digits_denoise.py --stage flow --config.flow.training.measurements=y.npz

y.npz as `sample.py` reads it; the flow then has no ground truth to be evaluated on, so sample your
measurements with `python sample.py --workdir <workdir> --measurements y.npz`.
"""
from __future__ import annotations

import os

from absl import flags, logging
from ml_collections import config_flags

from apd import cli

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "digits_denoise.py")

cli.define_config(DEFAULT_CONFIG)
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config file name>).")
flags.DEFINE_enum("stage", "all", ["all", "prior", "flow"], "What to train: prior then flow, or one of them.")
flags.DEFINE_integer("resume_from", None, "Resume --stage (prior or flow) from this checkpoint step, moving later "
                     "ones aside (after a damaged latest checkpoint).")
FLAGS = flags.FLAGS


def _resume_hint(err) -> str:
    """The one-line report of a damaged checkpoint, with the command that continues from the intact one."""
    stage = os.path.basename(os.path.dirname(err.directory))
    if err.intact is None:
        return str(err)
    return f"{err}: rerun with --stage {stage} --resume_from={err.intact} to continue from it"


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint write at INFO
    if FLAGS.resume_from is not None and FLAGS.stage == "all":
        raise ValueError("--resume_from needs --stage prior or --stage flow: the stage whose checkpoint it names")
    from apd.training.sharding import maybe_initialize_distributed

    maybe_initialize_distributed()
    import jax

    from apd.config_check import check_config

    from apd.data import load_dataset
    from apd.data.base import SignalsWithheld
    from apd.evaluation import run_evaluation
    from apd.eval.report import format_markdown, write_outputs
    from apd.training.checkpoint import CheckpointError, check_resume_config
    from apd.training.flow import FLOW_SECTIONS, flow_dir, flow_record, train_flow
    from apd.training.prior import PRIOR_SECTIONS, load_prior, prior_dir, prior_exists, train_prior

    config = FLAGS.config
    sections = ["data"] + (["prior"] if FLAGS.stage != "flow" else [])
    train_flow_stage = FLAGS.stage != "prior" and "flow" in config
    if train_flow_stage:
        sections += ["operator", "flow"]
    check_config(config, sections)
    config_name = os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
    workdir = FLAGS.workdir or os.path.join("runs", config_name)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"workdir {workdir} is a file, not a folder")
    if FLAGS.stage != "flow":
        check_resume_config(prior_dir(workdir), config, PRIOR_SECTIONS)
    if train_flow_stage:
        check_resume_config(flow_dir(workdir), flow_record(config), FLOW_SECTIONS)
    dataset = load_dataset(config.data)
    print(f"{config_name}: {dataset.name} {dataset.signal_shape}, train/val/test "
          f"{len(dataset.train)}/{len(dataset.val)}/{len(dataset.test)}; workdir {workdir}")

    measurements = train_flow_stage and config.flow.training.get("measurements")
    try:
        if FLAGS.stage == "flow":
            if not prior_exists(workdir):
                raise FileNotFoundError(f"no trained prior in {workdir}/prior: run with --stage prior (or all) first")
            prior = load_prior(workdir)
        else:
            prior = train_prior(config, workdir, dataset, resume_from=FLAGS.resume_from)
        if not train_flow_stage:
            return
        if measurements:
            dataset = SignalsWithheld(dataset, "flow.training.measurements is set, so the flow stage uses no clean "
                                      "signal")
        train_flow(config, workdir, prior, dataset, resume_from=FLAGS.resume_from)
    except CheckpointError as err:
        if FLAGS.verbose:
            raise
        cli.fail(_resume_hint(err))
    if measurements:
        print(f"flow trained on {measurements}; sample it: python sample.py --workdir {workdir} --measurements "
              f"{measurements}")
    elif jax.process_index() == 0:
        results = run_evaluation(config, workdir, num_measurements=16, num_samples=128)
        paths = write_outputs(results, os.path.join(workdir, "eval"))
        print(format_markdown(results))
        print(f"posterior figure and tables: {os.path.dirname(paths['results.md'])}")


if __name__ == "__main__":
    cli.run(main)
