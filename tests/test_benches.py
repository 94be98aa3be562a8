"""Every benchmark still runs: each script in its smallest setting (digits, SQLite, a round or two)
exits 0 and prints its table. What they measure is measured by running them, never here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from node.dev.launcher import ROOT

SMOKE = {
    "ledger.py": ["--mysql", "", "--blocks", "3", "--txs", "5", "--verify-blocks", "10", "--verify-txs", "3"],
    "paradigms.py": ["--quick"],
    "scale.py": ["--quick"],
    "scores.py": ["--dataset", "digits", "--rounds", "2", "--clients", "4"],
    "privacy.py": ["--dataset", "digits", "--rounds", "2", "--clients", "4", "--sharing", "fedper",
                   "--mechanisms", "none,fixed,adaptive,local", "--epsilons", "8"],
}


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_a_benchmark_runs_in_its_smallest_setting(script):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *SMOKE[script]], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "COLUMNS": "160"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "┃" in done.stdout  # its table
