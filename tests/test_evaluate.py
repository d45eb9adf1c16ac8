"""The evaluation protocol and its reports on a tiny trained digits workdir (prior and flow, 20 steps each):
rows and metrics recomputed from the saved signals, seeds that reproduce APD's samples, files written,
skipped baselines, a workdir without flow, one without prior, and the command line."""
import csv
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import ml_collections
import numpy as np
import pytest

from apd.data import load_dataset
from apd.eval.metrics import psnr, ssim
from apd.evaluation import measurement_set, run_evaluation
from apd.eval.report import format_markdown, write_outputs
from apd.measurements import split_key
from apd.sampler import load_sampler
from apd.training.flow import train_flow
from apd.training.prior import train_prior
from configs import digits_denoise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, K = 4, 8


def _config():
    config = digits_denoise.get_config()
    config.prior.model = ml_collections.ConfigDict(dict(name="mlp", width=32, num_blocks=1))
    config.prior.training.update(
        dict(num_steps=20, batch_size=16, warmup_steps=0, log_every=10, ckpt_every=20, num_samples=2, sample_steps=2)
    )
    config.flow.model.update(dict(num_couplings=2, width=32, depth=1))
    config.flow.training.update(
        dict(num_steps=20, batch_size=8, num_z=1, warmup_steps=0, log_every=10, eval_every=10_000, ckpt_every=20,
             eval_num_measurements=0)  # no validation pass: one compilation fewer
    )
    config.baselines = ml_collections.ConfigDict({"ddrm": {"num_steps": 5}})
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("digits_denoise"))
    config = _config()
    dataset = load_dataset(config.data)
    prior = train_prior(config, path, dataset)
    train_flow(config, path, prior, dataset)
    return path


@pytest.fixture(scope="module")
def evaluation(workdir):
    messages = []
    results = run_evaluation(
        _config(), workdir, ["noise2score", "nope", "ddrm"], num_measurements=N, num_samples=K, log=messages.append
    )
    return results, messages


def test_rows_metrics_and_messages(evaluation):
    results, messages = evaluation
    test = results["sets"]["test"]
    rows = {(row["method"], row["samples"]): row for row in test["rows"]}
    assert list(rows) == [("apd", 1), ("apd", K), ("noise2score", 1), ("ddrm", 1)]
    assert messages[0].startswith("skipping unknown baseline 'nope'; known: cpigdm, ddrm, dps")
    assert any(m.startswith("LPIPS omitted") for m in messages)
    signals, truth = test["signals"], jnp.asarray(test["signals"]["truth"])
    assert truth.shape == (N, 8, 8, 1)
    np.testing.assert_array_equal(truth, load_dataset(_config().data).test[:N])
    for (method, k), row in rows.items():
        estimate = jnp.asarray(signals[f"{method}_x{k}"])
        assert float(estimate.min()) >= 0 and float(estimate.max()) <= 1
        assert row["psnr"] == pytest.approx(float(jnp.mean(psnr(estimate, truth))), rel=1e-6)
        assert row["ssim"] == pytest.approx(float(jnp.mean(ssim(estimate, truth))), rel=1e-5)
        assert row["mse"] == pytest.approx(float(jnp.mean((estimate - truth) ** 2)), rel=1e-5)
        assert "lpips" not in row
        assert row["time_s"] > 0 and row["time_128_s"] > 0
    assert [rows[m]["nfe"] for m in rows] == [1, 1, 1, 5]
    assert "std" not in rows["apd", 1] and "cov90" not in rows["ddrm", 1]
    apd = rows["apd", K]
    assert 0 < apd["std"] and all(0 <= apd[c] <= 1 for c in ("cov50", "cov90", "cov95"))
    assert apd["cov50"] <= apd["cov90"] <= apd["cov95"]
    assert signals["apd_samples"].shape == (N, 3, 8, 8, 1)
    # the noise2score estimate is the MMSE denoiser of y: closer to the truth than y itself
    assert rows["noise2score", 1]["psnr"] > float(jnp.mean(psnr(jnp.asarray(signals["y"]), truth)))


def test_generalization_gap_on_training_measurements(evaluation, workdir):
    results, _ = evaluation
    gap = results["generalization_gap"]
    config = _config()
    dataset = load_dataset(config.data)
    mset = measurement_set(config, dataset, "train", N)
    samples = load_sampler(workdir).sample(mset.y, K, split_key(config.seed, "eval/apd"))
    train_psnr = float(jnp.mean(psnr(jnp.clip(jnp.mean(samples, 1), 0, 1), mset.x)))
    assert gap[f"x{K}"]["train_psnr"] == pytest.approx(train_psnr, rel=1e-5)
    held_out = results["sets"]["test"]["rows"][1]["psnr"]
    assert gap[f"x{K}"]["gap_db"] == pytest.approx(train_psnr - held_out, rel=1e-5)
    assert "Generalization gap of APD" in format_markdown(results)


def test_apd_reproduces_from_recorded_keys(evaluation, workdir):
    results, _ = evaluation
    config = _config()
    assert results["seeds"]["measurements"] == {"test": "split_key(0, 'test')"}
    assert results["seeds"]["methods"]["apd"] == "split_key(0, 'eval/apd')"
    mset = measurement_set(config, load_dataset(config.data), "test", N)
    samples = load_sampler(workdir).sample(mset.y, K, split_key(config.seed, "eval/apd"))
    signals = results["sets"]["test"]["signals"]
    np.testing.assert_allclose(signals["apd_x1"], jnp.clip(samples[:, 0], 0, 1), atol=1e-6)
    np.testing.assert_allclose(signals[f"apd_x{K}"], jnp.clip(jnp.mean(samples, 1), 0, 1), atol=1e-6)
    np.testing.assert_allclose(signals["apd_std"], jnp.std(samples, 1), atol=1e-6)
    np.testing.assert_allclose(signals["y"], jnp.clip(mset.y, 0, 1))


def test_files_written(evaluation, tmp_path):
    results, _ = evaluation
    paths = write_outputs(results, str(tmp_path))
    assert sorted(paths) == ["results.csv", "results.json", "results.md", "test_figure.png", "test_signals.npz"]
    with open(paths["results.csv"]) as f:
        lines = list(csv.DictReader(f))
    assert [(r["set"], r["method"], r["samples"]) for r in lines] == [
        ("test", "apd", "1"), ("test", "apd", str(K)), ("test", "noise2score", "1"), ("test", "ddrm", "1")
    ]
    assert float(lines[1]["psnr"]) == pytest.approx(results["sets"]["test"]["rows"][1]["psnr"])
    assert lines[0]["std"] == "" and "lpips" not in lines[0]
    with open(paths["results.json"]) as f:
        saved = json.load(f)
    assert saved["sets"]["test"]["dataset"] == "digits" and "signals" not in saved["sets"]["test"]
    assert saved["settings"]["baseline_settings"] == {"noise2score": {}, "ddrm": {"num_steps": 5}}
    assert saved["config"]["operator"] == {"name": "denoise", "noise_std": 0.2}
    assert set(saved["versions"]) == {"python", "jax", "flax", "numpy", "device"}
    with np.load(paths["test_signals.npz"]) as npz:
        assert float(jnp.mean(psnr(npz[f"apd_x{K}"], npz["truth"]))) == pytest.approx(saved["sets"]["test"]["rows"][1]["psnr"])
    markdown = format_markdown(results)
    assert f"| APD (x{K}) |" in markdown and "| DDRM (x1) |" in markdown and "| Noise2Score (x1) |" in markdown
    assert "skipping unknown baseline 'nope'" in markdown
    # rows: truth, y, 3 APD samples, APD mean, std, Noise2Score, DDRM; columns: label + N measurements
    assert plt.imread(paths["test_figure.png"]).shape[:2] == (900, 100 * (N + 1))


def test_without_flow_and_unsupported_operator(workdir, tmp_path):
    prior_only = str(tmp_path / "prior_only")
    shutil.copytree(os.path.join(workdir, "prior"), os.path.join(prior_only, "prior"))
    config = _config()
    config.operator = ml_collections.ConfigDict(dict(name="inpaint", noise_std=0.05, hidden_fraction=0.5, mask_seed=0))
    messages = []
    results = run_evaluation(
        config, prior_only, ["noise2score", "ddrm"], num_measurements=2, log=messages.append, baseline_samples=3
    )
    assert messages[0] == f"no trained sampler in {prior_only}; evaluating baselines only"
    assert "skipping noise2score: Noise2Score needs the denoising operator Denoise (A = I); Inpaint is not Denoise" in messages
    rows = results["sets"]["test"]["rows"]
    assert [(r["method"], r["samples"]) for r in rows] == [("ddrm", 1), ("ddrm", 3)]
    assert rows[0]["time_128_s"] == pytest.approx(128 * rows[0]["time_s"])
    assert rows[1]["time_s"] == pytest.approx(3 * rows[0]["time_s"])
    signals = results["sets"]["test"]["signals"]
    assert signals["ddrm_x3"].shape == (2, 8, 8, 1) and "apd_x1" not in signals
    assert 0 <= rows[1]["cov95"] <= 1 and rows[1]["std"] > 0


def test_missing_prior_and_nothing_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no trained prior in"):
        run_evaluation(_config(), str(tmp_path), ["dps"], log=lambda m: None)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        run_evaluation(_config(), str(tmp_path), [], log=lambda m: None)


def test_command_line_reports_missing_prior(tmp_path):
    run = subprocess.run(
        [sys.executable, "evaluate.py", f"--workdir={tmp_path}", "--baselines=dps"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == f"error: no trained prior in {tmp_path}/prior: run " \
        f"`python train.py --config <config> --workdir {tmp_path}` first"


def _ffhq_or_skip():
    try:
        return load_dataset(ml_collections.ConfigDict({"name": "ffhq32"}))
    except FileNotFoundError:
        pytest.skip("ffhq_32x32_sample.npz is not available")


def test_ood_measurements_use_their_own_key():
    ffhq = _ffhq_or_skip()
    config = ml_collections.ConfigDict({"seed": 3, "operator": {"name": "denoise", "noise_std": 0.1}})
    mset = measurement_set(config, ffhq, "test", 2, name="ood_ffhq32")
    assert mset.name == "ood_ffhq32" and mset.x.shape == (2, 32, 32, 3)
    noise_key = jax.random.split(jax.random.fold_in(split_key(3, "ood_ffhq32"), 1))[1]
    expected = ffhq.test[1] + 0.1 * jax.random.normal(noise_key, (32, 32, 3))
    np.testing.assert_allclose(mset.y[1], expected, atol=1e-6)


def test_ood_set_must_match_the_signal_shape(workdir):
    _ffhq_or_skip()
    with pytest.raises(ValueError, match=r"ffhq32 signals are \(32, 32, 3\), the task's are \(8, 8, 1\)"):
        run_evaluation(_config(), workdir, [], ood="ffhq32", log=lambda m: None)
