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
from apd.baselines import get_baseline
from apd.baselines.common import measurement_keys, sample_keys
from apd.eval.metrics import psnr, ssim
from apd.evaluation import (
    MethodRun,
    cached_run,
    measurement_set,
    paired_differences,
    run_apd,
    run_baseline,
    run_evaluation,
    start_sampler,
)
from apd.flows import condition_of
from apd.eval.report import format_markdown, write_outputs
from apd.measurements import split_key
from apd.sampler import load_sampler
from apd.training.flow import start_params, train_flow
from apd.training.prior import load_prior, train_prior
from configs import digits_denoise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, K, B = 4, 8, 4


def _config():
    config = digits_denoise.get_config()
    config.prior.model = ml_collections.ConfigDict(dict(name="mlp", width=32, num_blocks=1))
    config.prior.training.update(
        dict(num_steps=20, batch_size=16, warmup_steps=0, log_every=10, ckpt_every=20, num_samples=2, sample_steps=2)
    )
    config.flow.model.update(dict(num_couplings=2, width=32, depth=1))
    config.flow.training.update(
        dict(num_steps=20, batch_size=8, num_z=1, warmup_steps=0, log_every=10, eval_every=10_000, ckpt_every=20,
             eval_num_measurements=0, prior_signals=64)  # no validation pass: one compilation fewer
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
        _config(), workdir, ["noise2score", "mcg", "ddrm"], num_measurements=N, num_samples=K, baseline_samples=B,
        log=messages.append,
    )
    return results, messages


def test_rows_at_equal_sample_counts_and_notes(evaluation):
    results, messages = evaluation
    test = results["sets"]["test"]
    rows = {(row["method"], row["samples"]): row for row in test["rows"]}
    assert list(rows) == [("apd", 1), ("apd", B), ("apd", K), ("apd_start", 1), ("apd_start", B), ("apd_start", K),
                          ("noise2score", 1), ("ddrm", 1), ("ddrm", B)]
    assert "mcg left out: MCG does not apply to denoising: its correction acts in the null space of A, empty for A = I" in messages
    assert any(m.startswith("apd_start: the flow before training") and "fit_output='prior'" in m for m in messages)
    assert results["flow_step"] == 20
    assert [rows[m]["nfe"] for m in rows] == [2] * 6 + [1, 5, 5]  # the Tweedie estimate: one score call more
    assert "std" not in rows["apd", 1] and "cov90" not in rows["ddrm", 1] and "std" not in rows["noise2score", 1]
    for key in (("apd", B), ("ddrm", B)):
        row = rows[key]
        assert 0 < row["std"] and row["cov50"] <= row["cov90"] <= row["cov95"]
    for row in rows.values():
        low, high = row["psnr_ci95"]
        assert low <= row["psnr"] <= high and high - low < 10
    # the noise2score estimate is the MMSE denoiser of y: closer to the truth than y itself
    signals, truth = test["signals"], jnp.asarray(test["signals"]["truth"])
    assert rows["noise2score", 1]["psnr"] > float(jnp.mean(psnr(jnp.asarray(signals["y"]), truth)))
    assert test["calibration"]["num_samples"] == B and set(test["calibration"]["curves"]) == {"apd", "apd_start", "ddrm"}
    assert [c["k"] for c in test["comparisons"]] == [1, B] and all(c["baseline"] == "ddrm" for c in test["comparisons"])
    assert [r["k"] for r in test["tweedie_reference"]] == [B, K]


def test_a_baseline_can_draw_fewer_samples_than_the_others(evaluation, workdir):
    """samples_for={'ddrm': 1}: DDRM's one draw is the first of its B draws in the main evaluation (same keys),
    APD gains no row, and the count is noted; a name that is not a baseline is refused before any work."""
    results, _ = evaluation
    messages = []
    single = run_evaluation(_config(), workdir, ["ddrm"], num_measurements=N, num_samples=K, baseline_samples=B,
                            samples_for={"ddrm": 1}, with_start=False, log=messages.append)
    rows = {(row["method"], row["samples"]): row for row in single["sets"]["test"]["rows"]}
    assert list(rows) == [("apd", 1), ("apd", B), ("apd", K), ("ddrm", 1)]
    before = {(row["method"], row["samples"]): row for row in results["sets"]["test"]["rows"]}
    assert rows["ddrm", 1]["psnr"] == pytest.approx(before["ddrm", 1]["psnr"], abs=1e-5)
    assert "ddrm: 1 sample(s) per measurement, the other baselines 4" in messages
    assert single["settings"]["samples_for"] == {"ddrm": 1}
    with pytest.raises(ValueError, match="samples_for names dps, not among the baselines ddrm"):
        run_evaluation(_config(), workdir, ["ddrm"], samples_for={"dps": 1})


def test_baseline_draws_do_not_depend_on_the_batch(evaluation, workdir):
    """Draw j of measurement i is fold_in(fold_in(key, i), j): measurement 2's first DDRM draw, computed alone."""
    results, _ = evaluation
    config = _config()
    mset = measurement_set(config, load_dataset(config.data), "test", N)
    op = jax.tree.map(lambda a: a[2:3], mset.ops)
    prior = load_prior(workdir)
    alone, _ = get_baseline("ddrm").solve(prior, op, mset.y[2:3], sample_keys(split_key(0, "eval/ddrm"), [2], 1), num_steps=5)
    np.testing.assert_allclose(results["sets"]["test"]["signals"]["ddrm_x1"][2], jnp.clip(alone[0], 0, 1), atol=1e-5)


def test_baseline_times_are_measured_on_batches_of_one_measurement(workdir, monkeypatch):
    config = _config()
    mset = measurement_set(config, load_dataset(config.data), "test", 3)
    module = get_baseline("ddrm")
    calls = []
    solve = module.solve

    def recording_solve(prior, operator, y, key, **settings):
        calls.append((y.shape[0], bool(jnp.all(y == y[:1]))))
        return solve(prior, operator, y, key, **settings)

    monkeypatch.setattr(module, "solve", recording_solve)
    run = run_baseline("ddrm", load_prior(workdir), mset, 2, {"num_steps": 5}, jax.random.PRNGKey(0), max_rows=4, progress=False)
    # samples: 3 measurements x 2 draws in calls of 2 measurements (the last padded); then 1, 2 and 128 draws of
    # measurement 0, each called twice (warm-up, timed)
    assert calls == [(4, False), (4, True), (1, True), (1, True), (2, True), (2, True), (128, True), (128, True)]
    assert run.samples.shape == (3, 2, 8, 8, 1) and set(run.seconds) == {1, 2} and run.seconds_128 > 0
    np.testing.assert_array_equal(run.samples[2, 0] == run.samples[2, 1], np.zeros((8, 8, 1), bool))
    calls.clear()
    quick = run_baseline("ddrm", load_prior(workdir), mset, 2, {"num_steps": 5}, jax.random.PRNGKey(0), max_rows=4,
                         progress=False, time_128=False)
    assert calls[-1] == (2, True) and (128, True) not in calls and np.isnan(quick.seconds_128)
    np.testing.assert_array_equal(quick.samples, run.samples)


def test_generalization_gap_on_training_measurements(evaluation, workdir):
    results, _ = evaluation
    gap = results["generalization_gap"]
    config = _config()
    dataset = load_dataset(config.data)
    mset = measurement_set(config, dataset, "train", N)
    samples = load_sampler(workdir).sample_each(mset.y, K, measurement_keys(split_key(config.seed, "eval/apd"), N))
    train_psnr = float(jnp.mean(psnr(jnp.clip(jnp.mean(samples, 1), 0, 1), mset.x)))
    assert gap[f"x{K}"]["train_psnr"] == pytest.approx(train_psnr, rel=1e-5)
    held_out = [r for r in results["sets"]["test"]["rows"] if r["method"] == "apd" and r["samples"] == K][0]["psnr"]
    assert gap[f"x{K}"]["gap_db"] == pytest.approx(train_psnr - held_out, rel=1e-5)
    assert "Generalization gap of APD" in format_markdown(results)


def test_apd_reproduces_from_recorded_keys(evaluation, workdir):
    """APD's rows, recomputed from samples drawn again with the recorded key (not from the saved arrays)."""
    results, _ = evaluation
    config = _config()
    assert results["seeds"]["measurements"] == {"test": "split_key(0, 'test')"}
    assert results["seeds"]["methods"]["apd"] == "split_key(0, 'eval/apd')"
    mset = measurement_set(config, load_dataset(config.data), "test", N)
    sampler = load_sampler(workdir)
    samples = sampler.sample_each(mset.y, K, measurement_keys(split_key(config.seed, "eval/apd"), N))
    # drawn in calls of any size (here one measurement per call, the last call padded), the samples are the same
    chunked = run_apd(sampler, mset, (1, K), split_key(config.seed, "eval/apd"), max_rows=K)
    np.testing.assert_allclose(chunked.samples, samples, rtol=1e-6, atol=1e-6)
    rows = {(row["method"], row["samples"]): row for row in results["sets"]["test"]["rows"]}
    for k, estimate in ((1, samples[:, 0]), (B, jnp.mean(samples[:, :B], 1)), (K, jnp.mean(samples, 1))):
        estimate = jnp.clip(estimate, 0, 1)
        assert rows["apd", k]["psnr"] == pytest.approx(float(jnp.mean(psnr(estimate, mset.x))), rel=1e-5)
        assert rows["apd", k]["ssim"] == pytest.approx(float(jnp.mean(ssim(estimate, mset.x))), rel=1e-4)
    assert rows["apd", K]["std"] == pytest.approx(float(jnp.mean(jnp.std(samples, 1))), rel=1e-5)
    np.testing.assert_allclose(results["sets"]["test"]["signals"]["y"], jnp.clip(mset.y, 0, 1))


def test_apd_start_is_the_fitted_affine_gaussian(evaluation, workdir):
    """Untrained couplings: the start's samples are g x0(y) + b + std z per entry, with the fitted g, b, std."""
    results, _ = evaluation
    config = _config()
    sampler = load_sampler(workdir)
    params = start_params(sampler.config, sampler.flow, sampler.family, load_prior(workdir), load_dataset(config.data).train)
    mset = measurement_set(config, load_dataset(config.data), "test", N)
    cond = jax.vmap(condition_of, in_axes=(None, 0))(sampler.family.draw(jax.random.PRNGKey(0)), mset.y)
    x, logdet = sampler.flow.apply({"params": params}, jnp.zeros(mset.x.shape), cond)
    gain, shift, log_scale = (params[k].reshape(mset.x.shape[1:]) for k in ("estimate_gain", "out_shift", "out_log_scale"))
    np.testing.assert_allclose(x, gain * mset.y + shift, atol=1e-5)  # z = 0: the mean g x0(y) + b
    np.testing.assert_allclose(logdet, jnp.full(N, jnp.sum(log_scale)), rtol=1e-5)  # per-entry std exp(log_scale)
    start_x1 = [r for r in results["sets"]["test"]["rows"] if r["method"] == "apd_start" and r["samples"] == 1][0]
    draws = load_sampler(workdir)
    draws.params = params
    first = draws.sample_each(mset.y, K, measurement_keys(split_key(config.seed, "eval/apd_start"), N))[:, 0]
    assert start_x1["psnr"] == pytest.approx(float(jnp.mean(psnr(jnp.clip(first, 0, 1), mset.x))), rel=1e-5)


def test_files_written(evaluation, tmp_path):
    results, _ = evaluation
    paths = write_outputs(results, str(tmp_path))
    assert sorted(paths) == ["results.csv", "results.json", "results.md", "test_calibration.png", "test_figure.png",
                             "test_measurements.npz", "test_signals.npz"]
    with open(paths["results.csv"]) as f:
        lines = list(csv.DictReader(f))
    assert [(r["method"], r["samples"]) for r in lines][:3] == [("apd", "1"), ("apd", str(B)), ("apd", str(K))]
    assert lines[0]["std"] == "" and "lpips" not in lines[0] and "psnr_ci95" not in lines[0]
    with open(paths["results.json"]) as f:
        saved = json.load(f)
    test = saved["sets"]["test"]
    assert test["dataset"] == "digits" and "signals" not in test
    assert len(test["rows"][0]["psnr_ci95"]) == 2 and saved["flow_step"] == 20
    assert saved["settings"]["baseline_settings"] == {"noise2score": {}, "mcg": {}, "ddrm": {"num_steps": 5}}
    assert saved["config"]["operator"] == {"name": "denoise", "noise_std": 0.2}
    assert set(saved["versions"]) == {"python", "jax", "flax", "numpy", "device"}
    markdown = format_markdown(results)
    assert f"| APD (x{K}) |" in markdown and "| DDRM (x1) |" in markdown and "| Noise2Score (x1) |" in markdown
    assert "APD x1 minus the best baseline at x1 (DDRM)" in markdown and "minus Noise2Score" in markdown
    assert "![calibration](test_calibration.png)" in markdown
    # rows: truth, y, 3 APD samples, APD mean, std, APD start, its mean, Noise2Score, DDRM, its mean
    assert plt.imread(paths["test_figure.png"]).shape[:2] == (1200, 100 * (N + 1))


def test_paired_differences_pick_the_best_baseline_at_equal_k():
    rows = [
        {"method": "apd", "samples": 1, "psnr": 20.0, "time_128_s": 0.5},
        {"method": "dps", "samples": 1, "psnr": 21.0, "time_128_s": 50.0},
        {"method": "ddrm", "samples": 1, "psnr": 19.0, "time_128_s": 5.0},
        {"method": "noise2score", "samples": 1, "psnr": 30.0},
    ]
    per = {("apd", 1): {"psnr": np.array([20.0, 19.0, 21.0])}, ("dps", 1): {"psnr": np.array([21.0, 21.0, 21.0])},
           ("ddrm", 1): {"psnr": np.array([19.0] * 3)}, ("noise2score", 1): {"psnr": np.array([30.0] * 3)}}
    (entry,) = paired_differences(rows, per, (1, 4))
    assert entry["k"] == 1 and entry["baseline"] == "dps" and entry["psnr_diff"] == pytest.approx(-1.0)
    assert entry["time_128_ratio"] == pytest.approx(100.0)
    assert entry["psnr_diff_ci95"][0] >= -2.0 - 1e-9 and entry["psnr_diff_ci95"][1] <= 0.0 + 1e-9


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
    assert "noise2score left out: Noise2Score needs the denoising operator Denoise (A = I); Inpaint is not Denoise" in messages
    rows = results["sets"]["test"]["rows"]
    assert [(r["method"], r["samples"]) for r in rows] == [("ddrm", 1), ("ddrm", 3)]
    # observed entries of inpainting: y = x + noise is known up to s = 0.05, hidden ones only through the prior
    assert 0 <= rows[1]["cov90_observed"] <= 1 and 0 <= rows[1]["cov90_hidden"] <= 1


def test_unknown_baseline_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="unknown baseline"):
        run_evaluation(_config(), str(tmp_path), ["nope"], log=lambda m: None)
    run = subprocess.run(
        [sys.executable, "evaluate.py", f"--workdir={tmp_path}", "--baselines=nope", f"--out={tmp_path}/eval"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 1 and not os.path.exists(tmp_path / "eval")
    assert run.stderr.strip().splitlines()[-1].startswith("error: unknown baseline(s) nope; known: cpigdm, ddrm, dps")


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


def test_start_without_output_fit_is_the_initialisation(workdir):
    config = _config()
    sampler = load_sampler(workdir)
    start = start_sampler(sampler, load_prior(workdir), load_dataset(config.data), "none")
    np.testing.assert_array_equal(start.params["estimate_gain"], np.ones(64))
    np.testing.assert_array_equal(start.params["out_shift"], np.zeros(64))
    assert start.step == 0


def test_baseline_runs_are_cached_and_reused_only_for_the_same_identity(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return MethodRun("ddrm", np.arange(6.0).reshape(1, 2, 3), 20, {1: 0.5, 2: 0.75}, 9.0)

    identity = {"set": "test", "method": "ddrm", "settings": {"eta": 0.5}, "samples": 2}
    first, reused_first = cached_run(str(tmp_path), identity, compute)
    again, reused_again = cached_run(str(tmp_path), identity, compute)
    assert (reused_first, reused_again, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(again.samples, first.samples)
    assert (again.nfe, again.seconds, again.seconds_128) == (20, {1: 0.5, 2: 0.75}, 9.0)
    _, reused_other = cached_run(str(tmp_path), {**identity, "settings": {"eta": 1.0}}, compute)
    assert not reused_other and len(calls) == 2


def test_flow_trained_for_another_operator_is_refused_unless_allowed(workdir):
    config = _config()
    config.operator.noise_std = 0.5
    with pytest.raises(ValueError) as err:
        run_evaluation(config, workdir, [], num_measurements=2, num_samples=2, log=lambda m: None)
    assert str(err.value) == (
        f"the flow in {workdir} was trained for operator {{'name': 'denoise', 'noise_std': 0.2}}, the config asks for "
        "{'name': 'denoise', 'noise_std': 0.5}: use the training operator, or allow_operator_mismatch "
        "(--allow_operator_mismatch) to evaluate it anyway"
    )
    results = run_evaluation(config, workdir, [], num_measurements=2, num_samples=2, with_start=False,
                             allow_operator_mismatch=True, log=lambda m: None)
    assert results["settings"]["operator_mismatch"] == {"trained": {"name": "denoise", "noise_std": 0.2},
                                                        "evaluated": {"name": "denoise", "noise_std": 0.5}}
    assert results["notes"][0].startswith("the flow was trained for operator")


def test_results_replace_the_old_only_when_all_are_written(evaluation, tmp_path, monkeypatch):
    import apd.eval.report as report

    results, _ = evaluation
    (tmp_path / "results.md").write_text("old results")
    (tmp_path / "tuning.json").write_text("{}")

    def broken_figure(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(report, "save_dataset_figure", broken_figure)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(results, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["results.md", "tuning.json"]
    assert (tmp_path / "results.md").read_text() == "old results"
    monkeypatch.undo()
    write_outputs(results, str(tmp_path))
    assert (tmp_path / "results.md").read_text().startswith("#") and (tmp_path / "tuning.json").read_text() == "{}"
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".writing-")]


def test_same_seed_and_config_give_identical_tables_and_samples(workdir):
    def run():
        results = run_evaluation(_config(), workdir, ["ddrm"], num_measurements=2, num_samples=4, baseline_samples=2,
                                 with_start=False, log=lambda m: None)
        test = results["sets"]["test"]
        rows = [{k: v for k, v in row.items() if not k.startswith("time")} for row in test["rows"]]
        return rows, test["signals"]

    (rows, signals), (rows_again, signals_again) = run(), run()
    assert rows == rows_again and len(rows) == 5
    assert sorted(signals) == sorted(signals_again)
    for name in signals:
        np.testing.assert_array_equal(signals[name], signals_again[name])
