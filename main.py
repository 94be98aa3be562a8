"""Start a FedLedger node.

    python main.py --port 8080 --nt SN --entry 127.0.0.1:8080 -z   # the entry supernode
    python main.py --port 8081 --nt SN --entry 127.0.0.1:8080      # another supernode
    python main.py --port 8082 --nt EN --entry 127.0.0.1:8080      # an edge node
    python main.py init --home ~/.fedledger/sn-8080                 # keys and config only

A node keeps its key, its configuration (``config.toml``, optional) and, for supernodes, its
SQLite ledger in its home directory. SIGINT or SIGTERM stops it cleanly: the entry node seals
pending transactions into a last block, the ledger is closed, and the process exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from config import ConfigError, load_config, my_conf, parse_assignments
from fl.memory import keep_freed_memory

LOG_LEVELS = ("debug", "info", "warning", "error")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py", description="Start a FedLedger supernode (SN) or edge node (EN).",
        epilog="`python main.py init --home DIR` creates a node's key and config and prints its id.")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all interfaces)")
    p.add_argument("--port", type=int, required=True, help="port to listen on")
    p.add_argument("--nt", choices=("SN", "EN"), required=True, type=str.upper,
                   help="node type: SN = supernode (keeps the ledger, serves edge nodes), EN = edge node (trains)")
    p.add_argument("--entry", required=True, metavar="HOST:PORT",
                   help="the entry supernode; SNs register there, ENs ask it for a supernode")
    p.add_argument("-z", "--is-entry", action="store_true",
                   help="this SN is the entry node: it creates the genesis block and proposes blocks")
    p.add_argument("--advertise", metavar="HOST:PORT",
                   help="the address other nodes reach this one at (default: this machine's address on the "
                        "route to the entry node, with --port)")
    p.add_argument("--home", type=Path, help="key, config and SQLite ledger (default: ~/.fedledger/<sn|en>-<port>)")
    p.add_argument("--db", metavar="URL",
                   help="ledger database: sqlite:///FILE or mysql+pymysql://USER:PW@HOST:3306[/DB] "
                        "(no DB: each supernode gets its own, fedledger_sn_<node id>); default <home>/ledger.db")
    p.add_argument("--data-dir", help="where this node's dataset files live (config data_dir)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="training device (config device)")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", type=str.lower)
    p.add_argument("--config", type=Path, help="a TOML file of config keys (default: <home>/config.toml if present)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    return p


def build_init_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py init", description="Create a node's key and config; print its id.")
    p.add_argument("--home", type=Path, required=True)
    return p


def init(argv: list[str]) -> int:
    from node.chain.identity import Identity

    args = build_init_parser().parse_args(argv)
    identity = Identity.load_or_create(args.home)
    config_file = args.home / "config.toml"
    if not config_file.exists():
        lines = ["# FedLedger node configuration: every key of config.my_conf, with its default."]
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in my_conf.items()]
        config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"node id  {identity.node_id}")
    print(f"key      {args.home / 'node.key'}")
    print(f"config   {config_file}")
    return 0


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def run(args: argparse.Namespace) -> int:
    home = args.home or Path.home() / ".fedledger" / f"{args.nt.lower()}-{args.port}"
    overrides = parse_assignments(args.set)
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.device:
        overrides["device"] = args.device
    config_file = args.config or (home / "config.toml" if (home / "config.toml").exists() else None)
    conf = load_config(config_file, overrides=overrides)
    prepare_process(conf["torch_threads"])

    from node.chain.identity import Identity
    from node.net.channels import route_ip, split_address
    from node.net.server import build_server, stop_event
    from node.roles.settings import NodeSettings

    log = logging.getLogger("fedledger")
    stopping = stop_event()  # SIGINT/SIGTERM from here on stop the node cleanly
    split_address(args.entry)  # a clear error now rather than a failed dial later
    if args.advertise:
        split_address(args.advertise)
    identity = Identity.load_or_create(home)
    address = args.advertise or f"{_url_host(route_ip(args.entry))}:{args.port}"
    settings = NodeSettings.from_config(conf)

    closers: list[Any] = []
    try:
        if args.nt == "SN":
            node, servicers, rules, ledger_text = _supernode(args, home, conf, identity, address, settings, closers)
        else:
            if args.is_entry:
                raise ConfigError("-z makes a supernode the entry node; an edge node cannot be one")
            from node.roles.edgenode import EdgeNode, edge_rules, edge_servicers
            from node.roles.trainer import EdgeTrainer

            node = EdgeNode(identity, address, args.entry, settings)
            servicers, rules = edge_servicers(node, EdgeTrainer(node, home, conf)), edge_rules(node)
            ledger_text = "none (edge node)"
        server = build_server(f"{_url_host(args.host)}:{args.port}", servicers, rules)
        try:
            node.start()
            role = "SN, entry" if args.is_entry else args.nt
            log.info("node %s (%s) serving on %s:%d, reachable at %s; home %s; ledger %s",
                     identity.node_id, role, args.host, args.port, address, home, ledger_text)
            while not stopping.wait(0.5):
                pass
            log.info("signal received: shutting down")
        finally:
            server.stop(grace=3).wait()  # no new requests, then finish the node's own work
            node.stop()
    finally:
        for close in closers:
            close()
    log.info("stopped cleanly")
    return 0


def prepare_process(torch_threads: int) -> None:
    """Process-wide settings, made before torch is first imported: OpenMP reads its thread count
    once, for every thread (``torch.set_num_threads`` would reach only the thread calling it),
    and a supernode's aggregation, like an edge node's training, shares the host's cores with
    other nodes; a parallel region there waits for a busy core. And freed memory is kept for the
    next round (fl/memory.py)."""
    os.environ.setdefault("OMP_NUM_THREADS", str(torch_threads))
    keep_freed_memory()


def _supernode(args: argparse.Namespace, home: Path, conf: dict[str, Any], identity: Any, address: str,
               settings: Any, closers: list[Any]) -> tuple[Any, list[Any], dict[str, Any], str]:
    from node.net.admin import load_or_create_token, token_hash
    from node.chain.ledger import Ledger
    from node.roles.services import supernode_rules, supernode_servicers
    from node.roles.supernode import Supernode
    from sql.store import LedgerStore, ledger_url

    store = LedgerStore(ledger_url(args.db, home, f"sn_{identity.node_id[:16]}"))
    closers.append(store.close)
    node = Supernode(identity, address, Ledger(store), args.entry, args.is_entry, settings, home / "models", conf)
    if args.is_entry:
        token, created = load_or_create_token(home)
        node.admin_token_hash = token_hash(token)
        if created:  # shown once; it stays in the entry node's home
            print(f"admin token (also in {home / 'admin.token'}): {token}", flush=True)
    return node, supernode_servicers(node), supernode_rules(node), store.describe()


def _url_host(host: str) -> str:
    """IPv6 literals need brackets in HOST:PORT."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["init"]:
        return init(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:
        logging.getLogger("fedledger").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
