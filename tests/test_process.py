"""Process settings that rounds depend on: kept memory, one OpenMP thread count for every thread,
and evaluation that does not depend on its batch size."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fl.train import evaluate

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | env
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_memory_is_reused_by_every_thread_instead_of_faulted_in_again():
    out = _python("""
        import resource, threading, torch
        from fl.memory import keep_freed_memory
        print(keep_freed_memory())
        faults = []
        def rounds():  # what a supernode does per update, on a pool thread: widen, scale, drop
            x = torch.randn(577_000)
            for i in range(40):
                before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
                y = x.to(torch.float64) * 700
                del y
                if i >= 20:  # once warm
                    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
        thread = threading.Thread(target=rounds)
        thread.start()
        thread.join()
        print(sum(faults))
    """)
    applied, faults = out.splitlines()
    assert applied == "True"
    assert int(faults) < 100  # each fresh 4.6 MB buffer would be ~1,100 faults


def test_a_node_process_gives_every_thread_its_configured_torch_threads():
    out = _python("""
        import threading
        import main
        main.prepare_process(1)  # torch alone would take one per core
        import torch
        seen = []
        thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        print(torch.get_num_threads(), seen[0])
    """)
    assert out == "1 1"


def test_an_explicit_omp_num_threads_is_respected():
    out = _python("""
        import main
        main.prepare_process(1)
        import torch
        print(torch.get_num_threads())
    """, OMP_NUM_THREADS="2")
    assert out == "2"


def test_evaluation_does_not_depend_on_its_batch_size():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x, y = torch.randn(300, 1, 8, 8), torch.randint(0, 10, (300,))
    whole = evaluate(model, x, y, batch_size=1024)
    for batch_size in (1, 7, 128):
        part = evaluate(model, x, y, batch_size=batch_size)
        assert part.correct == whole.correct and part.num_samples == 300
        assert part.loss_sum == pytest.approx(whole.loss_sum, rel=1e-5)


def test_an_idle_edge_node_holds_no_learning_runtime_and_stops_at_once(tmp_path, nodes):
    """Torch (most of an edge node's memory) is imported when the node's first model arrives, not
    at start: an idle edge node stays well under 150 MiB, and SIGTERM stops it within a second."""
    import signal
    import time

    from conftest import start_network

    _, _, [edge] = start_network(tmp_path, lambda name: None, nodes, 1)
    rss_kib = next(int(line.split()[1]) for line in open(f"/proc/{edge.proc.pid}/status") if line.startswith("VmRSS"))
    assert rss_kib < 100 * 1024, f"an idle edge node holds {rss_kib >> 10} MiB"
    started = time.perf_counter()
    edge.proc.send_signal(signal.SIGTERM)
    assert edge.proc.wait(timeout=10) == 0
    assert time.perf_counter() - started < 1.0
