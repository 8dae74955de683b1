"""IDX reader/writer: round trips and every kind of corrupt file."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from byzrsa.data.idx import is_gzip, read_idx, write_idx
from byzrsa.errors import ConfigError, DataError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path, dtype, suffix):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((7, 5, 3)) * 50).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3-ubyte{suffix}", arr)
    assert is_gzip(path) == (suffix == ".gz")
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@settings(max_examples=30, deadline=None)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from([np.dtype(d) for d in DTYPES]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    ),
    compress=st.booleans(),
)
def test_round_trip_any_shape(tmp_path_factory, arr, compress):
    path = tmp_path_factory.mktemp("idx") / "x"
    write_idx(path, arr, compress=compress)
    out = read_idx(path)
    assert out.shape == arr.shape and out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)  # NaNs compare equal here


def test_mnist_layout(tmp_path):
    labels = np.array([3, 1, 4], dtype=np.uint8)
    path = write_idx(tmp_path / "l", labels)
    raw = path.read_bytes()
    assert raw[:8] == bytes.fromhex("00000801") + struct.pack(">I", 3)
    images = np.zeros((2, 28, 28), np.uint8)
    raw = write_idx(tmp_path / "i", images).read_bytes()
    assert raw[:4] == bytes.fromhex("00000803")
    assert struct.unpack(">3I", raw[4:16]) == (2, 28, 28)
    assert len(raw) == 16 + 2 * 28 * 28


def test_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_without_suffix = write_idx(tmp_path / "plain-name", arr, compress=True)
    plain_with_suffix = write_idx(tmp_path / "gz-name.gz", arr, compress=False)
    np.testing.assert_array_equal(read_idx(gz_without_suffix), arr)
    np.testing.assert_array_equal(read_idx(plain_with_suffix), arr)


def _idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


CORRUPT = {
    "truncated data": _idx_bytes(np.zeros((4, 3), np.uint8))[:-1],
    "truncated header": bytes([0, 0, 8, 3]) + struct.pack(">I", 4),
    "too short": b"\x00\x00",
    "wrong magic": b"\x12\x34" + _idx_bytes(np.zeros(3, np.uint8))[2:],
    "unknown dtype code": bytes([0, 0, 0x0A, 1]) + struct.pack(">I", 1) + b"\x00",
    "trailing bytes": _idx_bytes(np.zeros(3, np.uint8)) + b"\x00",
}


@pytest.mark.parametrize("kind", sorted(CORRUPT))
@pytest.mark.parametrize("gz", [False, True])
def test_corrupt_files_raise_data_error_naming_file(tmp_path, kind, gz):
    data = CORRUPT[kind]
    path = tmp_path / f"bad-{kind.replace(' ', '_')}"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match=str(path.name)) as info:
        read_idx(path)
    assert "\n" not in str(info.value)


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.arange(1000, dtype=np.uint8) % 7))[:-20])
    with pytest.raises(DataError, match="cut.gz"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope")


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ConfigError, match="cannot store dtype"):
        write_idx(tmp_path / "x", np.zeros(3, np.complex64))
    assert not list(tmp_path.iterdir())
