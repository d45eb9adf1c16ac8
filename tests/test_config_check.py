"""Config checks before any work: every shipped config passes; each bad setting is named, all at once; the
command lines exit 1 with one line and write nothing."""
import glob
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from apd.config_check import check_config, config_problems
from apd.data import DATA_OPTIONS
from configs import digits_denoise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, "configs", "*.py")))


@pytest.mark.parametrize("name", [c for c in CONFIGS if c not in ("__init__", "defaults")])
def test_shipped_configs_pass(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    sections = ["data", "prior"] + (["operator", "flow"] if "flow" in config else [])
    assert config_problems(config, sections) == []


@pytest.mark.parametrize(
    "path, value, problem",
    [
        (("operator", "noise_std"), -0.1, "operator.noise_std must be a number > 0"),
        (("operator", "noise_std"), 0.0, "operator.noise_std must be a number > 0"),
        (("operator", "name"), "foo", "operator.name 'foo' is unknown; known: denoise, inpaint"),
        (("flow", "training", "fit_output"), "clean", "flow.training.fit_output must be one of"),
        (("flow", "training", "num_steps"), 0, "flow.training.num_steps must be a positive integer, got 0"),
        (("flow", "training", "eval_every"), 150, "flow.training.eval_every 150 must be a multiple of log_every 100"),
        (("prior", "training", "lr"), -1e-3, "prior.training.lr must be a number > 0, got -0.001"),
        (("data", "name"), "cifar", "data.name 'cifar' is unknown"),
        (("data", "max_train"), 0, "data.max_train must be a positive integer, got 0"),
        (("data", "source"), "tfds", "data.source is not an option of digits; options: path, max_train, max_eval"),
        (("flow", "training", "measurements"), "/no/y.npz", "flow.training.measurements /no/y.npz does not exist"),
        (("flow", "training", "forward_kl_steps"), 4000, "flow.training.forward_kl_steps 4000 must be below num_steps"),
        (("flow", "training", "prior_gradient"), "tweedie", "flow.training.prior_gradient must be one of"),
        (("flow", "training", "score_time"), 0.0, "flow.training.score_time must be in (0, 1]"),
    ],
)
def test_each_bad_setting_is_named(path, value, problem):
    config = digits_denoise.get_config()
    section = config
    for key in path[:-1]:
        section = section[key]
    section[path[-1]] = value
    problems = config_problems(config)
    assert len(problems) == 1 and problems[0].startswith(problem)


def test_forward_kl_warm_start_needs_prior_samples():
    config = digits_denoise.get_config()
    config.flow.training.update(dict(prior_signals=0, forward_kl_steps=100))
    assert config_problems(config) == [
        "flow.training.forward_kl_steps draws its pairs from prior samples: set flow.training.prior_signals > 0 "
        "(training on clean signals, not a measurement file)"]


def test_inpainting_fractions_and_all_problems_at_once():
    config = digits_denoise.get_config()
    config.operator = dict(name="inpaint", noise_std=-1.0, hidden_fraction=1.5, mask_seed=0)
    config.flow.training.num_z = 0
    with pytest.raises(ValueError) as err:
        check_config(config)
    message = str(err.value)
    assert message.startswith("invalid config: ") and "\n" not in message
    for part in ("operator.noise_std", "operator.hidden_fraction must be in [0, 1), got 1.5", "flow.training.num_z"):
        assert part in message


def test_files_named_by_operator_and_flow(tmp_path):
    np.save(tmp_path / "y.npy", np.zeros((2, 8, 8, 1)))
    config = digits_denoise.get_config()
    config.operator = dict(name="inpaint", noise_std=0.1, mask_file=str(tmp_path / "m.npy"), per_measurement=True)
    config.flow.model.estimate = "pinv"
    config.flow.training.measurements = str(tmp_path / "y.npy")
    config.flow.training.fit_output = "data"
    assert config_problems(config, ["operator", "flow"]) == [
        f"operator.mask_file {tmp_path / 'm.npy'} does not exist",
        "operator.mask_file gives one shared mask; per_measurement draws one per measurement: set only one",
        "flow.training.fit_output='data' fits clean signals, which training from flow.training.measurements does "
        "not use: use 'prior' or 'none'",
    ]
    config.operator = dict(name="deblur", noise_std=0.1, kernel_file=str(tmp_path / "k.npy"))
    assert config_problems(config, ["operator"]) == [f"operator.kernel_file {tmp_path / 'k.npy'} does not exist"]


_DATA_OPTIONS_SCRIPT = """
import json, sys
from absl import flags
from ml_collections import config_flags
from apd.config_check import config_problems
names = sys.argv[1].split(",")
for name in names:
    config_flags.DEFINE_config_file("c_" + name, "configs/" + name + ".py")
flags.FLAGS(sys.argv[1:2] + sys.argv[2:])
out = {n: [dict(getattr(flags.FLAGS, "c_" + n).data), config_problems(getattr(flags.FLAGS, "c_" + n), ["data"])]
       for n in names}
print(json.dumps(out))
"""


def test_every_data_option_is_settable_from_the_command_line():
    """Every option of each task's data set is declared (typed, with its default) and takes a command-line value."""
    names = [c for c in CONFIGS if c not in ("__init__", "defaults")]
    values = {"path": "/data/x.npz", "mnist_path": "/data/mnist.npz", "tfds_dir": "/tfds", "source": "tfds",
              "max_train": "5", "max_eval": "3", "include_pressure_levels": "true", "vertex_order": "walk"}
    args = []
    for name in names:
        options = DATA_OPTIONS[importlib.import_module(f"configs.{name}").get_config().data.name]
        args += [f"--c_{name}.data.{k}={values[k]}" for k in options]
    run = subprocess.run([sys.executable, "-c", _DATA_OPTIONS_SCRIPT, ",".join(names), *args], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    for name, (data, problems) in json.loads(run.stdout.strip().splitlines()[-1]).items():
        assert sorted(data) == sorted(["name", *DATA_OPTIONS[data["name"]]]) and problems == [], name
        assert data["max_eval"] == 3 and data["path"] == "/data/x.npz", name
        assert data.get("source", "tfds") == "tfds" and data.get("max_train", 5) == 5, name


def test_command_line_refuses_a_bad_config_before_any_work(tmp_path):
    workdir = tmp_path / "run"
    run = subprocess.run(
        [sys.executable, "train.py", f"--workdir={workdir}", "--config.operator.noise_std=-0.1",
         "--config.operator.name=foo"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 1 and not workdir.exists()
    lines = run.stderr.strip().splitlines()
    assert lines[-1] == "error: invalid config: operator.name 'foo' is unknown; known: denoise, inpaint, impute, " \
        "inpaint_blind, inpaint_box, sr, deblur, saturate"


def test_prior_only_training_needs_prior_samples():
    config = digits_denoise.get_config()
    config.flow.training.update(dict(prior_signals=0, data_signals=False))
    assert config_problems(config) == [
        "flow.training.data_signals=False trains on prior samples alone: set flow.training.prior_signals > 0 "
        "(training on signals, not a measurement file)"]
