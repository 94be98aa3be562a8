"""The standalone simulation: a server and N clients in one program, no network.

Clients run one after another, or spread over worker processes of one thread each:
small-batch CPU training is bound by per-step overhead, so processes beat threads (see the
README's performance notes). Every client's round is seeded by (job seed, round, client), so a
run repeats exactly with the same settings; a different worker count changes only the float
summation order (threads per process), not which samples or seeds are used.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from fl.datasets import Dataset
from fl.federation import ClientWorker, JobSpec, client_data, client_indices, job_data, make_worker
from fl.memory import keep_freed_memory
from fl.models import StateDict
from fl.partition import ClientIndices, class_histogram
from fl.strategy import Strategy, Update
from fl.serialize import model_hash, state_from_bytes, state_to_bytes
from fl.train import ClientData, EvalResult, TrainStats, resolve_device, summarize


@dataclass
class RoundMetrics:
    round: int
    acc_weighted: float
    acc_mean: float
    acc_min: float
    acc_max: float
    loss: float
    train_loss: float
    seconds: float
    local_acc_weighted: float | None = None
    client_acc: list[float] = field(default_factory=list)
    privacy: dict[str, str] | None = None  # a DP job: the round's mechanism, noise, clip norm, ε so far
    scores: dict[str, dict[str, Any]] | None = None  # scores != off: each client's (fl.scores.Score as a dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON; rounds that were not evaluated hold None, not NaN."""
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in self.__dict__.items()}


@dataclass
class SimulationResult:
    job: JobSpec
    rounds: list[RoundMetrics]
    global_state: StateDict
    personal_states: list[StateDict]
    histogram: list[list[int]]
    num_train: list[int]
    num_test: list[int]
    stopped: str = ""  # why the job stopped before its last round (a privacy budget spent)

    @property
    def best_accuracy(self) -> float:
        """The best evaluated round (rounds skipped with openEval=False hold NaN)."""
        return max(r.acc_weighted for r in self.rounds if not math.isnan(r.acc_weighted))

    @property
    def final_accuracy(self) -> float:
        return self.rounds[-1].acc_weighted

    @property
    def seconds_per_round(self) -> float:
        return sum(r.seconds for r in self.rounds) / len(self.rounds)


# --- worker processes -------------------------------------------------------------------------
# State a worker process needs for every task: set once (inherited by fork, or set in-process).
# Tensors cross the process boundary as safetensors bytes, the same encoding the network uses:
# one memcpy each way, where pickled tensors would each go through a shared-memory handshake.
_CONTEXT: dict[str, Any] = {}


def _init_worker(job: JobSpec, clients: list[ClientData], num_classes: int, model_path: str) -> None:
    # One thread, set before any torch op: small batches gain nothing from more, and an
    # OpenMP thread team must never be started in a process forked from a threaded parent.
    torch.set_num_threads(1)
    _CONTEXT["worker"] = make_worker(job, num_classes, torch.device("cpu"), model_path)
    _CONTEXT["clients"] = clients


@dataclass(frozen=True)
class _TrainOutcome:
    client: int
    shared: bytes
    personal: bytes
    stats: TrainStats
    local_eval: EvalResult | None


def _train_task(args: tuple[int, int, bytes, bytes, bool, dict[str, str]]) -> _TrainOutcome:
    client, round_number, shared, personal, local_eval, config = args
    worker: ClientWorker = _CONTEXT["worker"]
    result = worker.train_round(client, _CONTEXT["clients"][client], round_number,
                                state_from_bytes(shared), state_from_bytes(personal), local_eval, config)
    return _TrainOutcome(client, state_to_bytes(result.shared), state_to_bytes(result.personal),
                         result.stats, result.local_eval)


def _eval_task(args: tuple[int, bytes, bytes]) -> EvalResult:
    client, shared, personal = args
    return _CONTEXT["worker"].evaluate(client, _CONTEXT["clients"][client], state_from_bytes(shared),
                                       state_from_bytes(personal))


class _Runner:
    """Maps tasks over clients in this process or in a pool of worker processes."""

    def __init__(self, job: JobSpec, clients: list[ClientData], num_classes: int,
                 device: torch.device, workers: int, model_path: str = "") -> None:
        keep_freed_memory()  # here and in the workers, which inherit it when forked
        self.pool: ProcessPoolExecutor | None = None
        workers = min(workers, len(clients))
        can_fork = "fork" in multiprocessing.get_all_start_methods()
        if workers > 1 and device.type == "cpu" and can_fork:
            # fork: workers inherit the clients' tensors instead of receiving copies
            self.pool = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("fork"),
                initializer=_init_worker,
                initargs=(job, clients, num_classes, model_path),
            )
        else:
            _CONTEXT["worker"] = make_worker(job, num_classes, device, model_path)
            _CONTEXT["clients"] = clients

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        if self.pool is None:
            return map(fn, tasks)
        return self.pool.map(fn, tasks)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        _CONTEXT.clear()


def default_workers(num_clients: int) -> int:
    return max(1, min(os.cpu_count() or 1, num_clients))


def run_simulation(
    conf: dict[str, Any],
    on_round: Callable[[RoundMetrics], None] | None = None,
    dataset: Dataset | None = None,
    splits: list[ClientIndices] | None = None,
) -> SimulationResult:
    """Run the job described by ``conf`` (see ``config.my_conf``) and return its metrics.
    ``dataset`` (and ``splits``, e.g. a PFLlib split) save loading them again; by default they
    come from the job (``fl.federation.job_data``).

    The server side is the job's strategy alone: every round ``configure_train`` gives the
    clients' training options, and ``aggregate`` turns their updates (each named by the SHA-256
    of the bytes it came back as) into the next global shared state."""
    job = JobSpec.from_config(conf)
    strategy = job.get_strategy()
    strategy.check_fits(job.num_clients)  # before any data is loaded or trained
    device = resolve_device(conf["device"])
    if dataset is None:
        dataset, splits = job_data(job, conf["data_dir"], conf["model_path"])
    elif splits is None:
        splits = client_indices(dataset.y.numpy(), job)
    clients = [client_data(dataset, s, device) for s in splits]
    strategy = job.get_strategy(min(c.num_train for c in clients))  # (DP-SGD's accounting needs the sizes)
    histogram = class_histogram(dataset.y.numpy(), [s.train for s in splits], dataset.num_classes)

    server = make_worker(job, dataset.num_classes, torch.device("cpu"), conf["model_path"])
    if isinstance(server, ClientWorker):  # (a language model's input is checked as it loads the text)
        job.check_model_fits(dataset.input_shape)  # (a PFLlib split's images, say, may differ in size)
    personal_bytes = [state_to_bytes(server.initial_personal(i)) for i in range(len(clients))]
    global_shared = server.initial_shared()
    shared = state_to_bytes(global_shared)  # encoded once per round

    workers = conf["workers"] or default_workers(job.num_clients)
    scorer = _Scorer(conf["scores"], job, strategy, server, dataset, splits) if conf["scores"] != "off" else None
    runner = _Runner(job, clients, dataset.num_classes, device, workers, conf["model_path"])
    rounds: list[RoundMetrics] = []
    stopped: str | None = None
    try:
        for round_number in range(1, job.rounds + 1):
            started = time.perf_counter()
            if (stopped := strategy.can_run(round_number)) is not None:  # a privacy budget spent
                break
            config = strategy.configure_train(round_number)
            tasks = [(i, round_number, shared, personal_bytes[i], conf["local_OpenEval"], config)
                     for i in range(len(clients))]
            results: list[_TrainOutcome] = list(runner.map(_train_task, tasks))
            for result in results:
                personal_bytes[result.client] = result.personal
            scores = None
            if server.shared_keys:  # local: nothing is shared, nothing to aggregate
                updates = [Update(state_from_bytes(r.shared), r.stats.num_samples, model_hash(r.shared))
                           for r in results]
                if scorer is not None:  # (before aggregate: a server optimiser's state must be the round's own)
                    scores = scorer.score(round_number, global_shared, updates, [len(r.shared) for r in results])
                global_shared = strategy.aggregate(global_shared, updates)
                shared = state_to_bytes(global_shared)

            last = round_number == job.rounds
            if conf["openEval"] or last:
                evals = list(runner.map(_eval_task, [(i, shared, personal_bytes[i]) for i in range(len(clients))]))
                summary = summarize(evals)
                client_acc = [e.accuracy for e in evals if e.num_samples]  # (one sample: none to test)
            else:
                summary = {k: float("nan") for k in ("acc_weighted", "acc_mean", "acc_min", "acc_max", "loss")}
                client_acc = []
            total_train = sum(r.stats.num_samples for r in results)
            local = [r.local_eval for r in results if r.local_eval is not None]
            metrics = RoundMetrics(
                round=round_number,
                train_loss=sum(r.stats.loss * r.stats.num_samples for r in results) / total_train,
                seconds=time.perf_counter() - started,
                local_acc_weighted=summarize(local)["acc_weighted"] if local else None,
                client_acc=client_acc,
                privacy=strategy.round_record().get("privacy"),
                scores=scores,
                **summary,
            )
            rounds.append(metrics)
            if on_round is not None:
                on_round(metrics)
    finally:
        runner.close()
    return SimulationResult(
        job=job,
        rounds=rounds,
        global_state=global_shared,
        personal_states=[state_from_bytes(b) for b in personal_bytes],
        histogram=histogram.tolist(),
        num_train=[c.num_train for c in clients],
        num_test=[c.num_test for c in clients],
        stopped=stopped or "",
    )


class _Scorer:
    """The simulation's contribution scores (``fl.scores``), per round, on the scorer's validation
    set (``fl.scores.validation_utility``)."""

    def __init__(self, method: str, job: JobSpec, strategy: Strategy, server: ClientWorker, dataset: Dataset,
                 splits: list[ClientIndices]) -> None:
        from fl.scores import RoundScorer, has_utility, validation_utility

        self.strategy = strategy
        utility = validation_utility(job, dataset, splits, server.shared_keys) if has_utility(job) else None
        self.scorer = RoundScorer(method, utility, job)

    def score(self, round_number: int, reference: StateDict, updates: list[Update],
              sizes: list[int]) -> dict[str, dict[str, Any]]:
        checked = {str(i): (self.strategy.validate(reference, u), sizes[i], u.num_samples) for i, u in enumerate(updates)}
        scores, validation = self.scorer.score(round_number, self.strategy, reference, checked)
        self.scorer.commit(scores, validation)
        return {client: dataclasses.asdict(score) for client, score in scores.items()}
