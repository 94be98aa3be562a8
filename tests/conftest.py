"""Shared fixtures: ledger stores on SQLite (always) and on the machine's MariaDB.

MariaDB tests need a server at ``FEDLEDGER_TEST_MYSQL`` (default
``mysql+pymysql://root@127.0.0.1:3306``). With ``CI=true`` they must run: an unreachable
server fails them instead of skipping.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest

MYSQL_SERVER = os.environ.get("FEDLEDGER_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _mysql_reachable() -> str | None:
    """None when the server answers, else why not."""
    import pymysql
    from sqlalchemy.engine import make_url

    url = make_url(MYSQL_SERVER)
    try:
        pymysql.connect(host=url.host, port=url.port or 3306, user=url.username, password=url.password or "",
                        connect_timeout=3).close()
    except pymysql.MySQLError as exc:
        return f"MariaDB/MySQL at {url.host}:{url.port or 3306} is not reachable ({exc})"
    return None


@pytest.fixture(scope="session")
def mysql_server() -> str:
    problem = _mysql_reachable()
    if problem:
        if IN_CI:
            pytest.fail(f"{problem}; CI=true requires the MySQL tests to run")
        pytest.skip(problem)
    return MYSQL_SERVER


@pytest.fixture
def mysql_url(mysql_server):
    """A fresh, empty database on the server, dropped after the test."""
    from sqlalchemy import create_engine, text

    name = f"fedledger_test_{uuid.uuid4().hex[:12]}"
    yield f"{mysql_server}/{name}"
    engine = create_engine(mysql_server)
    with engine.begin() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "mysql"])
def ledger_url(request, tmp_path):
    """The URL of an empty ledger database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("mysql_url")


# --- node networks ------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "mysql"])
def db_for(request):
    """A function giving each supernode its own ledger database on the backend."""
    if request.param == "sqlite":
        yield lambda name: None
        return
    server = request.getfixturevalue("mysql_server")
    prefix = f"fedledger_test_{uuid.uuid4().hex[:8]}"
    made: list[str] = []

    def db(name: str) -> str:
        made.append(f"{prefix}_{name}")
        return f"{server}/{made[-1]}"

    yield db
    from sqlalchemy import create_engine, text

    engine = create_engine(server)
    with engine.begin() as conn:
        for name in made:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    engine.dispose()


@pytest.fixture
def nodes():
    """Node processes a test starts; each is stopped afterwards, whatever happened."""
    from node.dev.launcher import stop_all

    started: list = []
    yield started
    stop_all(started, timeout=5)


def refusal_code(call):
    """The status code ``call`` fails with (the test fails when it succeeds)."""
    import grpc

    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def node_channel(node, target):
    """A channel to ``target`` (a NodeProcess) presenting ``node``'s own certificate: calls as that node."""
    from node.net.channels import channel
    from node.net.tls import Credentials

    return channel(target.address, Credentials.load(node.home / "tls"))


def start_supernodes(tmp_path, db_for, nodes: list, entry_args: list[str] = (), **second: Any) -> tuple:
    """An entry supernode and a second supernode, each with its own ledger database (``db_for``),
    serving and registered (``node.dev.launcher.start_supernodes``)."""
    from node.dev.launcher import start_supernodes as start

    return start(tmp_path, nodes, db=db_for, entry_args=list(entry_args), **second)


def start_network(tmp_path, db_for, nodes: list, edge_nodes: int, edge_args: list[str] = (),
                  entry_args: list[str] = (), **second: Any) -> tuple:
    """The network most tests use: ``start_supernodes`` and ``edge_nodes`` edge nodes, spread over
    both supernodes (the entry node sends each to the least loaded), all alive."""
    from node.dev.launcher import NodeProcess, wait_until

    entry, sn = start_supernodes(tmp_path, db_for, nodes, entry_args, **second)
    edges = [NodeProcess(tmp_path, f"en{i}", "EN", entry=entry.address, extra=list(edge_args), token_source=entry) for i in range(edge_nodes)]
    nodes.extend(edges)
    wait_until(lambda: sum(n.alive for n in entry.status().edge_nodes.nodes) == edge_nodes, 60, "the edge nodes")
    homes = {n.supernode for n in entry.status().edge_nodes.nodes}
    assert edge_nodes < 2 or len(homes) == 2, "the edge nodes should spread over both supernodes"
    return entry, sn, edges


def download_update(holders: list, model_hash: str) -> Any:
    """The update ``model_hash`` from whichever of ``holders`` (supernodes) took it, as the
    operator downloads it (console certificate and admin token)."""
    from base_package import data_pb2 as pb
    from base_package import data_pb2_grpc as rpc_pb
    from node.net.streams import receive

    for holder in holders:
        try:
            return receive(holder.stub(rpc_pb.TrainingStub).DownloadModel(
                pb.ModelRequest(model_hash=model_hash), metadata=holder.admin()), 1 << 30)
        except Exception:  # noqa: BLE001 - held by another supernode
            continue
    raise AssertionError(f"no supernode holds update {model_hash}")


def simulate_as_edge_nodes(conf: dict) -> Any:
    """``run_simulation(conf)`` on one torch thread, as edge nodes train (torch_threads = 1), so
    its bytes compare with a network's."""
    import torch

    from fl.simulation import run_simulation

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_simulation(conf)
    finally:
        torch.set_num_threads(threads)


def run_job_as_simulation(entry: Any, settings: dict[str, str], edge_nodes: int) -> Any:
    """Run a job of ``settings`` (dataset, partition, batch_size, lr, rounds) on the network and
    check that its global model is the simulation's for ``edge_nodes`` clients, bit for bit."""
    from config import load_config
    from fl.serialize import model_hash, state_to_bytes
    from node.net.wire import tx_from_pb

    done = run_job(entry, settings)
    conf = load_config(env={}, overrides={"dataset": settings["dataset"], "partition": settings["partition"],
                                          "BATCH_SIZE": int(settings["batch_size"]), "learn_rate": float(settings["lr"]),
                                          "gobal_epoch": int(settings["rounds"]), "client.amount": edge_nodes,
                                          "workers": 1, "device": "cpu"})
    assert tx_from_pb(done.global_model).payload["hash"] == model_hash(state_to_bytes(
        simulate_as_edge_nodes(conf).global_state))
    return done


def run_job(entry: Any, settings: dict[str, str], timeout: float = 180) -> Any:
    """Start a job on the entry node with the console's ``settings``; its final status, once done."""
    from base_package import data_pb2 as pb
    from node.dev.launcher import wait_until

    entry.console("StartJob", pb.JobRequest(settings=settings))
    done = wait_until(lambda: (s := entry.console("GetJob")).state in ("done", "failed") and s, timeout, "the job")
    assert done.state == "done", done.error
    return done
