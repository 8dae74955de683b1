"""The cache-block sizing of the engines (byzrsa.engines.blocking)."""

from __future__ import annotations

import pytest

from byzrsa.engines.blocking import BLOCK_BYTES_ENV, block_rows, cache_bytes, row_blocks
from byzrsa.errors import ConfigError


def test_block_rows_divides_the_budget_and_is_at_least_one():
    assert block_rows(100, 1000) == 10
    assert block_rows(100, 1099) == 10
    assert block_rows(10**9, 1000) == 1
    assert block_rows(0, 7) == 7


def test_block_rows_reads_the_environment(monkeypatch):
    monkeypatch.setenv(BLOCK_BYTES_ENV, "2K")
    assert block_rows(1024) == 2
    monkeypatch.setenv(BLOCK_BYTES_ENV, "4096")
    assert block_rows(1024) == 4
    monkeypatch.setenv(BLOCK_BYTES_ENV, "1MiB")
    assert block_rows(1024) == 1024
    monkeypatch.setenv(BLOCK_BYTES_ENV, "lots")
    with pytest.raises(ConfigError, match=BLOCK_BYTES_ENV):
        block_rows(1024)
    monkeypatch.delenv(BLOCK_BYTES_ENV)
    assert block_rows(1) == cache_bytes() >= 1


def test_block_rows_refuses_a_budget_below_one_byte():
    with pytest.raises(ConfigError):
        block_rows(8, 0)


@pytest.mark.parametrize("n, rows", [(0, 3), (1, 3), (7, 3), (9, 3), (5, 100), (4, 1)])
def test_row_blocks_cover_every_row_once_in_order(n, rows):
    blocks = list(row_blocks(n, rows))
    covered = [i for s in blocks for i in range(s.start, s.stop)]
    assert covered == list(range(n))
    assert all(0 < s.stop - s.start <= rows for s in blocks)


def test_sysfs_cpu_lists_are_read():
    from byzrsa.engines.blocking import _cpu_list

    assert _cpu_list("0") == [0]
    assert _cpu_list("0-3,8\n") == [0, 1, 2, 3, 8]
    assert _cpu_list("") == []
