"""``torch_threads = 0``: a node process takes its share of the cores among the node processes
of its host, counted through locked files that the kernel releases when a process ends."""

from __future__ import annotations

import subprocess
import sys

from node.cores import HostShare, usable_cores
from node.dev.launcher import ROOT, wait_until

HOLD = """
import sys, time
from node.cores import HostShare
HostShare(__import__('pathlib').Path(sys.argv[1]))
print('registered', flush=True)
time.sleep(60)
"""


def test_processes_are_counted_while_they_run_and_not_after(tmp_path):
    mine = HostShare(tmp_path)
    assert mine.processes() == 1 and mine.threads() == (usable_cores(), 1)
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "registered"
        assert mine.processes() == 2
        assert mine.threads() == (max(1, usable_cores() // 2), 2)
    finally:
        other.kill()  # however it ends, the kernel lets go of its lock
        other.wait()
    wait_until(lambda: mine.processes() == 1, 10, "the ended process to leave the count")
    assert len(list(tmp_path.glob("*.lock"))) == 1  # its file was removed
    mine.close()
    assert not list(tmp_path.glob("*.lock"))


def test_auto_threads_are_a_valid_setting():
    from config import load_config

    assert load_config(env={}, overrides={"torch_threads": 0})["torch_threads"] == 0


def test_an_edge_node_with_auto_threads_takes_its_share_when_torch_loads(tmp_path, nodes):
    import re

    from tests.conftest import run_job, start_network

    entry, _, [edge] = start_network(tmp_path, lambda name: None, nodes, 1, edge_args=["--set", "torch_threads=0"])
    run_job(entry, {"dataset": "digits", "rounds": "1", "partition": "iid"})
    said = re.search(r"torch threads: (\d+) \((\d+) node processes share this host\)", edge.log.read_text())
    assert said, "the edge node did not say how many threads it took"
    threads, processes = int(said.group(1)), int(said.group(2))
    assert processes >= 3 and threads == max(1, usable_cores() // processes)  # entry, supernode, itself (and others)


SLOT = """
import sys, time
from node.cores import HostSlots
with HostSlots(1, __import__('pathlib').Path(sys.argv[1])):
    print('holding', flush=True)
    time.sleep(60)
"""


def test_host_slots_bound_trainings_across_processes_and_free_a_dead_holders(tmp_path):
    import threading

    from node.cores import HostSlots, share_for

    slots = HostSlots(2, tmp_path)
    inside, most, lock = 0, 0, threading.Lock()

    def train() -> None:
        nonlocal inside, most
        with slots:
            with lock:
                inside += 1
                most = max(most, inside)
            threading.Event().wait(0.05)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=train) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 2  # two at a time, never more
    other = subprocess.Popen([sys.executable, "-c", SLOT, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "holding"
        one = HostSlots(1, tmp_path)
        def wait_for_the_slot() -> None:
            with one:
                pass

        waiting = threading.Thread(target=wait_for_the_slot)
        waiting.start()
        waiting.join(0.3)
        assert waiting.is_alive()  # another process holds the only slot
        other.kill()  # however it ends, its slot is free again
        waiting.join(10)
        assert not waiting.is_alive()
    finally:
        other.kill()
        other.wait()
    assert share_for(4, tmp_path / "none") == max(1, usable_cores() // 4)


def test_host_slots_outlive_their_folder(tmp_path):
    """A logout removes the user's runtime folder (XDG_RUNTIME_DIR) under running nodes: their
    next training makes it again instead of failing for good."""
    import shutil

    from node.cores import HostSlots

    slots = HostSlots(1, tmp_path / "runtime")
    shutil.rmtree(tmp_path / "runtime")
    with slots:
        assert (tmp_path / "runtime" / "slots" / "slot-0").exists()
