"""``python -m node.audit URL``: verify a ledger database from genesis to head (exit 0 when
it is sound, 1 with the first bad height and the reason). The audit itself is
``node.chain.audit.verify_chain``; this module only opens the SQL store for it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.engine import make_url

from node.chain.audit import verify_chain
from sql.store import LedgerStore


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m node.audit", description="Verify a FedLedger chain database from genesis to head.")
    parser.add_argument("db", help="the ledger database URL: sqlite:///HOME/ledger.db or mysql+pymysql://…/DB")
    parser.add_argument("--no-signatures", action="store_true", help="skip the Ed25519 checks (faster)")
    args = parser.parse_args(argv)
    url = make_url(args.db)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        parser.error(f"no ledger database at {url.database!r}")
    store = LedgerStore(args.db, create=False)
    try:
        report = verify_chain(store, signatures=not args.no_signatures)
    finally:
        store.close()
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
