"""The console's commands: what each one asks the network, and how it shows the answer.

Every command returns True on success and False on a failure it has already explained; the
scripting mode (``-c``) turns a False into a non-zero exit status.

What takes long shows it is alive, on a terminal only (the scripting mode into a pipe prints the
same lines as ever): ``verify()`` is one unary call that can run for minutes on a long chain, so a
spinner line counts its seconds; a job followed live shows the round under way and for how long.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from base_package import data_pb2 as pb
from console.client import NodeClient
from console.parser import CommandError
from node.net.wire import block_from_pb, tx_from_pb

FINISHED = ("done", "failed", "paused", "idle", "stopped")  # (stopped: its strategy refused the next round)


@dataclass(frozen=True)
class Spec:
    run: Callable[..., bool]
    usage: str
    help: str


COMMANDS: dict[str, Spec] = {}


def command(usage: str, help: str) -> Callable[[Callable[..., bool]], Callable[..., bool]]:
    def register(fn: Callable[..., bool]) -> Callable[..., bool]:
        COMMANDS[fn.__name__.rstrip("_")] = Spec(fn, usage, help)
        return fn
    return register


class Session:
    """What commands share: the client, the output, and whether the user asked to leave."""

    def __init__(self, client: NodeClient, out: Console) -> None:
        self.client = client
        self.out = out
        self.leaving = False


def run_command(session: Session, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    spec = COMMANDS.get(name)
    if spec is None:
        raise CommandError(f"unknown command {name}(); type help() for the list")
    try:
        return spec.run(session, *args, **kwargs)
    except TypeError as exc:
        raise CommandError(f"{name}(): {exc}; usage: {spec.usage}") from None


# --- formatting -----------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{100 * x:.2f}"


def _round_row(m: pb.RoundMetrics) -> list[str]:
    return [str(m.round), _pct(m.acc_weighted), _pct(m.acc_mean), _pct(m.acc_min), _pct(m.acc_max),
            "–" if math.isnan(m.loss) else f"{m.loss:.4f}", f"{m.train_loss:.4f}", str(m.participants),
            str(len(m.excluded)), f"{m.seconds:.2f}"]


def rounds_table(status: pb.JobStatus) -> Table:
    table = Table(title=f"{status.job_id}: {status.state}, {status.round}/{status.rounds} rounds")
    for name in ("round", "acc %", "mean", "min", "max", "test loss", "train loss", "ENs", "left out", "s"):
        table.add_column(name, justify="right")
    for m in status.metrics:
        table.add_row(*_round_row(m))
    return table


def _nodes_table(nodes: pb.NodeList, title: str, edge: bool) -> Table:
    table = Table(title=title)
    for name in ("node id", "address", "alive", "supernode" if edge else "edge nodes", "last heard"):
        table.add_column(name)
    for n in nodes.nodes:
        table.add_row(n.node_id, n.address, "yes" if n.alive else "[red]no[/red]",
                      n.supernode if edge else str(n.load), f"{n.seen_ms_ago / 1000:.1f} s ago")
    return table


@contextmanager
def waiting(session: Session, what: str) -> Iterator[None]:
    """A live line (a spinner, ``what``, the seconds so far) while a long call blocks, so the
    operator sees the console is waiting, not hung; gone when the call returns. Only on a
    terminal: piped output (``-c`` in a script) stays exactly the result lines."""
    if not session.out.is_terminal:
        yield
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description} … {task.elapsed:.0f} s"), console=session.out,
                  transient=True, refresh_per_second=4) as line:
        line.add_task(what, total=None)
        yield


def _settings(kwargs: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in kwargs.items():
        out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


# --- commands ---------------------------------------------------------------------------------
@command("help()", "list the commands")
def help_(session: Session) -> bool:
    table = Table(title="commands")
    table.add_column("command")
    table.add_column("what it does")
    for spec in COMMANDS.values():
        table.add_row(spec.usage, spec.help)
    session.out.print(table)
    return True


@command("trainFL(dataset=, rounds=, strategy=, lr=, clients=, ..., wait=True)",
         "start a federated job; any config key may be given (rounds, clients, lr, batch_size, local_epochs "
         "are short names); settings not given come from the entry node's config")
def trainFL(session: Session, wait: bool = True, **settings: Any) -> bool:
    status = session.client.start_job(_settings(settings))
    session.out.print(f"started {status.job_id}: {status.rounds} rounds")
    return follow(session, status) if wait else True


@command("train(rounds=, split_layers=, split_labels=, ..., wait=True, new=False)",
         "start model training as the original console's train() did: the model split between each edge node "
         "(its data and lower layers) and its supernode (the upper layers); strategy=splitfed also averages the "
         "lower layers; any trainFL() setting may be given; with a job paused, resume() goes on with it "
         "(new=True starts this one instead)")
def train(session: Session, wait: bool = True, new: bool = False, **settings: Any) -> bool:
    current = session.client.call("GetJob")
    if current.state in ("paused", "failed") and not new:  # (before this wave, train() resumed)
        session.out.print(f"{current.job_id} is {current.state} at round {current.round}/{current.rounds}: "
                          f"resume() goes on with it; train(new=True, ...) starts split training instead")
        return False
    return trainFL(session, wait=wait, **{"strategy": "split", **settings})


@command("resume(wait=True)", "go on with the job after pause() at its next round (with no job: start one from the "
         "config)")
def resume(session: Session, wait: bool = True) -> bool:
    status = session.client.call("Resume")
    session.out.print(f"{status.job_id}: {status.state} at round {status.round}/{status.rounds}")
    return follow(session, status) if wait else True


@command("pause()", "stop the job after the round in progress; resume() goes on with it")
def pause(session: Session) -> bool:
    status = session.client.call("Pause")
    session.out.print(f"{status.job_id}: {status.state} (round {status.round}/{status.rounds} done)")
    return True


@command("job()", "the current job's per-round metrics")
def job(session: Session) -> bool:
    status = session.client.call("GetJob")
    if not status.job_id:
        session.out.print("no job yet: start one with trainFL()")
        return True
    session.out.print(rounds_table(status))
    if status.error:
        session.out.print(f"[red]{status.error}[/red]")
    return status.state != "failed"


@command("eval()", "every edge node evaluates the current global base with its own head")
def eval_(session: Session) -> bool:
    report = session.client.call("Evaluate", timeout=600)
    table = Table(title=f"{report.job_id}, global model of round {report.round}")
    for name in ("edge node", "supernode", "accuracy %", "loss", "test samples"):
        table.add_column(name, justify="right" if name not in ("edge node", "supernode") else "left")
    for e in sorted(report.edges, key=lambda e: e.node_id):
        table.add_row(e.node_id, e.supernode, _pct(e.accuracy), f"{e.loss:.4f}", str(e.num_samples))
    table.add_row("mean (sample-weighted)", "", _pct(report.acc_weighted), f"{report.loss:.4f}",
                  str(sum(e.num_samples for e in report.edges)), style="bold")
    session.out.print(table)
    for x in report.excluded:
        session.out.print(f"[yellow]left out {x.node_id}: {x.reason}[/yellow]")
    return bool(report.edges)


@command("getSN()", "the supernodes: address, id, edge nodes, liveness")
def getSN(session: Session) -> bool:
    session.out.print(_nodes_table(session.client.nodes(pb.SN), "supernodes", edge=False))
    return True


@command("getEN()", "the edge nodes: address, id, supernode, liveness")
def getEN(session: Session) -> bool:
    session.out.print(_nodes_table(session.client.nodes(pb.EN), "edge nodes", edge=True))
    return True


@command("getModel(path='runs/global_model.safetensors')", "download the global model, checked against the chain")
def getModel(session: Session, path: str = "runs/global_model.safetensors") -> bool:
    data, digest = session.client.verified_global_model(session.client.call("GetJob"))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(data)
    session.out.print(f"wrote {path} ({len(data):,} bytes), SHA-256 {digest} matches the chain")
    return True


@command("save(path='runs/<job id>')",
         "write the global model, per-round metrics (JSON, CSV), an accuracy plot and, where the job has them, its "
         "privacy budget and scores; record the model on the chain")
def save(session: Session, path: str | None = None) -> bool:
    status = session.client.call("GetJob")
    data, digest = session.client.verified_global_model(status)
    folder = Path(path or f"runs/{status.job_id}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "global_model.safetensors").write_bytes(data)
    rows = [_metrics_dict(m) for m in status.metrics]
    job = tx_from_pb(status.job).payload if status.HasField("job") else {}
    (folder / "metrics.json").write_text(json.dumps({"job": job, "global_model_sha256": digest, "rounds": rows},
                                                    indent=2))
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["round"])
        writer.writeheader()
        writer.writerows(rows)
    written = ["global_model.safetensors", "metrics.json", "metrics.csv", "accuracy.png"]
    budget = next((j for j in session.client.call("Privacy").jobs if j.job_id == status.job_id), None)
    if budget is not None:  # a DP job: its budget per round, as the chain records it
        (folder / "privacy.json").write_text(json.dumps(_privacy_dict(budget), indent=2))
        written.append("privacy.json")
    scored = next((j for j in session.client.call("Scores").jobs if j.job_id == status.job_id), None)
    if scored is not None:  # the job's contribution scores, as the chain records them
        (folder / "scores.json").write_text(json.dumps(_scores_dict(scored), indent=2))
        written.append("scores.json")
    from fl.plot import plot_accuracy

    plot_accuracy({status.job_id: list(status.metrics)}, folder / "accuracy.png", f"{status.job_id} (FedLedger)")
    reply = session.client.call("RecordSave", pb.SaveRequest(job_id=status.job_id, model_hash=digest,
                                                             path=str(folder)))
    session.out.print(f"saved {status.job_id} into {folder}/ ({', '.join(written)}); SAVE transaction "
                      f"{reply.tx_hash[:16]}… records model {digest[:16]}…")
    return True


def _scores_dict(job: pb.JobScores) -> dict[str, Any]:
    return {"job_id": job.job_id, "method": job.method, "rounds": job.rounds,
            "edge_nodes": [{"node_id": e.node_id, "samples": e.samples, "rounds": e.rounds, "flb": e.flb,
                            "marginal": e.marginal if e.has_marginal else None, "flags": list(e.flags)}
                           for e in job.edges]}


@command("scores()", "every scored job's contribution scores from the chain, per edge node: samples, rounds "
         "contributed, FLB's score, the marginal score (leave-one-out or GTG-Shapley) and free-rider flags")
def scores(session: Session) -> bool:
    report = session.client.call("Scores")
    if not report.jobs:
        session.out.print("no job on the chain has scores (start one with scores='flb', 'loo' or 'gtg')")
        return True
    for job in report.jobs:
        table = Table(title=f"{job.job_id}: scores={job.method}, {job.rounds} rounds scored")
        for name in ("edge node", "samples", "rounds", "FLB score", "marginal", "flags"):
            table.add_column(name)
        for e in sorted(job.edges, key=lambda e: -(e.marginal if e.has_marginal else e.flb)):
            table.add_row(e.node_id, str(e.samples), str(e.rounds), f"{e.flb:.1f}",
                          f"{e.marginal:.4f}" if e.has_marginal else "-",
                          f"[red]{', '.join(e.flags)}[/red]" if e.flags else "")
        session.out.print(table)
    return True


def _privacy_dict(job: pb.JobPrivacy) -> dict[str, Any]:
    return {"job_id": job.job_id, "stopped": job.stopped or None,
            "rounds": [{"round": r.round, **dict(sorted(r.record.items()))} for r in job.rounds]}


@command("privacy()", "every differentially private job's budget from the chain: mechanism, noise, clip norm, "
         "epsilon spent after each round, and why a job stopped")
def privacy(session: Session) -> bool:
    report = session.client.call("Privacy")
    if not report.jobs:
        session.out.print("no job on the chain uses differential privacy (start one with dp='central' and dp_noise "
                          "or dp_epsilon)")
        return True
    for job in report.jobs:
        first = dict(job.rounds[0].record) if job.rounds else {}
        target = first.get("target_epsilon")
        table = Table(title=f"{job.job_id}: dp={first.get('mechanism', '?')}, clip norm {first.get('clip_norm', '?')}, "
                            f"noise multiplier {first.get('noise_multiplier', '?')}, δ = {first.get('delta', '?')}"
                            + (f", budget ε = {target}" if target else ""))
        for name in ("round", "ε spent", "noise stddev (on the mean)", "updates", "sampling rate", "steps"):
            table.add_column(name)
        for r in job.rounds:
            table.add_row(str(r.round), r.record.get("epsilon", "?"), r.record.get("noise_stddev", "?"),
                          r.record.get("updates", "?"), r.record.get("sample_rate", "?"), r.record.get("steps", "?"))
        session.out.print(table)
        if job.stopped:
            session.out.print(f"[yellow]stopped[/yellow]: {job.stopped}")
    return True


def _metrics_dict(m: pb.RoundMetrics) -> dict[str, Any]:
    def num(x: float) -> float | None:
        return None if math.isnan(x) else x

    return {"round": m.round, "acc_weighted": num(m.acc_weighted), "acc_mean": num(m.acc_mean),
            "acc_min": num(m.acc_min), "acc_max": num(m.acc_max), "loss": num(m.loss), "train_loss": m.train_loss,
            "seconds": m.seconds, "participants": m.participants,
            "excluded": "; ".join(f"{x.node_id}: {x.reason}" for x in m.excluded), "global_hash": m.global_hash}


@command("status()", "this supernode, the chain head, finality, members")
def status(session: Session) -> bool:
    s = session.client.call("Status")
    session.out.print(f"node {s.node_id} ({'entry supernode' if s.entry else 'supernode'}) at {s.address}")
    session.out.print(f"chain head {s.head.height} {s.head.hash}; final up to {s.final_height}; "
                      f"{s.pending_transactions} transactions pending")
    alive = lambda nodes: sum(1 for n in nodes if n.alive)  # noqa: E731
    session.out.print(f"supernodes {alive(s.supernodes.nodes)}/{len(s.supernodes.nodes)} alive, "
                      f"edge nodes {alive(s.edge_nodes.nodes)}/{len(s.edge_nodes.nodes)} alive")
    return True


@command("chain(n=10)", "the chain head and the last n blocks")
def chain(session: Session, n: int = 10) -> bool:
    head = session.client.block(-1)
    table = Table(title=f"chain head {head.height}")
    for name in ("height", "hash", "transactions", "kinds"):
        table.add_column(name)
    for height in range(head.height, max(-1, head.height - n), -1):
        b = block_from_pb(session.client.block(height))
        kinds: dict[str, int] = {}
        for t in b.transactions:
            kinds[t.kind] = kinds.get(t.kind, 0) + 1
        table.add_row(str(b.height), b.hash, str(len(b.transactions)), ", ".join(f"{k}×{v}" for k, v in kinds.items()))
    session.out.print(table)
    return True


@command("block(n)", "one block and its transactions (n=-1: the head)")
def block(session: Session, n: int = -1) -> bool:
    b = block_from_pb(session.client.block(n))
    session.out.print(f"block {b.height} {b.hash}\nprev {b.prev_hash}\nmerkle {b.merkle_root}\n"
                      f"proposer {b.proposer}, {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(b.timestamp / 1000))} UTC")
    table = Table()
    for name in ("#", "kind", "sender", "payload"):
        table.add_column(name)
    for i, t in enumerate(b.transactions):
        table.add_row(str(i), t.kind, t.sender, json.dumps(t.payload, sort_keys=True)[:160])
    session.out.print(table)
    return True


@command("verify(recompute=False)", "re-check every hash, link, Merkle root and signature of this supernode's "
         "chain; recompute=True also re-derives every round's aggregates from the recorded updates")
def verify(session: Session, recompute: bool = False) -> bool:
    doing = "verifying the chain and recomputing every round" if recompute else "verifying the chain"
    with waiting(session, f"{doing} on {session.client.address}"):
        r = session.client.call("Verify", pb.VerifyRequest(recompute=bool(recompute)), timeout=3600)
    if r.ok:
        session.out.print(f"[green]OK[/green]: {r.blocks} blocks, {r.transactions} transactions, "
                          f"head {r.head.height} {r.head.hash}")
    else:
        where = f" at height {r.bad_height}" if r.bad_height >= 0 else ""  # (-1: the derived tables, no block)
        session.out.print(f"[red]BAD[/red]{where}: {r.reason}")
    if not r.HasField("recompute"):
        return r.ok
    c = r.recompute
    if c.ok:
        session.out.print(f"[green]OK[/green]: recomputed {c.rounds} rounds of {c.jobs} jobs from {c.updates} "
                          f"recorded updates: every AGGREGATE and GLOBAL_MODEL matches ({c.seconds:.2f} s)")
    elif c.missing:
        session.out.print(f"[yellow]CANNOT CHECK[/yellow] {c.job_id} round {c.bad_round}, node {c.bad_node}: {c.reason}")
    else:
        session.out.print(f"[red]MISMATCH[/red] in {c.job_id} round {c.bad_round}, node {c.bad_node}: {c.reason}")
    return r.ok and c.ok


@command("enrol(role='EN', uses=1, hours=24, max_samples=0)",
         "make an enrolment token for new supernodes (SN) or edge nodes (EN), max_samples capping what each "
         "edge node may claim in own-data jobs; entry node only")
def enrol(session: Session, role: str = "EN", uses: int = 1, hours: float = 24.0, max_samples: int = 0) -> bool:
    t = session.client.call("CreateEnrolment", pb.EnrolmentRequest(role=str(role).upper(), uses=int(uses),
                                                                     hours=float(hours), max_samples=int(max_samples)))
    expires = time.strftime("%Y-%m-%d %H:%M", time.gmtime(t.expires_ms / 1000))
    session.out.print(f"token {t.token_id}: enrols {t.uses} {t.role} node(s) until {expires} UTC; start each with\n"
                      f"  --token {t.token}\n(or FEDLEDGER_ENROL_TOKEN); it is shown only now", soft_wrap=True)
    return True


@command("enrolled()", "live enrolment tokens, and every node the chain enrolled (revoked ones marked)")
def enrolled(session: Session) -> bool:
    listing = session.client.call("ListEnrolments")
    tokens = Table(title="live enrolment tokens")
    for name in ("token id", "role", "uses left", "expires (UTC)"):
        tokens.add_column(name)
    for t in listing.tokens:
        tokens.add_row(t.token_id, t.role, str(t.uses), time.strftime("%Y-%m-%d %H:%M", time.gmtime(t.expires_ms / 1000)))
    nodes = Table(title="enrolled nodes")
    for name in ("node id", "role", "token", "height", "state"):
        nodes.add_column(name)
    for n in listing.nodes:
        nodes.add_row(n.node_id, n.role, n.token_id, str(n.enrolled_height),
                      f"[red]revoked: {n.reason}[/red]" if n.revoked else "enrolled")
    session.out.print(tokens)
    session.out.print(nodes)
    return True


@command("revoke(id, reason='')", "revoke an enrolled node (REVOKE on the chain; refused everywhere) or withdraw "
         "a token; entry node only")
def revoke(session: Session, id: str, reason: str = "") -> bool:  # noqa: A002 - the command's word
    reply = session.client.call("Revoke", pb.RevokeRequest(id=str(id), reason=str(reason)))
    if reply.tx_hash:
        session.out.print(f"revoked node {id}: REVOKE {reply.tx_hash[:16]}…; every supernode refuses it from its block on")
    else:
        session.out.print(f"withdrew token {id}")
    return True


@command("quit()", "leave the console (also exit())")
def quit_(session: Session) -> bool:
    session.leaving = True
    return True


COMMANDS["exit"] = Spec(quit_, "exit()", "leave the console")


def _job_line(status: pb.JobStatus, round_seconds: float) -> str:
    """The live bar's words: the job, the round under way and for how long this console has seen
    it run (a round can take minutes with nothing else changing on screen), the last accuracy."""
    last = status.metrics[-1] if status.metrics else None
    if status.state in ("running", "pausing") and status.round < status.rounds:
        words = (f"{status.job_id}: round {status.round + 1} of {status.rounds} running, {round_seconds:.0f} s"
                 + (" (pausing after it)" if status.state == "pausing" else ""))
    else:
        words = f"{status.job_id} {status.state}"
    return words + (f", acc {_pct(last.acc_weighted)} %" if last else "")


def follow(session: Session, status: pb.JobStatus, poll: float = 0.5) -> bool:
    """Show the job's progress live until it finishes, pauses or fails (Ctrl-C detaches)."""
    shown = 0
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=session.out, transient=True)
    round_started, seen_round = time.monotonic(), status.round
    try:
        with progress:
            task = progress.add_task(f"{status.job_id}", total=status.rounds, completed=status.round)
            while True:
                for m in status.metrics[shown:]:
                    session.out.print(f"round {m.round:>3}: accuracy {_pct(m.acc_weighted)} % (mean {_pct(m.acc_mean)}, "
                                      f"min {_pct(m.acc_min)}), train loss {m.train_loss:.4f}, {m.participants} ENs, "
                                      f"{len(m.excluded)} left out, {m.seconds:.2f} s")
                shown = len(status.metrics)
                if status.round != seen_round:  # a round finished: the next one's clock starts
                    round_started, seen_round = time.monotonic(), status.round
                progress.update(task, completed=status.round,
                                description=_job_line(status, time.monotonic() - round_started))
                if status.state in FINISHED:
                    break
                time.sleep(poll)
                status = session.client.call("GetJob")
    except KeyboardInterrupt:
        session.out.print("detached; the job keeps running (job() or resume() to follow)")
        return True
    if status.state == "failed":
        session.out.print(f"[red]{status.job_id} failed: {status.error}[/red]")
        return False
    session.out.print(f"{status.job_id}: {status.state} after {status.round}/{status.rounds} rounds"
                      + (f": {status.error}" if status.state == "stopped" and status.error else ""))
    return True
