"""What a restarted entry node needs to go on with its job that the chain does not hold.

The chain holds the job (JOB) and every finished round's order and global model (ROUND,
GLOBAL_MODEL); the entry node's models folder holds the global models' bytes. The rest is kept
in ``<home>/jobs/<job_id>/``: whether the operator paused the job, the strategy's server state
(FedAvgM's velocity, FedAdam's moments) after each of the last two rounds (the newest may be ahead
of the chain when the node died before that round's GLOBAL_MODEL was sealed, and then the one
before it is the one the chain's last round left), and each round's metrics as evaluated (the
accuracies are not on the chain), one JSON line per round.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from fl.serialize import state_from_bytes, state_to_bytes
from fl.strategy import StateDict

KEPT_ROUNDS = 2


class JobCheckpoint:
    """One job's checkpoint in ``folder`` (None: kept nowhere; a restart does not resume)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def save_round(self, round_number: int, state: StateDict) -> None:
        """The strategy's server state after ``round_number`` (nothing for rules without state)."""
        if not state or self.folder is None:
            return
        write_atomically(self._state_path(round_number), state_to_bytes(state))
        for old in self.folder.glob("strategy-*.safetensors"):
            if int(old.stem.split("-")[1]) <= round_number - KEPT_ROUNDS:
                old.unlink(missing_ok=True)

    def strategy_state(self, round_number: int) -> StateDict | None:
        """The server state saved after ``round_number``, or None when there is none."""
        if self.folder is None:
            return None
        path = self._state_path(round_number)
        return state_from_bytes(path.read_bytes()) if path.exists() else None

    def set_paused(self, paused: bool) -> None:
        if self.folder is not None:
            write_atomically(self.folder / "job.json", json.dumps({"paused": paused}).encode())

    def paused(self) -> bool:
        if self.folder is None:
            return False
        path = self.folder / "job.json"
        try:
            return bool(json.loads(path.read_text(encoding="utf-8")).get("paused", False))
        except (OSError, ValueError, AttributeError):
            return False

    def add_metrics(self, row: dict) -> None:
        """Append one round's metrics (a JSON object with a ``round``)."""
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            with (self.folder / "metrics.jsonl").open("a", encoding="utf-8") as out:
                out.write(json.dumps(row, sort_keys=True) + "\n")

    def metrics(self, up_to: int) -> list[dict]:
        """The saved metrics of rounds 1..``up_to``, one per round (the last saved), in order; a
        line torn by a crash is skipped."""
        if self.folder is None or not (self.folder / "metrics.jsonl").exists():
            return []
        rows: dict[int, dict] = {}
        for line in (self.folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                if isinstance(row, dict) and isinstance(row.get("round"), int) and 1 <= row["round"] <= up_to:
                    rows[row["round"]] = row
            except ValueError:
                continue
        return [rows[r] for r in sorted(rows)]

    def _state_path(self, round_number: int) -> Path:
        assert self.folder is not None
        return self.folder / f"strategy-{round_number}.safetensors"


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
