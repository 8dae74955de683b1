"""Data layer: dataset sources, the IDX file format, and splits over workers.

>>> from byzrsa.data import load_dataset, partition
>>> ds = load_dataset("mnist-sample", pixels="raw")          # doctest: +SKIP
>>> shards = partition(ds.train_y, m=20, scheme="by-label")   # doctest: +SKIP
"""

from byzrsa.data.idx import read_idx, write_idx
from byzrsa.data.partition import SCHEMES, partition
from byzrsa.data.sources import (
    FASHION_MNIST_FILES,
    MNIST_FILES,
    PIXELS,
    SOURCES,
    Dataset,
    cache_dir,
    download_idx_files,
    find_idx_files,
    load_dataset,
    make_synthetic,
)

__all__ = [
    "Dataset",
    "SOURCES",
    "PIXELS",
    "load_dataset",
    "make_synthetic",
    "SCHEMES",
    "partition",
    "read_idx",
    "write_idx",
    "cache_dir",
    "find_idx_files",
    "download_idx_files",
    "MNIST_FILES",
    "FASHION_MNIST_FILES",
]
