"""What the network costs per round: the same FedPer job in-process and over real nodes.

(a) ``run_simulation`` (what ``python -m fl`` runs): one process per core, clients spread over them.
(b) an entry supernode (+ more supernodes) and N edge nodes as separate processes on loopback,
    driven through the console service: the same data, partition, seeds and model, so the two
    runs train the same clients on the same samples; every round also evaluates every client.

Seconds per round count rounds 2+ (round 1 includes loading data and warming up); the two kinds
of run alternate (``--repeats``) and the best of each counts, so a busy moment on the machine
does not land on one side only.

    python bench/round_overhead.py --dataset mnist --data-dir ../shared/data/mnist10k --edge-nodes 8
    python bench/round_overhead.py --dataset digits          # offline, small
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from base_package import data_pb2 as pb  # noqa: E402
from config import load_config  # noqa: E402
from fl.simulation import run_simulation  # noqa: E402
from node.dev.launcher import NodeProcess, wait_until  # noqa: E402


def job_settings(args: argparse.Namespace) -> dict[str, str]:
    return {"dataset": args.dataset, "client.amount": str(args.edge_nodes), "gobal_epoch": str(args.rounds),
            "partition": "pathological", "classes_per_client": "2", "local_epoch": "1", "learn_rate": str(args.lr),
            "BATCH_SIZE": str(args.batch_size), "momentum": "0.0", "strategy": "fedper", "seed": "0"}


def in_process(args: argparse.Namespace, workers: int = 0) -> tuple[float, float]:
    conf = load_config(env={}, overrides={**job_settings(args), "data_dir": args.data_dir, "device": "cpu",
                                          "workers": workers})
    result = run_simulation(conf)
    later = result.rounds[1:] or result.rounds
    return sum(r.seconds for r in later) / len(later), result.final_accuracy


def networked(args: argparse.Namespace, console: Console) -> tuple[float, float, pb.RecomputeReport]:
    env = {"FL_DATA_DIR": str(Path(args.data_dir).resolve()), "FL_TORCH_THREADS": "1",
           "FL_EDGE_PARALLELISM": str(args.edge_parallelism),
           # the production defaults, not the quick test settings: 1 s heartbeats, 0.5 s blocks
           "FL_HEARTBEAT_INTERVAL": "1.0", "FL_DEAD_AFTER": "3.0", "FL_BLOCK_INTERVAL": "0.5"}
    nodes: list[NodeProcess] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            entry = NodeProcess(Path(tmp), "entry", "SN", is_entry=True, env=env)
            nodes.append(entry)
            entry.wait_ready()
            for i in range(1, args.supernodes):
                nodes.append(NodeProcess(Path(tmp), f"sn{i}", "SN", entry=entry.address, env=env, token_source=entry))
            for i in range(args.edge_nodes):
                nodes.append(NodeProcess(Path(tmp), f"en{i}", "EN", entry=entry.address, env=env, token_source=entry))
            wait_until(lambda: sum(n.alive for n in entry.status().edge_nodes.nodes) == args.edge_nodes, 120,
                       "the edge nodes to join")
            settings = {k: v for k, v in job_settings(args).items() if k != "client.amount"}
            entry.console("StartJob", pb.JobRequest(settings=settings))
            started = time.monotonic()
            while (status := entry.console("GetJob")).state == "running":
                time.sleep(0.5)
                if time.monotonic() - started > 3600:
                    raise TimeoutError("the networked job did not finish within an hour")
            if status.state != "done":
                raise RuntimeError(f"the networked job ended {status.state}: {status.error}")
            later = status.metrics[1:] or status.metrics
            # the audit of this job: every aggregate re-derived from the recorded updates
            recomputed = entry.console("Verify", pb.VerifyRequest(recompute=True), timeout=3600).recompute
            if not recomputed.ok:
                raise RuntimeError(f"verify(recompute=True) failed: {recomputed.reason}")
            return sum(m.seconds for m in later) / len(later), status.metrics[-1].acc_weighted, recomputed
        finally:
            for node in reversed(nodes):
                node.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--edge-nodes", type=int, default=8)
    p.add_argument("--supernodes", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="runs of each, alternating; the best counts")
    p.add_argument("--edge-parallelism", type=int, default=os.cpu_count() or 1,
                   help="edge nodes each supernode trains at once (0: all; default: one per core, as the ENs here "
                        "share this host's cores)")
    args = p.parse_args()
    console = Console()
    sims, crowded, nets = [], [], []
    for attempt in range(args.repeats):  # alternate, so drift in the machine's load hits all alike
        console.print(f"[{attempt + 1}/{args.repeats}] in-process simulation …")
        sims.append(in_process(args))
        crowded.append(in_process(args, workers=args.edge_nodes))
        console.print(f"[{attempt + 1}/{args.repeats}] network: {args.supernodes} supernodes, {args.edge_nodes} edge nodes …")
        nets.append(networked(args, console))
    (sim_seconds, sim_acc), (crowd_seconds, crowd_acc), (net_seconds, net_acc, _) = min(sims), min(crowded), min(nets, key=lambda n: n[0])
    # each attempt ran both kinds back to back: its ratio is the least touched by drift in the machine's speed
    paired = sorted(net[0] / sim[0] for sim, net in zip(sims, nets))
    table = Table(title=f"FedPer on {args.dataset}: {args.edge_nodes} clients, {args.rounds} rounds, "
                        f"batch {args.batch_size}, 1 local epoch (s/round over rounds 2+)")
    for name in ("run", "s/round", "final accuracy %", "vs in-process"):
        table.add_column(name, justify="right")
    table.add_row("in-process (python -m fl), one worker per core", f"{sim_seconds:.2f}", f"{100 * sim_acc:.2f}", "1.00×")
    table.add_row(f"in-process, {args.edge_nodes} worker processes (one per client)", f"{crowd_seconds:.2f}",
                  f"{100 * crowd_acc:.2f}", f"{crowd_seconds / sim_seconds:.2f}×")
    table.add_row(f"network ({args.supernodes} SN + {args.edge_nodes} EN processes)", f"{net_seconds:.2f}",
                  f"{100 * net_acc:.2f}", f"{net_seconds / sim_seconds:.2f}× ({100 * (net_seconds / sim_seconds - 1):+.0f} %)")
    console.print(table)
    console.print(f"network / in-process, attempt by attempt: {', '.join(f'{r:.2f}×' for r in paired)} "
                  f"(median {statistics.median(paired):.2f}×); {os.cpu_count()} CPU cores")
    audits = [net[2] for net in nets]
    console.print(f"verify(recompute=True) on the entry node after each networked job: {audits[0].rounds} rounds, "
                  f"{audits[0].updates} updates re-derived in {', '.join(f'{a.seconds:.2f}' for a in audits)} s")


if __name__ == "__main__":
    main()
