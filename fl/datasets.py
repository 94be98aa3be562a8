"""Datasets read straight into tensors, without torchvision.

Each loader returns one pool of samples (the source's train and test parts together): the
partitioner then gives every client its own train/test split from its own distribution, as
personalised-FL benchmarks do. Images are normalised in one batched operation.

Files:
- ``digits``: scikit-learn's bundled 8×8 digits (offline, 1,797 samples).
- ``mnist`` / ``fashionmnist``: IDX files (``.gz`` or raw) under ``<data_dir>/MNIST/raw`` or
  ``<data_dir>/FashionMNIST/raw``, or any ``*-images-idx3-ubyte`` / ``*-labels-idx1-ubyte``
  pair directly in ``<data_dir>``.
- ``cifar10``: ``<data_dir>/cifar-10-batches-py`` (the "python version"), read with a
  restricted unpickler that only builds numpy arrays and plain containers.
"""

from __future__ import annotations

import functools
import gzip
import io
import pickle
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

from fl.names import DATASET_ALIASES as ALIASES
from fl.names import DATASETS

_SOURCES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/ (train/t10k images and labels, IDX .gz)",
    "fashionmnist": "https://github.com/zalandoresearch/fashion-mnist (data/fashion/*.gz)",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (extract it)",
}
# (mean, std) per channel, applied after scaling pixels to [0, 1].
_NORMALISATION = {
    "digits": ((0.5,), (0.5,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message says which and what to do."""


@dataclass(frozen=True)
class Dataset:
    """All samples of a dataset as tensors: ``x`` float32 N×C×H×W, ``y`` int64 N."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.y.shape[0])


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return key


def load_dataset(name: str, data_dir: str | Path = "data") -> Dataset:
    """Load ``name`` (see :data:`DATASETS`) into normalised tensors."""
    key = canonical_name(name)
    if key == "digits":
        images, labels = _load_digits()
    elif key == "cifar10":
        images, labels = load_cifar10_arrays(Path(data_dir))
    else:
        images, labels = _load_idx_dataset(key, Path(data_dir))
    return _to_dataset(key, images, labels)


def _to_dataset(key: str, images: np.ndarray, labels: np.ndarray) -> Dataset:
    """uint8-style pixels (N×H×W or N×C×H×W, range 0..scale) → normalised float tensors."""
    import torch  # (here: listing the datasets a folder holds needs no torch)

    scale = 16.0 if key == "digits" else 255.0
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    mean, std = _NORMALISATION[key]
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    x = (x / scale - mean_t) / std_t
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return Dataset(name=key, x=x.contiguous(), y=y, num_classes=10)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    table = _digits_table()
    return table[:, :-1].reshape(-1, 8, 8).astype(np.float32), table[:, -1].astype(int)


@functools.lru_cache(maxsize=1)
def _digits_table() -> np.ndarray:
    """scikit-learn's bundled digits, read from its file as ``sklearn.datasets.load_digits``
    reads it, without importing scikit-learn (tens of MiB and a second of start-up in every edge
    node process); parsed once per process (20 ms: the forked edge nodes of ``--fork`` share the
    parent's), read-only."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # (finds the package without running it)
    if spec is None or not spec.submodule_search_locations:
        raise OSError("the digits dataset comes with scikit-learn, which is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as rows:
        table = np.loadtxt(rows, delimiter=",")
    table.setflags(write=False)
    return table


# --- IDX (MNIST's format) -------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip or raw) into a numpy array of the declared type and shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise DatasetError(f"IDX file {path} does not exist") from None
    except (OSError, EOFError) as exc:
        raise DatasetError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes) "
            f"but the file holds {len(data) - header} bytes of data"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)  # torch takes native order only


def load_idx_pair(images_path: str | Path, labels_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one images/labels IDX pair and check that they belong together."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DatasetError(
            f"{images_path} / {labels_path}: expected N×H×W images and N labels, "
            f"got shapes {images.shape} and {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels"
        )
    return images, _check_labels(labels, labels_path)


def _check_labels(labels: np.ndarray, source: Path | str) -> np.ndarray:
    """Class labels as int64 in 0..9, or a DatasetError naming the file."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{source}: labels must be a vector of integers, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{source}: labels must lie in 0..9, found {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def find_idx_pairs(directory: Path) -> list[tuple[Path, Path]]:
    """Every ``<prefix>-images-idx3-ubyte[.gz]`` in ``directory`` with its labels file."""
    pairs = []
    for images in sorted(directory.glob("*-images-idx3-ubyte*")):
        if images.suffix not in ("", ".gz"):
            continue
        prefix = images.name.split("-images-idx3-ubyte")[0]
        candidates = [directory / f"{prefix}-labels-idx1-ubyte{s}" for s in (".gz", "")]
        labels = next((c for c in candidates if c.exists()), None)
        if labels is None:
            raise DatasetError(f"{images} has no labels file beside it: expected {candidates[0].name}")
        pairs.append((images, labels))
    return pairs


def available_datasets(data_dir: str | Path, model_path: str | Path = "") -> list[str]:
    """The datasets :func:`load_dataset` finds in ``data_dir``, by their files alone (nothing is
    read): what an edge node tells its supernode when it registers, so a job is not started on
    nodes that cannot load its data. ``pfllib`` stands for a PFLlib split (its ``config.json``);
    with a language model at ``model_path``, ``stdlib`` (always there) and ``text`` (*.jsonl or
    *.txt files in ``data_dir``)."""
    data_dir = Path(data_dir)
    found = ["digits"]  # scikit-learn's, always there
    for key in ("mnist", "fashionmnist"):
        try:
            if any(directory.is_dir() and find_idx_pairs(directory) for directory in _idx_dirs(key, data_dir)):
                found.append(key)
        except (DatasetError, OSError):  # an images file without labels: not loadable
            pass
    if _cifar_batches(data_dir):
        found.append("cifar10")
    if (data_dir / "config.json").is_file():
        found.append("pfllib")
    if str(model_path):
        found.append("stdlib")
        if any(data_dir.glob("*.jsonl")) or any(data_dir.glob("*.txt")):
            found.append("text")
    return sorted(found)


def _idx_dirs(key: str, data_dir: Path) -> list[Path]:
    folder = "MNIST" if key == "mnist" else "FashionMNIST"
    return [data_dir / folder / "raw", data_dir / folder, data_dir]


def _load_idx_dataset(key: str, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    candidates = _idx_dirs(key, data_dir)
    for directory in candidates:
        pairs = find_idx_pairs(directory) if directory.is_dir() else []
        if pairs:
            arrays = [load_idx_pair(i, l) for i, l in pairs]
            return (
                np.concatenate([a[0] for a in arrays]),
                np.concatenate([a[1] for a in arrays]),
            )
    raise DatasetError(
        f"no {key} IDX files found in {' or '.join(str(c) for c in candidates)}: expected "
        f"train-images-idx3-ubyte.gz with train-labels-idx1-ubyte.gz (and t10k-…), or any "
        f"<name>-images-idx3-ubyte[.gz] / <name>-labels-idx1-ubyte[.gz] pair. "
        f"Get them from {_SOURCES[key]} and pass --data-dir."
    )


# --- CIFAR-10 (python pickles, read safely) ---------------------------------------------------

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds numpy arrays and builtin containers only; any other global is refused."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def restricted_load(data: bytes) -> object:
    """Unpickle ``data`` allowing only numpy arrays and plain Python values."""
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = restricted_load(path.read_bytes())
        if not isinstance(batch, dict):
            raise ValueError("no dict inside")
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = _check_labels(np.asarray(batch["labels"]), path)
    except DatasetError:
        raise
    except KeyError as exc:
        raise DatasetError(f"{path} lacks the {exc} entry of a CIFAR-10 batch") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as exc:
        raise DatasetError(f"{path} is not a CIFAR-10 python batch: {exc}") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{path}: expected N×3072 pixels and N labels, got {data.shape} and {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _cifar_batches(data_dir: Path) -> list[Path]:
    """The CIFAR-10 batch files present in ``data_dir``."""
    folder = data_dir / "cifar-10-batches-py"
    return [folder / n for n in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if (folder / n).exists()]


def load_cifar10_arrays(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    present = _cifar_batches(data_dir)
    if not present:
        raise DatasetError(
            f"no CIFAR-10 batches in {data_dir / 'cifar-10-batches-py'}: expected data_batch_1..5 and test_batch. "
            f"Get them from {_SOURCES['cifar10']} and pass --data-dir."
        )
    arrays = [_read_cifar_batch(p) for p in present]
    return np.concatenate([a[0] for a in arrays]), np.concatenate([a[1] for a in arrays])
