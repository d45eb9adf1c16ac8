"""Compare the trained APD sampler with the baselines on held-out measurements of a task.

    python evaluate.py --config configs/digits_denoise.py --workdir runs/digits_denoise
    python evaluate.py --config configs/digits_denoise.py --baselines dps,mcg,ddrm,noise2score,pigdm,cpigdm,reddiff
    python evaluate.py --config configs/celeba32_sr2.py --baselines dps,ddrm --ood ffhq32
    python evaluate.py --config configs/digits_denoise.py --refine_steps 100    # adds the row 'APD refined'

Every method sees the same prior (workdir/prior), operators and measurements (the first --num_measurements
signals of --split). Baseline settings come from the config's optional section baselines.<name>, else the
module defaults; every baseline draws --baseline_samples samples per measurement and APD is shown at that K
too. Without a trained flow in the workdir only the baselines run. --refine_steps N adds APD refined on each
measurement by N steps of its objective before sampling (apd.refine): its times include the refinement and
its NFE counts the refinement's score evaluations (N * 64 * 2 * elbo_draws per measurement). Writes results.md,
.csv, .json, the signals, a figure and a calibration plot per measurement set to workdir/eval (or --out), only
once every method has run (files written beside and moved into place); see apd/evaluation.py for the protocol
and apd/eval/report.py for the files. A config whose operator differs from the one the flow was trained for is
refused unless --allow_operator_mismatch (recorded in the results). Errors in what was asked are one line
(`--verbose`: the traceback).
"""
from __future__ import annotations

import os
import shlex
import sys

from absl import flags, logging
from ml_collections import config_flags

from apd import cli
from apd.refine import LR

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "digits_denoise.py")

cli.define_config(DEFAULT_CONFIG)
flags.DEFINE_string("workdir", None, "Run directory with prior/ and flow/ (default: runs/<config file name>).")
flags.DEFINE_list("split", ["test"], "Held-out split(s) whose first signals are measured: test, val or test,val.")
flags.DEFINE_integer("num_measurements", 16, "Measurements per set.")
flags.DEFINE_integer("num_samples", 128, "APD samples per measurement (K).")
flags.DEFINE_list("baselines", [], "Comma-separated baselines: dps, mcg, pigdm, cpigdm, ddrm, reddiff, noise2score, flow.")
flags.DEFINE_integer("baseline_samples", 32, "Samples per measurement for each baseline (APD is also shown at this K).")
flags.DEFINE_list("baseline_samples_for", [], "Per-baseline sample counts overriding --baseline_samples, as "
                  "name=K (e.g. dps=1,mcg=1 for 1000-step samplers on CPU); noted in results.json.")
flags.DEFINE_integer("flow_step", None, "Flow checkpoint to evaluate (default: the latest); recorded in results.json.")
flags.DEFINE_enum("ood", None, ["ffhq32"], "Also measure this out-of-distribution data set (CelebA tasks).")
flags.DEFINE_string("out", None, "Output folder (default: <workdir>/eval).")
flags.DEFINE_string("cache_dir", None, "Baseline runs saved as they finish and reused by a rerun with the same "
                    "settings (default: <workdir>/eval_cache; 'none' to disable).")
flags.DEFINE_bool("allow_operator_mismatch", False, "Evaluate the flow with the config's operator even when it was "
                  "trained for another (recorded in results.json).")
flags.DEFINE_integer("refine_steps", 0, "Also evaluate APD refined on each measurement by this many steps of its "
                     "objective (0: off).")
flags.DEFINE_float("refine_lr", LR, "Adam learning rate of the refinement.")
flags.DEFINE_bool("baseline_time_128", True, "Time each baseline's 128 draws of one measurement (two full runs: "
                  "--nobaseline_time_128 skips it for 1000-step samplers on CPU; noted in results.json).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint read at INFO
    from apd.config_check import check_config
    from apd.evaluation import run_evaluation
    from apd.eval.report import markdown_table, write_outputs

    config_name = os.path.splitext(os.path.basename(config_flags.get_config_filename(FLAGS["config"])))[0]
    workdir = FLAGS.workdir or os.path.join("runs", config_name)
    check_config(FLAGS.config, ("data", "operator"))
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"workdir {workdir} is a file, not a folder")
    results = run_evaluation(
        FLAGS.config,
        workdir,
        FLAGS.baselines,
        split=FLAGS.split,
        num_measurements=FLAGS.num_measurements,
        num_samples=FLAGS.num_samples,
        baseline_samples=FLAGS.baseline_samples,
        ood=FLAGS.ood,
        flow_step=FLAGS.flow_step,
        refine_steps=FLAGS.refine_steps,
        refine_lr=FLAGS.refine_lr,
        cache_dir=None if FLAGS.cache_dir == "none" else FLAGS.cache_dir or os.path.join(workdir, "eval_cache"),
        allow_operator_mismatch=FLAGS.allow_operator_mismatch,
        baseline_time_128=FLAGS.baseline_time_128,
        samples_for=cli.name_counts(FLAGS.baseline_samples_for, "--baseline_samples_for"),
    )
    results["command"] = shlex.join(["python"] + sys.argv)
    out = FLAGS.out or os.path.join(workdir, "eval")
    paths = write_outputs(results, out)
    for name, entry in results["sets"].items():
        print(f"\n{name}: {entry['num_measurements']} measurements of {entry['dataset'].name}")
        print(markdown_table(entry["rows"]) if entry["rows"] else "(no method ran)")
    print(f"\nwritten to {out}: {', '.join(sorted(paths))}")


if __name__ == "__main__":
    cli.run(main)
