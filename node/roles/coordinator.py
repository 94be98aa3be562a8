"""The entry node's job runner: rounds across supernodes, the global model, pause and resume.

A round r: sign ROUND(r) naming the global base H(r); give that base to every supernode with
edge nodes in the job; have each supernode run its part (``RoundRunner``) before the deadline;
download and check each partial aggregate against the hash the supernode put on the chain; and
average the partials, weighted by samples, into H(r+1), signed in a GLOBAL_MODEL transaction.
With ``openEval`` every edge node then evaluates H(r+1) with its own head.

``pause()`` takes effect between rounds; ``train()`` resumes at the next round. The job's
progress (round, global model, metrics) stays in memory and its history is on the chain.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import grpc

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from config import ConfigError, load_config
from fl.federation import ClientWorker, JobSpec, split_state
from fl.serialize import state_to_bytes, state_views
from fl.names import CLIENT_OPTIONS, OPTION_DEFAULTS
from fl.strategy import ExactSum, Strategy, Update, options_of, strategy_for_job
from fl.train import EvalResult, summarize
from node.chain.rules import Transaction, TxKind, fixed, now_ms
from node.roles.jobs import Job, job_payload
from node.net.errors import refuse
from node.net.model_store import Deliveries
from node.net.streams import ReceivedModel, make_header
from node.net.wire import tx_from_pb, tx_to_pb

if TYPE_CHECKING:
    from node.roles.supernode import Supernode

log = logging.getLogger(__name__)

# trainFL(...) keywords that are friendlier than the config keys they stand for
ALIASES = {"rounds": "gobal_epoch", "clients": "client.amount", "lr": "learn_rate", "batch_size": "BATCH_SIZE",
           "local_epochs": "local_epoch", "eval_every_round": "openEval"}


class JobState(StrEnum):
    """Where the entry node's job is; the console shows the value."""

    IDLE = "idle"  # no job yet
    RUNNING = "running"
    PAUSING = "pausing"  # pause() asked; the round in progress finishes first
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"  # a round failed; train() resumes at that round


class Coordinator:
    def __init__(self, node: Supernode, base_conf: dict[str, Any]) -> None:
        self.node = node  # the entry Supernode
        self.base_conf = base_conf
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="sn-round")
        self.state = JobState.IDLE
        self.error = ""
        self.job: Job | None = None
        self.strategy: Strategy | None = None  # the job's; server optimisers keep their state in it
        self.round = 0  # rounds completed
        self.metrics: list[pb.RoundMetrics] = []
        self.global_model: ReceivedModel | None = None
        self.global_tx: Transaction | None = None
        self._unevaluated: pb.RoundMetrics | None = None  # the last round, until its model is evaluated
        self._pause_requested = False
        self.delivered = Deliveries()  # which supernode holds which model

    # --- console commands -------------------------------------------------------------------------
    def start_job(self, settings: dict[str, str]) -> pb.JobStatus:
        with self._lock:
            if self.state in (JobState.RUNNING, JobState.PAUSING):
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                             f"job {self.job.job_id} is running; pause() it or wait for it to finish")
            overrides = {ALIASES.get(k, k): v for k, v in settings.items()}
            conf = self._job_config(overrides)
            alive = [m.node_id for m in self.node.members.of_role("EN", alive_only=True)]
            wanted = int(conf["client.amount"]) if "client.amount" in overrides else len(alive)
            if not alive or wanted > len(alive):
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                             f"the job wants {wanted} edge nodes but {len(alive)} are alive; start more "
                             f"edge nodes or pass clients=<n>")
            participants = sorted(alive)[:wanted]
            spec = replace(JobSpec.from_config(conf), num_clients=len(participants))
            try:  # a rule that cannot work with this many edge nodes
                strategy = strategy_for_job(spec)
                strategy.check_fits(len(participants))
            except ValueError as exc:
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the job cannot start: {exc}") from None
            job_id = f"job-{now_ms()}"
            try:  # the job's initial model, the same on every node: built before anything is recorded
                worker = ClientWorker(spec, 10, _cpu())
            except ValueError as exc:
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the job's model cannot be built: {exc}") from None
            initial = state_to_bytes(split_state(worker.model.full_state(), worker.shared_keys))
            tx = Transaction.create(TxKind.JOB, job_payload(job_id, spec, participants, conf), self.node.identity)
            self.node.submit(tx)
            self.job, self.strategy = Job.from_tx(tx), strategy
            self.global_model = ReceivedModel.of(make_header(self.node.identity, initial, job_id, 0), initial)
            self.node.models.put(self.global_model)
            self.global_tx, self.round, self.metrics, self.error, self._unevaluated = None, 0, [], "", None
            log.info("job %s: %s on %s, %d rounds, %d edge nodes", job_id, strategy, spec.dataset,
                     spec.rounds, len(participants))
            self._launch()
            return self.status()

    def _job_config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The job's configuration: this node's own (jobs keys only) under the console's
        ``overrides``. The rule's options come from this node's configuration too, but only those
        of the rule the job uses (config refuses an option given for another rule)."""
        base = {k: v for k, v in _job_defaults(self.base_conf).items() if k not in OPTION_DEFAULTS}
        try:
            aggregation = load_config(env={}, overrides={**base, **overrides})["aggregation"]
            inherited = {k: self.base_conf[k] for k in options_of(aggregation) | set(CLIENT_OPTIONS)
                         if k not in overrides}
            return load_config(env={}, overrides={**base, **inherited, **overrides})
        except ConfigError as exc:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    def resume(self) -> pb.JobStatus:
        """train(): resume a paused (or failed) job at its next round; with no job, start one."""
        with self._lock:
            if self.state == JobState.RUNNING:
                return self.status()
            if self.state == JobState.PAUSING:  # the pause has not taken effect yet: cancel it
                self._pause_requested, self.state = False, JobState.RUNNING
                return self.status()
            if self.job is not None and self.state in (JobState.PAUSED, JobState.FAILED):
                self._pause_requested = False
                self._launch()
                return self.status()
        return self.start_job({})

    def pause(self) -> pb.JobStatus:
        with self._lock:
            if self.state == JobState.RUNNING:
                self._pause_requested = True
                self.state = JobState.PAUSING
            elif self.state not in (JobState.PAUSING, JobState.PAUSED):
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"no job is running (state: {self.state})")
            return self.status()

    def stop(self) -> None:
        """Node shutdown: let the round in progress finish (bounded), then stop."""
        self._pause_requested = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def status(self) -> pb.JobStatus:
        job = self.job
        return pb.JobStatus(
            job_id=job.job_id if job else "", state=str(self.state), round=self.round,
            rounds=job.spec.rounds if job else 0, metrics=self.metrics, error=self.error,
            job=tx_to_pb(job.tx) if job else None,
            global_model=tx_to_pb(self.global_tx) if self.global_tx else None)

    def evaluate(self) -> pb.EvalReport:
        if self.job is None or self.global_tx is None:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, "no global model yet: run at least one round")
        return self._evaluate(self.job, self.global_tx)

    # --- the round loop ---------------------------------------------------------------------------
    def _launch(self) -> None:
        self.state, self._pause_requested = JobState.RUNNING, False
        self._thread = threading.Thread(target=self._run, name="job", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        job = self.job
        assert job is not None
        try:
            while self.round < job.spec.rounds:
                if self._pause_requested:
                    self._evaluate_pending(job)  # a paused job shows complete metrics
                    with self._lock:
                        if self._pause_requested:
                            self.state, self._pause_requested = JobState.PAUSED, False
                            log.info("job %s paused after round %d", job.job_id, self.round)
                            return
                self._round(job, self.round + 1)
            self._evaluate_pending(job)
            with self._lock:
                self.state = JobState.DONE
            log.info("job %s done after %d rounds", job.job_id, self.round)
        except Exception as exc:  # noqa: BLE001 - report it; the job can be resumed
            log.exception("job %s failed in round %d", job.job_id, self.round + 1)
            with self._lock:
                self.state, self.error = JobState.FAILED, f"round {self.round + 1}: {exc}"

    def _round(self, job: Job, round_number: int) -> None:
        """One round. With openEval, the edge nodes first evaluate the model they receive (the
        previous round's result) with their own head, in the same call as training: one fan-out
        per round instead of two. The last round's model is evaluated on its own at the end."""
        started = time.perf_counter()
        node, current = self.node, self.global_model
        assert current is not None and self.strategy is not None
        order_payload = {"job_id": job.job_id, "round": round_number, "global_hash": current.header.model_hash}
        if config := self.strategy.configure_train(round_number):  # the clients' options, signed into the order
            order_payload["config"] = config
        order = Transaction.create(TxKind.ROUND, order_payload, node.identity)
        node.submit(order)
        evaluate_first = job.evaluate_every_round and self._unevaluated is not None
        results = self._fan_out(job, order, current, evaluate=False, evaluate_first=evaluate_first)
        if evaluate_first:  # this round's exclusions are its own, not the previous round's
            report = _eval_report(job, round_number - 1, results)
            del report.excluded[:]
            self._finish_metrics(report)
        trained = time.perf_counter()
        excluded, edges, contributing = [], [], []
        for sn, result in results:
            excluded.extend(result.excluded)
            edges.extend(result.edges)
            if result.num_samples:
                contributing.append((sn, result))
        if not contributing:
            raise RuntimeError("no edge node returned a usable update: " +
                               ("; ".join(f"{e.node_id[:8]}: {e.reason}" for e in excluded) or "no participants"))
        for sn, result in contributing:
            self._check_partial(job, sn, result)
        samples = sum(r.num_samples for _, r in contributing)
        reference = state_views(current.data)
        data = state_to_bytes(self.strategy.finalize(reference, self._combine(job, reference, contributing)))
        self.global_model = ReceivedModel.of(
            make_header(node.identity, data, job.job_id, round_number, samples), data)
        node.models.put(self.global_model)
        if current.header.model_hash != self.global_model.header.model_hash:
            node.models.spill(current.header.model_hash)  # superseded: kept on disk, out of memory
        train_loss = sum(e.train_loss * _samples(e) for e in edges) / max(1, sum(_samples(e) for e in edges))
        self.global_tx = Transaction.create(TxKind.GLOBAL_MODEL, {
            "job_id": job.job_id, "round": round_number, "hash": self.global_model.header.model_hash,
            "samples": samples, "metrics": {"train_loss": fixed(train_loss), "updates": str(len(edges))}},
            node.identity)
        node.submit(self.global_tx)
        self.round = round_number
        self._unevaluated = pb.RoundMetrics(
            round=round_number, train_loss=train_loss, seconds=time.perf_counter() - started,
            participants=len(edges), excluded=excluded, global_hash=self.global_model.header.model_hash,
            **{k: math.nan for k in ("acc_weighted", "acc_mean", "acc_min", "acc_max", "loss")})
        log.info("job %s round %d: %d updates, %d left out; %.2f s (train%s %.2f, aggregate %.2f)",
                 job.job_id, round_number, len(edges), len(excluded), time.perf_counter() - started,
                 " + evaluate" if evaluate_first else "", trained - started, time.perf_counter() - trained)
        if not job.evaluate_every_round and round_number < job.spec.rounds:
            self._finish_metrics(None)

    def _combine(self, job: Job, reference: dict[str, Any],
                 contributing: list[tuple[Any, pb.SupernodeResult]]) -> ExactSum | list[Update]:
        """What ``finalize`` takes: the supernodes' partial sums merged (a rule that decomposes; the
        merge is exact, so it equals one sum over every update), or every update itself, fetched
        from the supernode that checked it and checked again here (median, trimmed mean, Krum)."""
        strategy = self.strategy
        if strategy.decomposable:
            total = strategy.accumulator(reference)
            for sn, result in contributing:
                if not result.partial_hash:
                    raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"supernode {sn.node_id} sent no partial sum for a {strategy.name} job")
                state = state_views(self._fetch(sn, result.partial_hash).data)
                total.merge(ExactSum.from_state(state, result.num_samples, reference))
            return total
        updates = []
        for sn, result in contributing:
            for edge in result.edges:
                tx = tx_from_pb(edge.update)
                update = Update(state_views(self._fetch(sn, tx.payload["hash"]).data), tx.payload["samples"],
                                tx.payload["hash"])
                strategy.validate(reference, update)
                updates.append(update)
        return updates

    def _check_partial(self, job: Job, sn: Any, result: pb.SupernodeResult) -> None:
        """A partial aggregate must stand for updates signed by the job's edge nodes that are
        registered with that supernode, and weigh exactly their samples."""
        total = 0
        for edge in result.edges:
            tx = tx_from_pb(edge.update)
            member = self.node.members.get(tx.sender)
            if (tx.kind != TxKind.MODEL_UPDATE or tx.sender not in job.participants or member is None
                    or member.supernode != sn.node_id or tx.payload.get("job_id") != job.job_id
                    or not tx.signed_by(member.public_key)):
                raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                             f"supernode {sn.node_id} reported an update that is not a signed update of its own edge node")
            total += int(tx.payload["samples"])
        if total != result.num_samples:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"supernode {sn.node_id} weighs its partial by {result.num_samples} samples, its updates hold {total}")

    def _evaluate_pending(self, job: Job) -> None:
        """Evaluate the last round's model on its own (end of the job, or a pause)."""
        if self._unevaluated is None or self.global_tx is None:
            return
        started = time.perf_counter()
        report = self._evaluate(job, self.global_tx)
        self._unevaluated.seconds += time.perf_counter() - started
        self._finish_metrics(report)

    def _finish_metrics(self, report: pb.EvalReport | None) -> None:
        """Complete the pending round's metrics with its evaluation and publish them."""
        metrics, self._unevaluated = self._unevaluated, None
        if metrics is None:
            return
        if report is not None and report.edges:
            for key, value in _summary(report).items():
                setattr(metrics, key, value)
            metrics.excluded.extend(report.excluded)
        self.metrics.append(metrics)
        log.info("round %d: accuracy %.4f (mean %.4f), %.2f s", metrics.round, metrics.acc_weighted,
                 metrics.acc_mean, metrics.seconds)

    def _evaluate(self, job: Job, global_tx: Transaction) -> pb.EvalReport:
        model = self.node.models.get(global_tx.payload["hash"])
        if model is None:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, "the global model is no longer held")
        return _eval_report(job, global_tx.payload["round"], self._fan_out(job, global_tx, model, evaluate=True))

    def _fan_out(self, job: Job, authority: Transaction, model: ReceivedModel, evaluate: bool,
                 evaluate_first: bool = False) -> list[tuple[Any, pb.SupernodeResult]]:
        """Run the round (or evaluation) on every alive supernode, this one included."""
        node = self.node
        request = pb.RoundRequest(job=tx_to_pb(job.tx), authority=tx_to_pb(authority), evaluate_only=evaluate,
                                  evaluate_first=evaluate_first, deadline_ms=now_ms() + int(job.round_timeout * 1000))
        supernodes = node.members.of_role("SN", alive_only=True)
        futures = [(sn, self._pool.submit(self._run_on, sn, request, model)) for sn in supernodes]
        results = []
        for sn, future in futures:
            try:
                results.append((sn, future.result()))
            except Exception as exc:  # noqa: BLE001 - a supernode that fails is left out of this round
                log.warning("supernode %s failed the round: %s", sn.node_id[:8], exc)
        return results

    def _run_on(self, sn: Any, request: pb.RoundRequest, model: ReceivedModel) -> pb.SupernodeResult:
        node = self.node
        if sn.node_id == node.node_id:
            return node.rounds.run(request)
        timeout = (request.deadline_ms - now_ms()) / 1000 + 30
        stub = rpc_pb.TrainingStub(node.channels.get(sn.address))
        if not self.delivered.has(sn.node_id, model.header.model_hash):
            stub.DistributeModel(model.stream(), timeout=timeout)
            self.delivered.record(sn.node_id, model.header.model_hash)
        return stub.RunRound(request, timeout=timeout)

    def _fetch(self, sn: Any, model_hash: str) -> ReceivedModel:
        """A partial sum or an update a supernode holds, checked against its hash."""
        local = self.node.models.get(model_hash)
        return local if local is not None else self.node.download(sn.address, model_hash)


def _samples(edge: pb.EdgeResult) -> int:
    return int(tx_from_pb(edge.update).payload["samples"]) if edge.HasField("update") else 0


def _eval_report(job: Job, round_number: int, results: list[tuple[Any, pb.SupernodeResult]]) -> pb.EvalReport:
    """Per-edge-node evaluations (and who was left out) gathered from the supernodes' results."""
    report = pb.EvalReport(job_id=job.job_id, round=round_number)
    evals: list[EvalResult] = []
    for sn, result in results:
        report.excluded.extend(result.excluded)
        for edge in result.edges:
            if not edge.HasField("eval"):
                continue
            ev = EvalResult(edge.eval.correct, edge.eval.loss_sum, edge.eval.num_samples)
            evals.append(ev)
            report.edges.append(pb.EdgeEval(node_id=edge.node_id, supernode=sn.node_id, accuracy=ev.accuracy,
                                            loss=ev.loss, num_samples=ev.num_samples))
    if evals:
        s = summarize(evals)
        report.acc_weighted, report.acc_mean, report.loss = s["acc_weighted"], s["acc_mean"], s["loss"]
    return report


def _summary(report: pb.EvalReport) -> dict[str, float]:
    accs = [e.accuracy for e in report.edges]
    return {"acc_weighted": report.acc_weighted, "acc_mean": report.acc_mean, "acc_min": min(accs),
            "acc_max": max(accs), "loss": report.loss}


def _job_defaults(conf: dict[str, Any]) -> dict[str, Any]:
    """The entry node's configuration as the job's defaults (only keys a job uses)."""
    keys = ("client.amount", "local_epoch", "gobal_epoch", "openEval", "dataset", "learn_rate", "BATCH_SIZE",
            "strategy", "aggregation", "model", "head_layers", "momentum", "partition", "classes_per_client",
            "dirichlet_alpha", "train_fraction", "seed", "round_timeout", *OPTION_DEFAULTS)
    return {k: conf[k] for k in keys}


def _cpu() -> Any:
    import torch

    return torch.device("cpu")
