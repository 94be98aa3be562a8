"""Model transfer over gRPC on loopback, next to raw TCP and the codec, in one table.

Starts two supernodes and an edge node as real processes (twice: over mutual TLS, as deployed,
and plaintext with ``--insecure``), then streams a 100 MB model (safetensors bytes, 1 MiB chunks,
signed header) into a supernode (the entry node's ``DistributeModel``: the supernode checks the
signature, the SHA-256 and the safetensors layout, the same receive path as an edge node's
``UploadUpdate``, which is taken only during a round) and out of a supernode to its edge node
(``DistributeModel``: the edge node checks the signature and the SHA-256), each timed from the
first byte sent to the receipt.
The receiver decodes a model when it uses it; that cost is the "safetensors decode" row. Beside them, in the same run: raw loopback TCP
between two processes, safetensors encode and decode, and SHA-256 of the same bytes.

    python bench/transfer.py [--mb 100] [--repeats 5]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import socket
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from base_package import data_pb2_grpc as rpc_pb  # noqa: E402
from fl.serialize import state_from_bytes, state_to_bytes  # noqa: E402
from node.dev.launcher import NodeProcess, wait_until  # noqa: E402
from node.chain.identity import Identity  # noqa: E402
from node.net.channels import channel  # noqa: E402
from node.net.streams import chunks, make_header  # noqa: E402
from node.net.tls import TLS_DIR, Credentials  # noqa: E402


def grpc_rows(data: bytes, args: argparse.Namespace, secure: bool) -> list[tuple[str, float]]:
    """Into a supernode and out of one, between real node processes over mutual TLS (as deployed)
    or plaintext (``--insecure``), each side calling with its own certificate as in a round. Into:
    the entry node's ``DistributeModel`` to a second supernode, the receive path an edge node's
    upload takes too (uploads themselves are taken only for a round in progress). Out: a
    supernode's ``DistributeModel`` to one of its edge nodes."""
    size_mb, link = len(data) / 1e6, "mutual TLS" if secure else "plaintext"
    with tempfile.TemporaryDirectory() as tmp:
        env, extra = {"FL_MAX_MODEL_MB": str(4 * args.mb)}, [] if secure else ["--insecure"]
        entry = NodeProcess(Path(tmp), "entry", "SN", is_entry=True, env=env, extra=extra)
        sn = NodeProcess(Path(tmp), "sn", "SN", entry=entry.address, env=env, token_source=entry, extra=extra)
        nodes = [entry, sn]
        try:
            entry.wait_ready()
            sn.wait_ready()
            wait_until(lambda: len(entry.status().supernodes.nodes) == 2, 60, "the second supernode to register")
            en = NodeProcess(Path(tmp), "en", "EN", entry=entry.address, env=env, token_source=entry, extra=extra)
            nodes.append(en)
            en.wait_ready()
            home = wait_until(lambda: next((n.supernode for n in entry.status().edge_nodes.nodes if n.alive), None),
                              60, "the edge node to join")
            ids = {p: Identity.load_or_create(p.home) for p in nodes}
            en_sn = next(p for p in (entry, sn) if ids[p].node_id == home)

            def link_to(caller: NodeProcess, target: NodeProcess):
                creds = Credentials.load(caller.home / TLS_DIR) if secure else None
                return channel(target.address, creds, ids[target].node_id)

            into_sn, out_of_sn = link_to(entry, sn), link_to(en_sn, en)
            distribute_in = rpc_pb.TrainingStub(into_sn).DistributeModel
            distribute_out = rpc_pb.TrainingStub(out_of_sn).DistributeModel
            # the sender hashes its model once, when it makes it (the hash goes on the chain too)
            entry_header, sn_header = make_header(ids[entry], data), make_header(ids[en_sn], data)
            rows = [(f"gRPC into a supernode, {link} (signature, SHA-256, layout)", size_mb / best_seconds(
                        lambda: distribute_in(chunks(entry_header, data), timeout=120), args.repeats)),
                    (f"gRPC SN → EN, {link} (signature, SHA-256)", size_mb / best_seconds(
                        lambda: distribute_out(chunks(sn_header, data), timeout=120), args.repeats))]
            into_sn.close()
            out_of_sn.close()
            return rows
        finally:
            for process in reversed(nodes):
                process.stop()


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _sink(port_queue, size: int) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port_queue.put(server.getsockname()[1])
        while True:
            conn, _ = server.accept()
            with conn:
                got = 0
                while got < size:
                    piece = conn.recv(1 << 20)
                    if not piece:
                        break
                    got += len(piece)
                conn.sendall(b"k")
                if got == 0:
                    return


def raw_tcp_seconds(data: bytes, repeats: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    sink = ctx.Process(target=_sink, args=(ports, len(data)), daemon=True)
    sink.start()
    port = ports.get(timeout=30)

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(data)
            conn.recv(1)

    seconds = best_seconds(send, repeats)
    sink.terminate()
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    console = Console()

    generator = torch.Generator().manual_seed(0)
    per_tensor = 1_000_000  # 4 MB of float32 each
    state = {f"layer{i}.weight": torch.randn(per_tensor, generator=generator)
             for i in range(max(1, args.mb // 4))}
    data = state_to_bytes(state)
    size_mb = len(data) / 1e6
    rows: list[tuple[str, float]] = []
    rows.append(("safetensors encode", size_mb / best_seconds(lambda: state_to_bytes(state), args.repeats)))
    rows.append(("safetensors decode", size_mb / best_seconds(lambda: state_from_bytes(data), args.repeats)))
    rows.append(("SHA-256", size_mb / best_seconds(lambda: hashlib.sha256(data).digest(), args.repeats)))
    raw = size_mb / raw_tcp_seconds(data, args.repeats)
    rows.append(("raw loopback TCP (process → process)", raw))

    for secure in (True, False):
        rows += grpc_rows(data, args, secure)
    table = Table(title=f"Moving a {size_mb:.0f} MB model (best of {args.repeats})")
    table.add_column("path")
    table.add_column("MB/s", justify="right")
    table.add_column("vs raw TCP", justify="right")
    for name, rate in rows:
        table.add_row(name, f"{rate:,.0f}", f"{rate / raw:.0%}")
    console.print(table)


if __name__ == "__main__":
    main()
