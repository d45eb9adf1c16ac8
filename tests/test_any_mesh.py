"""Bunny-MNIST on another mesh: digits painted on a generated icosphere train, sample and evaluate end to end;
files that hold no triangle mesh give one clear error."""
from pathlib import Path

import numpy as np
import pytest
import trimesh

from apd.data import load_dataset, load_mesh
from apd.evaluation import run_evaluation
from apd.training.flow import train_flow
from apd.training.prior import train_prior
from configs import bunny_mnist_inpaint, defaults

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def sphere_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mesh") / "icosphere.ply"
    trimesh.creation.icosphere(subdivisions=1).export(path)  # 42 vertices, 80 triangles
    return path


@pytest.mark.skipif(not (DATA / "mnist.npz").exists(), reason="mnist.npz is absent")
def test_bunny_mnist_on_a_generated_mesh_end_to_end(sphere_file, tmp_path):
    config = bunny_mnist_inpaint.get_config()
    config.data.update(path=str(sphere_file), mnist_path=str(DATA), max_train=64, max_eval=4, vertex_order="walk")
    config.prior.model.update(width=32, num_blocks=1)
    config.prior.training.update(num_steps=10, batch_size=8, warmup_steps=2, log_every=5, ckpt_every=10,
                                 num_samples=2, sample_steps=5)
    config.flow.model = defaults.realnvp(num_couplings=2, width=16, linear_shift=False)
    config.flow.training.update(num_steps=4, batch_size=4, warmup_steps=1, log_every=2, eval_every=4,
                                eval_num_measurements=2, eval_num_samples=2, ckpt_every=4)
    dataset = load_dataset(config.data)
    assert dataset.signal_shape == (42, 1) and dataset.faces.shape == (80, 3)
    assert dataset.split["consecutive_edge_fraction"]["walk"] == 1.0
    workdir = str(tmp_path)
    prior = train_prior(config, workdir, dataset)
    train_flow(config, workdir, prior, dataset)
    results = run_evaluation(config, workdir, num_measurements=2, num_samples=8)
    table = results["sets"]["test"]
    assert table["num_measurements"] == 2 and table["signals"]["apd_samples"].shape[::2] == (2, 42)
    apd = {row["samples"]: row for row in table["rows"] if row["method"] == "apd"}
    assert sorted(apd) == [1, 8] and all(np.isfinite(row["psnr"]) for row in apd.values())
    assert np.isfinite(table["signals"]["apd_samples"]).all()


def test_files_without_triangles_are_refused_in_one_line(tmp_path):
    cloud = tmp_path / "cloud.ply"
    trimesh.PointCloud(np.random.default_rng(0).uniform(size=(10, 3))).export(cloud)
    garbage = tmp_path / "garbage.ply"
    garbage.write_text("not a mesh")
    for path in (cloud, garbage):
        with pytest.raises(ValueError) as err:
            load_mesh(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
