"""``python Console.py --ip HOST --port PORT``: drive a FedLedger network from a supernode.

Interactive: a prompt with history (``~/.fedledger/console_history``) and completion of command
names. Scripting: ``-c "trainFL(rounds=3); eval()"`` runs the commands in order and exits 1 at
the first failure, 0 otherwise. The admin token comes from ``--token``, ``--token-file`` or the
``FEDLEDGER_TOKEN`` environment variable; the console's certificate from ``--tls DIR`` or
``FEDLEDGER_TLS`` (the entry node makes it in ``<entry home>/console/``; copy that folder to
wherever the console runs), found next to ``--token-file`` when neither is given.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import grpc
from rich.console import Console

from console.client import ModelCheckFailed, NodeClient
from console.commands import COMMANDS, Session, run_command
from console.parser import CommandError, parse
from node.net.admin import TOKEN_ENV
from node.net.errors import ServiceError
from node.net.tls import CONSOLE_CERT, CONSOLE_DIR, CONSOLE_KEY, Credentials, TlsError

TLS_ENV = "FEDLEDGER_TLS"

HISTORY = Path.home() / ".fedledger" / "console_history"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="Console.py", description="The FedLedger console (connects to a supernode).")
    p.add_argument("--ip", default="127.0.0.1", help="the supernode's address (the entry node for job commands)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--token", help=f"the admin token (default: ${TOKEN_ENV})")
    p.add_argument("--token-file", type=Path, help="read the admin token from this file (e.g. <entry home>/admin.token)")
    p.add_argument("--tls", type=Path, default=os.environ.get(TLS_ENV) or None, metavar="DIR",
                   help=f"the console's certificate folder, <entry home>/{CONSOLE_DIR} (default: ${TLS_ENV}, or "
                        f"the {CONSOLE_DIR}/ folder next to --token-file)")
    p.add_argument("--insecure", action="store_true", help="plaintext, for nodes started with --insecure")
    p.add_argument("-c", "--command", help='run these commands and exit, e.g. -c "trainFL(rounds=3); eval()"')
    return p


def console_credentials(args: argparse.Namespace) -> Credentials | None:
    """The console's TLS credentials from ``--tls``, ``$FEDLEDGER_TLS`` or beside ``--token-file``."""
    if args.insecure:
        return None
    folder = args.tls or (args.token_file.parent / CONSOLE_DIR if args.token_file else None)
    if folder is None:
        raise SystemExit(f"the console needs its certificate: pass --tls <entry home>/{CONSOLE_DIR} (or set "
                         f"{TLS_ENV}); the entry node made it on its first start. --insecure for plaintext nodes.")
    try:
        return Credentials.load(folder, CONSOLE_KEY, CONSOLE_CERT)
    except TlsError as exc:
        raise SystemExit(f"{exc}; pass --tls <entry home>/{CONSOLE_DIR}") from None


def execute(session: Session, line: str) -> bool:
    """Run one input line; explain any failure in one line. True when every command succeeded."""
    try:
        commands = parse(line)
    except CommandError as exc:
        session.out.print(f"[red]error:[/red] {exc}")
        return False
    for cmd in commands:
        try:
            ok = run_command(session, cmd.name, cmd.args, cmd.kwargs)
        except CommandError as exc:
            session.out.print(f"[red]error:[/red] {exc}")
            return False
        except grpc.RpcError as exc:
            session.out.print(f"[red]{cmd.name}() failed:[/red] {exc.code().name}: {exc.details()}")
            return False
        except (ModelCheckFailed, ServiceError, OSError, ValueError) as exc:
            session.out.print(f"[red]{cmd.name}() failed:[/red] {exc}")
            return False
        if not ok:
            return False
        if session.leaving:
            return True
    return True


def repl(session: Session) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.completion import WordCompleter
    from prompt_toolkit.history import FileHistory

    HISTORY.parent.mkdir(parents=True, exist_ok=True)
    prompt = PromptSession(history=FileHistory(str(HISTORY)),
                           completer=WordCompleter([f"{name}(" for name in COMMANDS], sentence=True))
    session.out.print(f"connected to {session.client.address}; help() lists the commands, quit() leaves")
    while not session.leaving:
        try:
            line = prompt.prompt("fedledger> ")
        except (EOFError, KeyboardInterrupt):
            break
        if line.strip():
            execute(session, line)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    token = args.token or (args.token_file.read_text().strip() if args.token_file else os.environ.get(TOKEN_ENV, ""))
    client = NodeClient(f"{args.ip}:{args.port}", token, console_credentials(args))
    session = Session(client, Console())
    try:
        if args.command is not None:
            return 0 if execute(session, args.command) else 1
        return repl(session)
    finally:
        client.close()
