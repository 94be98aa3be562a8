"""How a network's cost grows with its edge nodes, on this machine, printed as one table.

Each row starts a fresh network on loopback (an entry supernode and a second one, SQLite
ledgers) and N edge nodes: N virtual edge nodes in one process (``main.py --count N``), N edge
node processes forked from one that loaded torch (``--count N --fork``), or N edge node processes
started one by one; then it trains a digits job (iid: 1,000 clients of digits' 1,797 samples hold one
or two each). The in-process simulation of the same job, in the same run, is the reference.

- join: seconds from starting the edge node process(es) until the entry node counts N alive;
- memory per edge node: proportional set size (PSS: shared library pages split between the
  processes that map them) of the edge node process(es), divided by N, idle and after the job;
- s/round: the mean of the rounds after the first (the first one's is its own column), as the
  entry node measures them;
- supernode CPU per edge node and round: both supernodes' CPU seconds during the job / (N × rounds);
- chain: the largest block (transactions and payload bytes) and ``verify`` of the entry node's
  chain in transactions per second.

    python bench/scale.py                          # virtual 10,100,1000; forked and processes 10,50,100
    python bench/scale.py --virtual 10,100 --forked 10 --processes 10 --rounds 3
    python bench/scale.py --quick                  # a smoke run (tests)
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from base_package import data_pb2 as pb  # noqa: E402
from bench.machine import machine  # noqa: E402
from config import load_config  # noqa: E402
from fl.simulation import run_simulation  # noqa: E402
from node.chain.audit import verify_chain  # noqa: E402
from node.dev.launcher import NodeProcess, child_pids, start_supernodes, stop_all, wait_until  # noqa: E402
from sql.store import LedgerStore  # noqa: E402

JOB = {"dataset": "digits", "partition": "iid", "batch_size": "16", "lr": "0.05", "local_epochs": "1"}
KINDS = ("virtual", "forked", "processes")
MEMORY_BUDGET = 0.8  # of this machine's available memory: a row that would need more is skipped, saying so


@dataclass
class Row:
    kind: str
    edge_nodes: int
    join_s: float = float("nan")
    idle_mib: float = float("nan")
    after_mib: float = float("nan")
    first_round_s: float = float("nan")
    round_s: float = float("nan")
    sn_cpu_ms: float = float("nan")
    block_txs: int = 0
    block_kib: float = float("nan")
    verify_tx_s: float = float("nan")
    note: str = ""


def pss_mib(pids: list[int]) -> float:
    """The processes' proportional set size, MiB (smaps_rollup)."""
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1])
    return total / 1024


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def network_env(n: int) -> dict[str, str]:
    """Heartbeats that N edge nodes can afford on two cores (each is a signed RPC), liveness to match."""
    interval = max(0.3, n / 200)
    return {"FL_HEARTBEAT_INTERVAL": f"{interval:g}", "FL_DEAD_AFTER": f"{6 * interval:g}", "FL_BLOCK_INTERVAL": "0.2"}


def measure(work: Path, kind: str, n: int, rounds: int, per_process_mib: float | None) -> Row:
    row = Row(kind, n)
    if kind == "processes" and per_process_mib is not None and n * per_process_mib > MEMORY_BUDGET * available_mib():
        row.note = f"skipped: ~{n * per_process_mib / 1024:.1f} GiB (measured {per_process_mib:.0f} MiB each after a job)"
        return row
    env = network_env(n)
    started: list[NodeProcess] = []
    try:
        entry, sn = start_supernodes(work, started, env=env)
        began = time.perf_counter()
        if kind == "virtual":
            edges = [NodeProcess(work, "edges", "EN", entry=entry.address, token_source=entry, env=env,
                                 extra=["--count", str(n)])]
        elif kind == "forked":
            edges = [NodeProcess(work, "edges", "EN", entry=entry.address, token_source=entry, env=env,
                                 extra=["--count", str(n), "--fork"])]
        else:
            edges = [NodeProcess(work, f"en{i}", "EN", entry=entry.address, token_source=entry, env=env)
                     for i in range(n)]
        started.extend(edges)
        wait_until(lambda: sum(e.alive for e in entry.status().edge_nodes.nodes) == n, 120 + n, "the edge nodes",
                   interval=0.5)
        row.join_s = time.perf_counter() - began
        time.sleep(2)  # settled
        pids = [e.proc.pid for e in edges] + [child for e in edges for child in child_pids(e.proc.pid)]
        row.idle_mib = pss_mib(pids) / n
        cpu_before = cpu_seconds(entry.proc.pid) + cpu_seconds(sn.proc.pid)
        entry.console("StartJob", pb.JobRequest(settings={**JOB, "rounds": str(rounds)}))
        done = wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed", "stopped") and s,
                          600 + 2 * n, "the job", interval=0.5)
        if done.state != "done":
            row.note = f"job {done.state}: {done.error[:200]}"
            return row
        row.sn_cpu_ms = 1000 * (cpu_seconds(entry.proc.pid) + cpu_seconds(sn.proc.pid) - cpu_before) / (n * rounds)
        row.after_mib = pss_mib(pids) / n
        seconds = [m.seconds for m in done.metrics]
        left_out = sum(len(m.excluded) for m in done.metrics)
        if left_out:
            row.note = f"{left_out} updates left out over {len(seconds)} rounds"
        row.first_round_s = seconds[0]
        row.round_s = statistics.mean(seconds[1:]) if len(seconds) > 1 else seconds[0]
        wait_until(lambda: entry.status().pending_transactions == 0, 60, "the last records sealed")
    finally:
        stop_all(started, timeout=30)
    store = LedgerStore(f"sqlite:///{work / 'entry' / 'ledger.db'}", create=False)
    try:
        blocks = [s.block for s in store.iter_stored_blocks()]
        biggest = max(blocks, key=lambda b: len(b.transactions))
        row.block_txs = len(biggest.transactions)
        row.block_kib = max(sum(len(str(t.payload)) for t in b.transactions) for b in blocks) / 1024
        started_at = time.perf_counter()
        report = verify_chain(store)
        assert report.ok, str(report)
        row.verify_tx_s = report.transactions / (time.perf_counter() - started_at)
    finally:
        store.close()
    return row


def simulated(n: int, rounds: int) -> Row:
    """The same job in one process, no network: seconds per round."""
    conf = load_config(env={}, overrides={"dataset": "digits", "partition": "iid", "BATCH_SIZE": 16, "learn_rate": 0.05,
                                          "local_epoch": 1, "gobal_epoch": rounds, "client.amount": n, "workers": 1,
                                          "device": "cpu"})
    result = run_simulation(conf)
    seconds = [r.seconds for r in result.rounds]
    return Row("simulation", n, first_round_s=seconds[0],
               round_s=statistics.mean(seconds[1:]) if len(seconds) > 1 else seconds[0])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--virtual", default="10,100,1000", help="virtual edge node counts")
    p.add_argument("--forked", default="10,50,100", help="counts of edge node processes forked from one (--fork)")
    p.add_argument("--processes", default="10,50,100", help="counts of edge node processes started one by one")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a smoke run: 4 virtual, 2 forked, 2 processes, 2 rounds")
    args = p.parse_args()
    if args.quick:
        args.virtual, args.forked, args.processes, args.rounds = "4", "2", "2", 2
    counts = {kind: [int(x) for x in getattr(args, kind).split(",") if x] for kind in KINDS}
    out = Console()
    rows: list[Row] = []
    per_process: float | None = None
    for n in sorted(set(counts["virtual"] + counts["forked"] + counts["processes"])):
        rows.append(simulated(n, args.rounds))
    for kind in KINDS:
        for n in counts[kind]:
            work = Path(tempfile.mkdtemp(prefix=f"scale-{kind}-{n}-"))
            try:
                row = measure(work, kind, n, args.rounds, per_process)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            if kind == "processes" and row.after_mib == row.after_mib:  # (not NaN)
                per_process = row.after_mib
            rows.append(row)
            out.print(f"{kind} {n}: done" + (f" ({row.note})" if row.note else ""))
    out.print(table(rows, args.rounds))
    reference = {r.edge_nodes: r.round_s for r in rows if r.kind == "simulation"}
    virtual = sorted((r.edge_nodes, r.round_s) for r in rows if r.kind == "virtual" and r.round_s == r.round_s)
    if len(virtual) >= 2:
        (n0, t0), (n1, t1) = virtual[0], virtual[-1]
        out.print(f"per edge node and round, virtual: {1000 * (t1 - t0) / (n1 - n0):.1f} ms "
                  f"(simulation: {1000 * (reference.get(n1, t1) - reference.get(n0, t0)) / (n1 - n0):.2f} ms)")
    out.print(machine())
    return 0


def table(rows: list[Row], rounds: int) -> Table:
    t = Table(title=f"digits, iid, {rounds} rounds; 2 supernodes")
    for name in ("edge nodes", "how", "join s", "MiB/EN idle", "MiB/EN after", "round 1 s", "s/round",
                 "× simulation", "SN CPU ms/EN/round", "largest block", "verify tx/s", "note"):
        t.add_column(name, justify="left" if name in ("how", "note") else "right")
    reference = {r.edge_nodes: r.round_s for r in rows if r.kind == "simulation"}

    def num(value: float, fmt: str) -> str:
        return "–" if value != value else format(value, fmt)

    for r in sorted(rows, key=lambda r: (r.edge_nodes, ["simulation", *KINDS].index(r.kind))):
        ratio = r.round_s / reference[r.edge_nodes] if r.kind != "simulation" and reference.get(r.edge_nodes) else float("nan")
        block = f"{r.block_txs} tx, {r.block_kib:.0f} KiB" if r.block_txs else "–"
        t.add_row(str(r.edge_nodes), r.kind, num(r.join_s, ".1f"), num(r.idle_mib, ".1f"), num(r.after_mib, ".1f"),
                  num(r.first_round_s, ".2f"), num(r.round_s, ".2f"), num(ratio, ".1f"), num(r.sn_cpu_ms, ".1f"),
                  block, num(r.verify_tx_s, ",.0f"), r.note)
    return t


if __name__ == "__main__":
    sys.exit(main())
