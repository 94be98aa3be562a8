"""Reports read from the chain alone, for the console (``privacy()``, ``scores()``) and the
explorer's job pages: every job's privacy budget as its GLOBAL_MODELs recorded it, and every
job's contribution scores as its entry node's SCOREs recorded them."""

from __future__ import annotations

from base_package import data_pb2 as pb
from fl.scores import job_totals
from node.chain.rules import TxKind
from node.chain.store import BlockStore
from node.roles.scoring import round_scores


def privacy_report(store: BlockStore) -> pb.PrivacyReport:
    """Each DP job's per-round privacy record, and why it stopped if its budget ran out."""
    jobs: dict[str, pb.JobPrivacy] = {}
    for _, tx in store.transactions(kind=TxKind.GLOBAL_MODEL):
        section = tx.payload.get("privacy")
        if isinstance(section, dict):
            job = jobs.setdefault(tx.payload["job_id"], pb.JobPrivacy(job_id=tx.payload["job_id"]))
            job.rounds.append(pb.PrivacyRound(round=tx.payload["round"],
                                              record={str(k): str(v) for k, v in section.items()}))
    for _, tx in store.transactions(kind=TxKind.ROUND_FAILED):
        if tx.payload["job_id"] in jobs and tx.payload["attempt"] == 0:  # stopped before a round, for good
            jobs[tx.payload["job_id"]].stopped = tx.payload["reason"]
    return pb.PrivacyReport(jobs=list(jobs.values()))


def score_report(store: BlockStore) -> pb.ScoreReport:
    """Each scored job's totals per edge node over its rounds."""
    report = pb.ScoreReport()
    for _, job_tx in store.transactions(kind=TxKind.JOB):
        method = job_tx.payload.get("options", {}).get("scores", "off")
        if method == "off":
            continue
        rounds, _ = round_scores(store, job_tx.payload["job_id"], job_tx.sender)
        job = report.jobs.add(job_id=job_tx.payload["job_id"], method=str(method), rounds=len(rounds))
        for node, total in sorted(job_totals([rounds[r] for r in sorted(rounds)]).items()):
            job.edges.add(node_id=node, samples=total.samples, rounds=total.uploads, flb=total.flb,
                          has_marginal=total.marginal is not None, marginal=total.marginal or 0.0, flags=total.flags)
    return report
