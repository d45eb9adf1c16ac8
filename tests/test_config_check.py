"""Config checks before any work: every shipped config passes; each bad setting is named, all at once; the
command lines exit 1 with one line and write nothing."""
import glob
import importlib
import os
import subprocess
import sys

import pytest

from apd.config_check import check_config, config_problems
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
