import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from fl.datasets import DatasetError, find_idx_pairs, load_dataset, read_idx


def write_idx(path, array: np.ndarray, gz: bool = True) -> None:
    """Write an IDX file the way MNIST's are: magic 0x0000 08 ndim, big-endian sizes, bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if gz else open)(path, "wb").write(data)


def fake_mnist(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n).astype(np.uint8)


def test_read_idx_gz_and_raw(tmp_path):
    images, _ = fake_mnist(5, 0)
    write_idx(tmp_path / "a.gz", images)
    write_idx(tmp_path / "a", images, gz=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), images)
    assert np.array_equal(read_idx(tmp_path / "a"), images)


def test_mnist_standard_layout_concatenates_train_and_test(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    tr_x, tr_y = fake_mnist(30, 1)
    te_x, te_y = fake_mnist(10, 2)
    write_idx(raw / "train-images-idx3-ubyte.gz", tr_x)
    write_idx(raw / "train-labels-idx1-ubyte.gz", tr_y)
    write_idx(raw / "t10k-images-idx3-ubyte", te_x, gz=False)
    write_idx(raw / "t10k-labels-idx1-ubyte", te_y, gz=False)
    ds = load_dataset("mnist", tmp_path)
    assert ds.x.shape == (40, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64
    assert sorted(ds.y.tolist()) == sorted(tr_y.tolist() + te_y.tolist())
    # pairs are read in name order (t10k before train), normalised with MNIST's mean/std
    expected = (torch.from_numpy(te_x[0]).float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(ds.x[0, 0], expected)


def test_any_idx_pair_in_data_dir(tmp_path):
    x, y = fake_mnist(12, 3)
    write_idx(tmp_path / "mnist10k-images-idx3-ubyte.gz", x)
    write_idx(tmp_path / "mnist10k-labels-idx1-ubyte.gz", y)
    assert [p[0].name for p in find_idx_pairs(tmp_path)] == ["mnist10k-images-idx3-ubyte.gz"]
    ds = load_dataset("fashionmnist", tmp_path)
    assert len(ds) == 12 and ds.input_shape == (1, 28, 28)


def test_missing_files_name_the_path_and_the_source(tmp_path):
    with pytest.raises(DatasetError, match=rf"no mnist IDX files found in {tmp_path}.*yann.lecun.com"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(DatasetError, match=r"cifar-10-batches-py.*cifar-10-python.tar.gz"):
        load_dataset("cifar", tmp_path)
    with pytest.raises(DatasetError, match="unknown dataset 'svhn'"):
        load_dataset("svhn", tmp_path)


def test_malformed_idx_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DatasetError, match="bad magic"):
        read_idx(tmp_path / "bad")
    x, y = fake_mnist(4, 4)
    write_idx(tmp_path / "t-images-idx3-ubyte", x, gz=False)
    data = (tmp_path / "t-images-idx3-ubyte").read_bytes()
    (tmp_path / "t-images-idx3-ubyte").write_bytes(data[:-10])
    with pytest.raises(DatasetError, match="declares shape"):
        read_idx(tmp_path / "t-images-idx3-ubyte")
    write_idx(tmp_path / "t-images-idx3-ubyte", x, gz=False)
    write_idx(tmp_path / "t-labels-idx1-ubyte", y[:3], gz=False)
    with pytest.raises(DatasetError, match="4 images but .* has 3 labels"):
        load_dataset("mnist", tmp_path)


def write_cifar_batch(path, n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """A batch shaped like the real files: a dict with bytes keys, pickled with protocol 2."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, n).tolist()
    batch = {b"batch_label": b"testing batch", b"labels": labels, b"data": data,
             b"filenames": [b"x.png"] * n}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=2))
    return data, labels


def test_cifar10_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    d1, l1 = write_cifar_batch(folder / "data_batch_1", 6, 0)
    d2, l2 = write_cifar_batch(folder / "test_batch", 4, 1)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x.shape == (10, 3, 32, 32)
    assert ds.y.tolist() == l1 + l2
    red = (d1[0, :1024].reshape(32, 32) / 255.0 - 0.4914) / 0.2470
    assert torch.allclose(ds.x[0, 0], torch.from_numpy(red).float(), atol=1e-5)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": []}, protocol=2))
    with pytest.raises(DatasetError, match="refusing to load"):
        load_dataset("cifar10", tmp_path)


def test_digits_loads_offline():
    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 1, 8, 8)
    assert set(ds.y.tolist()) == set(range(10))
    assert -1.0 <= float(ds.x.min()) and float(ds.x.max()) <= 1.0


def test_big_endian_idx_values_come_back_native(tmp_path):
    values = np.array([1, -2, 300], dtype=">i4")
    header = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 3)
    (tmp_path / "v").write_bytes(header + values.tobytes())
    got = read_idx(tmp_path / "v")
    assert got.dtype.isnative and got.tolist() == [1, -2, 300]
    assert torch.from_numpy(got).tolist() == [1, -2, 300]


def test_images_without_labels_file_is_named(tmp_path):
    x, _ = fake_mnist(3, 5)
    write_idx(tmp_path / "set-images-idx3-ubyte.gz", x)
    with pytest.raises(DatasetError, match="no labels file beside it: expected set-labels-idx1-ubyte.gz"):
        load_dataset("mnist", tmp_path)


def test_cifar_bad_labels_and_missing_entries(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data = np.zeros((2, 3072), dtype=np.uint8)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": data, b"labels": [0, 12]}, protocol=2))
    with pytest.raises(DatasetError, match="labels must lie in 0..9"):
        load_dataset("cifar10", tmp_path)
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": data}, protocol=2))
    with pytest.raises(DatasetError, match="lacks the 'labels' entry"):
        load_dataset("cifar10", tmp_path)
    (folder / "data_batch_1").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DatasetError, match="not a CIFAR-10 python batch"):
        load_dataset("cifar10", tmp_path)


def test_available_datasets_are_found_by_their_files_alone(tmp_path):
    from fl.datasets import available_datasets

    assert available_datasets(tmp_path / "missing") == ["digits"]
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), dtype=np.uint8))
    assert available_datasets(tmp_path) == ["digits"]  # images without labels cannot be loaded
    write_idx(raw / "train-labels-idx1-ubyte.gz", np.zeros(2, dtype=np.uint8))
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"")
    (tmp_path / "config.json").write_text("{}")
    assert available_datasets(tmp_path) == ["cifar10", "digits", "fashionmnist", "pfllib"]


def test_digits_are_scikit_learns_read_without_importing_it():
    import subprocess
    import sys

    import numpy as np
    from sklearn.datasets import load_digits

    from fl.datasets import _load_digits

    images, labels = _load_digits()
    bunch = load_digits()
    assert np.array_equal(images, bunch.images.astype(np.float32)) and np.array_equal(labels, bunch.target)
    imported = subprocess.run([sys.executable, "-c", "import sys; from fl.datasets import _load_digits; _load_digits(); "
                               "print('sklearn' in sys.modules)"], capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "False"  # an edge node's process stays without scikit-learn
