"""A FedLedger network across Linux network namespaces, to try multi-host behaviour by hand.

    sudo .venv/bin/python scripts/netns_cluster.py up [--edge-nodes 3] [--sqlite]
    sudo .venv/bin/python scripts/netns_cluster.py down     # remove what a killed `up` left

`up` makes one namespace per node on a bridge (entry SN 10.123.0.10, SN .11, edge nodes .12 …),
starts the nodes there (supernode ledgers on the machine's MariaDB through a forwarder at
10.123.0.1:3306, or SQLite with --sqlite), prints the console command, and runs until Ctrl-C,
then stops every node and removes every namespace. Meanwhile, from another shell:

    ip link set flv2 down    # cut the first edge node's link (see the printed table)
    ip netns exec fl-en0 ss -tn
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from node.dev.launcher import NodeProcess, wait_until  # noqa: E402
from node.dev.netns import Cluster  # noqa: E402


def up(args: argparse.Namespace) -> int:
    names = ["entry", "sn1"] + [f"en{i}" for i in range(args.edge_nodes)]
    cluster = Cluster(prefix="fl")
    nodes: list[NodeProcess] = []
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        cluster.open(names)
        mysql = None if args.sqlite else cluster.forward(3306, ("127.0.0.1", 3306))
        tag = uuid.uuid4().hex[:6]
        for name in names:
            host = cluster.hosts[name]
            nt = "SN" if name in ("entry", "sn1") else "EN"
            db = f"mysql+pymysql://root@{mysql}/fedledger_netns_{tag}_{name}" if mysql and nt == "SN" else None
            node = NodeProcess(work, name, nt, entry=None if name == "entry" else f"{cluster.hosts['entry'].address}:8080",
                               is_entry=name == "entry", db=db, host=host.address, port=8080,
                               prefix=host.exec_prefix(), env={"FL_ROUND_TIMEOUT": "30"},
                               token_source=nodes[0] if nodes else None)
            nodes.append(node)
            if nt == "SN":
                node.wait_ready()
        entry = nodes[0]
        wait_until(lambda: sum(n.alive for n in entry.status().edge_nodes.nodes) == args.edge_nodes, 120,
                   "the edge nodes to join")
        print(f"{'node':8} {'namespace':12} {'address':18} link")
        for name in names:
            h = cluster.hosts[name]
            print(f"{name:8} {h.namespace:12} {h.address + ':8080':18} {h.veth}")
        print(f"\nlogs and homes in {work}\nconsole:\n  .venv/bin/python Console.py --ip {cluster.hosts['entry'].address} "
              f"--port 8080 --token-file {entry.home / 'admin.token'}\nCtrl-C stops everything.")
        stop.wait()
        return 0
    finally:
        for node in reversed(nodes):
            node.stop(timeout=10)
        cluster.close()
        print("stopped the nodes and removed the namespaces")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    start = sub.add_parser("up", help="start the namespaced network (until Ctrl-C)")
    start.add_argument("--edge-nodes", type=int, default=3)
    start.add_argument("--sqlite", action="store_true", help="SQLite ledgers instead of the machine's MariaDB")
    start.add_argument("--work", default=str(ROOT / "runs" / "netns"))
    sub.add_parser("down", help="remove namespaces and links left by a killed `up`")
    args = p.parse_args()
    if args.action == "down":
        Cluster(prefix="fl").remove_leftovers()
        return 0
    return up(args)


if __name__ == "__main__":
    sys.exit(main())
