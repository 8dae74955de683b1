"""byzrsa.blas.bmm: the batched product through NumPy's or torch's BLAS, the same product to rounding."""

from __future__ import annotations

import pytest
import torch

from byzrsa import blas
from byzrsa.engines.cpu import blas_threads
from byzrsa.errors import ConfigError


@pytest.fixture(params=["numpy", "torch"])
def library(request, monkeypatch):
    monkeypatch.setenv(blas.BLAS_ENV, request.param)
    blas.library.cache_clear()
    yield request.param
    blas.library.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bmm_is_the_product(library, dtype):
    assert blas.numpy_products() == (library == "numpy")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 10, 33, generator=gen, dtype=dtype)
    b = torch.randn(5, 33, 7, generator=gen, dtype=dtype)
    expected = (a.double() @ b.double()).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for left, right in ((a, b), (a.transpose(1, 2).contiguous().transpose(1, 2), b), (a, b.transpose(1, 2).contiguous().transpose(1, 2)),
                        (a[:, :, ::3], b[:, ::3])):  # row-major, column-major, and strided (copied)
        want = expected if left.shape == a.shape else (left.double() @ right.double()).to(dtype)
        got = blas.bmm(left, right)
        assert got.dtype == dtype and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    out = torch.empty(5, 10, 7, dtype=dtype)
    assert blas.bmm(a, b, out=out) is out
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)


def test_the_automatic_choice_takes_numpy_with_one_torch_thread_only(monkeypatch):
    monkeypatch.delenv(blas.BLAS_ENV, raising=False)
    monkeypatch.setattr(blas, "_vendor", lambda: "AuthenticAMD")
    blas.library.cache_clear()
    threads = torch.get_num_threads()
    try:
        mkl = "mkl" in torch.__config__.show().lower()
        assert blas.library() == ("auto" if mkl else "torch")
        torch.set_num_threads(1)
        assert blas.numpy_products() == mkl
        torch.set_num_threads(2)  # OpenBLAS's threads and torch's would wait for each other's cores
        assert not blas.numpy_products()
    finally:
        torch.set_num_threads(threads)
        blas.library.cache_clear()


def test_an_unknown_library_is_refused(monkeypatch):
    monkeypatch.setenv(blas.BLAS_ENV, "atlas")
    blas.library.cache_clear()
    with pytest.raises(ConfigError, match=blas.BLAS_ENV):
        blas.library()
    blas.library.cache_clear()


def test_blas_threads_sets_and_restores_numpys_threads():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    with blas_threads(1):
        assert all(p["num_threads"] == 1 for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas")
    assert [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"] == before
