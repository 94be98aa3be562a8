import numpy as np
import pytest

from fl.partition import class_histogram, client_split, dirichlet, iid, partition, pathological

LABELS = np.repeat(np.arange(10), 100)  # 1,000 samples, 100 per class
np.random.default_rng(0).shuffle(LABELS)


def _assert_disjoint_cover(parts, n, full=True):
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)), "a sample was given to two clients"
    if full:
        assert len(joined) == n


def test_iid_sizes_and_disjoint():
    parts = iid(LABELS, 7, seed=1)
    _assert_disjoint_cover(parts, len(LABELS))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("clients, k", [(20, 2), (10, 3), (5, 1)])
def test_pathological_gives_exactly_k_classes(clients, k):
    parts = pathological(LABELS, clients, k, seed=3)
    # when clients × k < classes, the classes nobody holds are left out
    _assert_disjoint_cover(parts, len(LABELS), full=clients * k >= 10)
    hist = class_histogram(LABELS, parts, 10)
    assert ((hist > 0).sum(axis=1) == k).all()


def test_pathological_20_clients_2_classes_spread_evenly():
    hist = class_histogram(LABELS, pathological(LABELS, 20, 2, seed=0), 10)
    assert ((hist > 0).sum(axis=0) == 4).all()  # every class held by 4 clients
    assert (hist.sum(axis=1) == 50).all()


def test_dirichlet_is_skewed_and_complete():
    parts = dirichlet(LABELS, 10, alpha=0.1, seed=2)
    _assert_disjoint_cover(parts, len(LABELS))
    hist = class_histogram(LABELS, parts, 10)
    assert min(map(len, parts)) >= 10
    # with alpha=0.1 most clients are dominated by few classes
    top_share = hist.max(axis=1) / hist.sum(axis=1)
    assert np.median(top_share) > 0.4


@pytest.mark.parametrize("scheme", ["iid", "pathological", "dirichlet"])
def test_reproducible_and_seed_sensitive(scheme):
    a = partition(LABELS, 10, scheme, seed=5)
    b = partition(LABELS, 10, scheme, seed=5)
    c = partition(LABELS, 10, scheme, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_client_split_is_disjoint_and_sized():
    idx = np.arange(100, 200)
    split = client_split(idx, 0.75, seed=0, client=3)
    assert len(split.train) == 75 and len(split.test) == 25
    assert set(split.train).isdisjoint(split.test)
    assert set(split.train) | set(split.test) == set(idx)
    again = client_split(idx, 0.75, seed=0, client=3)
    assert np.array_equal(split.train, again.train)


def test_bad_arguments():
    with pytest.raises(ValueError, match="classes_per_client"):
        pathological(LABELS, 4, 11, seed=0)
    with pytest.raises(ValueError, match="unknown partition"):
        partition(LABELS, 4, "shards", seed=0)
    with pytest.raises(ValueError, match="clients but only"):
        iid(LABELS[:3], 4, seed=0)
