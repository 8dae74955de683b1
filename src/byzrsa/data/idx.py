"""Reading and writing IDX files, the format MNIST and Fashion-MNIST ship in.

An IDX file is a big-endian header followed by the array's bytes::

    magic   4 bytes: 0x00 0x00 <dtype code> <number of dimensions n>
    dims    n big-endian uint32 sizes
    data    prod(dims) items of the dtype, big-endian, C order

The dtype codes of the format are 0x08 unsigned byte, 0x09 signed byte,
0x0B int16, 0x0C int32, 0x0D float32 and 0x0E float64. MNIST's labels start
with 0x00000801 (ubyte, 1 dimension) and its images with 0x00000803 (ubyte,
3 dimensions). Files may be gzip-compressed; compression is recognised by the
gzip magic bytes ``1f 8b`` rather than by the file name, so a ``.gz`` that was
unpacked in place (or a plain file someone named ``.gz``) still reads.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from byzrsa.errors import ConfigError, DataError

__all__ = ["IDX_DTYPES", "read_idx", "write_idx", "is_gzip"]

# dtype code -> big-endian numpy dtype, as listed by the IDX format description.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def is_gzip(path: str | os.PathLike[str]) -> bool:
    """Return True when the file starts with the gzip magic bytes ``1f 8b``."""
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist; check the path or re-download it") from None
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path} ({exc.strerror or exc}); check its permissions") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"IDX file {path} is a corrupt or truncated gzip file ({exc}); delete it and fetch it again"
            ) from None
    return raw


def read_idx(path: str | os.PathLike[str], *, finite: bool = False) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array.

    Parameters
    ----------
    path
        File to read. Gzip compression is detected from the content.
    finite
        Refuse float data holding NaN or infinite values (images: a model
        trained on them learns nothing and says nothing).

    Returns
    -------
    numpy.ndarray
        Array of shape ``dims`` in native byte order (``uint8`` for MNIST).

    Raises
    ------
    DataError
        The file is missing, not an IDX file (wrong magic number or unknown
        dtype code), truncated, longer than its header says, or (with
        ``finite``) holds non-finite floats. The message names the file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(data)} bytes, too short for a header; fetch it again")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (magic number 0x{data[:4].hex()}, expected 0x0000TTNN with a "
            f"known dtype code TT); check that it is the right file"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"IDX file {path} is truncated inside its header; fetch it again")
    dims = struct.unpack(f">{ndim}I", data[4:header_len]) if ndim else ()
    dtype = IDX_DTYPES[code]
    expected = math.prod(dims) * dtype.itemsize  # Python ints: a forged header cannot overflow the count
    got = len(data) - header_len
    if got < expected:
        raise DataError(
            f"IDX file {path} is truncated: header says {dims} ({expected} data bytes) but it holds {got}; "
            f"fetch it again"
        )
    if got > expected:
        raise DataError(
            f"IDX file {path} has {got - expected} bytes more than its header {dims} describes; "
            f"it is corrupt, fetch it again"
        )
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    arr = arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)
    if finite and arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise DataError(f"IDX file {path} holds {bad} NaN or infinite values; it is corrupt, fetch it again")
    return arr


def _code_for(dtype: np.dtype) -> int:
    for code, idx_dtype in IDX_DTYPES.items():
        if dtype.kind == idx_dtype.kind and dtype.itemsize == idx_dtype.itemsize:
            return code
    valid = ", ".join(str(d.newbyteorder("=")) for d in IDX_DTYPES.values())
    raise ConfigError(f"IDX cannot store dtype {dtype}; convert the array to one of: {valid}")


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file.

    Parameters
    ----------
    path
        Destination. Written through a temporary file and renamed, so a crash
        never leaves a half-written file under this name.
    array
        Array of dtype uint8, int8, int16, int32, float32 or float64, with at
        most 255 dimensions, each smaller than 2**32.
    compress
        Gzip the file. ``None`` (default) compresses when the name ends in ``.gz``.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    path = Path(path)
    arr = np.asarray(array)
    code = _code_for(arr.dtype)
    if arr.ndim > 255 or any(s >= 2**32 for s in arr.shape):
        raise ConfigError(f"IDX cannot store an array of shape {arr.shape}; use at most 255 dims below 2**32")
    big = np.ascontiguousarray(arr, dtype=IDX_DTYPES[code])
    payload = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + big.tobytes()
    if compress is None:
        compress = path.name.endswith(".gz")
    if compress:
        # mtime=0 keeps the output byte-identical across runs (stable checksums).
        payload = gzip.compress(payload, mtime=0)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
