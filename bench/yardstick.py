"""The yardstick: the fastest plain-PyTorch schedule for one federated round's work.

Benchmark seconds move with the machine's state, so a benchmark times this beside our engine,
in the same run, and reports the engine's s/round as a ratio to it. It does the same work as
one round of ``bench/accuracy.py``, with nothing else:

- the same clients (the same train/test indices) and the same model architecture
  (``fl.models.build_model``, a fresh copy; neither ``fl.train`` nor ``fl.simulation`` is
  used), one local epoch (``local_epochs``) of plain SGD with the same batch size and lr over
  each client's training split, then each client's test split evaluated;
- clients spread over ``workers`` (2) forked worker processes, one torch thread each, that
  inherit every client's samples as tensors (channels-last images, channels-last model), and
  take clients largest first as they become free;
- the model travels through shared memory: the global state is one flat float32 buffer every
  worker reads, and each client writes its trained state into its own row of another; the
  aggregation is the plain mean of those rows (of the state dicts), nothing else.

A round's train time runs from handing out the clients until the mean is in place; its
evaluation time from handing out the clients until the last client's accuracy is back.
Reported seconds are the mean over rounds 2+ (round 1 pays for first touches).
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fl.datasets import Dataset
from fl.models import build_model
from fl.partition import ClientIndices
from fl.pfllib import dataset_family

EVAL_BATCH = 128

# What the forked workers inherit (set in the parent just before the pool forks).
_SHARED: dict[str, Any] = {}


@dataclass(frozen=True)
class YardstickRound:
    train_s: float
    eval_s: float
    accuracy: float  # sample-weighted, the mean model on every client's test split
    num_test: int

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s


@dataclass
class YardstickResult:
    rounds: list[YardstickRound] = field(default_factory=list)
    workers: int = 2

    @property
    def timed(self) -> list[YardstickRound]:
        """The rounds the seconds are averaged over: 2+ (all when there is only one)."""
        return self.rounds[1:] or self.rounds

    @property
    def train_s(self) -> float:
        return sum(r.train_s for r in self.timed) / len(self.timed)

    @property
    def eval_s(self) -> float:
        return sum(r.eval_s for r in self.timed) / len(self.timed)

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s


def _views(flat: torch.Tensor, shapes: list[tuple[str, torch.Size]]) -> dict[str, torch.Tensor]:
    views, offset = {}, 0
    for key, shape in shapes:
        n = int(np.prod(shape, dtype=np.int64))
        views[key] = flat[offset : offset + n].view(shape)
        offset += n
    return views


def _init_worker() -> None:
    torch.set_num_threads(1)  # first, before any torch op in the child
    s = _SHARED
    model = build_model(s["model"], s["family"], s["num_classes"], s["head_layers"])
    s["net"] = model.to(memory_format=torch.channels_last)
    s["own"] = s["net"].state_dict()  # live references to the parameters
    s["global"] = _views(s["global_flat"], s["shapes"])
    s["rows"] = [_views(row, s["shapes"]) for row in s["client_flat"]]


def _load_global() -> None:
    with torch.no_grad():
        for key, tensor in _SHARED["own"].items():
            tensor.copy_(_SHARED["global"][key])


def _train(task: tuple[int, int]) -> int:
    client, round_number = task
    s = _SHARED
    x, y = s["clients"][client][:2]
    net = s["net"]
    _load_global()
    optimizer = torch.optim.SGD(net.parameters(), lr=s["lr"], momentum=s["momentum"])
    generator = torch.Generator().manual_seed(s["seed"] * 1_000_003 + round_number * 1009 + client)
    net.train()
    n = int(y.shape[0])
    for _ in range(s["local_epochs"]):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, s["batch_size"]):
            batch = order[start : start + s["batch_size"]]
            loss = F.cross_entropy(net(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        row = s["rows"][client]
        for key, tensor in s["own"].items():
            row[key].copy_(tensor)
    return client


def _evaluate(client: int) -> tuple[int, int, int]:
    s = _SHARED
    x, y = s["clients"][client][2:]
    net = s["net"]
    _load_global()
    net.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, int(y.shape[0]), EVAL_BATCH):
            logits = net(x[start : start + EVAL_BATCH])
            correct += int((logits.argmax(1) == y[start : start + EVAL_BATCH]).sum())
    return client, correct, int(y.shape[0])


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x.contiguous()


def run_yardstick(
    dataset: Dataset,
    splits: list[ClientIndices],
    *,
    lr: float,
    batch_size: int,
    local_epochs: int = 1,
    momentum: float = 0.0,
    rounds: int = 3,
    workers: int = 2,
    model: str = "auto",
    head_layers: int = 1,
    seed: int = 0,
) -> YardstickResult:
    """Time ``rounds`` rounds of the plain schedule on ``splits`` (see the module docstring)."""
    if rounds < 1:
        raise ValueError(f"the yardstick needs at least one round, got {rounds}")
    if "fork" not in multiprocessing.get_all_start_methods():
        raise RuntimeError("the yardstick forks its workers; this platform cannot fork")
    family = dataset_family(dataset.name)
    torch.manual_seed(seed)
    template = build_model(model, family, dataset.num_classes, head_layers)
    state = template.state_dict()
    shapes = [(k, v.shape) for k, v in state.items()]
    size = sum(v.numel() for v in state.values())
    global_flat = torch.empty(size).share_memory_()
    client_flat = torch.empty(len(splits), size).share_memory_()
    torch.cat([v.detach().reshape(-1).float() for v in state.values()], out=global_flat)

    clients = []
    for split in splits:
        train, test = torch.from_numpy(split.train), torch.from_numpy(split.test)
        clients.append((_channels_last(dataset.x[train]), dataset.y[train].contiguous(),
                        _channels_last(dataset.x[test]), dataset.y[test].contiguous()))
    # largest first: with clients taken as workers free up, this keeps both busy to the end
    train_order = sorted(range(len(splits)), key=lambda c: -len(splits[c].train))
    eval_order = sorted(range(len(splits)), key=lambda c: -len(splits[c].test))

    _SHARED.clear()
    _SHARED.update(model=model, family=family, num_classes=dataset.num_classes, head_layers=head_layers,
                   shapes=shapes, global_flat=global_flat, client_flat=client_flat, clients=clients,
                   lr=lr, momentum=momentum, batch_size=batch_size, local_epochs=local_epochs, seed=seed)
    result = YardstickResult(workers=workers)
    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker)
    try:
        pool.map(abs, range(workers))  # the workers are up (forked, model built) before timing
        for round_number in range(1, rounds + 1):
            started = time.perf_counter()
            for _ in pool.imap_unordered(_train, [(c, round_number) for c in train_order]):
                pass
            torch.mean(client_flat, 0, out=global_flat)  # the plain mean of the state dicts
            trained = time.perf_counter()
            evals = list(pool.imap_unordered(_evaluate, eval_order))
            done = time.perf_counter()
            correct, total = sum(e[1] for e in evals), sum(e[2] for e in evals)
            result.rounds.append(YardstickRound(trained - started, done - trained, correct / total, total))
    finally:
        pool.terminate()
        pool.join()
        _SHARED.clear()
    return result
