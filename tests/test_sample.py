"""Sampling a file of measurements (sample.py) and training the flow from measurements alone, on tiny digits runs:
the whole loop (train, evaluate writes its measurements, sample.py on them: files, figures, shapes, the same key
giving the same samples), a flow trained on a measurement file with the clean signals withheld, and bad files
refused with one line, exit status 1 and nothing written."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from apd.data import load_dataset
from apd.data.base import SignalsWithheld
from apd.eval.report import markdown_table, write_outputs
from apd.evaluation import run_evaluation
from apd.measurement_files import prepare_measurements, read_measurement_file
from apd.measurements import measure, split_key
from apd.operators import Denoise, Inpaint, make_operator_family
from apd.sample_command import sample_file
from apd.sampler import load_sampler
from apd.training.flow import train_flow
from apd.training.prior import train_prior
from configs import digits_denoise

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (8, 8, 1)
N, K = 4, 6


def _config():
    config = digits_denoise.get_config()
    config.prior.model = ml_collections.ConfigDict(dict(name="mlp", width=32, num_blocks=1))
    config.prior.training.update(
        dict(num_steps=10, batch_size=16, warmup_steps=0, log_every=10, ckpt_every=10, num_samples=2, sample_steps=2)
    )
    config.flow.model.update(dict(num_couplings=2, width=32, depth=1))
    config.flow.training.update(
        dict(num_steps=10, batch_size=8, num_z=1, warmup_steps=0, log_every=5, eval_every=10, ckpt_every=10,
             eval_num_measurements=0, prior_signals=64)
    )
    return config


def _sample_cli(*args):
    return subprocess.run([sys.executable, "sample.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def _sample_main(capsys, *args):
    """(exit status, stderr) of the sampling command's main run in this process (flags parsed afresh)."""
    from absl import flags

    from apd import sample_command

    flags.FLAGS.unparse_flags()
    flags.FLAGS(["sample.py", *args])
    capsys.readouterr()
    try:
        sample_command.main([])
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def denoise_run(tmp_path_factory):
    """A tiny trained digits-denoising workdir and the measurement file its evaluation wrote."""
    workdir = str(tmp_path_factory.mktemp("digits_denoise"))
    config = _config()
    dataset = load_dataset(config.data)
    prior = train_prior(config, workdir, dataset)
    train_flow(config, workdir, prior, dataset)
    results = run_evaluation(config, workdir, num_measurements=N, num_samples=4, baseline_samples=2, with_start=False,
                             log=lambda m: None)
    paths = write_outputs(results, os.path.join(workdir, "eval"))
    return workdir, paths["test_measurements.npz"]


def test_whole_loop_train_measure_sample(denoise_run, tmp_path):
    workdir, measurements = denoise_run
    y, mask = read_measurement_file(measurements)
    assert y.shape == (N,) + SHAPE and mask is None
    out = tmp_path / "out"
    run = _sample_cli(f"--workdir={workdir}", f"--measurements={measurements}", f"--num_samples={K}", f"--out={out}",
                      "--seed=3")
    assert run.returncode == 0, run.stderr[-2000:]
    with np.load(out / "samples.npz") as f:
        assert f.files == ["samples"]
        samples = f["samples"]
    assert samples.shape == (N, K) + SHAPE and samples.dtype == np.float32
    assert sorted(os.listdir(out / "figures")) == [f"measurement_{i:04d}.png" for i in range(N)]
    # The same key gives the same samples, whatever the batch size; measurement i's draws use fold_in(key, i).
    again = sample_file(workdir, measurements, num_samples=K, out=str(tmp_path / "again"), seed=3, batch_size=1,
                        max_figures=0, log=lambda m: None)
    assert sorted(again) == ["samples.npz"]
    np.testing.assert_allclose(np.load(again["samples.npz"])["samples"], samples, atol=1e-6)
    sampler = load_sampler(workdir)
    key1 = jax.random.fold_in(jax.random.PRNGKey(3), 1)
    direct = sampler.sample(y[1].astype(np.float32), num_samples=K, key=key1)
    np.testing.assert_allclose(direct, samples[1], atol=1e-5)
    other = sample_file(workdir, measurements, num_samples=K, out=str(tmp_path / "other"), seed=4, max_figures=0,
                        log=lambda m: None)
    assert np.abs(np.load(other["samples.npz"])["samples"] - samples).max() > 0.1
    # The summary keeps mean, std and quantiles only, computed from the same draws.
    summary = sample_file(workdir, measurements, num_samples=K, out=str(tmp_path / "summary"), seed=3, summary=True,
                          max_figures=1, log=lambda m: None)
    assert sorted(summary) == ["figures/measurement_0000.png", "summary.npz"]
    with np.load(summary["summary.npz"]) as f:
        assert sorted(f.files) == ["levels", "mean", "quantiles", "std"]
        np.testing.assert_allclose(f["mean"], samples.mean(axis=1), atol=1e-5)
        np.testing.assert_allclose(f["std"], samples.std(axis=1), atol=1e-5)
        assert f["quantiles"].shape == (N, 5) + SHAPE
        np.testing.assert_allclose(f["quantiles"][:, 2], np.median(samples, axis=1), atol=1e-5)
    with open(os.path.join(workdir, "flow", "config.json")) as f:
        assert json.load(f)["flow"]["training"]["measurements"] is None


def test_refined_sampling_evaluation_and_curve(denoise_run, tmp_path, capsys):
    """--refine_steps: each measurement's flow refined before sampling (apd.refine); the same seed gives the same
    samples whatever --batch_size; evaluate's 'apd_refined' row and benchmarks/refine_curve.py on the tiny run."""
    workdir, measurements = denoise_run
    common = dict(num_samples=K, seed=3, max_figures=0, log=lambda m: None)

    def samples(name, **options):
        paths = sample_file(workdir, measurements, out=str(tmp_path / name), **common, **options)
        return np.load(paths["samples.npz"])["samples"]

    plain = samples("plain")
    refined = samples("refined", refine_steps=5, refine_lr=1e-2)
    again = samples("again", refine_steps=5, refine_lr=1e-2, batch_size=1)
    assert refined.shape == plain.shape == (N, K) + SHAPE
    assert np.abs(refined - plain).max() > 1e-2
    np.testing.assert_allclose(again, refined, atol=1e-5)
    for flag, message in [("--refine_steps=-1", "refinement steps must be a whole number >= 0, got -1"),
                          ("--refine_lr=0", "refinement learning rate must be positive, got 0.0")]:
        out = tmp_path / "bad"
        code, stderr = _sample_main(capsys, f"--workdir={workdir}", f"--measurements={measurements}", f"--out={out}",
                                    "--refine_steps=2", flag)
        assert code == 1 and stderr.strip() == f"error: {message}" and not out.exists(), stderr

    results = run_evaluation(_config(), workdir, num_measurements=N, num_samples=4, baseline_samples=2,
                             with_start=False, refine_steps=2, refine_lr=1e-3, log=lambda m: None)
    rows = [row for row in results["sets"]["test"]["rows"] if row["method"] == "apd_refined"]
    assert [row["samples"] for row in rows] == [1, 2, 4]
    # 2 steps x 64 flow samples x 1 score evaluation (the digits flow trains with the score gradient; the ELBO
    # estimator would take 2 per draw)
    assert _config().flow.training.prior_gradient == "score"
    assert all(row["refine_steps"] == 2 and row["nfe"] == 2 * 64 and row["time_s"] > 0 for row in rows)
    assert "| APD refined (2 steps, x1) |" in markdown_table(rows)
    with pytest.raises(ValueError, match="refinement steps must be a whole number >= 0"):
        run_evaluation(_config(), workdir, refine_steps=-3)

    from benchmarks.refine_curve import check_args, run

    args = argparse.Namespace(config=os.path.join(REPO, "configs", "digits_denoise.py"), workdir=workdir, split="test",
                              num_measurements=2, samples=3, steps="2,0", lr=1e-2, out=str(tmp_path / "curve.json"))
    run(args, check_args(args))
    with open(tmp_path / "curve.json") as f:
        curve = json.load(f)["rows"]
    assert [row["steps"] for row in curve] == [0, 2] and [row["nfe"] for row in curve] == [0, 2 * 64]
    assert curve[0]["psnr_x1"] != curve[1]["psnr_x1"] and all(np.isfinite(row["psnr_x3"]) for row in curve)
    for steps, lr, message in [("0,-5", 1e-3, "refinement steps must be"), ("0,a", 1e-3, "--steps must be"),
                               ("10", -1.0, "refinement learning rate must be positive")]:
        with pytest.raises(ValueError, match=message):
            check_args(argparse.Namespace(**{**vars(args), "steps": steps, "lr": lr}))


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((2,) + SHAPE)}, "has no array 'y' (it holds ['x'])"),
        ({"y": np.zeros((2, 8, 8))}, "y has shape (2, 8, 8); this task takes measurements (N, 8, 8, 1)"),
        ({"y": np.full((2,) + SHAPE, np.nan)}, "y holds 128 NaN value(s), but operator 'denoise' has no mask"),
        ({"y": np.full((2,) + SHAPE, 255.0)}, "y ranges over [255, 255], far outside [0, 1]"),
    ],
)
def test_bad_files_give_one_line_and_write_nothing(denoise_run, tmp_path, capsys, arrays, message):
    workdir, _ = denoise_run
    path = tmp_path / "y.npz"
    np.savez(path, **arrays)
    out = tmp_path / "out"
    code, stderr = _sample_main(capsys, f"--workdir={workdir}", f"--measurements={path}", f"--out={out}")
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], stderr
    assert not out.exists()


def test_command_exits_1_on_a_bad_file(denoise_run, tmp_path):
    workdir, _ = denoise_run
    np.save(tmp_path / "y.npy", np.full((2,) + SHAPE, np.nan))
    run = _sample_cli(f"--workdir={workdir}", f"--measurements={tmp_path / 'y.npy'}", f"--out={tmp_path}/out")
    assert run.returncode == 1 and not (tmp_path / "out").exists()
    assert run.stderr.strip().splitlines()[-1] == (
        "error: y holds 128 NaN value(s), but operator 'denoise' has no mask: NaN means 'not measured' only for "
        "inpainting and imputation tasks")


def test_a_config_with_another_operator_is_refused(denoise_run, tmp_path):
    workdir, measurements = denoise_run
    run = _sample_cli(f"--workdir={workdir}", f"--measurements={measurements}", f"--out={tmp_path}/out",
                      "--config=configs/digits_denoise.py", "--config.operator.noise_std=0.1")
    assert run.returncode == 1 and not (tmp_path / "out").exists()
    assert run.stderr.strip().splitlines()[-1] == (
        "error: the sampler was trained for another operator (noise_std: trained 0.2, given 0.1): train a flow "
        "for this operator or drop the setting")


def _inpaint_config():
    config = _config()
    config.operator = ml_collections.ConfigDict(dict(name="inpaint", noise_std=0.1, hidden_fraction=0.5,
                                                     per_measurement=True))
    config.flow.model.estimate = "pinv"  # the default's Tweedie estimate is for denoising only
    config.flow.training.update(dict(eval_num_measurements=4, eval_num_samples=2))
    return config


@pytest.fixture(scope="module")
def measurement_run(denoise_run, tmp_path_factory):
    """A flow trained on a measurement file alone (per-measurement masks, given as NaN), clean signals withheld."""
    workdir = str(tmp_path_factory.mktemp("digits_inpaint"))
    shutil.copytree(os.path.join(denoise_run[0], "prior"), os.path.join(workdir, "prior"))
    config = _inpaint_config()
    dataset = load_dataset(config.data)
    family = make_operator_family(config.operator, SHAPE)
    x = dataset.test[:40]  # stands in for the user's unknown signals
    ops, y = measure(family, split_key(0, "user"), x, np.arange(40))
    y = np.where(np.asarray(ops.mask) == 1, np.asarray(y), np.nan)
    path = os.path.join(workdir, "y.npy")
    np.save(path, y)
    config.flow.training.measurements = path
    from apd.training.prior import load_prior

    withheld = SignalsWithheld(dataset, "test")
    train_flow(config, workdir, load_prior(workdir), withheld)
    return workdir, path, np.asarray(ops.mask), np.asarray(y)


def test_flow_trains_from_measurements_alone(measurement_run):
    workdir, path, mask, y = measurement_run
    with pytest.raises(RuntimeError, match=r"test: the clean signals \(train\) are withheld"):
        SignalsWithheld(load_dataset(_config().data), "test").train
    with open(os.path.join(workdir, "flow", "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert [entry["step"] for entry in logged] == [5, 10]
    # 4 of the 40 measurements held back (N // 10); validation is the objective's value, no PSNR (no truth).
    assert "val_kl_plus_evidence" in logged[-1] and np.isfinite(logged[-1]["val_kl_plus_evidence"])
    assert not any(key.startswith("val_psnr") for entry in logged for key in entry)
    with open(os.path.join(workdir, "flow", "config.json")) as f:
        saved = json.load(f)
    assert saved["flow"]["training"]["measurements"] == os.path.abspath(path)
    sampler = load_sampler(workdir)
    assert sampler.needs_operator


def test_per_measurement_masks_from_nan_or_mask_array(measurement_run, tmp_path, capsys):
    workdir, path, mask, y = measurement_run
    code, stderr = _sample_main(capsys, f"--workdir={workdir}", f"--measurements={path}", "--num_samples=3",
                                f"--out={tmp_path}/a", "--max_figures=2")
    assert code == 0, stderr[-2000:]
    from_nan = np.load(tmp_path / "a" / "samples.npz")["samples"]
    assert from_nan.shape == (40, 3) + SHAPE
    assert sorted(os.listdir(tmp_path / "a" / "figures")) == ["measurement_0000.png", "measurement_0001.png"]
    # The same measurements as y zero-filled with the array 'mask' give the same samples.
    np.savez(tmp_path / "masked.npz", y=np.nan_to_num(y), mask=mask)
    masked = sample_file(workdir, str(tmp_path / "masked.npz"), num_samples=3, out=str(tmp_path / "b"), max_figures=0,
                         log=lambda m: None)
    np.testing.assert_allclose(np.load(masked["samples.npz"])["samples"], from_nan, atol=1e-6)
    # Without the masks the command stops: this task's flow is told each measurement's mask.
    np.save(tmp_path / "bare.npy", np.nan_to_num(y))
    code, stderr = _sample_main(capsys, f"--workdir={workdir}", f"--measurements={tmp_path / 'bare.npy'}",
                                f"--out={tmp_path}/c")
    assert code == 1 and not (tmp_path / "c").exists()
    assert stderr.strip() == (
        "error: operator 'inpaint' has a mask per measurement that the flow is told: give it as the array 'mask' "
        "(N, *S) in the .npz file, or NaN in y where not measured")


def test_prepare_measurements_rules():
    fixed = Inpaint(np.tile(np.array([1.0, 0.0]), 4).reshape(8, 1), 0.1)
    y = np.full((2, 8, 1), 0.5)
    y[:, 1::2] = np.nan
    out, ops = prepare_measurements(y, None, fixed)
    np.testing.assert_array_equal(np.asarray(out)[:, 1::2], 0.0)  # NaN where the fixed mask hides: zero-filled
    np.testing.assert_array_equal(np.asarray(ops.mask), np.broadcast_to(fixed.mask, (2, 8, 1)))
    # A value at a hidden entry is dropped (y is 0 where the mask is 0, as the operator's own measurements).
    out, _ = prepare_measurements(np.full((8, 1), 0.5), None, fixed)
    assert np.asarray(out).shape == (1, 8, 1) and float(np.asarray(out)[0, 1, 0]) == 0.0
    with pytest.raises(ValueError, match="trained for one fixed mask .*measurement 0 differs from it at 4 entries"):
        prepare_measurements(np.full((8, 1), np.nan), None, fixed)
    with pytest.raises(ValueError, match="y is NaN at 1 entries that the mask marks as measured"):
        prepare_measurements(np.where(np.arange(8)[:, None] == 0, np.nan, 0.5), np.ones((8, 1)), fixed)
    with pytest.raises(ValueError, match="mask values must be 0"):
        prepare_measurements(np.zeros((8, 1)), np.full((8, 1), 0.5), fixed)
    with pytest.raises(ValueError, match="infinite"):
        prepare_measurements(np.full((8, 1), np.inf), None, Denoise(0.1, (8, 1)))
    with pytest.raises(ValueError, match="a mask was given, but the task's operator has no mask"):
        prepare_measurements(np.zeros((8, 1)), np.ones((8, 1)), Denoise(0.1, (8, 1)))
    blind = Inpaint(np.ones((8, 1)), 0.1)
    out, ops = prepare_measurements(y, None, blind, blind=True)  # any mask: the flow is not told it
    np.testing.assert_array_equal(np.asarray(out)[:, 1::2], 0.0)
    np.testing.assert_array_equal(np.asarray(ops.mask), np.isfinite(y))  # the given masks, for a likelihood
    assert not ops.show_mask


def test_geometry_round_trip_draws_a_sphere_figure(tmp_path):
    from apd.data import Dataset, grid_faces, sphere_vertices
    from apd.data.base import load_geometry, save_geometry
    from apd.eval.figures import save_dataset_figure

    lat, lon = np.array([60.0, 20.0, -20.0, -60.0]), np.arange(0.0, 360.0, 60.0)
    empty = np.zeros((0, 24, 1), np.float32)
    sphere = Dataset("s", empty, empty, empty, (24, 1), "sphere", {}, vertices=sphere_vertices(lat, lon),
                     faces=grid_faces(lat, 6), lat=lat.astype(np.float32), lon=lon.astype(np.float32),
                     grid_shape=(4, 6))
    back = load_geometry(save_geometry(tmp_path / "geometry.npz", sphere))
    assert (back.kind, back.signal_shape, back.grid_shape) == ("sphere", (24, 1), (4, 6))
    np.testing.assert_array_equal(back.faces, sphere.faces)
    np.testing.assert_array_equal(back.lat, sphere.lat)
    path = save_dataset_figure(tmp_path / "f.png", back, [("mean", np.linspace(0, 1, 24).reshape(1, 24, 1))])
    assert os.path.getsize(path) > 0
