"""Start a FedLedger node.

    python main.py --port 8080 --nt SN --entry 127.0.0.1:8080 -z             # the entry supernode
    python main.py --port 8081 --nt SN --entry 127.0.0.1:8080 --token FL1-…  # another supernode
    python main.py --port 8082 --nt EN --entry 127.0.0.1:8080 --token FL1-…  # an edge node
    python main.py init --home ~/.fedledger/sn-8080                           # keys and config only
    python main.py token --home ~/.fedledger/sn-8080 --port 8080 --role EN    # a token, offline

The GFL_p way: describe a node once, then start it and open its console by its home alone:

    python main.py init --home DIR --port 8080 --nt SN --entry 127.0.0.1:8080 -z   # writes DIR/node.toml
    python main.py run --home DIR                                                  # starts that node
    python main.py attach --home DIR                                               # its console
    python main.py attach -H HOST -P PORT --token-file ENTRY_HOME/admin.token      # any supernode's

A node keeps its key, its configuration (``config.toml``, optional), its TLS certificate
(``tls/``) and, for supernodes, its SQLite ledger in its home directory. The entry node also keeps
the network's CA (``ca/``), the enrolment tokens and the console's certificate (``console/``).
Every other node joins with an enrolment token once (``--token`` or ``FEDLEDGER_ENROL_TOKEN``);
its certificate lets it in from then on. SIGINT or SIGTERM stops it cleanly: the entry node seals
pending transactions into a last block, the ledger is closed, and the process exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from config import ConfigError, load_config, my_conf, parse_assignments
from fl.memory import keep_freed_memory

LOG_LEVELS = ("debug", "info", "warning", "error")
TOKEN_ENV = "FEDLEDGER_ENROL_TOKEN"  # where a node finds its enrolment token when --token is not given


NODE_FILE = "node.toml"  # in a node's home: the flags `main.py run --home` starts it with
# main.py's flags a node's description may hold (the enrolment token does not: it is a secret, used once)
NODE_FLAGS = ("port", "nt", "entry", "is_entry", "host", "advertise", "enrol_port", "insecure", "db", "data_dir",
              "model_path", "device", "http", "count", "fork")


def build_parser(describing: bool = False) -> argparse.ArgumentParser:
    """main.py's flags; ``describing``: for ``init``, where the node's flags are optional."""
    p = argparse.ArgumentParser(
        prog="main.py init" if describing else "main.py",
        description=("Create a node's key and config, and with the node's flags its description "
                     f"({NODE_FILE}) for `main.py run --home`; print its id." if describing
                     else "Start a FedLedger supernode (SN) or edge node (EN)."),
        epilog=None if describing else ("`main.py init --home DIR [flags]` describes a node, `main.py run --home "
                                        "DIR` starts it, `main.py attach --home DIR` opens its console."))
    p.add_argument("--host", default=None if describing else "0.0.0.0",
                   help="address to listen on (default: all interfaces)")
    p.add_argument("--port", type=int, required=not describing, help="port to listen on")
    p.add_argument("--nt", choices=("SN", "EN"), required=not describing, type=str.upper,
                   help="node type: SN = supernode (keeps the ledger, serves edge nodes), EN = edge node (trains)")
    p.add_argument("--entry", required=not describing, metavar="HOST:PORT",
                   help="the entry supernode; SNs register there, ENs ask it for a supernode")
    p.add_argument("-z", "--is-entry", action="store_true",
                   help="this SN is the entry node: it creates the genesis block and proposes blocks")
    p.add_argument("--advertise", metavar="HOST:PORT",
                   help="the address other nodes reach this one at (default: this machine's address on the "
                        "route to the entry node, with --port)")
    p.add_argument("--home", type=Path, required=describing,
                   help="key, config and SQLite ledger (default: ~/.fedledger/<sn|en>-<port>)")
    p.add_argument("--enrol-port", type=int, metavar="PORT",
                   help="entry node: the plaintext port nodes without a certificate enrol on (default: --port + 10000)")
    p.add_argument("--insecure", action="store_true",
                   help="plaintext gRPC instead of mutual TLS (every node and the console must agree); "
                        "for a single trusted host only")
    p.add_argument("--db", metavar="URL",
                   help="ledger database: sqlite:///FILE or mysql+pymysql://USER:PW@HOST:3306[/DB] "
                        "(no DB: each supernode gets its own, fedledger_sn_<node id>); default <home>/ledger.db")
    p.add_argument("--data-dir", help="where this node's dataset files live (config data_dir)")
    p.add_argument("--model-path", help="model=lora jobs: a local folder holding the base causal language model "
                                        "(config model_path); nothing is downloaded")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="training device (config device)")
    p.add_argument("--count", type=int, default=None if describing else 1, metavar="K",
                   help="edge nodes: run K edge nodes in this process (each its own key, enrolment, data shard and "
                        "head, in <home>/node-0000 …), behind one server; the enrolment token must allow K uses")
    p.add_argument("--fork", action="store_true", default=None if describing else False,
                   help="with --count K: run the K edge nodes as K processes instead (ports PORT … PORT+K-1), "
                        "forked from this one once it has loaded torch, so that they share its memory")
    p.add_argument("--http", type=int, metavar="PORT",
                   help="supernodes: serve the block and model explorer on this port (HTTPS with the node's "
                        "certificate; plain HTTP with --insecure); log in with the admin token")
    if describing:
        return p
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV, ""),
                   help=f"enrolment token from the operator, needed on a node's first start only "
                        f"(default: ${TOKEN_ENV}); console: enrol(role='EN')")
    p.add_argument("--token-file", type=Path, metavar="FILE", help="read the enrolment token from FILE")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", type=str.lower)
    p.add_argument("--config", type=Path, help="a TOML file of config keys (default: <home>/config.toml if present)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    return p


def build_token_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py token", description=(
        "Make an enrolment token in the entry node's home (creating its CA on first use), whether or "
        "not the entry node is running; print it. The console's enrol() does the same remotely."))
    p.add_argument("--home", type=Path, required=True, help="the entry node's home")
    p.add_argument("--port", type=int, help="the entry node's --port (its enrolment port is this + 10000)")
    p.add_argument("--enrol-port", type=int, help="the entry node's --enrol-port, when set")
    p.add_argument("--role", choices=("SN", "EN"), default="EN", type=str.upper)
    p.add_argument("--uses", type=int, default=1, help="how many nodes may enrol with it")
    p.add_argument("--hours", type=float, default=24.0, help="how long it is valid")
    p.add_argument("--max-samples", type=int, default=0,
                   help="edge nodes: the most training samples each may claim in own-data jobs (0: the job's cap only)")
    return p


def token(argv: list[str]) -> int:
    from node.roles.enrolment import EnrolmentError, enrol_port_for, offline_token

    args = build_token_parser().parse_args(argv)
    if args.enrol_port is None and args.port is None:
        raise ConfigError("give the entry node's --port (or its --enrol-port): the token tells nodes where to enrol")
    try:
        made = offline_token(args.home, args.role, args.uses, args.hours, args.enrol_port or enrol_port_for(args.port),
                             args.max_samples)
    except EnrolmentError as exc:
        raise ConfigError(str(exc)) from None
    print(made)
    return 0


def init(argv: list[str]) -> int:
    """Create a node's key and config; with the node's flags (--port, --nt, --entry …) also its
    description, ``<home>/node.toml``, which ``run --home`` starts it with."""
    from node.chain.identity import Identity

    args = build_parser(describing=True).parse_args(argv)
    described = {flag: getattr(args, flag) for flag in NODE_FLAGS if getattr(args, flag) not in (None, False)}
    if described:
        missing = [f"--{flag}" for flag in ("port", "nt", "entry") if flag not in described]
        if missing:
            raise ConfigError(f"a node's description needs {', '.join(missing)} too (or give none of its flags "
                              f"for the key and config alone)")
    identity = Identity.load_or_create(args.home)
    config_file = args.home / "config.toml"
    if not config_file.exists():
        lines = ["# FedLedger node configuration: every key of config.my_conf, with its default."]
        lines += [_config_line(k, v) for k, v in my_conf.items()]
        config_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"node id  {identity.node_id}")
    print(f"key      {args.home / 'node.key'}")
    print(f"config   {config_file}")
    if described:
        node_file = args.home / NODE_FILE
        lines = [f"# How `python main.py run --home {args.home}` starts this node (main.py's flags)."]
        lines += [f"{flag} = {_toml_value(str(value) if isinstance(value, Path) else value)}"
                  for flag, value in described.items()]
        node_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"node     {node_file}  (start it: python main.py run --home {args.home})")
    return 0


def described_node(home: Path) -> dict[str, Any]:
    """The node ``home`` describes (its ``node.toml``, written by ``init``)."""
    node_file = home / NODE_FILE
    try:
        described = tomllib.loads(node_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{home} describes no node ({NODE_FILE} is missing): python main.py init --home {home} "
                          f"--port PORT --nt SN|EN --entry HOST:PORT [-z]") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{node_file} is not valid TOML: {exc}") from None
    unknown = sorted(set(described) - set(NODE_FLAGS))
    if unknown:
        raise ConfigError(f"{node_file}: unknown keys {unknown}; known: {', '.join(NODE_FLAGS)}")
    return described


def node_argv(home: Path) -> list[str]:
    """main.py's flags for the node ``home`` describes."""
    argv = ["--home", str(home)]
    for flag, value in described_node(home).items():
        option = "-z" if flag == "is_entry" else f"--{flag.replace('_', '-')}"
        if isinstance(value, bool):
            argv += [option] if value else []
        else:
            argv += [option, str(value)]
    return argv


def build_attach_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py attach", description=(
        "Open the console on a supernode: the one a home describes (its port, and the admin token and the "
        "console's certificate found in that home), or any at -H HOST -P PORT."))
    p.add_argument("--home", type=Path, help="a supernode's home (the entry node's holds the admin token)")
    p.add_argument("-H", "--host", help="the supernode's address (with -P)")
    p.add_argument("-P", "--port", type=int, help="the supernode's port (with -H)")
    p.add_argument("--token-file", type=Path, help="the admin token (default: <home>/admin.token)")
    p.add_argument("--tls", type=Path, help="the console's certificate folder (default: <home>/console)")
    p.add_argument("--insecure", action="store_true", help="plaintext (nodes started with --insecure)")
    p.add_argument("-c", "--command", help='run these commands and exit, e.g. -c "status()"')
    return p


def attach(argv: list[str]) -> int:
    """Open the console (``console.app``) on the node a home describes, or at -H/-P."""
    from console.app import main as console_main
    from node.net.tls import CONSOLE_DIR

    args = build_attach_parser().parse_args(argv)
    if (args.home is None) == (args.host is None and args.port is None):
        raise ConfigError("attach to a node by its home (--home DIR) or its address (-H HOST -P PORT), one of them")
    token_file, tls, insecure = args.token_file, args.tls, args.insecure
    if args.home is not None:
        node = described_node(args.home)
        if node["nt"] != "SN":
            raise ConfigError(f"{args.home} is an edge node's home: edge nodes take no console; attach to a supernode")
        host = node.get("host", "0.0.0.0")
        address = ("127.0.0.1" if host in ("0.0.0.0", "::", "") else host), int(node["port"])
        insecure = insecure or bool(node.get("insecure", False))
        token_file = token_file or args.home / "admin.token"
        if not token_file.exists():
            raise ConfigError(f"{args.home} holds no admin token (only the entry node's home does): pass "
                              f"--token-file <entry home>/admin.token")
        tls = tls or (args.home / CONSOLE_DIR if (args.home / CONSOLE_DIR).exists() else None)
    else:
        if args.host is None or args.port is None:
            raise ConfigError("attach -H HOST -P PORT: give both")
        address = args.host, args.port
    console_argv = ["--ip", address[0], "--port", str(address[1])]
    console_argv += ["--token-file", str(token_file)] if token_file else []
    console_argv += ["--tls", str(tls)] if tls else []
    console_argv += ["--insecure"] if insecure else []
    console_argv += ["-c", args.command] if args.command is not None else []
    return console_main(console_argv)


def _config_line(key: str, value: Any) -> str:
    """One key of the default config as TOML; an aggregation rule's option stays a comment unless
    its rule is the default one (set explicitly for another rule it would be refused)."""
    from config import OWNED_OPTIONS, owner_problem
    from fl.options import rule_of

    line = f"{json.dumps(key)} = {_toml_value(value)}"
    rule = rule_of(key)
    if rule not in (None, my_conf["aggregation"]):
        return f"# {line}  (with aggregation = {json.dumps(rule)})"
    if owner_problem(key, my_conf) is not None:
        owner, values = OWNED_OPTIONS[key]
        return f"# {line}  (with {owner} = {' | '.join(values)})"
    return line


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def default_home(args: argparse.Namespace) -> Path:
    return args.home or Path.home() / ".fedledger" / f"{args.nt.lower()}-{args.port}"


def config_file(args: argparse.Namespace, home: Path) -> Path | None:
    """``--config``, else the home's ``config.toml`` when it has one."""
    return args.config or (home / "config.toml" if (home / "config.toml").exists() else None)


def node_config(args: argparse.Namespace, file: Path | None) -> dict[str, Any]:
    """The node's config: ``file`` with ``--set`` and the flags that name config keys over it."""
    overrides = parse_assignments(args.set)
    for key in ("data_dir", "model_path", "device"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    return load_config(file, overrides=overrides)


def take_share_of_cores(conf: dict[str, Any], share: Any) -> None:
    """``torch_threads = 0`` (auto): this process's share of the cores among the host's node
    processes now, in ``conf`` and, for OpenMP (read as torch loads), the environment."""
    if conf["torch_threads"] == 0:
        conf["torch_threads"], processes = share.threads()
        os.environ.setdefault("OMP_NUM_THREADS", str(conf["torch_threads"]))
        logging.getLogger("fedledger").info("torch threads: %d (%d node processes share this host)",
                                            conf["torch_threads"], processes)


def run(args: argparse.Namespace) -> int:
    if args.fork:
        return run_forked(args)
    home = default_home(args)
    conf = node_config(args, config_file(args, home))
    from node.cores import HostShare

    share = HostShare()  # this process among the host's node processes (torch_threads = 0: its share of the cores)
    if args.nt == "SN" or args.count > 1:  # (torch loads as these start; a lone edge node's later, see _edge_host)
        take_share_of_cores(conf, share)
    prepare_process(conf["torch_threads"])

    from node.chain.identity import Identity
    from node.net.channels import route_ip, split_address, url_host
    from node.net.server import build_server, stop_event
    from node.net.tls import TLS_DIR, Credentials
    from node.roles.settings import NodeSettings

    log = logging.getLogger("fedledger")
    stopping = stop_event()  # SIGINT/SIGTERM from here on stop the node cleanly
    split_address(args.entry)  # a clear error now rather than a failed dial later
    if args.advertise:
        split_address(args.advertise)
    if args.is_entry and args.nt != "SN":
        raise ConfigError("-z makes a supernode the entry node; an edge node cannot be one")
    if args.count < 1 or (args.count > 1 and args.nt != "EN"):
        raise ConfigError("--count K runs K edge nodes in one process: K >= 1, and only with --nt EN")
    if args.http is not None and args.nt != "SN":
        raise ConfigError("--http serves the explorer from a supernode's copy of the chain; edge nodes keep none")
    many = args.count > 1  # edge nodes in homes of their own under this one (see _edge_host)
    identity = None if many else Identity.load_or_create(home)
    address = args.advertise or f"{url_host(route_ip(args.entry))}:{args.port}"
    settings = NodeSettings.from_config(conf)
    admission, pin = (None, None) if many else _admit(args, home, conf, identity, log)
    credentials = None if args.insecure or many else Credentials.load(home / TLS_DIR)
    enrol_bind = f"{url_host(args.host)}:{admission.enrol_port}" if admission else None

    closers: list[Any] = []
    try:
        if args.nt == "SN":
            node, servicers, rules, ledger_text = _supernode(args, home, conf, identity, address, settings, closers,
                                                             credentials, pin, admission)
            revoked = node.ledger.is_revoked
        else:
            from node.roles.edgenode import edge_rules, edge_servicers

            node, credentials = _edge_host(args, home, conf, address, settings, identity, pin, credentials, log, share)
            servicers, rules = edge_servicers(node), edge_rules(node)
            ledger_text = "none (edge node)"
            revoked = lambda node_id: False  # noqa: E731 - an edge node keeps no chain; its supernode does
        # edge nodes sharing a server take a supernode's model transfers and round orders for all of them
        server = build_server(f"{url_host(args.host)}:{args.port}", servicers, rules, credentials,
                              revoked=revoked, enrol_bind=enrol_bind, workers=32 + min(args.count - 1, 96),
                              streams_per_peer=max(conf["streams_per_peer"], min(args.count, 16)),
                              stream_idle_s=conf["stream_idle_s"])
        if args.http is not None:
            explorer = _explorer(node, args, home)
            closers.insert(0, explorer.stop)
        try:
            node.start()
            if args.http is not None:
                explorer.start()
                log.info("explorer on %s://%s:%d/ (log in with the admin token)", explorer.scheme, args.host,
                         explorer.port)
            role = "SN, entry" if args.is_entry else args.nt
            log.info("node %s (%s) serving on %s:%d (%s), reachable at %s; home %s; ledger %s",
                     f"{args.count} edge nodes" if many else identity.node_id, role, args.host, args.port, "plaintext" if args.insecure else "mutual TLS",
                     address, home, ledger_text)
            if enrol_bind:
                log.info("enrolment port %s (plaintext; tokens pin the CA)", enrol_bind)
            while not stopping.wait(0.5):
                pass
            log.info("signal received: shutting down")
        finally:
            server.stop(grace=3).wait()  # no new requests, then finish the node's own work
            node.stop()
    finally:
        for close in closers:
            close()
        share.close()
    log.info("stopped cleanly")
    return 0


def run_forked(args: argparse.Namespace) -> int:
    """``--count K --fork``: K edge node processes forked from this one (node/forked.py), node ``i``
    on port ``--port`` + i (and ``--advertise``'s port + i) with its home in ``<home>/node-<i>``."""
    from node.cores import share_for
    from node.forked import ForkedEdgeNodes, preload

    if args.nt != "EN" or args.count < 2:
        raise ConfigError("--fork runs the K edge nodes of --count K (K >= 2, --nt EN) as K processes")
    if args.http is not None:
        raise ConfigError("--http serves the explorer from a supernode's copy of the chain; edge nodes keep none")
    if not 0 < args.port <= 65536 - args.count:
        raise ConfigError(f"--fork needs ports {args.port} … {args.port + args.count - 1}: all below 65536")
    advertised = None
    if args.advertise:
        from node.net.channels import split_address, url_host

        host, port = split_address(args.advertise)
        if port > 65536 - args.count:
            raise ConfigError(f"--fork advertises ports {port} … {port + args.count - 1}: all below 65536")
        advertised = (url_host(host), port)
    home = default_home(args)
    config = config_file(args, home)
    conf = node_config(args, config)
    if conf["device"] == "cuda":
        raise ConfigError("--fork runs edge nodes on the CPU: CUDA does not survive a fork; for a GPU run the "
                          "edge nodes in one process (--count K without --fork)")
    # each child's threads (OpenMP reads them as torch loads, here): torch_threads, or 0: its share of the cores
    threads = conf["torch_threads"] or share_for(args.count)
    keep_freed_memory()
    preload(threads)

    def node_args(index: int) -> argparse.Namespace:
        child = argparse.Namespace(**vars(args))
        child.count, child.fork, child.config = 1, False, config
        child.port = args.port + index
        child.home = home / f"node-{index:04d}"
        child.advertise = f"{advertised[0]}:{advertised[1] + index}" if advertised else None
        child.set = [*args.set, f"torch_threads={threads}"]  # (as decided here: the same for each)
        return child

    def name(index: int) -> str:
        return f"node-{index:04d} (port {args.port + index})"

    def child(index: int) -> int:
        logging.basicConfig(force=True, level=args.log_level.upper(),
                            format=f"%(asctime)s %(levelname)s node-{index:04d} %(name)s: %(message)s")
        return run(node_args(index))

    logging.getLogger("fedledger").info("%d edge node processes, ports %d … %d, homes %s … %s; torch threads %d each",
                                        args.count, args.port, args.port + args.count - 1, home / "node-0000",
                                        home / f"node-{args.count - 1:04d}", threads)
    return ForkedEdgeNodes(args.count, child, name).run()


def prepare_process(torch_threads: int) -> None:
    """Process-wide settings, made before torch is first imported: OpenMP reads its thread count
    once, for every thread (``torch.set_num_threads`` would reach only the thread calling it),
    and a supernode's aggregation, like an edge node's training, shares the host's cores with
    other nodes; a parallel region there waits for a busy core. And freed memory is kept for the
    next round (fl/memory.py)."""
    if torch_threads:  # (0: decided when torch loads, see _edge_host)
        os.environ.setdefault("OMP_NUM_THREADS", str(torch_threads))
    keep_freed_memory()


def _admit(args: argparse.Namespace, home: Path, conf: dict[str, Any], identity: Any,
           log: logging.Logger) -> tuple[Any, Any]:
    """(admission, pin): the entry node makes its CA, its own certificate and the console's on
    first start; any other node enrols with its token unless it holds a certificate already."""
    from node.net.tls import (TLS_DIR, Authority, issue_console_credentials, load_or_create_key,
                              save_node_credentials, signing_request)
    from node.roles.enrolment import Admission, EnrolmentError, NetworkPin, TokenStore, enrol, enrol_port_for

    tls = home / TLS_DIR
    if args.is_entry:
        authority = Authority.load_or_create(home, identity.node_id[:8])
        if not (tls / "node.crt").exists():
            key = load_or_create_key(tls / "node.key")
            cert = authority.issue(signing_request(key, identity.node_id), identity.node_id, "SN", conf["cert_days"])
            save_node_credentials(tls, cert, authority.cert)
        console = issue_console_credentials(authority, home, conf["cert_days"])
        log.info("network CA %s; console credentials in %s", authority.sha256[:16], console)
        pin = NetworkPin(identity.node_id, "", authority.sha256, "SN")
        port = args.enrol_port or enrol_port_for(args.port)
        return Admission(authority, TokenStore(home), port, conf["cert_days"]), pin
    pin = NetworkPin.load(home)
    if pin is None or not (tls / "node.crt").exists():
        if args.token_file and not args.token:
            args.token = args.token_file.read_text(encoding="utf-8").strip()
        if not args.token:
            raise ConfigError(
                f"this node is not enrolled yet and has no enrolment token: ask the network's operator for one "
                f"(console on the entry node: enrol(role='{args.nt}'), or `python main.py token --home ENTRY_HOME "
                f"--port ENTRY_PORT --role {args.nt}`) and pass it with --token or {TOKEN_ENV}")
        try:
            pin = enrol(home, identity, args.token, args.entry)
        except EnrolmentError as exc:
            raise ConfigError(str(exc)) from None
        log.info("enrolled as %s with entry node %s; certificate in %s", pin.role, pin.entry_id, tls)
    if pin.role != args.nt:
        raise ConfigError(f"this node ({home}) is enrolled as {pin.role}, not {args.nt}; use another --home")
    return None, pin


def _edge_host(args: argparse.Namespace, home: Path, conf: dict[str, Any], address: str, settings: Any,
               identity: Any, pin: Any, credentials: Any, log: logging.Logger, share: Any) -> tuple[Any, Any]:
    """(host, server credentials): the edge node this process runs, or with ``--count K`` K of
    them, each in a home of its own under ``home`` (``node-0000`` …: key, certificate, heads),
    enrolled with the same token (it must allow K uses), behind one server and one torch runtime
    that they share: its data and its models (named by hash); they train ``slots`` at a time, as many
    as the host's cores allow, counting other node processes' trainings (node/cores.py HostSlots)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from fl.datasets import available_datasets
    from node.chain.identity import Identity
    from node.cores import HostSlots, usable_cores
    from node.net.model_store import ModelCache
    from node.net.tls import TLS_DIR, Credentials, HostCredentials
    from node.roles.edgenode import EdgeHost, EdgeNode, SharedJobData, TrainerOnDemand

    if conf["device"] == "cuda":  # said now, not at the first round (the trainer is built late)
        from fl.train import resolve_device

        resolve_device("cuda")
    members: list[tuple[Any, Any, Any]] = [(home, identity, pin)]
    if args.count > 1:
        homes = [home / f"node-{i:04d}" for i in range(args.count)]

        def admitted(node_home: Path) -> tuple[Path, Any, Any]:
            node_identity = Identity.load_or_create(node_home)
            return node_home, node_identity, _admit(args, node_home, conf, node_identity, log)[1]

        with ThreadPoolExecutor(max_workers=8) as pool:  # first start: K enrolments
            members, said = [], time.monotonic()
            for member in pool.map(admitted, homes):
                members.append(member)
                if time.monotonic() - said > 2:  # progress, for K in the thousands
                    log.info("%d of %d edge nodes ready (enrolled or already holding a certificate)", len(members),
                             args.count)
                    said = time.monotonic()
        log.info("%d edge nodes in this process, homes %s … %s", args.count, homes[0], homes[-1])
    datasets = available_datasets(conf["data_dir"], conf["model_path"])
    models = ModelCache(2 * settings.max_model_bytes)
    slots = HostSlots(usable_cores() // max(1, conf["torch_threads"]))  # (host-wide: other processes' trainings count)
    shared_data = SharedJobData() if args.count > 1 else None

    def edge(node_home: Path, node_identity: Any, node_pin: Any) -> tuple[Any, Any]:
        node_credentials = None if args.insecure else Credentials.load(node_home / TLS_DIR)
        node = EdgeNode(node_identity, address, args.entry, settings, credentials=node_credentials,
                        entry_id=node_pin.entry_id, genesis_hash=node_pin.genesis_hash, datasets=datasets, models=models)

        def trainer() -> Any:  # (imported on first use: torch is most of an edge node's memory)
            take_share_of_cores(conf, share)  # (auto: among the host's node processes as torch loads)
            from node.roles.trainer import EdgeTrainer

            return EdgeTrainer(node, node_home, conf, slots, shared_data)

        return node, TrainerOnDemand(trainer), node_credentials

    built = [edge(*member) for member in members]
    host = EdgeHost([(node, trainer) for node, trainer, _ in built])
    if args.insecure or args.count == 1:
        return host, credentials
    return host, HostCredentials(tuple(c for _, _, c in built))


def _explorer(node: Any, args: argparse.Namespace, home: Path) -> Any:
    """The explorer's server, its socket bound now (a port in use is an error before the node starts)."""
    from node.explorer.server import ExplorerServer
    from node.net.tls import NODE_CERT, NODE_KEY, TLS_DIR

    tls = None if args.insecure else (home / TLS_DIR / NODE_CERT, home / TLS_DIR / NODE_KEY)
    try:
        return ExplorerServer(node, args.host, args.http, tls)
    except OSError as exc:
        raise ConfigError(f"the explorer cannot listen on {args.host}:{args.http}: {exc.strerror or exc}") from None


def _supernode(args: argparse.Namespace, home: Path, conf: dict[str, Any], identity: Any, address: str,
               settings: Any, closers: list[Any], credentials: Any, pin: Any,
               admission: Any) -> tuple[Any, list[Any], dict[str, Any], str]:
    from node.net.admin import load_or_create_token, token_hash
    from node.chain.ledger import Ledger
    from node.roles.services import supernode_rules, supernode_servicers
    from node.roles.supernode import Supernode
    from sql.store import LedgerStore, ledger_url

    store = LedgerStore(ledger_url(args.db, home, f"sn_{identity.node_id[:16]}"))
    closers.append(store.close)
    node = Supernode(identity, address, Ledger(store), args.entry, args.is_entry, settings, home / "models", conf,
                     credentials=credentials, entry_id=pin.entry_id, admission=admission, jobs_dir=home / "jobs",
                     genesis_hash=pin.genesis_hash)
    if args.is_entry:
        token, created = load_or_create_token(home)
        node.admin_token_hash = token_hash(token)
        if created:  # shown once; it stays in the entry node's home
            print(f"admin token (also in {home / 'admin.token'}): {token}", flush=True)
    return node, supernode_servicers(node), supernode_rules(node), store.describe()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"init": init, "token": token, "attach": attach}
    try:
        if argv[:1] and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        if argv[:1] == ["run"]:  # the node a home describes (init), with any more flags after
            run_args = argparse.ArgumentParser(prog="main.py run", add_help=False)
            run_args.add_argument("--home", type=Path, required=True)
            known, rest = run_args.parse_known_args(argv[1:])
            argv = node_argv(known.home) + rest
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ConfigError, ValueError, OSError, RuntimeError) as exc:
        logging.getLogger("fedledger").error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
