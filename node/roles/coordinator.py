"""The entry node's job runner: rounds across supernodes, the global model, pause and resume.

A round r: sign ROUND(r) naming the global base H(r) and the strategy's client options; give
that base to every supernode with edge nodes in the job; have each supernode run its part
(``RoundRunner``) before the deadline; check each supernode's result against its signed
AGGREGATE (its edge nodes' signed updates of this round, each once, their sample total) and fetch
its exact partial sum (a rule that decomposes) or every update it lists (median, trimmed mean,
Krum); a supernode whose result does not hold is left out of the round (an EXCLUDED
transaction). The job's strategy then makes H(r+1) (``finalize``), signed in a GLOBAL_MODEL
transaction that names the AGGREGATEs it combined, and submitted together with every record
the round combined (the edge nodes' MODEL_UPDATEs, the supernodes' AGGREGATEs and EXCLUDEDs, its
own EXCLUDEDs): one block holds the whole round, or none of it (a failed attempt leaves only its
ROUND order and a ROUND_FAILED). With ``openEval`` every edge node then evaluates H(r+1) with its
own head.

A round changes the job's state (global model, round, server-optimiser state) only once its
GLOBAL_MODEL is sealed in a block (the global model and the strategy's state are on disk before),
so a round that fails can be run again, and the job lives on the chain: a restarted entry node
takes it up where the last sealed GLOBAL_MODEL left it (``recover``), running again the round that
was under way. ``pause()`` takes effect between rounds; ``resume()`` goes on at the next round.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from config import ConfigError, load_config, owner_problem
from fl.datasets import canonical_name
from fl.federation import JobSpec, job_data
from fl.serialize import model_hash, state_to_bytes, state_views
from fl.names import COMMON_OPTIONS
from fl.strategy import ExactSum, InvalidUpdate, Strategy, Update, options_of, strategy_for_job
from fl.train import EvalResult, summarize
from node.chain.rules import Transaction, TxKind, check_payload, fixed, now_ms
from node.chain.store import StoreError
from node.roles.checkpoint import JobCheckpoint
from node.roles.split import check_split_fits
from node.roles.jobs import (Job, check_model_update, initial_model, prepare_model, job_payload, recorded_number, seconds_left,
                             sign_order, signed_train_loss)
from node.roles.membership import edge_member
from node.roles.scoring import JobScorer, RoundScores
from node.net.errors import refuse, status_for
from node.net.model_store import Deliveries
from node.net.streams import ReceivedModel, make_header
from node.net.wire import tx_from_pb, tx_to_pb

if TYPE_CHECKING:
    from node.roles.supernode import Supernode

log = logging.getLogger(__name__)

SEAL_SLICE_S = 5.0  # a round waiting for its GLOBAL_MODEL to be sealed says so this often
RETRY_CAP_S = 30.0  # the longest wait before another attempt at a failed round (2, 4, 8 … s)

# trainFL(...) keywords that are friendlier than the config keys they stand for
ALIASES = {"rounds": "gobal_epoch", "clients": "client.amount", "lr": "learn_rate", "batch_size": "BATCH_SIZE",
           "local_epochs": "local_epoch", "eval_every_round": "openEval"}


class LedgerOutage(RuntimeError):
    """The entry node's ledger database stayed down past ``ledger_outage_s``: the job pauses."""


@dataclass
class _Unsealed:
    """A round whose GLOBAL_MODEL is in the pool but not yet in a block: it counts once sealed."""

    round: int
    strategy: Strategy
    global_model: ReceivedModel
    global_tx: Transaction
    previous_hash: str
    metrics: pb.RoundMetrics
    scored: RoundScores | None = None  # contribution scores (they count once the round does)


class JobState(StrEnum):
    """Where the entry node's job is; the console shows the value."""

    IDLE = "idle"  # no job yet
    RUNNING = "running"
    PAUSING = "pausing"  # pause() asked; the round in progress finishes first
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"  # a round failed; resume() goes on at that round
    STOPPED = "stopped"  # its strategy refused the next round (a privacy budget spent): for good


class Coordinator:
    def __init__(self, node: Supernode, base_conf: dict[str, Any], jobs_dir: Path | None = None) -> None:
        """``jobs_dir``: where each job's checkpoint is kept (``<home>/jobs``; None: nowhere, a
        restart does not resume the job)."""
        self.node = node  # the entry Supernode
        self.base_conf = base_conf
        self.jobs_dir = jobs_dir
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
        self._scorer: JobScorer | None = None  # the job's contribution scores (scores != off)
        self._pause_requested = False
        self._stop_waiting = threading.Event()  # ends the wait before another attempt (pause, shutdown)
        self._unsealed: _Unsealed | None = None  # a round done but not yet on the chain
        self.delivered = Deliveries()  # which supernode holds which model

    # --- console commands -------------------------------------------------------------------------
    def start_job(self, settings: dict[str, str]) -> pb.JobStatus:
        with self._lock:
            if self.state in (JobState.RUNNING, JobState.PAUSING):
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                             f"job {self.job.job_id} is running; pause() it or wait for it to finish")
            overrides = {ALIASES.get(k, k): v for k, v in settings.items()}
            conf = self._job_config(overrides)
            participants = self._participants(conf, "client.amount" in overrides)
            spec = replace(JobSpec.from_config(conf), num_clients=len(participants))
            try:  # a rule that cannot work with this many edge nodes
                strategy = strategy_for_job(spec)
                strategy.check_fits(len(participants))
            except ValueError as exc:
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the job cannot start: {exc}") from None
            job_id = f"job-{now_ms()}"
            if self.node.ledger.store.existing_jobs([job_id]):  # a clock set back: the id is taken
                job_id = f"job-{now_ms()}-{self.node.ledger.head().height + 1}"
            try:  # the job's initial model, the same on every node: built before anything is recorded
                spec.check_model_fits()
                check_split_fits(spec)
                spec, initial = prepare_model(spec, self.base_conf["model_path"])
            except (ValueError, OSError) as exc:
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the job's model cannot be built: {exc}") from None
            if conf["scores"] != "off" and strategy.decomposable and not conf["recompute_partials"]:
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "scores need every update at the entry node: "
                             "set recompute_partials=True (the default) or scores=off")
            samples = None if conf["own_data"] else self._shard_sizes(spec)
            if spec.dp == "dpsgd":  # accounted on the edge node with the fewest samples: they must be known
                if samples is None:
                    raise refuse(grpc.StatusCode.INVALID_ARGUMENT, "dp=dpsgd cannot be accounted in an own_data job "
                                 "(the edge nodes' sample counts are not known); use the job's partition")
                try:
                    strategy = strategy_for_job(spec, min(samples))
                    strategy.check_fits(len(participants))
                except ValueError as exc:
                    raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"the job cannot start: {exc}") from None
            caps = self._enrolled_caps(participants) if conf["own_data"] else None
            tx = Transaction.create(TxKind.JOB, job_payload(job_id, spec, participants, conf, samples, caps),
                                    self.node.identity)
            self.node.submit(tx)
            self.job, self.strategy = Job.from_tx(tx), strategy
            self._scorer = JobScorer(self.job, self.base_conf["data_dir"]) if self.job.scores != "off" else None
            self.global_model = ReceivedModel.of(make_header(self.node.identity, initial, job_id, 0), initial)
            self.node.models.put(self.global_model)
            self.global_tx, self.round, self.metrics, self.error, self._unevaluated = None, 0, [], "", None
            log.info("job %s: %s on %s, %d rounds, %d edge nodes", job_id, strategy, spec.dataset,
                     spec.rounds, len(participants))
            self._launch()
            return self.status()

    def check_claims(self, tx: Transaction) -> None:
        """Refuse a MODEL_UPDATE of the current job claiming samples the job does not allow,
        however it reaches the pool (a supernode could submit one directly)."""
        job = self.job
        if tx.kind == TxKind.MODEL_UPDATE and job is not None and tx.payload["job_id"] == job.job_id:
            try:
                job.check_samples(tx.sender, tx.payload["samples"])
            except InvalidUpdate as exc:
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    def _participants(self, conf: dict[str, Any], counted: bool) -> list[str]:
        """The job's edge nodes: alive ones whose data_dir holds its dataset, or its PFLlib split
        (as they said when they registered), the first ``client.amount`` by id when ``counted``,
        else all of them."""
        dataset = "pfllib" if conf["partition"] == "pfllib" else canonical_name(conf["dataset"])
        alive = self.node.members.of_role("EN", alive_only=True)
        able = sorted(m.node_id for m in alive if m.datasets is None or dataset in m.datasets)
        wanted = int(conf["client.amount"]) if counted else len(able)
        if not able or wanted > len(able):
            lacking = sorted(m.node_id for m in alive if m.node_id not in able)
            without = (f"; {len(lacking)} of them lack {dataset} in their data_dir ({', '.join(n[:8] for n in lacking)}): "
                       f"give them the files, or choose another dataset") if lacking else ""
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                         f"the job wants {wanted or 'some'} edge nodes with {dataset} but {len(alive)} are alive{without}; "
                         f"start more edge nodes or pass clients=<n>")
        return able[:wanted]

    def _enrolled_caps(self, participants: list[str]) -> dict[str, int]:
        """The training samples the operator allowed each participant at enrolment (ENROLL's
        ``max_samples``), for those it capped."""
        wanted = set(participants)
        return {tx.payload["node"]: tx.payload["max_samples"]
                for _, tx in self.node.ledger.store.transactions(kind=TxKind.ENROLL)
                if tx.payload["node"] in wanted and "max_samples" in tx.payload}

    def _shard_sizes(self, spec: JobSpec) -> list[int]:
        """Each edge node's training samples in the job's partition (client i = the i-th
        participant by id): recorded in the JOB, so no edge node can claim another count."""
        try:
            _, splits = job_data(spec, self.base_conf["data_dir"], self.base_conf["model_path"])
        except (ValueError, OSError) as exc:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION,
                         f"the entry node derives every edge node's sample count from the job's partition, and "
                         f"could not: {exc} (a dataset it lacks: give it the files, --data-dir, or start the job "
                         f"with own_data=True)") from None
        return [len(split.train) for split in splits]

    def _job_config(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The job's configuration: this node's own (jobs keys only) under the console's
        ``overrides``. The rule's options come from this node's configuration too, but only those
        of the rule the job uses (config refuses an option given for another rule, or for another
        strategy: distillation's)."""
        base = _job_defaults(self.base_conf)
        try:
            chosen = load_config(env={}, overrides={**base, **overrides})
            inherited = {k: self.base_conf[k] for k in options_of(chosen["aggregation"]) | set(COMMON_OPTIONS)
                         if k not in overrides and owner_problem(k, chosen) is None}
            return load_config(env={}, overrides={**base, **inherited, **overrides})
        except ConfigError as exc:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None

    def resume(self) -> pb.JobStatus:
        """resume(): go on with a paused (or failed) job at its next round; with no job, start one."""
        with self._lock:
            if self.state == JobState.RUNNING:
                return self.status()
            if self.state == JobState.PAUSING:  # the pause has not taken effect yet: cancel it
                self._pause_requested, self.state = False, JobState.RUNNING
                self._stop_waiting.clear()
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
                self._stop_waiting.set()
                self.state = JobState.PAUSING
            elif self.state not in (JobState.PAUSING, JobState.PAUSED):
                raise refuse(grpc.StatusCode.FAILED_PRECONDITION, f"no job is running (state: {self.state})")
            return self.status()

    def recover(self) -> None:
        """After a restart: take up the chain's last job where its last sealed GLOBAL_MODEL left
        it (the global model from this node's models folder, the strategy's server state from the
        job's checkpoint), and go on with it at the next round, unless the operator had paused
        it (then ``resume()`` goes on with it). A round that was under way is run again: its edge nodes
        retrain it from the head it started from."""
        store = self.node.ledger.store
        jobs = store.transactions(kind=TxKind.JOB)
        if not jobs or jobs[-1][1].sender != self.node.node_id:
            return
        job = Job.from_tx(jobs[-1][1])
        recorded = {tx.payload["round"]: tx for _, tx in store.transactions(kind=TxKind.GLOBAL_MODEL, job_id=job.job_id)}
        done = max(recorded, default=0)
        with self._lock:
            self.job, self.round, self.metrics = job, done, []
            self.global_tx = recorded.get(done)
            checkpoint = self._checkpoint()
            try:
                self.global_model, self.strategy = self._recovered_model(job, self.global_tx), job.strategy()
                if self.strategy.state_names and done:
                    state = checkpoint.strategy_state(done)
                    if state is None:
                        raise RuntimeError(f"the {self.strategy.name} server state after round {done} is not in "
                                           f"{checkpoint.folder}")
                    self.strategy.load_state_dict(state)
            except Exception as exc:  # noqa: BLE001 - the job cannot go on; say why, keep the node up
                self.state, self.error = JobState.FAILED, f"cannot resume after a restart: {exc}"
                log.error("job %s: %s", job.job_id, self.error)
                return
            self.node.models.put(self.global_model)
            self._restore_edge_nodes(job)
            self._scorer = JobScorer(job, self.base_conf["data_dir"]) if job.scores != "off" else None
            if self._scorer is not None:
                self._scorer.rebuild(store)
            self._restore_metrics(job, checkpoint, recorded)
            if done >= job.spec.rounds:
                self.state = JobState.DONE
            elif (reason := self.strategy.can_run(done + 1)) is not None:
                self.state, self.error = JobState.STOPPED, reason
            elif checkpoint.paused():
                self.state = JobState.PAUSED
            else:
                self._launch(wait_for_participants=self.node.settings.dead_after * 5)
        log.info("job %s recovered from the chain after round %d of %d: %s", job.job_id, done, job.spec.rounds,
                 self.state)

    def _restore_metrics(self, job: Job, checkpoint: JobCheckpoint, recorded: dict[int, Transaction]) -> None:
        """Every finished round's metrics: as saved in the checkpoint, or, for a round sealed after
        the last save, from its chain records (train loss, updates, exclusions; the accuracy
        of the last such round comes from the next round's evaluation, as it would have)."""
        saved = {row["round"]: json_format.ParseDict(row, pb.RoundMetrics(), ignore_unknown_fields=True)
                 for row in checkpoint.metrics(self.round)}
        missing = [r for r in sorted(recorded) if r not in saved]
        excluded: dict[int, list[pb.Exclusion]] = {}
        if missing:
            for _, tx in self.node.ledger.store.transactions(kind=TxKind.EXCLUDED, job_id=job.job_id):
                excluded.setdefault(tx.payload["round"], []).append(pb.Exclusion(node_id=tx.payload["node"],
                                                                                  reason=tx.payload["reason"]))
        for r in missing:
            p = recorded[r].payload
            metrics = p.get("metrics") if isinstance(p.get("metrics"), dict) else {}
            saved[r] = pb.RoundMetrics(round=r, train_loss=recorded_number(metrics.get("train_loss")),
                                       participants=int(recorded_number(metrics.get("updates"), 0)), excluded=excluded.get(r, []),
                                       global_hash=p["hash"], **{k: math.nan for k in ("acc_weighted", "acc_mean",
                                                                                       "acc_min", "acc_max", "loss")})
        if self.round in missing and self.round < job.spec.rounds:  # evaluated with the next round, then published
            self._unevaluated = saved.pop(self.round)
        self.metrics = [saved[r] for r in sorted(saved)]

    def _recovered_model(self, job: Job, global_tx: Transaction | None) -> ReceivedModel:
        """The job's current global model: the last sealed GLOBAL_MODEL's, else its initial one."""
        if global_tx is None:
            data = initial_model(job.spec, self.base_conf["model_path"])
            return ReceivedModel.of(make_header(self.node.identity, data, job.job_id, 0), data)
        model = self.node.models.get(global_tx.payload["hash"])
        if model is None:
            raise RuntimeError(f"global model {global_tx.payload['hash'][:16]}… of round {global_tx.payload['round']} "
                               f"is not in this node's models folder")
        return model

    def _restore_edge_nodes(self, job: Job) -> None:
        """The job's edge nodes as their last REGISTERs on the chain place them: a restarted entry
        node knows only the supernodes that report to it, and their heartbeats vouch for edge nodes
        it already knows."""
        latest = {tx.sender: tx for _, tx in self.node.ledger.store.transactions(kind=TxKind.REGISTER)
                  if tx.sender in job.participants}
        for tx in latest.values():
            if self.node.members.get(tx.sender) is None:
                self.node.members.add(edge_member(tx, bytes.fromhex(tx.payload["public_key"]), alive=False))

    def _await_participants(self, job: Job, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until every participant is alive again, after a restart."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._pause_requested:
            alive = {m.node_id for m in self.node.members.of_role("EN", alive_only=True)}
            if alive >= set(job.participants):
                return
            time.sleep(0.2)

    def stop(self) -> None:
        """Node shutdown: let the round in progress finish (bounded), then stop."""
        self._pause_requested = True
        self._stop_waiting.set()
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

    def evaluations(self, job_id: str) -> list[dict[str, Any]]:
        """Every evaluated round of job ``job_id`` as this node's checkpoint kept it (one dict per
        round: ``RoundMetrics``' fields and ``edges``, each edge node's accuracy, loss and samples);
        the accuracies are measured by the edge nodes for the entry node and are not on the chain."""
        if self.jobs_dir is None or not job_id or Path(job_id).name != job_id or job_id in (".", ".."):
            return []
        return JobCheckpoint(self.jobs_dir / job_id).metrics(up_to=2**31)

    def evaluate(self) -> pb.EvalReport:
        if self.job is None or self.global_tx is None:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, "no global model yet: run at least one round")
        return self._evaluate(self.job, self.global_tx)

    # --- the round loop ---------------------------------------------------------------------------
    def _launch(self, wait_for_participants: float = 0.0) -> None:
        self.state, self._pause_requested = JobState.RUNNING, False
        self._stop_waiting.clear()
        self._checkpoint().set_paused(False)
        self._thread = threading.Thread(target=self._run, args=(wait_for_participants,), name="job", daemon=True)
        self._thread.start()

    def _checkpoint(self) -> JobCheckpoint:
        assert self.job is not None
        return JobCheckpoint(self.jobs_dir / self.job.job_id if self.jobs_dir else None)

    def _run(self, wait_for_participants: float = 0.0) -> None:
        job = self.job
        assert job is not None
        try:
            if wait_for_participants:
                self._await_participants(job, wait_for_participants)
            attempt, failures = 1, 0
            if self._unsealed is not None:  # paused by a database outage with a round done but unsealed
                self._seal(job)
            while self.round < job.spec.rounds:
                if self._pause_requested:
                    self._evaluate_pending(job)  # a paused job shows complete metrics
                    with self._lock:
                        if self._pause_requested:
                            self.state, self._pause_requested = JobState.PAUSED, False
                            self._checkpoint().set_paused(True)
                            log.info("job %s paused after round %d", job.job_id, self.round)
                            return
                if (reason := self.strategy.can_run(self.round + 1)) is not None:
                    self._stop(job, reason)
                    return
                try:
                    self._round(job, self.round + 1, attempt)
                    attempt, failures = 1, 0
                except LedgerOutage:
                    raise
                except Exception as exc:  # noqa: BLE001 - recorded, then tried again (or the job fails)
                    down = self._wait_for_ledger(job)  # an outage stalls the job; it is no failure of the round
                    self._record_failure(job, self.round + 1, attempt, exc, down)
                    failures += 0 if down else 1
                    if failures >= job.round_attempts:
                        raise RuntimeError(f"{attempt} attempt(s) failed; the last: {exc}") from exc
                    attempt += 1
                    self._stop_waiting.wait(min(RETRY_CAP_S, 2.0 ** attempt))  # (pause() ends the wait)
            self._evaluate_pending(job)
            self._record_totals(job)
            with self._lock:
                self.state = JobState.DONE
            log.info("job %s done after %d rounds", job.job_id, self.round)
        except LedgerOutage as exc:  # nothing failed: the round waits for the database, resume() goes on
            log.error("job %s paused: %s", job.job_id, exc)
            with self._lock:
                self.state, self.error, self._pause_requested = JobState.PAUSED, str(exc), False
                self._checkpoint().set_paused(True)
        except Exception as exc:  # noqa: BLE001 - report it; the job can be resumed
            log.error("job %s failed in round %d: %s", job.job_id, self.round + 1, exc)
            with self._lock:
                self.state, self.error = JobState.FAILED, f"round {self.round + 1}: {exc}"

    def _seal(self, job: Job) -> None:
        """Wait until the pending round's GLOBAL_MODEL is in a block, then count the round (the
        next starts from what a restart finds on the chain). A database outage stalls the job here
        and it goes on when the database is back; past ``ledger_outage_s`` it pauses
        (:class:`LedgerOutage`, the round still pending: ``resume()`` waits for it again)."""
        pending = self._unsealed
        assert pending is not None
        producer, started = self.node.producer, time.monotonic()
        while not producer.wait_sealed(pending.global_tx.hash, SEAL_SLICE_S):
            if not producer.is_pending(pending.global_tx.hash):
                if producer.wait_sealed(pending.global_tx.hash, 0):  # sealed just after the wait gave up
                    break
                self._unsealed = None  # dropped, not sealed: the round runs again
                raise RuntimeError(f"round {pending.round}'s GLOBAL_MODEL was dropped from the pool")
            waited = time.monotonic() - started
            if waited >= self._outage_bound() or self._pause_requested:
                raise LedgerOutage(f"round {pending.round} is done but the ledger database has not taken it for "
                                   f"{waited:.0f} s; resume() goes on once the database is back")
            self.error = f"round {pending.round}: waiting {waited:.0f} s so far for the ledger database"
            log.warning("job %s: %s", job.job_id, self.error)
        self.error, self._unsealed = "", None
        self.strategy, self.global_model, self.global_tx, self.round = (pending.strategy, pending.global_model,
                                                                        pending.global_tx, pending.round)
        if pending.previous_hash != pending.global_model.header.model_hash:
            self.node.models.spill(pending.previous_hash)  # superseded: kept on disk, out of memory
        self._unevaluated = pending.metrics
        if pending.scored is not None and self._scorer is not None:
            self._scorer.sealed(pending.scored)

    def _absence(self, edge_id: str, lost: dict[str, str]) -> str:
        """Why a participant that no supernode reported on is absent from a round."""
        members = self.node.members
        member = members.get(edge_id)
        supernode = members.get(member.supernode) if member is not None else None
        if member is None or supernode is None:
            return "unreachable: not registered with any supernode of the network"
        if member.supernode in lost:
            return f"its supernode {member.supernode} was lost for the round: {lost[member.supernode]}"
        if not members.alive(supernode):
            return f"its supernode {member.supernode} is lost: no heartbeat for more than {self.node.settings.dead_after:g} s"
        if not members.alive(member):
            return f"dead: no sign of life for more than {self.node.settings.dead_after:g} s"
        return f"not reached: its supernode {member.supernode} did not report it"

    def _outage_bound(self) -> float:
        return float(self.base_conf.get("ledger_outage_s", 600.0))

    def _wait_for_ledger(self, job: Job) -> float:
        """Seconds waited for the ledger database to answer again (0: it answers); past
        ``ledger_outage_s``, :class:`LedgerOutage` (the job pauses with the reason)."""
        started = time.monotonic()
        while True:
            try:
                self.node.ledger.store.head()
                return time.monotonic() - started if time.monotonic() - started > 1.0 else 0.0
            except StoreError as exc:
                waited = time.monotonic() - started
                if waited >= self._outage_bound() or self._pause_requested:
                    raise LedgerOutage(f"round {self.round + 1}: the ledger database has been down for {waited:.0f} s "
                                       f"({exc}); resume() goes on once it is back") from None
                self.error = f"round {self.round + 1}: waiting {waited:.0f} s so far for the ledger database"
                log.warning("job %s: %s", job.job_id, self.error)
                self._stop_waiting.wait(2.0)

    def _record_totals(self, job: Job) -> None:
        """The job's contribution scores (SCOREs of round 0), once it ends."""
        if self._scorer is None:
            return
        try:
            self.node.submit_all(self._scorer.totals(self.node.identity))
        except Exception as exc:  # noqa: BLE001 - the rounds' scores are on the chain; the log keeps this
            log.error("could not record job %s's total scores: %s", job.job_id, exc)

    def _stop(self, job: Job, reason: str) -> None:
        """End the job before its next round, for good, on the chain with the reason (a
        ROUND_FAILED of attempt 0: the round was not tried)."""
        log.warning("job %s stopped before round %d: %s", job.job_id, self.round + 1, reason)
        self._evaluate_pending(job)
        self._record_totals(job)
        self._submit_round_failed(job, self.round + 1, 0, reason)
        with self._lock:
            self.state, self.error = JobState.STOPPED, reason

    def _record_failure(self, job: Job, round_number: int, attempt: int, exc: Exception, outage: float = 0.0) -> None:
        """A ROUND_FAILED on the chain: which attempt at which round failed, and why."""
        reason = status_for(exc)[1] if not isinstance(exc, RuntimeError) else str(exc)
        if outage:
            reason = f"the ledger database was down for {outage:.0f} s: {reason}"
        self.error = f"round {round_number} attempt {attempt} failed: {reason}"  # (shown until the round counts)
        log.warning("job %s round %d attempt %d failed: %s", job.job_id, round_number, attempt, reason)
        self._submit_round_failed(job, round_number, attempt, reason)

    def _submit_round_failed(self, job: Job, round_number: int, attempt: int, reason: str) -> None:
        """A ROUND_FAILED on the chain (attempt 0: the round was not tried); the log keeps one
        the pool refuses."""
        try:
            self.node.submit(Transaction.create(TxKind.ROUND_FAILED, {
                "job_id": job.job_id, "round": round_number, "attempt": attempt, "reason": reason[:1000]},
                self.node.identity))
        except Exception as failed:  # noqa: BLE001 - the pool refused it: the log keeps it
            log.error("could not record the failure of round %d of job %s: %s", round_number, job.job_id, failed)

    def _round(self, job: Job, round_number: int, attempt: int = 1) -> None:
        """One round. With openEval, the edge nodes first evaluate the model they receive (the
        previous round's result) with their own head, in the same call as training: one fan-out
        per round instead of two. The last round's model is evaluated on its own at the end."""
        started = time.perf_counter()
        node, current = self.node, self.global_model
        assert current is not None and self.strategy is not None
        order_payload = {"job_id": job.job_id, "round": round_number, "global_hash": current.header.model_hash,
                         "attempt": attempt}
        if config := self.strategy.configure_train(round_number):  # the clients' options, signed into the order
            order_payload["config"] = config
        if checks := self.strategy.validate_config(round_number):  # the checkers' (adaptive clipping's clip norm)
            order_payload["validate"] = checks
        order = Transaction.create(TxKind.ROUND, order_payload, node.identity)
        node.submit(order)
        evaluate_first = job.evaluate_every_round and self._unevaluated is not None
        owners = {n: m.supernode for n in job.participants if (m := node.members.get(n)) is not None}
        results, lost = self._fan_out(job, order, current, evaluate_first=evaluate_first)
        if evaluate_first:  # this round's exclusions are its own, not the previous round's
            report = _eval_report(job, round_number - 1, results)
            del report.excluded[:]
            self._finish_metrics(report)
        trained = time.perf_counter()
        # nothing of the job's state changes until the round is recorded: a round that fails can
        # be run again (resume()) from where it started, server-optimiser state included
        strategy = copy.deepcopy(self.strategy)
        reference = state_views(current.data)
        excluded: list[pb.Exclusion] = []  # as the supernodes report them (on the chain from them)
        mine: list[pb.Exclusion] = []  # the entry node's own findings (on the chain from it)
        aggregates, parts, edges, update_txs = [], [], [], []
        records: list[Transaction] = []  # the supernodes' signed records of what this round combines
        scoring: dict[str, tuple[Update, int, int]] = {}  # edge node -> its checked update, size, samples (scores)
        claimed: set[str] = set()  # edge nodes whose update a supernode reported: no other may report one too
        for sn, result in results:
            try:
                exclusions = self._exclusion_records(job, round_number, sn, result, owners)
                if result.num_samples:
                    aggregate, part, checked = self._contribution(job, round_number, sn, result, reference, strategy,
                                                                  owners)
                updates = [tx_from_pb(e.update) for e in result.edges]
                reported = {tx.sender for tx in updates}  # (updates: signed by the edge node)
                if reported & claimed:
                    raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"supernode {sn.node_id} reported updates of edge "
                                 f"nodes another supernode reported this round: {sorted(reported & claimed)[:3]}")
                claimed |= reported
            except Exception as exc:  # noqa: BLE001 - a supernode whose result does not hold is left out
                reason = f"its round result was refused: {status_for(exc)[1]}"
                log.warning("job %s round %d: supernode %s left out: %s", job.job_id, round_number, sn.node_id, reason)
                mine.append(pb.Exclusion(node_id=sn.node_id, reason=reason))
                lost[sn.node_id] = reason
                continue
            excluded.extend(pb.Exclusion(node_id=t.payload["node"], reason=t.payload["reason"]) for t in exclusions)
            records.extend(exclusions)
            if not result.num_samples:
                continue
            aggregates.append(aggregate)
            parts.append(part)
            edges.extend(result.edges)
            update_txs.extend(updates)
            records.extend([*updates, aggregate])
            scoring.update({tx.sender: (update, tx.payload["size"], tx.payload["samples"]) for tx, update in zip(updates, checked)})
        accounted = {e.node_id for e in edges} | {x.node_id for x in excluded}
        mine += [pb.Exclusion(node_id=n, reason=self._absence(n, lost)) for n in job.participants if n not in accounted]
        excluded += mine
        if not parts:
            raise RuntimeError(f"no edge node returned a usable update: {_exclusions(excluded)}")
        scored = self._scorer.score(round_number, strategy, reference, scoring) if self._scorer else None
        if strategy.decomposable:
            combined: ExactSum | list[Update] = strategy.accumulator(reference)
            for part in parts:
                combined.merge(part)
        else:
            combined = [update for part in parts for update in part]
        data = state_to_bytes(strategy.finalize(reference, combined))
        samples = sum(a.payload["samples"] for a in aggregates)
        global_model = ReceivedModel.of(make_header(node.identity, data, job.job_id, round_number, samples), data)
        train_loss = (sum(signed_train_loss(t) * t.payload["samples"] for t in update_txs)
                      / max(1, sum(t.payload["samples"] for t in update_txs)))
        record = {**strategy.round_record(),  # what the rule did beyond the model (a DP round's privacy)
                  "job_id": job.job_id, "round": round_number, "hash": global_model.header.model_hash, "samples": samples,
                  "aggregates": sorted(a.hash for a in aggregates),  # exactly what was combined: what an audit uses
                  "metrics": {"train_loss": fixed(train_loss), "updates": str(len(edges))}}
        if made := strategy.round_models():  # kept here, named by hash (a DP round's noised mean)
            record["models"] = {name: self._keep(job, round_number, state) for name, state in sorted(made.items())}
        global_tx = Transaction.create(TxKind.GLOBAL_MODEL, record, node.identity)
        refused = [Transaction.create(TxKind.EXCLUDED, {"job_id": job.job_id, "round": round_number, "node": x.node_id,
                                                        "reason": x.reason[:500]}, node.identity) for x in mine]
        node.models.keep(global_model)  # on disk, as the strategy's state: before the chain can hold the round
        self._checkpoint().save_round(round_number, strategy.state_dict())
        scores = self._scorer.records(round_number, scored, node.identity) if self._scorer and scored else []
        node.submit_all([*records, *refused, *scores, global_tx], together=True)  # one block: the whole round, or none
        self._unsealed = _Unsealed(round_number, strategy, global_model, global_tx, current.header.model_hash,
                                   pb.RoundMetrics(round=round_number, train_loss=train_loss,
                                                   seconds=time.perf_counter() - started, participants=len(edges),
                                                   excluded=excluded, global_hash=global_model.header.model_hash,
                                                   **{k: math.nan for k in ("acc_weighted", "acc_mean", "acc_min",
                                                                            "acc_max", "loss")}), scored)
        self._seal(job)
        log.info("job %s round %d: %d updates, %d left out; %.2f s (train%s %.2f, aggregate %.2f)",
                 job.job_id, round_number, len(edges), len(excluded), time.perf_counter() - started,
                 " + evaluate" if evaluate_first else "", trained - started, time.perf_counter() - trained)
        if not job.evaluate_every_round and round_number < job.spec.rounds:
            self._finish_metrics(None)

    def _keep(self, job: Job, round_number: int, state: dict[str, Any]) -> str:
        """Store a state the round's record names (on disk before the record exists): its hash."""
        data = state_to_bytes(state)
        model = ReceivedModel.of(make_header(self.node.identity, data, job.job_id, round_number, 0), data)
        self.node.models.keep(model)
        return model.header.model_hash

    def _contribution(self, job: Job, round_number: int, sn: Any, result: pb.SupernodeResult,
                      reference: dict[str, Any], strategy: Strategy,
                      owners: dict[str, str]) -> tuple[Transaction, ExactSum | list[Update], list[Update]]:
        """One supernode's part, checked: its signed AGGREGATE (against what it returned), and its
        exact partial sum (a rule that decomposes: re-summed here from the updates it lists when the
        job says ``recompute_partials``, refused unless the hashes agree; else downloaded, checked
        against its hash, layout and the bounds its total allows) or every update it lists
        (downloaded from it and validated again here: median, trimmed mean, Krum); and the checked
        updates in the order of ``result.edges`` (none when only the partial was fetched)."""
        aggregate = self._check_partial(job, round_number, sn, result, strategy, owners)
        if strategy.decomposable and not job.recompute_partials:
            limit = 16 * sum(v.numel() for v in reference.values()) + (1 << 20)  # two int64 limbs per value
            state = state_views(self.node.fetch_model(result.partial_hash, sn.address, limit, sn.node_id).data)
            weight = sum(strategy.weight(_samples(e)) for e in result.edges)  # (its updates' samples, or 1 each)
            return aggregate, ExactSum.from_state(state, weight, strategy.sum_layout(reference)), []
        updates = []
        for edge in result.edges:
            tx = tx_from_pb(edge.update)
            data = self.node.fetch_model(tx.payload["hash"], sn.address, node_id=sn.node_id).data
            updates.append(strategy.validate(reference, Update(state_views(data), tx.payload["samples"], tx.payload["hash"])))
        if not strategy.decomposable:
            return aggregate, updates, updates
        partial = strategy.accumulator(reference)
        for update in updates:
            partial.add(update, checked=True)
        if model_hash(state_to_bytes(partial.to_state())) != result.partial_hash:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"supernode {sn.node_id}'s partial sum {result.partial_hash[:16]}… is not the sum of the "
                         f"{len(updates)} updates it lists")
        return aggregate, partial, updates

    def _owns(self, sn_id: str, node_id: str, owners: dict[str, str]) -> bool:
        """Whether edge node ``node_id`` is supernode ``sn_id``'s this round: its supernode as the
        round started (``owners``) or now. An edge node that moves during a round (its supernode
        too busy to answer its heartbeats) stays its first supernode's for that round; the other
        supernodes' results are checked on their own (one edge node reported once in a round)."""
        member = self.node.members.get(node_id)
        return owners.get(node_id) == sn_id or (member is not None and member.supernode == sn_id)

    def _exclusion_records(self, job: Job, round_number: int, sn: Any, result: pb.SupernodeResult,
                           owners: dict[str, str]) -> list[Transaction]:
        """The supernode's signed EXCLUDED records: of this round, of the job's edge nodes it did not
        also report an update of, each once; those of edge nodes that are not its own (stale
        registrations there) are dropped."""
        member = self.node.members.get(sn.node_id)
        updated = {tx_from_pb(e.update).sender for e in result.edges}
        records, named = [], set()
        for record in map(tx_from_pb, result.exclusion_records):
            check_payload(record)
            p = record.payload
            if record.kind != TxKind.EXCLUDED or record.sender != sn.node_id or member is None \
                    or not record.signed_by(member.public_key):
                raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"supernode {sn.node_id} sent an exclusion it did not sign")
            if p["job_id"] != job.job_id or p["round"] != round_number or p["node"] in updated or p["node"] in named:
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                             f"supernode {sn.node_id} excluded {p['node']}, which is not an edge node of this round "
                             f"without an update from it, or twice")
            if p["node"] not in job.participants or not self._owns(sn.node_id, p["node"], owners):
                # a stale registration (the edge node's answer to it was lost, and it registered
                # elsewhere): the exclusion says nothing about the round, which counts that node where
                # it is; it is dropped, and the rest of the supernode's result stands
                log.info("job %s round %d: supernode %s excluded %s, not its edge node: exclusion dropped",
                         job.job_id, round_number, sn.node_id, p["node"][:16])
                continue
            named.add(p["node"])
            records.append(record)
        return records

    def _check_partial(self, job: Job, round_number: int, sn: Any, result: pb.SupernodeResult,
                       strategy: Strategy, owners: dict[str, str]) -> Transaction:
        """A supernode's result must list signed updates of this round from the job's edge nodes
        registered with it (as the round started, or now), each edge node once, weigh exactly their
        samples, and come with its own signed AGGREGATE naming those same updates (and the partial
        it returned)."""
        if not result.HasField("aggregate"):
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"supernode {sn.node_id} sent no signed AGGREGATE")
        aggregate = tx_from_pb(result.aggregate)
        check_payload(aggregate)
        member = self.node.members.get(sn.node_id)
        if aggregate.kind != TxKind.AGGREGATE or aggregate.sender != sn.node_id or member is None \
                or not aggregate.signed_by(member.public_key):
            raise refuse(grpc.StatusCode.PERMISSION_DENIED, f"supernode {sn.node_id}'s AGGREGATE is not signed by it")
        senders, listed, total = set(), [], 0
        for edge in result.edges:
            tx = tx_from_pb(edge.update)
            member = self.node.members.get(tx.sender)
            if tx.sender not in job.participants or member is None or not self._owns(sn.node_id, tx.sender, owners):
                raise refuse(grpc.StatusCode.PERMISSION_DENIED,
                             f"supernode {sn.node_id} reported an update of {tx.sender}, not of its own edge node in the job")
            check_model_update(tx, job, round_number, member.public_key)
            if tx.sender in senders:
                raise refuse(grpc.StatusCode.INVALID_ARGUMENT, f"supernode {sn.node_id} lists edge node {tx.sender} twice")
            senders.add(tx.sender)
            listed.append(tx.hash)
            total += int(tx.payload["samples"])
        p = aggregate.payload
        if p["job_id"] != job.job_id or p["round"] != round_number or list(p["updates"]) != sorted(listed):
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"supernode {sn.node_id}'s AGGREGATE does not list the updates it returned")
        if total != result.num_samples or p["samples"] != total:
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"supernode {sn.node_id} weighs its partial by {result.num_samples} samples, its updates hold {total}")
        if strategy.decomposable and (not result.partial_hash or p.get("hash") != result.partial_hash):
            raise refuse(grpc.StatusCode.INVALID_ARGUMENT,
                         f"supernode {sn.node_id}'s partial sum is not the one its AGGREGATE names")
        return aggregate

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
        row = {}
        if report is not None and report.edges:
            for key, value in _summary(report).items():
                setattr(metrics, key, value)
            metrics.excluded.extend(report.excluded)
            # each edge node's evaluation: kept for the explorer's pages, not sent with every status
            row["edges"] = [{"node_id": e.node_id, "supernode": e.supernode, "accuracy": e.accuracy, "loss": e.loss,
                             "num_samples": e.num_samples} for e in report.edges]
        self.metrics.append(metrics)
        self._checkpoint().add_metrics({**json_format.MessageToDict(metrics, preserving_proto_field_name=True), **row})
        log.info("round %d: accuracy %.4f (mean %.4f), %.2f s", metrics.round, metrics.acc_weighted,
                 metrics.acc_mean, metrics.seconds)

    def _evaluate(self, job: Job, global_tx: Transaction) -> pb.EvalReport:
        model = self.node.models.get(global_tx.payload["hash"])
        if model is None:
            raise refuse(grpc.StatusCode.FAILED_PRECONDITION, "the global model is no longer held")
        return _eval_report(job, global_tx.payload["round"], self._fan_out(job, global_tx, model)[0])

    def _fan_out(self, job: Job, authority: Transaction, model: ReceivedModel,
                 evaluate_first: bool = False) -> tuple[list[tuple[Any, pb.SupernodeResult]], dict[str, str]]:
        """Run the round (``authority`` a ROUND) or evaluation (a GLOBAL_MODEL) on every alive
        supernode, this one included, under one signed order: the results, and why each supernode
        that gave none failed."""
        node = self.node
        order = sign_order(node.identity, job, authority, now_ms() + int(job.round_timeout * 1000), evaluate_first)
        request = pb.RoundRequest(job=tx_to_pb(job.tx), authority=tx_to_pb(authority), order=order)
        supernodes = node.members.of_role("SN", alive_only=True)
        futures = [(sn, self._pool.submit(self._run_on, sn, request, model)) for sn in supernodes]
        results, lost = [], {}
        for sn, future in futures:
            try:
                results.append((sn, future.result()))
            except Exception as exc:  # noqa: BLE001 - a supernode that fails is left out of this round
                lost[sn.node_id] = status_for(exc)[1] if not isinstance(exc, grpc.RpcError) else \
                    f"{exc.code().name}: {exc.details()}"
                log.warning("supernode %s failed the round: %s", sn.node_id[:8], lost[sn.node_id])
        return results, lost

    def _run_on(self, sn: Any, request: pb.RoundRequest, model: ReceivedModel) -> pb.SupernodeResult:
        node = self.node
        if sn.node_id == node.node_id:
            return node.rounds.run(request)
        timeout = seconds_left(request.order) + 30
        stub = rpc_pb.TrainingStub(node.channels.get(sn.address, sn.node_id))
        if not self.delivered.has(sn.node_id, model.header.model_hash):
            stub.DistributeModel(model.stream(), timeout=timeout)
            self.delivered.record(sn.node_id, model.header.model_hash)
        return stub.RunRound(request, timeout=timeout)



def _exclusions(excluded: list[pb.Exclusion], shown: int = 5) -> str:
    """Why edge nodes were left out, for a message a person reads: the first few, and a count of
    the rest (the chain's EXCLUDED records hold every one)."""
    if not excluded:
        return "no participants"
    text = "; ".join(f"{e.node_id[:8]}: {e.reason}" for e in excluded[:shown])
    return text + (f"; and {len(excluded) - shown} more" if len(excluded) > shown else "")


def _samples(edge: pb.EdgeResult) -> int:
    return int(tx_from_pb(edge.update).payload["samples"]) if edge.HasField("update") else 0


def _eval_report(job: Job, round_number: int, results: list[tuple[Any, pb.SupernodeResult]]) -> pb.EvalReport:
    """Per-edge-node evaluations (and who was left out) gathered from the supernodes' results."""
    report = pb.EvalReport(job_id=job.job_id, round=round_number)
    evals: list[EvalResult] = []
    for sn, result in results:
        report.excluded.extend(result.excluded)
        for edge in result.edges:
            if not edge.HasField("eval") or not edge.eval.num_samples:  # (one sample: trained, none to test)
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
    accs = [e.accuracy for e in report.edges]  # (edge nodes with no test sample are not in the report)
    return {"acc_weighted": report.acc_weighted, "acc_mean": report.acc_mean, "acc_min": min(accs),
            "acc_max": max(accs), "loss": report.loss}


def _job_defaults(conf: dict[str, Any]) -> dict[str, Any]:
    """The entry node's configuration as the job's defaults (only keys a job uses; the rule's
    options are added by ``Coordinator._job_config``, for the rule the job uses)."""
    keys = ("client.amount", "local_epoch", "gobal_epoch", "openEval", "dataset", "learn_rate", "BATCH_SIZE",
            "strategy", "aggregation", "model", "head_layers", "momentum", "partition", "classes_per_client",
            "dirichlet_alpha", "train_fraction", "seed", "round_timeout", "own_data", "max_samples",
            "recompute_partials", "round_attempts")
    return {k: conf[k] for k in keys}
