"""Tiny dataset folders written the way PFLlib writes them (tests must not depend on ../shared)."""

from __future__ import annotations

import json

import numpy as np
import torch


def pfllib_values(pixels: np.ndarray) -> np.ndarray:
    """What PFLlib stores: torchvision's ToTensor() then Normalize(0.5, 0.5), in float32."""
    return ((torch.from_numpy(pixels).float().div(255) - 0.5) / 0.5).numpy()


def make_clients(sizes, shape=(1, 28, 28), classes=10, seed=0):
    """Per client (train pixels, train labels, test pixels, test labels), uint8 pixels."""
    rng = np.random.default_rng(seed)
    clients = []
    for n_train, n_test in sizes:
        own = rng.choice(classes, 2, replace=False)  # 2 classes per client, as pathological
        clients.append(tuple(
            a for n in (n_train, n_test)
            for a in (rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.choice(own, n).astype(np.int64))
        ))
    return clients


def write_pfllib(folder, clients, num_classes=10, encode=pfllib_values, save=None, config=None):
    """A folder as PFLlib's save_file writes it: config.json, train/<i>.npz, test/<i>.npz, each
    ``np.savez_compressed(f, data={'x': x, 'y': y})``."""
    (folder / "train").mkdir(parents=True, exist_ok=True)
    (folder / "test").mkdir(parents=True, exist_ok=True)
    statistic = []
    for i, (x_tr, y_tr, x_te, y_te) in enumerate(clients):
        for part, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
            with open(folder / part / f"{i}.npz", "wb") as f:
                if save is None:
                    np.savez_compressed(f, data={"x": encode(x), "y": y})
                else:
                    save(f, encode(x), y)
        labels, counts = np.unique(np.concatenate([y_tr, y_te]), return_counts=True)
        statistic.append([[int(label), int(count)] for label, count in zip(labels, counts)])
    conf = {"num_clients": len(clients), "num_classes": num_classes, "non_iid": True, "balance": False,
            "partition": "pat", "Size of samples for labels in clients": statistic, "alpha": 0.1,
            "batch_size": 10}
    conf.update(config or {})
    (folder / "config.json").write_text(json.dumps(conf))
    return folder
