"""Seeded, reproducible partitions of one dataset among clients.

Every function takes the label vector and a seed and returns one index array per client; no
sample is given to two clients. :func:`client_split` then gives each client its own
train/test split drawn from its own distribution. Because everything derives from the seed,
a client (an edge node) can compute only its own part and still agree with everyone else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fl.names import PARTITIONS


@dataclass(frozen=True)
class ClientIndices:
    """The sample indices a client reads: its own train and test split, and the job's public set
    (distillation; the same for every client, empty otherwise)."""

    train: np.ndarray
    test: np.ndarray
    public: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def iid(labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle and cut into ``num_clients`` nearly equal parts."""
    _check_clients(labels, num_clients)
    order = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(part) for part in np.array_split(order, num_clients)]


def pathological(
    labels: np.ndarray, num_clients: int, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    """Each client gets samples of exactly ``classes_per_client`` distinct classes.

    Client ``i`` holds classes ``perm[(i*k + j) mod C]`` for ``j < k`` (``perm`` a seeded
    permutation of the classes), so classes are spread evenly over clients; each class's
    samples are shuffled and cut evenly among the clients that hold it.
    """
    _check_clients(labels, num_clients)
    classes = np.unique(labels)
    k = classes_per_client
    if not 1 <= k <= len(classes):
        raise ValueError(f"classes_per_client={k} must lie in 1..{len(classes)}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(classes)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for client in range(num_clients):
        for j in range(k):
            holders[int(perm[(client * k + j) % len(classes)])].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for cls in classes:
        owners = holders[int(cls)]
        if not owners:
            continue
        members = rng.permutation(np.flatnonzero(labels == cls))
        for owner, chunk in zip(owners, np.array_split(members, len(owners))):
            parts[owner].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Per class, client shares drawn from Dirichlet(alpha); redrawn until every client has
    at least ``min_size`` samples (or as many as the data allows)."""
    _check_clients(labels, num_clients)
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    need = min(min_size, len(labels) // num_clients)
    for _ in range(1000):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for cls in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for client, chunk in enumerate(np.split(members, cuts)):
                parts[client].append(chunk)
        result = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(r) for r in result) >= need:
            return result
    raise ValueError(
        f"could not give each of {num_clients} clients {need} samples with alpha={alpha}; "
        f"raise alpha or lower the number of clients"
    )


def _check_clients(labels: np.ndarray, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"need at least one client, got {num_clients}")
    if num_clients > len(labels):
        raise ValueError(f"{num_clients} clients but only {len(labels)} samples")


def partition(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    seed: int,
    classes_per_client: int = 2,
    alpha: float = 0.1,
) -> list[np.ndarray]:
    """Dispatch to the named scheme (:data:`PARTITIONS`)."""
    labels = np.asarray(labels)
    if scheme == "iid":
        return iid(labels, num_clients, seed)
    if scheme == "pathological":
        return pathological(labels, num_clients, classes_per_client, seed)
    if scheme == "dirichlet":
        return dirichlet(labels, num_clients, alpha, seed)
    raise ValueError(f"unknown partition {scheme!r}; choose one of {', '.join(PARTITIONS)}")


def client_split(
    indices: np.ndarray, train_fraction: float, seed: int, client: int
) -> ClientIndices:
    """Shuffle one client's indices (seeded per client) and cut train/test."""
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction}")
    order = np.random.default_rng([seed, client]).permutation(indices)
    cut = int(round(len(order) * train_fraction))
    cut = min(max(cut, 1), len(order) - 1) if len(order) > 1 else len(order)
    return ClientIndices(train=order[:cut], test=order[cut:])


def class_histogram(labels: np.ndarray, parts: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """clients × classes matrix of sample counts."""
    labels = np.asarray(labels)
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])
