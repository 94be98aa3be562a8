"""Property-based fuzzing of every RPC of every service (hypothesis), on a supernode and an edge
node, as every kind of caller: each of ~1,400 generated requests (raw bytes, random fields,
boundaries, malformed model streams, messages signed by the caller) must be answered with a proper
status code within its deadline, and afterwards every node is healthy, the chains verify, a
one-round job completes and no node logged a traceback.

The generators, callers and checks live in ``bench/fuzz.py`` (one copy: ``python bench/fuzz.py
--requests 20000`` runs the same for longer and prints the counts by status code). The seed is
fixed, so CI sends the same requests every run; the requests that once found a bug
(``bench.fuzz.REGRESSIONS``) are sent first whatever the seed.
"""

from __future__ import annotations

from bench.fuzz import FuzzNetwork, all_rpcs, check_network, fuzz, table
from conftest import start_network

REQUESTS = 1_400  # at least 1,000, spread evenly over every RPC (50 each)
SEED = 20_240_601


def test_every_rpc_answers_fuzzed_requests_properly_and_the_network_keeps_working(tmp_path, nodes, capsys):
    entry, sn, edges = start_network(tmp_path, lambda name: None, nodes, 2)
    net = FuzzNetwork.attach(tmp_path, entry, sn, edges)
    try:
        results = fuzz(net, REQUESTS, SEED)
        problems = check_network(net)
    finally:
        net.close()
    findings = [f.describe() for f in results.findings]
    with capsys.disabled():  # the counts by status code, for the CI log
        from rich.console import Console

        Console(width=200, highlight=False).print(table(results))

    assert len(results.outcomes) >= 1_000
    assert set(results.by_rpc()) == {rpc.name for rpc in all_rpcs()}  # every RPC of every service
    assert {o.target for o in results.outcomes} == {"entry", "sn", "en"}
    assert not findings, f"{len(findings)} bad answers; the first ones:\n" + "\n".join(findings[:15])
    assert not results.undeliverable(), f"refusals too long to deliver: {results.undeliverable()}"
    assert not problems, "after the fuzzing:\n" + "\n\n".join(problems)
