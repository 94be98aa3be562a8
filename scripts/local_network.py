"""The main job: a FedLedger network on this machine, trained from the console's scripting mode.

Starts an entry supernode, a second supernode and four edge nodes as real processes on
loopback (SQLite ledgers, homes and logs under ``--work``), trains FedPer on scikit-learn's
``digits`` (no download) through ``Console.py -c``, then shows the per-edge-node accuracy, the
chain head on every supernode and ``verify(recompute=True)``, and stops every node (SIGTERM).
The entry node serves the block and model explorer (``--http``); with ``--keep`` the network
stays up until Ctrl-C so it can be browsed.

    python scripts/local_network.py [--rounds 5] [--edge-nodes 4] [--work runs/local-network] [--http 8088] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from node.dev.launcher import NodeProcess, wait_until  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--edge-nodes", type=int, default=4)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "local-network")
    p.add_argument("--http", type=int, default=8088, help="the entry node's explorer port")
    p.add_argument("--keep", action="store_true", help="keep the network up after the job (Ctrl-C stops it)")
    p.add_argument("--job", default="dataset='digits', partition='pathological', batch_size=16, lr=0.05",
                   help="trainFL keyword arguments")
    args = p.parse_args()
    out = Console()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    nodes: list[NodeProcess] = []
    try:
        entry = NodeProcess(args.work, "entry", "SN", is_entry=True, extra=["--http", str(args.http)])
        nodes.append(entry)
        entry.wait_ready()
        sn = NodeProcess(args.work, "sn1", "SN", entry=entry.address, token_source=entry)
        nodes.append(sn)
        sn.wait_ready()
        edges = [NodeProcess(args.work, f"en{i}", "EN", entry=entry.address, token_source=entry) for i in range(args.edge_nodes)]
        nodes.extend(edges)
        wait_until(lambda: sum(n.alive for n in entry.status().edge_nodes.nodes) == args.edge_nodes, 120,
                   "the edge nodes to join")
        out.print(f"network up: entry {entry.address}, supernode {sn.address}, {args.edge_nodes} edge nodes "
                  f"(homes and logs in {args.work})")
        script = f"trainFL({args.job}, rounds={args.rounds}); eval(); save(path='{args.work / 'saved'}'); verify(recompute=True)"
        out.print(f"$ python Console.py --port {entry.port} --token-file {entry.home / 'admin.token'} -c \"{script}\"")
        rc = subprocess.call([sys.executable, str(ROOT / "Console.py"), "--port", str(entry.port),
                              "--token-file", str(entry.home / "admin.token"), "-c", script], cwd=ROOT)
        if rc != 0:
            out.print(f"[red]the console failed (exit {rc}); see the logs in {args.work}[/red]")
            return rc
        wait_until(lambda: entry.status().pending_transactions == 0 and
                   entry.status().head.hash == sn.status().head.hash, 30, "the supernodes to agree")
        table = Table(title="chain head on every supernode")
        for name in ("supernode", "address", "height", "head hash", "verify"):
            table.add_column(name)
        for node in (entry, sn):
            s, v = node.status(), node.console("Verify")
            table.add_row(node.name, node.address, str(s.head.height), s.head.hash, "OK" if v.ok else f"BAD: {v.reason}")
        out.print(table)
        shown = explorer_head(entry, args.http)
        out.print(f"explorer: https://127.0.0.1:{args.http}/ shows head {shown} (log in with the token in "
                  f"{entry.home / 'admin.token'}; the certificate is the network's own: {entry.home / 'ca'})")
        if args.keep:
            out.print("the network stays up: Ctrl-C stops it")
            try:
                entry.proc.wait()
            except KeyboardInterrupt:
                pass
        return 0
    finally:
        codes = [n.stop() for n in reversed(nodes)]
        out.print(f"stopped {len(codes)} nodes (exit codes {sorted(set(codes))})")


def explorer_head(entry: NodeProcess, port: int) -> str:
    """The head height the entry node's explorer page shows (fetched over HTTPS, checked against
    the network's CA, with the admin token)."""
    import re
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(entry.home / "ca" / "ca.crt"))
    context.check_hostname = False  # the certificate names the node by its id, not by 127.0.0.1
    request = urllib.request.Request(f"https://127.0.0.1:{port}/", headers={"Authorization": f"Bearer {entry.token}"})
    with urllib.request.urlopen(request, context=context, timeout=30) as reply:
        found = re.search(r'id="head-height"><a href="/block/(\d+)"', reply.read().decode())
    return found.group(1) if found else "?"


if __name__ == "__main__":
    sys.exit(main())
