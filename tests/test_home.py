"""The GFL_p way to run a node: ``main.py init --home DIR`` with the node's flags describes it once
(``DIR/node.toml``), ``main.py run --home DIR`` starts it, ``main.py attach --home DIR`` opens the
console on it with the admin token and certificate found in that home (or ``-H HOST -P PORT``)."""

from __future__ import annotations

import subprocess
import sys
import time

from main import main
from node.dev.launcher import ROOT, free_port


def _main(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "main.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_a_node_described_once_runs_and_attaches_by_its_home(tmp_path):
    home, port = tmp_path / "entry", free_port()
    made = _main("init", "--home", str(home), "--port", str(port), "--nt", "SN", "--entry", f"127.0.0.1:{port}",
                 "-z", "--host", "127.0.0.1")
    assert made.returncode == 0, made.stderr
    assert "node.toml" in made.stdout and (home / "node.toml").exists()
    node = subprocess.Popen([sys.executable, "main.py", "run", "--home", str(home)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            attached = _main("attach", "--home", str(home), "-c", "status()")
            if attached.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert attached.returncode == 0, attached.stdout + attached.stderr
        node_id = made.stdout.split()[2]  # "node id  <id>"
        assert node_id[:8] in attached.stdout
        # ... and by its address, with the token and certificate named
        by_address = _main("attach", "-H", "127.0.0.1", "-P", str(port), "--token-file", str(home / "admin.token"),
                           "-c", "status()")
        assert by_address.returncode == 0, by_address.stdout + by_address.stderr
    finally:
        node.terminate()
        assert node.wait(timeout=30) == 0, node.stderr.read()


def test_a_home_that_describes_no_node_or_an_edge_node_says_what_to_do(tmp_path, capsys):
    assert main(["run", "--home", str(tmp_path / "empty")]) == 2
    assert "describes no node" in capsys.readouterr().err
    assert main(["init", "--home", str(tmp_path / "half"), "--port", "9000"]) == 2
    assert "--nt, --entry" in capsys.readouterr().err
    edge = tmp_path / "edge"
    assert main(["init", "--home", str(edge), "--port", "9001", "--nt", "EN", "--entry", "127.0.0.1:9000"]) == 0
    assert main(["attach", "--home", str(edge)]) == 2
    assert "edge nodes take no console" in capsys.readouterr().err
