"""``python -m node.audit [URL] [--home HOME | --genesis HASH] [--recompute --models DIR] [--progress]``: verify
a ledger database from genesis to head, and the tables built from it (exit 0 when it is sound, 1
with the first bad height or table row and the reason); ``--home`` checks the genesis block
against the one the node pinned at enrolment (and defaults URL to ``HOME/ledger.db``),
``--genesis`` against a given hash. With ``--recompute``, also re-derive every round's aggregates
from the updates in a supernode's models folder (``node.roles.recompute``). The audit itself is
``node.chain.audit.verify_chain``; this module only opens the SQL store and the folder for it.

A long chain takes minutes, so while stderr is a terminal (or with ``--progress``) a bar there
counts blocks verified, then rounds recomputed; it is gone before each result line is printed on
stdout, which stays exactly the same with or without it (scripts and tests read it)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from node.chain.audit import verify_chain
from sql.store import LedgerStore


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m node.audit", description="Verify a FedLedger chain database from genesis to head.")
    parser.add_argument("db", nargs="?", default="",
                        help="the ledger database URL: sqlite:///HOME/ledger.db or mysql+pymysql://…/DB "
                             "(default with --home: its ledger.db)")
    parser.add_argument("--no-signatures", action="store_true", help="skip the Ed25519 checks (faster)")
    parser.add_argument("--recompute", action="store_true",
                        help="also re-derive every AGGREGATE and GLOBAL_MODEL from the recorded updates")
    parser.add_argument("--models", type=Path, action="append", default=[],
                        help="a folder holding recorded models (a supernode's <home>/models); give one per "
                             "supernode to check every round offline")
    parser.add_argument("--genesis", default="",
                        help="the genesis block hash the chain must start with (default: the one pinned in "
                             "--home's tls/network.json, if given)")
    parser.add_argument("--home", type=Path, help="a node's home: its pinned genesis block is checked")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress bar on stderr (default: only when stderr is a terminal)")
    args = parser.parse_args(argv)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    if not args.db and not args.home:
        parser.error("give the ledger database URL, or --home for a node's own ledger.db")
    args.db = args.db or f"sqlite:///{args.home.resolve() / 'ledger.db'}"
    if args.home and not args.genesis:
        try:
            args.genesis = _pinned(args.home)
        except ValueError as exc:  # EnrolmentError: a damaged tls/network.json
            parser.error(str(exc))
    if args.recompute and (not args.models or not all(folder.is_dir() for folder in args.models)):
        parser.error("--recompute needs --models DIR (a supernode's models folder; repeat it for each supernode)")
    url = make_url(args.db)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        parser.error(f"no ledger database at {url.database!r}")
    store = LedgerStore(args.db, create=False)
    try:
        with _progress_bar(show, "verifying blocks") as progress:
            report = verify_chain(store, signatures=not args.no_signatures, genesis_hash=args.genesis,
                                  progress=progress)
        print(report)
        if not args.recompute:
            return 0 if report.ok else 1
        from node.net.model_store import read_stored
        from node.roles.recompute import recompute_chain

        def from_folders(model_hash: str, holder: str) -> bytes | None:
            for folder in args.models:
                model = read_stored(folder / f"{model_hash}.model", model_hash)
                if model is not None:
                    return model.data
            return None

        with _progress_bar(show, "recomputing rounds") as progress:
            recomputed = recompute_chain((tx for _, tx in store.transactions()), from_folders, progress=progress)
        print(recomputed)
        return 0 if report.ok and recomputed.ok else 1
    finally:
        store.close()


@contextmanager
def _progress_bar(show: bool, what: str) -> Iterator[Callable[[int, int], None] | None]:
    """A transient bar on stderr for the duration of the block, fed by the ``progress(done,
    total)`` callback it yields (None when not shown, so the audit pays nothing for it). Shown
    when asked for even if stderr is no terminal (``--progress`` into a log file)."""
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=Console(stderr=True, force_terminal=True), transient=True)
    with bar:
        task = bar.add_task(what, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


def _pinned(home: Path) -> str:
    """The genesis hash ``home`` pinned at enrolment; says so on stderr when there is none."""
    from node.roles.enrolment import pinned_genesis

    genesis = pinned_genesis(home)
    if not genesis:
        print(f"note: {home} pins no genesis block (no tls/network.json, or the entry node's home); "
              f"the genesis block is not checked against a pin", file=sys.stderr)
    return genesis


if __name__ == "__main__":
    sys.exit(main())
