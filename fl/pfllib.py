"""Read a federated split prepared by PFLlib (github.com/TsingZ0/PFLlib), without pickle.

PFLlib's ``dataset/generate_<Name>.py`` writes a folder such as ``dataset/MNIST/``:

- ``config.json``: ``num_clients``, ``num_classes``, ``non_iid``, ``balance``, ``partition``,
  ``Size of samples for labels in clients`` (per client, ``[label, count]`` pairs over the
  client's train and test samples together), ``alpha``, ``batch_size``;
- ``train/<i>.npz`` and ``test/<i>.npz`` for client ``i`` in ``0..num_clients-1``, each
  written by ``np.savez_compressed(f, data={'x': X, 'y': y})``: one zip member ``data.npy``
  whose array is a 0-d *object* array, i.e. a ``.npy`` header followed by a pickle of that
  array, and so of the dict and its two numpy arrays. PFLlib reads them back with
  ``np.load(..., allow_pickle=True)``, which would run whatever code a pickle names.

Here the zip member's ``.npy`` header is parsed by hand (its dict is read with
:func:`ast.literal_eval`), and the pickle is decoded by the restricted unpickler of
:mod:`fl.datasets` (the one that reads CIFAR's batches): it rebuilds numpy arrays, dtypes and
plain values only, and refuses any other global (``os.system`` …) before calling it. Files
without pickles are read too: a ``data`` member holding a structured array with fields ``x``
and ``y``, or separate ``x`` / ``y`` members (``np.savez(f, x=X, y=y)``).

What PFLlib stores for images (MNIST, FashionMNIST, EMNIST, Cifar10, Cifar100 …): ``x`` is
float32 N×C×H×W after torchvision's ``ToTensor()`` and ``Normalize(0.5, 0.5)`` per channel,
so pixel ``p`` (0..255) is stored as ``(p/255 - 0.5)/0.5`` in [-1, 1]; ``y`` is int64.
:func:`load_pfllib` turns those values back into pixels (exact: they are rounded to the
0..255 levels they came from) and normalises them exactly as :mod:`fl.datasets` normalises
the same family, so a sample from PFLlib and the same sample read by ``load_dataset`` are the
same tensor. See :func:`load_pfllib` for the encodings it recognises.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from fl.datasets import Dataset, DatasetError, _to_dataset, restricted_load
from fl.partition import ClientIndices

PREFIX = "pfllib-"
"""``Dataset.name`` of a PFLlib split: ``pfllib-mnist``, ``pfllib-fashionmnist``, ``pfllib-cifar10``."""

FAMILIES = ("mnist", "fashionmnist", "cifar10")
ENCODINGS = ("auto", "pfllib", "unit", "pixels")

_NPY_MAGIC = b"\x93NUMPY"
_STATISTIC_KEY = "Size of samples for labels in clients"
_CLIENT_FILE = re.compile(r"^(0|[1-9][0-9]*)\.npz$")
# How far a stored value may lie from a 0..255 pixel level and still count as one: PFLlib's
# float32 (p/255 - 0.5)/0.5 maps back to p within ~1e-5.
_LEVEL_TOLERANCE = 1e-3


class PFLlibError(DatasetError):
    """A PFLlib folder or file is missing or malformed; the message names the file."""


def dataset_family(name: str) -> str:
    """The dataset family a :class:`Dataset` name stands for: ``pfllib-mnist`` → ``mnist``;
    our own names (``mnist``, ``digits`` …) are returned unchanged. Models are chosen by
    family (``fl.models.build_model('auto', family)``)."""
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


# --- the .npz / .npy layer -------------------------------------------------------------------


def read_npz(path: str | Path) -> dict[str, object]:
    """Every member of an ``.npz`` file, by key (``data.npy`` → ``data``), with pickling
    disabled: plain arrays are read from their bytes; an object array's pickle is decoded by
    the restricted unpickler (numpy arrays and plain values only)."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise PFLlibError(f"{path} does not exist") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise PFLlibError(f"{path} is not an .npz file (not a zip archive: {exc})") from None
    members: dict[str, object] = {}
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise PFLlibError(f"{path}: member {info.filename!r} is not a .npy array")
            try:
                raw = archive.read(info)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
                raise PFLlibError(f"{path}: cannot read member {info.filename!r}: {exc}") from None
            members[info.filename[: -len(".npy")]] = parse_npy(raw, f"{path} ({info.filename})")
    return members


def parse_npy(raw: bytes, where: str) -> object:
    """One ``.npy`` image: the array, or for object arrays what the restricted unpickler
    rebuilt from the pickle that follows the header. ``where`` names the source in errors."""
    if not raw.startswith(_NPY_MAGIC) or len(raw) < 10:
        raise PFLlibError(f"{where}: not a .npy array (bad magic)")
    major = raw[6]
    if major == 1:
        length, start = int.from_bytes(raw[8:10], "little"), 10
    elif major in (2, 3):
        length, start = int.from_bytes(raw[8:12], "little"), 12
    else:
        raise PFLlibError(f"{where}: unsupported .npy format version {major}.{raw[7]}")
    if len(raw) < start + length:
        raise PFLlibError(f"{where}: truncated .npy header")
    try:
        text = raw[start : start + length].decode("utf-8" if major == 3 else "latin1")
        header = ast.literal_eval(text)
    except (UnicodeDecodeError, ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise PFLlibError(f"{where}: unreadable .npy header: {exc}") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise PFLlibError(f"{where}: .npy header must hold descr, fortran_order and shape, got {header!r}")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(fortran, bool) or not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise PFLlibError(f"{where}: bad shape {shape!r} or fortran_order {fortran!r} in the .npy header")
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (TypeError, ValueError) as exc:
        raise PFLlibError(f"{where}: bad dtype {header['descr']!r} in the .npy header: {exc}") from None
    payload = memoryview(raw)[start + length :]

    if dtype.hasobject:
        if dtype != np.dtype(object):
            raise PFLlibError(f"{where}: structured dtype {dtype} holds Python objects; refused")
        try:
            obj = restricted_load(bytes(payload))
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, MemoryError, RecursionError) as exc:
            raise PFLlibError(f"{where}: refused or malformed pickle: {exc}") from None
        if not isinstance(obj, np.ndarray) or obj.dtype != object or obj.shape != shape:
            raise PFLlibError(
                f"{where}: the pickle after the .npy header is not the object array of shape "
                f"{shape} the header declares (got {type(obj).__name__})"
            )
        return obj

    count = int(np.prod(shape, dtype=np.int64))
    if len(payload) != count * dtype.itemsize:
        raise PFLlibError(
            f"{where}: header declares {dtype} {shape} ({count * dtype.itemsize} bytes) but "
            f"{len(payload)} bytes follow"
        )
    array = np.frombuffer(payload, dtype=dtype, count=count)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def read_client_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of one PFLlib client file, read without pickle (see :func:`read_npz`)."""
    path = Path(path)
    members = read_npz(path)
    if "data" in members:
        data = members["data"]
        if isinstance(data, np.ndarray) and data.dtype == object and data.shape == ():
            content = data.item()
            if not isinstance(content, dict):
                raise PFLlibError(f"{path}: 'data' holds a {type(content).__name__}, expected a dict with 'x' and 'y'")
            content = {k.decode() if isinstance(k, bytes) else k: v for k, v in content.items()}
            if "x" not in content or "y" not in content:
                raise PFLlibError(f"{path}: the 'data' dict has keys {sorted(map(str, content))}, expected 'x' and 'y'")
            x, y = content["x"], content["y"]
        elif isinstance(data, np.ndarray) and data.dtype.names and {"x", "y"} <= set(data.dtype.names):
            x, y = data["x"], data["y"]
        else:
            described = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise PFLlibError(
                f"{path}: 'data' is {described}; expected PFLlib's pickled dict {{'x', 'y'}} or a "
                f"structured array with fields x and y"
            )
    elif "x" in members and "y" in members:
        x, y = members["x"], members["y"]
    else:
        raise PFLlibError(f"{path}: holds {sorted(members)}; expected 'data' (PFLlib's layout) or 'x' and 'y'")
    for key, value in (("x", x), ("y", y)):
        if not isinstance(value, np.ndarray) or value.dtype == object or value.dtype.names:
            described = f"{value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__
            raise PFLlibError(f"{path}: {key} is a {described}; expected a numeric array")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise PFLlibError(f"{path}: y must be a vector of integer labels, got {y.dtype} {y.shape}")
    if x.ndim < 1 or len(x) != len(y):
        raise PFLlibError(f"{path}: x holds {x.shape[0] if x.ndim else 0} samples but y holds {len(y)} labels")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise PFLlibError(f"{path}: x must be numeric, got {x.dtype}")
    return x, y


# --- the folder --------------------------------------------------------------------------------


def read_config(folder: str | Path) -> dict:
    """``config.json`` of a PFLlib folder, checked: ``num_clients`` and ``num_classes``
    (``num_labels`` in some PFLlib versions) are positive integers."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise PFLlibError(f"{path} does not exist: is {folder} a PFLlib dataset folder (e.g. PFLlib/dataset/MNIST)?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PFLlibError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise PFLlibError(f"{path} must hold a JSON object, got {type(config).__name__}")
    if "num_classes" not in config and "num_labels" in config:
        config["num_classes"] = config["num_labels"]
    for key in ("num_clients", "num_classes"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PFLlibError(f"{path}: {key} must be a positive integer, got {value!r}")
    return config


def _client_files(folder: Path, part: str, num_clients: int, config_path: Path) -> list[Path]:
    directory = folder / part
    if not directory.is_dir():
        raise PFLlibError(f"{directory} does not exist: a PFLlib folder has train/ and test/ beside config.json")
    present = {p.name for p in directory.iterdir() if p.name.endswith(".npz")}
    strangers = sorted(n for n in present if not _CLIENT_FILE.match(n))
    if strangers:
        raise PFLlibError(f"{directory}: unexpected file {strangers[0]} (client files are named <i>.npz)")
    numbers = sorted(int(n[:-4]) for n in present)
    missing = [i for i in range(num_clients) if f"{i}.npz" not in present]
    extra = [i for i in numbers if i >= num_clients]
    if missing or extra:
        problem = (f"{directory / f'{missing[0]}.npz'} is missing ({len(missing)} of 0..{num_clients - 1} missing)"
                   if missing else f"{directory / f'{extra[0]}.npz'} is beyond them")
        raise PFLlibError(
            f"{config_path} says num_clients={num_clients} but {directory} holds {len(numbers)} client "
            f"files: {problem}"
        )
    return [directory / f"{i}.npz" for i in range(num_clients)]


def _family_of(shape: tuple[int, ...], path: Path, folder: Path, family: str | None) -> tuple[str, tuple[int, ...]]:
    """(family, N×C×H×W shape tail) for a sample shape, or an error naming the file."""
    mnist_like = {(1, 28, 28), (28, 28), (784,)}
    cifar_like = {(3, 32, 32), (32, 32, 3), (3072,)}
    if shape in mnist_like:
        guessed = "fashionmnist" if "fashion" in folder.resolve().name.lower() else "mnist"
        if family not in (None, "mnist", "fashionmnist"):
            raise PFLlibError(f"{path}: samples of shape {shape} are MNIST-like, not {family}")
        return family or guessed, (1, 28, 28)
    if shape in cifar_like:
        if family not in (None, "cifar10"):
            raise PFLlibError(f"{path}: samples of shape {shape} are CIFAR-like, not {family}")
        return "cifar10", (3, 32, 32)
    raise PFLlibError(
        f"{path}: samples of shape {shape} are neither MNIST-like (1×28×28, 28×28 or 784 values) "
        f"nor CIFAR-like (3×32×32, 32×32×3 or 3,072 values); other PFLlib data sets are not supported"
    )


def _as_nchw(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if x.shape[1:] == (32, 32, 3):  # HWC images
        return x.transpose(0, 3, 1, 2)
    return x.reshape((len(x), *shape))  # N×28×28, N×784, N×3072 (CHW order, as CIFAR's batches)


def _encoding(xs: list[np.ndarray], encoding: str, where: Path) -> str:
    """Which of :data:`ENCODINGS` the stored values use (``auto``: decided over all files)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    nonempty = [x for x in xs if x.size]
    lo = min(float(x.min()) for x in nonempty) if nonempty else 0.0
    hi = max(float(x.max()) for x in nonempty) if nonempty else 0.0
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise PFLlibError(f"{where}: x holds NaN or infinite values")
    if encoding == "auto":
        if all(np.issubdtype(x.dtype, np.integer) for x in xs):
            encoding = "pixels"
        elif lo < 0:
            encoding = "pfllib"
        elif hi <= 1:
            encoding = "unit"
        else:
            encoding = "pixels"
    bounds = {"pfllib": (-1.0, 1.0), "unit": (0.0, 1.0), "pixels": (0.0, 255.0)}[encoding]
    slack = _LEVEL_TOLERANCE * (bounds[1] - bounds[0]) / 255
    if lo < bounds[0] - slack or hi > bounds[1] + slack:
        raise PFLlibError(
            f"{where}: x ranges over {lo:.4g}..{hi:.4g}, outside {bounds[0]:g}..{bounds[1]:g} of the "
            f"{encoding!r} encoding (PFLlib's Normalize(0.5, 0.5) gives -1..1); pass encoding= "
            f"one of {', '.join(ENCODINGS[1:])} if the values were stored another way"
        )
    return encoding


def _to_pixels(x: np.ndarray, encoding: str) -> np.ndarray:
    """Stored values → 0..255 pixel values (exact levels when they came from uint8 pixels)."""
    if encoding == "pixels":
        pixels = x.astype(np.float32)
    elif encoding == "pfllib":
        pixels = (x.astype(np.float64) + 1.0) * 127.5
    else:
        pixels = x.astype(np.float64) * 255.0
    levels = np.rint(pixels)
    if pixels.size == 0 or np.abs(pixels - levels).max() <= _LEVEL_TOLERANCE:
        pixels = levels
    return np.clip(pixels, 0, 255).astype(np.float32)


def load_pfllib(
    folder: str | Path, *, family: str | None = None, encoding: str = "auto"
) -> tuple[Dataset, list[ClientIndices]]:
    """A PFLlib split as one pool and every client's train/test indices into it.

    The pool holds client 0's train samples, then client 0's test samples, then client 1's …
    (PFLlib's client order). Images come out as our loaders make them: float32 N×C×H×W,
    normalised with the mean/std :mod:`fl.datasets` uses for the family, which is inferred
    from the sample shape: 1×28×28 (also N×28×28 or N×784) is MNIST-like — ``fashionmnist``
    when the folder's name contains "fashion", else ``mnist`` (EMNIST too); 3×32×32 (also
    32×32×3 or 3,072 values) is CIFAR-like (``cifar10``; Cifar100 too). ``family`` overrides
    the guess. ``Dataset.name`` is ``pfllib-<family>`` and ``num_classes`` is config.json's.

    ``encoding`` says how ``x`` was stored: ``pfllib`` (PFLlib's ``ToTensor()`` then
    ``Normalize(0.5, 0.5)``: -1..1), ``unit`` (``ToTensor()`` only: 0..1), ``pixels`` (0..255);
    ``auto`` picks ``pixels`` for integer arrays, else ``pfllib`` when any value is negative,
    ``unit`` when all lie in 0..1 and ``pixels`` otherwise, once over all files.

    Checked, with errors naming the file: config.json's num_clients against the files in
    train/ and test/, every client file readable without pickle, x and y of equal length,
    labels in 0..num_classes-1, one sample shape throughout, no empty train or test split,
    and the per-client label counts of config.json (when present) against the files.
    """
    folder = Path(folder)
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    config = read_config(folder)
    config_path = folder / "config.json"
    num_clients, num_classes = config["num_clients"], config["num_classes"]
    train_files = _client_files(folder, "train", num_clients, config_path)
    test_files = _client_files(folder, "test", num_clients, config_path)

    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    splits: list[ClientIndices] = []
    sample_shape: tuple[int, ...] | None = None
    first: Path | None = None
    offset = 0
    for client, paths in enumerate(zip(train_files, test_files)):
        sizes = []
        for path in paths:
            x, y = read_client_file(path)
            if len(y) == 0:
                raise PFLlibError(f"{path}: client {client} has no samples in this split")
            if sample_shape is None:
                sample_shape, first = x.shape[1:], path
            elif x.shape[1:] != sample_shape:
                raise PFLlibError(f"{path}: samples of shape {x.shape[1:]}, but {first} has {sample_shape}")
            if y.min() < 0 or y.max() >= num_classes:
                raise PFLlibError(
                    f"{path}: labels range over {y.min()}..{y.max()}, but {config_path} says "
                    f"num_classes={num_classes} (labels 0..{num_classes - 1})"
                )
            xs.append(x)
            ys.append(y.astype(np.int64))
            sizes.append(len(y))
        splits.append(ClientIndices(
            train=np.arange(offset, offset + sizes[0], dtype=np.int64),
            test=np.arange(offset + sizes[0], offset + sizes[0] + sizes[1], dtype=np.int64),
        ))
        offset += sizes[0] + sizes[1]
    _check_statistic(config, ys, train_files, test_files, config_path)

    assert sample_shape is not None and first is not None
    key, shape = _family_of(sample_shape, first, folder, family)
    encoding = _encoding(xs, encoding, folder)
    pixels = np.concatenate([_to_pixels(_as_nchw(x, shape), encoding) for x in xs])
    dataset = _to_dataset(key, pixels, np.concatenate(ys))
    return dataclasses.replace(dataset, name=PREFIX + key, num_classes=num_classes), splits


def _check_statistic(config: dict, ys: list[np.ndarray], train_files: list[Path],
                     test_files: list[Path], config_path: Path) -> None:
    """config.json's per-client label counts (train + test) must match the files."""
    statistic = config.get(_STATISTIC_KEY)
    if statistic is None:
        return
    if not isinstance(statistic, list) or len(statistic) != len(train_files):
        raise PFLlibError(f"{config_path}: {_STATISTIC_KEY!r} must list {len(train_files)} clients")
    for client, stated in enumerate(statistic):
        try:
            expected = {int(label): int(count) for label, count in stated}
        except (TypeError, ValueError):
            raise PFLlibError(f"{config_path}: {_STATISTIC_KEY!r}[{client}] is not a list of [label, count] pairs") from None
        labels, counts = np.unique(np.concatenate(ys[2 * client : 2 * client + 2]), return_counts=True)
        found = {int(label): int(count) for label, count in zip(labels, counts)}
        if {k: v for k, v in expected.items() if v} != found:
            raise PFLlibError(
                f"{train_files[client]} + {test_files[client]} hold label counts {found}, but "
                f"{config_path} says {expected} for client {client}"
            )
