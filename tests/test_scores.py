"""Contribution scores: free-rider flags, FLB's formula, leave-one-out and GTG-Shapley against
games whose values are known, the validation utility, a simulation whose ranking is checked (a
free rider and an edge node with twice the data), and scores over the network (SCOREs sealed with
each round, the job's totals, console scores() and save())."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from itertools import permutations
from math import factorial

import numpy as np
import pytest
import torch

from base_package import data_pb2 as pb
from config import ConfigError, load_config
from conftest import start_supernodes
from fl import federation
from fl.datasets import load_dataset
from fl.partition import ClientIndices
from fl.scores import Score, flb_score, free_rider_flags, gtg_shapley, job_totals, leave_one_out
from fl.simulation import run_simulation
from fl.strategy import Update
from node.chain.identity import Identity
from node.dev.launcher import ROOT, NodeProcess, wait_until
from node.net.wire import tx_from_pb

DIGITS = load_dataset("digits")
FAULTY = ROOT / "tests" / "faulty_edge_node.py"


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((50,), value), "n": torch.tensor([1])}


def test_free_riders_are_flagged_unchanged_copied_or_negligible():
    reference = _state(0.0)
    updates = {"honest": Update(_state(0.5), 10, "a" * 64), "other": Update(_state(-0.4), 10, "b" * 64),
               "lazy": Update(_state(0.0), 10, "c" * 64), "copycat": Update(_state(0.5), 10, "a" * 64),
               "tiny": Update(_state(1e-7), 10, "d" * 64)}
    flags = free_rider_flags(reference, updates)
    assert flags["other"] == [] and flags["lazy"] == ["unchanged"]
    # two equal updates: the one whose id sorts later is the copy (which one copied cannot be told)
    assert (flags["copycat"], flags["honest"]) == ([], ["copy of copycat"])
    assert flags["tiny"] == ["negligible"]


def test_flb_score_is_uploads_times_size_plus_samples_times_the_improvement():
    assert flb_score(samples=300, size=2 * 2**20, uploads=3, coefficient=1.1) == pytest.approx((3 * 2 + 300) * 1.1)


def test_leave_one_out_and_gtg_shapley_on_games_with_known_values():
    weights = {"a": 0.5, "b": 0.3, "c": 0.1, "d": 0.0}
    additive = lambda members: sum(weights[m] for m in members)  # noqa: E731 - Shapley value = own weight
    assert leave_one_out(additive, list(weights)) == pytest.approx(weights)
    assert gtg_shapley(additive, list(weights), seed=1) == pytest.approx(weights, abs=1e-9)

    def glove(members) -> float:  # a non-additive game: value only when "l" and "r" are both in
        return 1.0 if {"l", "r"} <= set(members) else 0.0
    exact = {p: 0.0 for p in "lrx"}
    for order in permutations("lrx"):
        for i, p in enumerate(order):
            exact[p] += glove(order[: i + 1]) - glove(order[:i])
    exact = {p: v / factorial(3) for p, v in exact.items()}
    assert exact == {"l": 0.5, "r": 0.5, "x": 0.0}
    assert gtg_shapley(glove, list("lrx"), seed=3) == pytest.approx(exact, abs=0.1)
    assert leave_one_out(glove, list("lrx")) == {"l": 1.0, "r": 1.0, "x": 0.0}


def test_job_totals_sum_the_rounds_and_count_the_flags():
    rounds = [{"a": Score(100, 10, 1, 5.0, 0.1), "b": Score(50, 10, 1, 0.0, -0.1, ["unchanged"])},
              {"a": Score(100, 10, 2, 6.0, 0.2), "b": Score(50, 10, 2, 0.0, 0.0, ["unchanged"])}]
    totals = job_totals(rounds)
    assert totals["a"].flb == 11.0 and totals["a"].marginal == pytest.approx(0.3) and totals["a"].uploads == 2
    assert totals["b"].flags == ["unchanged ×2"]


def _free_rider_round(self, client, data, round_number, shared, *args, **kwargs):
    result = _honest_round(self, client, data, round_number, shared, *args, **kwargs)
    if client == 3:  # trains, but sends back what it was sent
        result = dataclasses.replace(result, shared={k: v.clone() for k, v in shared.items()})
    return result


_honest_round = federation.ClientWorker.train_round


@pytest.mark.parametrize("method", ["flb", "gtg"])
def test_a_free_rider_ranks_last_and_twice_the_data_ranks_first(monkeypatch, method):
    monkeypatch.setattr(federation.ClientWorker, "train_round", _free_rider_round)
    order = np.random.default_rng(0).permutation(len(DIGITS))
    cuts = [0, 600, 900, 1200, 1500]  # client 0 holds twice the data of each other
    splits = []
    for i in range(4):
        part = order[cuts[i]:cuts[i + 1]]
        splits.append(ClientIndices(part[: len(part) * 3 // 4], part[len(part) * 3 // 4:]))
    conf = load_config(env={}, overrides={"dataset": "digits", "client.amount": 4, "gobal_epoch": 4, "BATCH_SIZE": 16,
                                          "learn_rate": 0.05, "workers": 1, "scores": method, "strategy": "fedavg"})
    result = run_simulation(conf, dataset=DIGITS, splits=splits)
    per_round = [{c: Score(**s) for c, s in r.scores.items()} for r in result.rounds]
    assert all(rnd["3"].flags == ["unchanged"] and rnd["3"].flb == 0.0 for rnd in per_round)
    totals = job_totals(per_round)
    flb = sorted(totals, key=lambda c: -totals[c].flb)
    assert flb[0] == "0" and flb[-1] == "3" and totals["0"].flb > 1.8 * totals["1"].flb
    if method == "gtg":
        marginal = sorted(totals, key=lambda c: -totals[c].marginal)
        assert marginal[0] == "0" and totals["3"].marginal < totals["0"].marginal
        assert all(s.marginal is not None for rnd in per_round for s in rnd.values())


def test_marginal_scores_are_refused_for_a_dp_job():
    with pytest.raises(ConfigError, match="scores=gtg evaluates aggregates"):
        load_config(env={}, overrides={"dp": "central", "dp_noise": 1.0, "scores": "gtg"})


def test_scores_over_the_network_are_sealed_with_each_round_and_totalled(tmp_path, nodes):
    entry, sn = start_supernodes(tmp_path, lambda name: None, nodes)
    edges = [NodeProcess(tmp_path, f"en{i}", "EN", entry=entry.address, token_source=entry) for i in range(3)]
    rider = NodeProcess(tmp_path, "rider", "EN", entry=entry.address, token_source=entry, script=FAULTY,
                        env={"FEDLEDGER_TEST_FAULT": "freeride"})
    nodes.extend([*edges, rider])
    wait_until(lambda: sum(n.alive for n in entry.status().edge_nodes.nodes) == 4, 60, "the edge nodes")
    entry.console("StartJob", pb.JobRequest(settings={"dataset": "digits", "partition": "iid", "batch_size": "16",
                                                      "lr": "0.05", "rounds": "3", "strategy": "fedper",
                                                      "scores": "loo"}))
    done = wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed") and s, 180, "the job")
    assert done.state == "done", done.error
    wait_until(lambda: entry.status().pending_transactions == 0, 20, "the records to be sealed")
    blocks = [entry.console("GetBlock", pb.BlockRequest(height=h)) for h in range(entry.head().height + 1)]
    txs = [(h, tx_from_pb(t)) for h, b in enumerate(blocks) for t in b.transactions]
    mine = [(h, t) for h, t in txs if t.payload.get("job_id") == done.job_id]
    rider_id = Identity.load_or_create(rider.home).node_id
    for r in (1, 2, 3):
        scores = {t.payload["node"]: (h, t) for h, t in mine if t.kind == "SCORE" and t.payload["round"] == r}
        [(global_height, _)] = [(h, t) for h, t in mine if t.kind == "GLOBAL_MODEL" and t.payload["round"] == r]
        assert len(scores) == 3 and rider_id not in scores  # the free rider is excluded, the others scored
        assert all(h == global_height for h, _ in scores.values())  # sealed with the round
        assert all(float(t.payload["score"]) > 0 and "marginal" in t.payload for _, t in scores.values())
        [reason] = [t.payload["reason"] for _, t in mine if t.kind == "EXCLUDED" and t.payload["round"] == r
                    and t.payload["node"] == rider_id]
        assert "free rider: its update is the very model it was sent" in reason
    verified = entry.console("Verify", pb.VerifyRequest(recompute=True), timeout=120)  # the scores recomputed too
    assert verified.ok and verified.recompute.ok, verified
    totals = [t for _, t in mine if t.kind == "SCORE" and t.payload["round"] == 0]
    assert len(totals) == 3 and all(t.payload["uploads"] == 3 for t in totals)
    report = entry.console("Scores")
    [job] = [j for j in report.jobs if j.job_id == done.job_id]
    assert job.method == "loo" and job.rounds == 3 and len(job.edges) == 3 and all(e.has_marginal for e in job.edges)
    out = tmp_path / "saved"
    shown = subprocess.run([sys.executable, str(ROOT / "Console.py"), "--port", str(entry.port), "--tls",
                            str(entry.console_dir), "--token", entry.token, "-c", f"scores(); save('{out}')"],
                           cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "scores=loo, 3 rounds scored" in shown.stdout
    saved = json.loads((out / "scores.json").read_text())
    assert {e["node_id"] for e in saved["edge_nodes"]} == {e.node_id for e in job.edges}
