"""Reading PFLlib's split folders without pickle (fl/pfllib.py), and the bench's yardstick."""

import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fl.datasets import _to_dataset
from fl.pfllib import PFLlibError, dataset_family, load_pfllib, read_client_file
from pfllib_helpers import make_clients, pfllib_values, write_pfllib

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_np_load(monkeypatch):
    """The loader must never hand a file to np.load (which could be told to unpickle)."""
    def refuse(*args, **kwargs):
        raise AssertionError("np.load was called")
    monkeypatch.setattr(np, "load", refuse)


def test_loads_a_pfllib_mnist_split_exactly_as_our_loader_normalises(tmp_path, no_np_load):
    clients = make_clients([(15, 5), (30, 10), (9, 3)])
    ds, splits = load_pfllib(write_pfllib(tmp_path / "MNIST", clients))
    assert ds.name == "pfllib-mnist" and dataset_family(ds.name) == "mnist"
    assert ds.num_classes == 10 and ds.x.shape == (72, 1, 28, 28) and ds.x.dtype == torch.float32
    assert ds.y.dtype == torch.int64
    assert [(len(s.train), len(s.test)) for s in splits] == [(15, 5), (30, 10), (9, 3)]
    # client 0's train, client 0's test, client 1's train …: disjoint, covering the pool
    assert splits[1].train.tolist() == list(range(20, 50)) and splits[1].test.tolist() == list(range(50, 60))
    assert sorted(np.concatenate([np.concatenate([s.train, s.test]) for s in splits]).tolist()) == list(range(72))
    for (x_tr, y_tr, x_te, y_te), split in zip(clients, splits):
        assert ds.y[split.train].tolist() == y_tr.tolist() and ds.y[split.test].tolist() == y_te.tolist()
        # the pixels PFLlib normalised come back bit-identical to load_dataset('mnist')'s tensors
        ours = _to_dataset("mnist", x_te, y_te)
        assert torch.equal(ds.x[split.test], ours.x)
    assert torch.allclose(ds.x[0], (torch.from_numpy(clients[0][0][0]).float() / 255 - 0.1307) / 0.3081)


@pytest.mark.parametrize("shape", [(28, 28), (784,)])
def test_flat_and_channel_less_mnist_layouts(tmp_path, shape):
    clients = make_clients([(6, 2), (4, 2)])
    reshaped = [(a.reshape(len(a), *shape) if a.ndim == 4 else a for a in c) for c in clients]
    ds, _ = load_pfllib(write_pfllib(tmp_path / "MNIST", [tuple(c) for c in reshaped]))
    reference, _ = load_pfllib(write_pfllib(tmp_path / "ref", clients))
    assert ds.x.shape == (14, 1, 28, 28) and torch.equal(ds.x, reference.x)


def test_cifar_like_and_fashion_folders_use_their_family_normalisation(tmp_path):
    clients = make_clients([(5, 2), (5, 2)], shape=(3, 32, 32))
    ds, splits = load_pfllib(write_pfllib(tmp_path / "Cifar10", clients))
    assert ds.name == "pfllib-cifar10" and ds.x.shape == (14, 3, 32, 32)
    assert torch.equal(ds.x[splits[1].train], _to_dataset("cifar10", clients[1][0], clients[1][1]).x)
    fashion = make_clients([(5, 2)])
    ds, _ = load_pfllib(write_pfllib(tmp_path / "FashionMNIST", fashion))
    assert ds.name == "pfllib-fashionmnist"
    assert torch.equal(ds.x[:5], _to_dataset("fashionmnist", fashion[0][0], fashion[0][1]).x)
    ds, _ = load_pfllib(tmp_path / "FashionMNIST", family="mnist")
    assert ds.name == "pfllib-mnist"


def test_other_encodings_and_pickle_free_layouts(tmp_path, no_np_load):
    clients = make_clients([(6, 3), (4, 2)], classes=62)
    reference, ref_splits = load_pfllib(write_pfllib(tmp_path / "ref", clients, num_classes=62))
    assert reference.num_classes == 62

    def structured(f, x, y):  # one plain structured array under 'data'
        arr = np.empty(len(y), dtype=[("x", x.dtype, x.shape[1:]), ("y", y.dtype)])
        arr["x"], arr["y"] = x, y
        np.savez_compressed(f, data=arr)

    layouts = {
        "separate": dict(save=lambda f, x, y: np.savez(f, x=x, y=y)),
        "structured": dict(save=structured),
        "uint8": dict(encode=lambda p: p),
        "unit": dict(encode=lambda p: p.astype(np.float32) / 255),
    }
    for name, how in layouts.items():
        ds, splits = load_pfllib(write_pfllib(tmp_path / name, clients, num_classes=62, **how))
        assert torch.equal(ds.x, reference.x) and torch.equal(ds.y, reference.y), name
        assert [s.test.tolist() for s in splits] == [s.test.tolist() for s in ref_splits]


def _npz_with_pickle(path, payload: bytes) -> None:
    """An npz whose data.npy is an object-array header followed by ``payload``."""
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (), }"
    header = header + " " * (118 - len(header)) + "\n"
    npy = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1") + payload
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.npy", npy)


class _Evil:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_a_pickle_naming_a_forbidden_global_is_refused_without_running_it(tmp_path, no_np_load):
    folder = write_pfllib(tmp_path / "MNIST", make_clients([(4, 2), (4, 2)]))
    marker = tmp_path / "pwned"
    # the exploit as a whole payload, and hidden inside PFLlib's dict next to real arrays
    _npz_with_pickle(folder / "test" / "1.npz", pickle.dumps(_Evil(f"touch {marker}"), protocol=4))
    with pytest.raises(PFLlibError, match=r"test/1\.npz.*refus.*(posix|os)\.system"):
        load_pfllib(folder)
    buf = io.BytesIO()
    np.savez_compressed(buf, data={"x": np.zeros((2, 1, 28, 28), np.float32), "y": np.zeros(2, np.int64)})
    raw = zipfile.ZipFile(buf).read("data.npy")
    honest = raw[raw.index(b"\n") + 1 :]
    poisoned = pickle.dumps({"x": _Evil(f"touch {marker}"), "y": np.zeros(2, np.int64)}, protocol=4)
    assert honest != poisoned
    _npz_with_pickle(folder / "train" / "0.npz", poisoned)
    with pytest.raises(PFLlibError, match=r"train/0\.npz.*refus"):
        read_client_file(folder / "train" / "0.npz")
    assert not marker.exists()


def test_missing_and_surplus_client_files_are_named(tmp_path):
    folder = write_pfllib(tmp_path / "MNIST", make_clients([(4, 2)] * 3))
    (folder / "test" / "1.npz").unlink()
    with pytest.raises(PFLlibError, match=r"num_clients=3 .*test/1\.npz is missing"):
        load_pfllib(folder)

    folder = write_pfllib(tmp_path / "more", make_clients([(4, 2)] * 3), config={"num_clients": 4})
    with pytest.raises(PFLlibError, match=r"num_clients=4 but .*train holds 3 client files.*train/3\.npz is missing"):
        load_pfllib(folder)
    folder = write_pfllib(tmp_path / "fewer", make_clients([(4, 2)] * 3), config={"num_clients": 2})
    with pytest.raises(PFLlibError, match=r"num_clients=2 but .*holds 3 client files.*train/2\.npz is beyond"):
        load_pfllib(folder)
    (folder / "config.json").unlink()
    with pytest.raises(PFLlibError, match=r"config\.json does not exist"):
        load_pfllib(folder)


def test_malformed_files_are_refused_with_the_file_and_the_problem(tmp_path):
    clients = make_clients([(4, 2), (4, 2)])
    folder = write_pfllib(tmp_path / "lengths", clients)
    with open(folder / "train" / "1.npz", "wb") as f:
        np.savez_compressed(f, data={"x": pfllib_values(clients[1][0]), "y": clients[1][1][:3]})
    with pytest.raises(PFLlibError, match=r"train/1\.npz: x holds 4 samples but y holds 3 labels"):
        load_pfllib(folder)

    folder = write_pfllib(tmp_path / "labels", clients, num_classes=2)
    with pytest.raises(PFLlibError, match=r"\.npz: labels range over .*num_classes=2"):
        load_pfllib(folder)

    folder = write_pfllib(tmp_path / "shapes", clients)
    with open(folder / "test" / "1.npz", "wb") as f:
        np.savez_compressed(f, data={"x": np.zeros((2, 3, 32, 32), np.float32), "y": clients[1][3]})
    with pytest.raises(PFLlibError, match=r"test/1\.npz: samples of shape \(3, 32, 32\), but .*train/0\.npz has"):
        load_pfllib(folder)

    folder = write_pfllib(tmp_path / "statistic", clients)
    conf = json.loads((folder / "config.json").read_text())
    conf["Size of samples for labels in clients"][0][0][1] += 1
    (folder / "config.json").write_text(json.dumps(conf))
    with pytest.raises(PFLlibError, match=r"train/0\.npz \+ .*test/0\.npz hold label counts"):
        load_pfllib(folder)

    folder = write_pfllib(tmp_path / "junk", clients)
    (folder / "train" / "0.npz").write_bytes(b"not a zip")
    with pytest.raises(PFLlibError, match=r"train/0\.npz is not an \.npz file"):
        load_pfllib(folder)

    folder = write_pfllib(tmp_path / "range", clients, encode=lambda p: p.astype(np.float32) * 3 - 400)
    with pytest.raises(PFLlibError, match=r"outside -1\.\.1 of the 'pfllib' encoding"):
        load_pfllib(folder)

    folder = write_pfllib(tmp_path / "shape", make_clients([(4, 2)], shape=(3, 64, 64)))
    with pytest.raises(PFLlibError, match=r"train/0\.npz: samples of shape \(3, 64, 64\) are neither"):
        load_pfllib(folder)


def test_yardstick_runs_on_a_pfllib_split(tmp_path):
    """In a fresh interpreter: the yardstick forks its workers, and a process forked from this
    one (its torch and gRPC threads from earlier tests) can deadlock in the child."""
    folder = write_pfllib(tmp_path / "MNIST", make_clients([(20, 6), (12, 4), (8, 4)]))
    script = f"""
import json
from bench.yardstick import run_yardstick
from fl.pfllib import load_pfllib
ds, splits = load_pfllib({str(folder)!r})
r = run_yardstick(ds, splits, lr=0.01, batch_size=4, rounds=2, workers=2)
print(json.dumps({{"workers": r.workers, "train": [x.train_s for x in r.rounds], "eval": [x.eval_s for x in r.rounds],
                  "acc": [x.accuracy for x in r.rounds], "num_test": r.rounds[-1].num_test,
                  "total": r.total_s, "sum": r.train_s + r.eval_s}}))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert len(result["train"]) == 2 and result["workers"] == 2
    assert all(t > 0 for t in result["train"] + result["eval"])
    assert result["total"] == pytest.approx(result["sum"])
    assert all(0.0 <= a <= 1.0 for a in result["acc"])
    assert result["num_test"] == 14


def test_files_pickled_by_numpy_1_and_older_protocols_load(tmp_path, no_np_load):
    """numpy 1.x names numpy.core.multiarray (numpy 2: numpy._core); older PFLlib runs may
    have pickled with protocol 2 or 3."""
    clients = make_clients([(4, 2), (3, 2)])
    reference, _ = load_pfllib(write_pfllib(tmp_path / "ref", clients))
    folder = write_pfllib(tmp_path / "MNIST", clients)
    for i, (x_tr, y_tr, x_te, y_te) in enumerate(clients):
        for part, x, y, protocol in (("train", x_tr, y_tr, 2), ("test", x_te, y_te, 3)):
            content = np.array({"x": pfllib_values(x), "y": y}, dtype=object)
            payload = pickle.dumps(content, protocol=protocol).replace(b"numpy._core.", b"numpy.core.")
            assert b"numpy.core.multiarray" in payload
            _npz_with_pickle(folder / part / f"{i}.npz", payload)
    ds, _ = load_pfllib(folder)
    assert torch.equal(ds.x, reference.x) and torch.equal(ds.y, reference.y)
