"""Chaos: a federated job against a seeded schedule of crashes, and what the chain says afterwards.

A network of real processes on this machine: the entry node and two more supernodes, each with
its own MariaDB database on a private MariaDB server (started here, never the system one), and
six edge nodes. A 30-round job (FedAvgM: server state that must survive the entry node) on the
10,000 MNIST digits (``--data-dir``; scikit-learn's digits without one, in rounds too short for
the faults to land) runs while a schedule drawn from ``--seed`` crashes an edge node, a
supernode, the entry node (each ``kill -9``, restarted with the same home and port 1-4 s later)
or the database server (``kill -9``, started again 8-20 s later): every kind twice, one fault
every three rounds, each once the network is whole again after the one before (at most 90 s),
so that each recovery time is that fault's own.

Afterwards, from the chain:

- **rounds** with a GLOBAL_MODEL (must be all of them), **attempts** (signed ROUND orders) and
  failed attempts (ROUND_FAILED, each with its reason);
- **blocks lost**: a block seen during the run (height and hash, polled every 0.3 s) that is not
  on the entry node's chain at the end; **doubled**: a transaction sealed twice, or a round with
  two GLOBAL_MODELs. Both must be 0;
- **half rounds**: a MODEL_UPDATE no AGGREGATE lists, or an AGGREGATE no GLOBAL_MODEL lists
  (the round's records are sealed together or not at all); **unrecorded absences**: a round in
  which an edge node of the job has neither an update nor an EXCLUDED with a reason;
- **chains equal**: every supernode's head is the entry node's; **audit**: ``Verify`` on every
  supernode (signatures, links, derived tables) and ``recompute`` on the entry node (every
  aggregate re-derived from the recorded updates);
- per fault kind: how long the network took, from the moment the victim was back, to seal the
  next round (**moving**) and the next round with an update from every edge node (**whole**).

    python bench/chaos.py [--seed 7] [--rounds 30] [--faults 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from base_package import data_pb2 as pb  # noqa: E402
from node.chain.identity import Identity  # noqa: E402
from node.dev.launcher import NodeProcess, stop_all, wait_until  # noqa: E402
from node.dev.mariadb import PrivateMariaDB, mariadb_available  # noqa: E402
from node.net.wire import block_from_pb  # noqa: E402

KINDS = ("edge node", "supernode", "entry node", "database")
JOB = {"partition": "pathological", "batch_size": "16", "lr": "0.01", "local_epochs": "1", "aggregation": "fedavgm",
       "strategy": "fedavg", "round_timeout": "60", "round_attempts": "10"}
RECOVERY_WAIT_S = 90  # the next fault waits (at most this long) until the network is whole again
MNIST10K = ROOT.parent / "shared" / "data" / "mnist10k"


@dataclass
class Fault:
    kind: str
    victim: str
    at_round: int  # fired once the job has completed this many rounds
    down_s: float
    back_at: float = 0.0  # time.time() when the victim was back
    moving_s: float | None = None
    whole_s: float | None = None


@dataclass
class Observed:
    """What the poller saw on the entry node's chain: each block once, when it appeared."""
    blocks: dict[int, str] = field(default_factory=dict)  # height -> hash
    rounds: list[tuple[float, int, int]] = field(default_factory=list)  # (seen at, round, updates in it)


class Network:
    """The processes, by name, and how to restart each with its home, port and database."""

    def __init__(self, work: Path, database: PrivateMariaDB, edge_nodes: int, supernodes: int,
                 data_dir: Path | None) -> None:
        self.work, self.database = work, database
        self.extra = ["--data-dir", str(data_dir)] if data_dir else []
        self.entry = NodeProcess(work, "entry", "SN", is_entry=True, db=f"{database.url}/chaos_entry", extra=self.extra)
        self.nodes: dict[str, NodeProcess] = {"entry": self.entry}
        self.entry.wait_ready()
        for i in range(1, supernodes):
            self.nodes[f"sn{i}"] = NodeProcess(work, f"sn{i}", "SN", entry=self.entry.address, token_source=self.entry,
                                               db=f"{database.url}/chaos_sn{i}", extra=self.extra)
        for i in range(edge_nodes):
            self.nodes[f"edge{i}"] = NodeProcess(work, f"edge{i}", "EN", entry=self.entry.address, token_source=self.entry,
                                                 extra=self.extra)
        self.edge_ids = [Identity.load_or_create(self.nodes[f"edge{i}"].home).node_id for i in range(edge_nodes)]
        wait_until(lambda: sum(n.alive for n in self.entry.status().edge_nodes.nodes) == edge_nodes
                   and len(self.entry.status().supernodes.nodes) == supernodes, 120, "the network")

    def names(self, prefix: str) -> list[str]:
        return [name for name in self.nodes if name.startswith(prefix)]

    def crash(self, name: str) -> None:
        self.nodes[name].kill()

    def restart(self, name: str) -> None:
        old = self.nodes[name]
        is_entry = name == "entry"
        db = f"{self.database.url}/chaos_{name}" if not name.startswith("edge") else None
        again = NodeProcess(self.work, name, "EN" if name.startswith("edge") else "SN", entry=self.entry.address,
                            is_entry=is_entry, port=old.port, db=db, extra=self.extra)  # enrolled before: no token
        if is_entry:
            self.entry = again
        else:
            again.token_source = self.entry  # where the console's certificate is, to talk to it
        self.nodes[name] = again

    def stop(self) -> None:
        stop_all(list(self.nodes.values()))


def schedule(rng: random.Random, faults: int, rounds: int, net: Network) -> list[Fault]:
    """``faults`` crashes spread over the job's rounds, every kind at least twice (when there are
    enough), in a seeded order, each with a seeded victim and time down."""
    kinds = [KINDS[i % len(KINDS)] for i in range(faults)]
    rng.shuffle(kinds)
    victims = {"edge node": net.names("edge"), "supernode": net.names("sn"), "entry node": ["entry"],
               "database": ["mariadb"]}
    spacing = max(1, (rounds - 4) // faults)
    return [Fault(kind, rng.choice(victims[kind]), 2 + i * spacing,
                  rng.uniform(8, 20) if kind == "database" else rng.uniform(1, 4)) for i, kind in enumerate(kinds)]


def poll_chain(net: Network, job_id: str, seen: Observed, stop: threading.Event) -> None:
    """Read every new block of the entry node as it appears (restarts and outages are retried)."""
    height = 0
    while not stop.is_set():
        try:
            head = net.entry.head()
            while height <= head.height:
                block = block_from_pb(net.entry.console("GetBlock", pb.BlockRequest(height=height), timeout=5))
                seen.blocks[height] = block.hash
                updates: Counter = Counter()
                for tx in block.transactions:
                    if tx.payload.get("job_id") == job_id and tx.kind == "MODEL_UPDATE":
                        updates[tx.payload["round"]] += 1
                for tx in block.transactions:
                    if tx.payload.get("job_id") == job_id and tx.kind == "GLOBAL_MODEL":
                        seen.rounds.append((time.time(), tx.payload["round"], updates[tx.payload["round"]]))
                height += 1
        except (grpc.RpcError, AttributeError):
            pass  # the entry node is down or its database is: try again
        stop.wait(0.3)


def job_round(net: Network) -> int:
    try:
        return net.entry.console("GetJob", timeout=5).round
    except grpc.RpcError:
        return -1


def inject(net: Network, fault: Fault) -> None:
    print(f"round {job_round(net)}: crashing {fault.kind} {fault.victim} for {fault.down_s:.1f} s", flush=True)
    if fault.kind == "database":
        net.database.kill()
        time.sleep(fault.down_s)
        net.database.start()
    else:
        net.crash(fault.victim)
        time.sleep(fault.down_s)
        net.restart(fault.victim)
    fault.back_at = time.time()


def recovery(fault: Fault, seen: Observed, edge_nodes: int) -> bool:
    """Fill in how long the network took to move again and to be whole again after ``fault``:
    True once it is whole."""
    after = [(t, updates) for t, _, updates in list(seen.rounds) if t >= fault.back_at]
    fault.moving_s = after[0][0] - fault.back_at if after else None
    whole = [t for t, updates in after if updates == edge_nodes]
    fault.whole_s = whole[0] - fault.back_at if whole else None
    return fault.whole_s is not None


def chain_report(net: Network, job_id: str, seen: Observed, rounds: int) -> dict[str, object]:
    entry = net.entry
    head = entry.head()
    blocks = [block_from_pb(entry.console("GetBlock", pb.BlockRequest(height=h))) for h in range(head.height + 1)]
    txs = [tx for b in blocks for tx in b.transactions]
    mine = [tx for tx in txs if tx.payload.get("job_id") == job_id]
    globals_ = Counter(tx.payload["round"] for tx in mine if tx.kind == "GLOBAL_MODEL")
    lost = sum(1 for h, block_hash in seen.blocks.items() if h > head.height or blocks[h].hash != block_hash)
    doubled = sum(n - 1 for n in Counter(tx.hash for tx in txs).values() if n > 1) + \
        sum(n - 1 for n in globals_.values() if n > 1)
    combined = {h for tx in mine if tx.kind == "GLOBAL_MODEL" for h in tx.payload["aggregates"]}
    aggregates = [tx for tx in mine if tx.kind == "AGGREGATE"]
    listed = {h for tx in aggregates for h in tx.payload["updates"]}
    half = sum(tx.hash not in combined for tx in aggregates) + \
        sum(tx.hash not in listed for tx in mine if tx.kind == "MODEL_UPDATE")
    accounted = {(tx.sender, tx.payload["round"]) for tx in mine if tx.kind == "MODEL_UPDATE"} | \
        {(tx.payload["node"], tx.payload["round"]) for tx in mine if tx.kind == "EXCLUDED"}
    unrecorded = sum((edge, r) not in accounted for edge in net.edge_ids for r in range(1, rounds + 1))
    heads = {name: node.head() for name, node in net.nodes.items() if name == "entry" or name.startswith("sn")}
    verified = {name: net.nodes[name].console("Verify", pb.VerifyRequest(recompute=name == "entry"), timeout=300)
                for name in heads}
    failed = {name: v.reason or v.recompute.reason for name, v in verified.items()
              if not v.ok or (name == "entry" and not v.recompute.ok)}
    return {"rounds": len(globals_), "attempts": sum(tx.kind == "ROUND" for tx in mine),
            "failed": sum(tx.kind == "ROUND_FAILED" for tx in mine), "lost": lost, "doubled": doubled,
            "half": half, "unrecorded": unrecorded, "equal": all(h == heads["entry"] for h in heads.values()),
            "audit": "; ".join(f"{name}: {reason}" for name, reason in failed.items()) or "OK",
            "recompute": str(verified["entry"].recompute.rounds), "blocks": head.height + 1,
            "reasons": Counter(tx.payload["reason"][:70] for tx in mine if tx.kind == "ROUND_FAILED")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--faults", type=int, default=8)
    parser.add_argument("--edge-nodes", type=int, default=6)
    parser.add_argument("--supernodes", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=MNIST10K if MNIST10K.is_dir() else None,
                        help="MNIST IDX files (default ../shared/data/mnist10k when there); none: digits")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (logs, homes, databases)")
    args = parser.parse_args()
    if not mariadb_available():
        print("bench/chaos.py needs MariaDB's server (mariadb-install-db, mariadbd) for its private database")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        database = PrivateMariaDB(work / "mariadb")
        net: Network | None = None
        stop = threading.Event()
        try:
            started = time.time()
            net = Network(work, database, args.edge_nodes, args.supernodes, args.data_dir)
            faults = schedule(random.Random(args.seed), args.faults, args.rounds, net)
            dataset = "mnist" if args.data_dir else "digits"
            job = net.entry.console("StartJob", pb.JobRequest(settings={**JOB, "rounds": str(args.rounds),
                                                                        "dataset": dataset}))
            seen = Observed()
            poller = threading.Thread(target=poll_chain, args=(net, job.job_id, seen, stop), daemon=True)
            poller.start()
            for fault in faults:  # one at a time: each on a whole network, so its recovery is its own
                wait_until(lambda f=fault: job_round(net) >= f.at_round, 600, f"round {fault.at_round}")
                if job_round(net) >= args.rounds:
                    break
                inject(net, fault)
                deadline = time.monotonic() + RECOVERY_WAIT_S
                while not recovery(fault, seen, args.edge_nodes) and time.monotonic() < deadline \
                        and job_round(net) < args.rounds:
                    time.sleep(0.3)
            state = wait_until(lambda: (s := net.entry.console("GetJob", timeout=5)).state in ("done", "failed", "paused")
                               and s, 900, "the job to end")
            wait_until(lambda: net.entry.status().pending_transactions == 0, 60, "the last records to be sealed")
            wait_until(lambda: len({net.nodes[n].head().hash for n in net.nodes if not n.startswith("edge")}) == 1, 60,
                       "every supernode to hold the head")
            elapsed = time.time() - started
            stop.set()
            poller.join()
            fired = [f for f in faults if f.back_at]
            for fault in fired:
                recovery(fault, seen, args.edge_nodes)
            report = chain_report(net, job.job_id, seen, args.rounds)
        finally:
            stop.set()
            if net is not None:
                net.stop()
            database.kill()
    print_report(args, state, fired, report, elapsed)
    healthy = state.state == "done" and report["lost"] == report["doubled"] == report["half"] == 0 \
        and report["unrecorded"] == 0 and report["equal"] and report["audit"] == "OK"
    return 0 if healthy else 1


def print_report(args: argparse.Namespace, state: pb.JobStatus, fired: list[Fault], report: dict, elapsed: float) -> None:
    console = Console(width=150)
    table = Table(title=f"chaos: {args.rounds}-round {'MNIST 10k' if args.data_dir else 'digits'} job (FedAvgM), {args.edge_nodes} edge nodes, "
                        f"{args.supernodes} supernodes on MariaDB, seed {args.seed}")
    table.add_column("fault")
    table.add_column("count", justify="right")
    table.add_column("down s (mean)", justify="right")
    table.add_column("back → next round s (mean / max)", justify="right")
    table.add_column("back → all edge nodes s (mean / max)", justify="right")
    by_kind: dict[str, list[Fault]] = defaultdict(list)
    for fault in fired:
        by_kind[fault.kind].append(fault)

    def spread(values: list[float | None]) -> str:
        known = [v for v in values if v is not None]
        missing = len(values) - len(known)
        text = f"{statistics.mean(known):.1f} / {max(known):.1f}" if known else "-"
        return text + (f" ({missing} never)" if missing else "")

    for kind in KINDS:
        faults = by_kind.get(kind, [])
        table.add_row(kind, str(len(faults)), f"{statistics.mean(f.down_s for f in faults):.1f}" if faults else "-",
                      spread([f.moving_s for f in faults]), spread([f.whole_s for f in faults]))
    console.print(table)
    outcome = Table(title="the chain afterwards", show_header=False)
    for label, value in [
        ("job", f"{state.state} after {state.round}/{state.rounds} rounds ({elapsed:.0f} s){': ' + state.error if state.error else ''}"),
        ("final accuracy (sample-weighted, edge nodes' own test splits)",
         f"{state.metrics[-1].acc_weighted:.4f}" if state.metrics else "-"),
        ("rounds with a GLOBAL_MODEL", str(report["rounds"])),
        ("attempts (ROUND orders) / failed (ROUND_FAILED)", f"{report['attempts']} / {report['failed']}"),
        ("why attempts failed", ", ".join(f"{n}× {r}" for r, n in report["reasons"].items()) or "-"),
        ("blocks on the chain", str(report["blocks"])),
        ("blocks lost / transactions or rounds doubled", f"{report['lost']} / {report['doubled']}"),
        ("half-recorded rounds (records without their round)", str(report["half"])),
        ("absences without a record (edge node × round)", str(report["unrecorded"])),
        ("chains equal on every supernode", "yes" if report["equal"] else "NO"),
        ("audit: verify on every supernode, recompute on the entry node", f"{report['audit']} ({report['recompute']} rounds recomputed)"),
    ]:
        outcome.add_row(label, value)
    console.print(outcome)


if __name__ == "__main__":
    sys.exit(main())
