"""``python -m node.health HOST:PORT [--tls DIR | --insecure]``: exit 0 when the node there answers
SERVING (for container health checks and scripts), 1 otherwise, with the reason on stderr.

Nodes speak mutual TLS, so the check presents a certificate of the network: a node's own
(``<home>/tls``, as a container checks itself) or the console's (``<entry home>/console``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from node.net.channels import channel
from node.net.tls import CONSOLE_CERT, CONSOLE_KEY, Credentials, TlsError


def credentials(folder: Path) -> Credentials:
    """A node's ``tls/`` folder, or the console's."""
    if (folder / CONSOLE_CERT).exists():
        return Credentials.load(folder, CONSOLE_KEY, CONSOLE_CERT)
    return Credentials.load(folder)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m node.health", description=__doc__.splitlines()[0])
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("--tls", type=Path, metavar="DIR", help="a node's <home>/tls folder or <entry home>/console")
    p.add_argument("--insecure", action="store_true", help="plaintext (nodes started with --insecure)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.insecure and args.tls is None:
        p.error("give --tls DIR (a node's <home>/tls or the console's folder), or --insecure")
    try:
        creds = None if args.insecure else credentials(args.tls)
        with channel(args.address, creds) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
    except TlsError as exc:
        print(f"{args.address}: {exc}", file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(f"{args.address}: {exc.code().name} {exc.details()}", file=sys.stderr)
        return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(f"{args.address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}", file=sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
