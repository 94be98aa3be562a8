"""A supernode that publishes a wrong partial sum, for tests of ``verify(recompute=True)``.

Run with main.py's arguments; ``FEDLEDGER_TEST_FAULT`` says how it cheats in every round:
``drop`` leaves the first update it receives out of its partial sum; ``weight`` moves one sample
of weight from the second update to the first. Either way the partial stays within the bounds its
total allows, and its AGGREGATE still lists every update and their true total, so nothing short of
recomputing the partial from the updates shows it.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl.strategy import exact  # noqa: E402

FAULT = os.environ["FEDLEDGER_TEST_FAULT"]
_honest_add = exact.ExactSum.add


def _cheating_add(self: exact.ExactSum, update, *, checked: bool = False) -> None:
    seen = self.seen = getattr(self, "seen", 0) + 1  # updates offered to this partial sum so far
    if FAULT == "drop" and seen == 1:
        return
    if FAULT == "weight" and seen <= 2:
        update = dataclasses.replace(update, num_samples=update.num_samples + (1 if seen == 1 else -1))
    _honest_add(self, update, checked=checked)


exact.ExactSum.add = _cheating_add

if __name__ == "__main__":
    import main

    sys.exit(main.main(sys.argv[1:]))
