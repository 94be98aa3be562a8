"""Enrolment, mutual TLS and revocation: only admitted nodes join, every link is authenticated,
and a revoked node is refused everywhere.

Unit tests cover the token, the token store, the CA and the chain rules (ENROLL before REGISTER,
nothing after REVOKE); process tests run a real entry node and supernode (SQLite and MariaDB)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from base_package import data_pb2 as pb
from base_package import data_pb2_grpc as rpc_pb
from chain_helpers import admit, enroll, model_update, register
from conftest import node_channel, refusal_code as _code, start_supernodes
from node.chain.audit import verify_chain
from node.chain.identity import Identity
from node.chain.ledger import Ledger
from node.chain.rules import Block, InvalidBlock, Transaction, TxKind
from node.dev.launcher import ROOT, NodeProcess, free_port, wait_until
from node.net.channels import channel
from node.net.errors import ServiceError
from node.net.tls import (Authority, Credentials, TlsError, check_issued, load_or_create_key, save_node_credentials,
                          signing_request)
from node.roles.enrolment import (EnrolmentError, Token, TokenStore, enrol, enrolment_message, offline_token,
                                  proof)
from node.net.wire import tx_from_pb
from node.roles.membership import signed_heartbeat
from sql.store import LedgerStore


# --- the token and the token store ----------------------------------------------------------------
def test_token_round_trips_and_damaged_tokens_are_refused_plainly():
    token = Token("0a1b2c3d", bytes(range(16)), "ab" * 32, 18080)
    text = str(token)
    assert text.startswith("FL1-") and len(text) == 4 + 72 and Token.parse(f"  {text}\n") == token
    with pytest.raises(EnrolmentError, match="starts with FL1-"):
        Token.parse("abc")
    with pytest.raises(EnrolmentError, match="wrong length"):
        Token.parse(text[:-4])


def test_token_store_counts_uses_expires_and_refuses_bad_settings(tmp_path):
    store = TokenStore(tmp_path)
    token, issued = store.create("EN", 2, 1.0, "cd" * 32, 18080)
    assert (tmp_path / "ca" / "tokens.json").stat().st_mode & 0o777 == 0o600
    assert store.use(token.token_id, lambda t: None).uses == 1
    store.use(token.token_id, lambda t: None)
    with pytest.raises(ServiceError, match="used up") as used_up:
        store.use(token.token_id, lambda t: None)
    assert used_up.value.code == grpc.StatusCode.PERMISSION_DENIED
    _, capped = store.create("EN", 1, 1.0, "cd" * 32, 18080, max_samples=300)
    assert TokenStore(tmp_path).list()[-1].max_samples == capped.max_samples == 300
    with pytest.raises(EnrolmentError, match="max_samples caps an edge node"):
        store.create("SN", 1, 1.0, "cd" * 32, 18080, max_samples=300)
    assert store.remove(capped.token_id)
    short, _ = store.create("SN", 1, 1e-7, "cd" * 32, 18080)  # valid for 0.36 ms
    time.sleep(0.01)
    with pytest.raises(ServiceError, match="expired"):  # and forgotten
        store.use(short.token_id, lambda t: None)
    for role, uses, hours, why in (("XX", 1, 1, "supernode"), ("EN", 0, 1, "uses"), ("EN", 1, 0, "hours")):
        with pytest.raises(EnrolmentError, match=why):
            store.create(role, uses, hours, "cd" * 32, 18080)
    withdrawn, _ = store.create("EN", 5, 1, "cd" * 32, 18080)
    assert store.remove(withdrawn.token_id) and not store.list()


# --- the CA -----------------------------------------------------------------------------------------
def test_the_ca_issues_certificates_bound_to_a_node_id_and_role(tmp_path):
    ca = Authority.load_or_create(tmp_path / "entry", "test")
    assert Authority.load_or_create(tmp_path / "entry", "test").sha256 == ca.sha256  # kept, not remade
    me = Identity.generate()
    key = load_or_create_key(tmp_path / "node" / "node.key")
    cert = ca.issue(signing_request(key, me.node_id), me.node_id, "EN", days=1)
    check_issued(cert, ca.cert, key, me.node_id)
    with pytest.raises(TlsError, match="another key"):
        check_issued(cert, ca.cert, load_or_create_key(tmp_path / "other.key"), me.node_id)
    with pytest.raises(TlsError, match="not issued by the network CA"):
        check_issued(cert, Authority.load_or_create(tmp_path / "rogue", "rogue").cert, key, me.node_id)
    with pytest.raises(TlsError, match="role"):
        ca.issue(signing_request(key, me.node_id), me.node_id, "admin", days=1)
    with pytest.raises(TlsError, match="not PEM"):
        ca.issue(b"junk", me.node_id, "EN", days=1)


# --- chain rules --------------------------------------------------------------------------------------
def _ledger(tmp_path) -> tuple[Ledger, Identity]:
    ledger, proposer = Ledger(LedgerStore(f"sqlite:///{tmp_path / 'ledger.db'}")), Identity.generate()
    ledger.create_genesis(proposer, "127.0.0.1:8080")
    return ledger, proposer


def test_register_needs_an_enroll_of_that_key_and_role(tmp_path):
    ledger, proposer = _ledger(tmp_path)
    stranger = Identity.generate()
    with pytest.raises(InvalidBlock, match="without an ENROLL"):
        ledger.propose([register(stranger)], proposer)
    with pytest.raises(InvalidBlock, match="without an ENROLL"):  # enrolled as an edge node, registers as a supernode
        ledger.propose([enroll(proposer, stranger, "EN"), register(stranger, "SN")], proposer)
    ledger.propose(admit(proposer, stranger), proposer)
    assert ledger.enrolment(stranger.node_id).role == "EN"
    intruder = Identity.generate()
    with pytest.raises(InvalidBlock, match="only the entry node may send ENROLL"):  # nobody enrols itself
        ledger.propose([enroll(stranger, intruder, "SN")], proposer)


def test_nothing_from_a_revoked_node_is_valid_and_it_cannot_enrol_again(tmp_path):
    ledger, proposer = _ledger(tmp_path)
    edge = Identity.generate()
    ledger.propose([*admit(proposer, edge), model_update(edge, 1, 0)], proposer)
    revoke = Transaction.create(TxKind.REVOKE, {"node": edge.node_id, "reason": "test"}, proposer)
    ledger.propose([revoke], proposer)
    assert ledger.is_revoked(edge.node_id) and not ledger.is_revoked(proposer.node_id)
    assert Ledger(ledger.store).is_revoked(edge.node_id)  # read back from the database
    with pytest.raises(InvalidBlock, match="was revoked"):
        ledger.propose([model_update(edge, 2, 0)], proposer)
    with pytest.raises(InvalidBlock, match="revoked"):
        ledger.propose([enroll(proposer, edge)], proposer)
    with pytest.raises(InvalidBlock, match="never enrolled"):
        ledger.propose([Transaction.create(TxKind.REVOKE, {"node": Identity.generate().node_id, "reason": "x"},
                                           proposer)], proposer)
    assert verify_chain(ledger.store).ok


def test_the_audit_finds_a_registration_without_enrolment_written_past_validation(tmp_path):
    ledger, proposer = _ledger(tmp_path)
    head = ledger.head()
    forged = Block.create(1, head.hash, [register(Identity.generate())], proposer)
    ledger.store.append(forged)  # straight into the database, as a tampering operator could
    report = verify_chain(ledger.store)
    assert not report.ok and report.bad_height == 1 and "without an ENROLL" in report.reason


# --- processes --------------------------------------------------------------------------------------
def _main(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **(env or {})})


def test_a_node_without_a_token_exits_saying_how_to_get_one(tmp_path):
    done = _main(tmp_path, "--port", str(free_port()), "--nt", "EN", "--entry", "127.0.0.1:1",
                 "--home", str(tmp_path / "en"))
    assert done.returncode == 2
    assert "not enrolled" in done.stderr and "enrol(role='EN')" in done.stderr and "FEDLEDGER_ENROL_TOKEN" in done.stderr


def test_offline_token_command_makes_a_token_for_the_entry_home(tmp_path):
    done = _main(tmp_path, "token", "--home", str(tmp_path / "entry"), "--port", "8080", "--role", "SN", "--uses", "3")
    assert done.returncode == 0, done.stderr
    token = Token.parse(done.stdout)
    assert token.enrol_port == 18080
    assert token.ca_sha256 == Authority.load_or_create(tmp_path / "entry", "x").sha256
    [issued] = TokenStore(tmp_path / "entry").list()
    assert (issued.token_id, issued.role, issued.uses) == (token.token_id, "SN", 3)
    assert _main(tmp_path, "token", "--home", str(tmp_path / "entry")).returncode == 2  # no port: where to enrol?


def test_enrolment_mutual_tls_and_revocation_over_the_network(tmp_path, db_for, nodes):
    entry, sn = start_supernodes(tmp_path, db_for, nodes)
    en = NodeProcess(tmp_path, "en0", "EN", entry=entry.address, token_source=entry)
    nodes.append(en)
    wait_until(lambda: any(n.alive for n in entry.status().edge_nodes.nodes), 30, "the edge node")
    en_id = Identity.load_or_create(en.home).node_id
    # (an edge node is served as soon as it registers; its ENROLL is on the chain with the next block)
    listing = wait_until(lambda: (s := entry.console("ListEnrolments")) and {n.role for n in s.nodes} == {"SN", "EN"}
                         and s, 10, "the edge node's ENROLL on the chain")
    assert not any(n.revoked for n in listing.nodes)

    # --- a certificate of the network is needed, and the right one for the call -----------------
    rogue = Authority.load_or_create(tmp_path / "rogue", "rogue")
    rogue_key = load_or_create_key(tmp_path / "rogue-node" / "node.key")
    save_node_credentials(tmp_path / "rogue-node", rogue.issue(signing_request(rogue_key, en_id), en_id, "SN", 1),
                          rogue.cert)
    for creds in (None, Credentials.load(tmp_path / "rogue-node")):  # plaintext; another CA's certificate
        with channel(entry.address, creds) as ch:
            assert _code(lambda: rpc_pb.LedgerStub(ch).GetHead(pb.Empty(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    with channel(f"127.0.0.1:{entry.enrol_port}") as plain:  # the enrolment port serves enrolment only
        assert rpc_pb.EnrolmentStub(plain).GetNetwork(pb.Empty(), timeout=5).entry_id
        assert _code(lambda: rpc_pb.LedgerStub(plain).GetHead(pb.Empty(), timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
    with node_channel(en, entry) as as_edge:
        assert rpc_pb.LedgerStub(as_edge).GetHead(pb.Empty(), timeout=5).height >= 0
        denied = [lambda: rpc_pb.ConsoleStub(as_edge).Status(pb.Empty(), metadata=entry.admin(), timeout=5),
                  lambda: rpc_pb.LedgerStub(as_edge).SubmitTransaction(pb.Transaction(), timeout=5)]
        assert [_code(call) for call in denied] == [grpc.StatusCode.PERMISSION_DENIED] * 2
    with node_channel(en, sn) as as_edge:  # a supernode-only call from an edge node's certificate
        assert _code(lambda: rpc_pb.TrainingStub(as_edge).RunRound(pb.RoundRequest(), timeout=5)) == \
            grpc.StatusCode.PERMISSION_DENIED
    with node_channel(sn, entry) as as_sn:  # a signed heartbeat replayed by another node
        replay = signed_heartbeat(Identity.load_or_create(en.home))
        assert _code(lambda: rpc_pb.MembershipStub(as_sn).Heartbeat(replay, timeout=5)) == grpc.StatusCode.PERMISSION_DENIED

    # --- a used token does not enrol a second node; a tampered one does not reach the network ------
    token = entry.enrolment_token("EN")
    first = Identity.generate()
    enrol(tmp_path / "first", first, token, entry.address)
    with pytest.raises(EnrolmentError, match="PERMISSION_DENIED.*used up"):
        enrol(tmp_path / "second", Identity.generate(), token, entry.address)
    # a request the CA cannot sign does not use the token up; the same node enrolling twice (a lost
    # reply, a replayed request) gets a certificate, but is on the chain once
    token = offline_token(entry.home, "EN", 2, 1.0, entry.enrol_port, max_samples=300)  # capped by the operator
    again = Identity.generate()
    bad_csr = b"not a certificate request"
    with channel(f"127.0.0.1:{entry.enrol_port}") as plain:
        assert _code(lambda: rpc_pb.EnrolmentStub(plain).Enrol(pb.EnrolRequest(
            token_id=token.token_id, public_key=again.public_key, csr=bad_csr,
            proof=proof(token.secret, token.token_id, again.public_key, bad_csr),
            signature=again.sign(enrolment_message(token.token_id, again.public_key, bad_csr))), timeout=5)) \
            == grpc.StatusCode.INVALID_ARGUMENT
    for _ in range(3):
        enrol(tmp_path / "again", again, str(token), entry.address)
    enrol(tmp_path / "other", Identity.generate(), str(token), entry.address)  # the second use, still there
    wait_until(lambda: entry.status().pending_transactions == 0, 10, "the ENROLLs to be sealed")
    assert [n.node_id for n in entry.console("ListEnrolments").nodes].count(again.node_id) == 1
    [enrolled] = [t for height in range(entry.head().height + 1)
                  for t in map(tx_from_pb, entry.console("GetBlock", pb.BlockRequest(height=height)).transactions)
                  if t.kind == "ENROLL" and t.payload["node"] == again.node_id]
    assert enrolled.payload["max_samples"] == 300  # what its own-data jobs will cap its claims at
    parsed = Token.parse(entry.enrolment_token("EN"))
    with pytest.raises(EnrolmentError, match="another network's CA"):
        enrol(tmp_path / "third", Identity.generate(), str(replace(parsed, ca_sha256="00" * 32)), entry.address)
    with pytest.raises(EnrolmentError, match="copied wrongly"):
        enrol(tmp_path / "fourth", Identity.generate(), str(replace(parsed, secret=bytes(16))), entry.address)

    # --- revoked: on the chain, refused at once by the entry node and soon by the supernode -------
    reply = entry.console("Revoke", pb.RevokeRequest(id=en_id, reason="test: left the consortium"))
    assert reply.tx_hash
    with node_channel(en, entry) as as_edge:
        assert _code(lambda: rpc_pb.LedgerStub(as_edge).GetHead(pb.Empty(), timeout=5)) == grpc.StatusCode.PERMISSION_DENIED
    with node_channel(en, sn) as as_edge:
        def refused() -> bool:
            try:
                rpc_pb.LedgerStub(as_edge).GetHead(pb.Empty(), timeout=5)
            except grpc.RpcError as exc:
                return exc.code() == grpc.StatusCode.PERMISSION_DENIED
            return False

        wait_until(refused, 10, "the supernode to refuse the revoked node")
    wait_until(lambda: not any(n.node_id == en_id and n.alive for n in entry.status().edge_nodes.nodes), 10,
               "the revoked edge node to drop out")
    listing = entry.console("ListEnrolments")
    assert [n.reason for n in listing.nodes if n.revoked] == ["test: left the consortium"]
    assert _code(lambda: entry.console("Revoke", pb.RevokeRequest(id=en_id))) == grpc.StatusCode.ALREADY_EXISTS
    assert _code(lambda: entry.console("Revoke", pb.RevokeRequest(id="f" * 32))) == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: sn.console("CreateEnrolment", pb.EnrolmentRequest(role="EN"))) == \
        grpc.StatusCode.FAILED_PRECONDITION  # tokens come from the entry node
    assert entry.console("Verify").ok and sn.console("Verify").ok


def test_insecure_nodes_enrol_and_talk_plaintext(tmp_path, nodes):
    entry = NodeProcess(tmp_path, "entry", "SN", is_entry=True, extra=["--insecure"])
    nodes.append(entry)
    entry.wait_ready()
    en = NodeProcess(tmp_path, "en0", "EN", entry=entry.address, token_source=entry, extra=["--insecure"])
    nodes.append(en)
    wait_until(lambda: any(n.alive for n in entry.status().edge_nodes.nodes), 30, "the edge node")
    assert (en.home / "tls" / "node.crt").exists()  # enrolled all the same: ENROLL is on the chain
    with channel(entry.address) as plain:  # nobody is authenticated: the rules fall back to signed payloads
        wait_until(lambda: rpc_pb.LedgerStub(plain).GetHead(pb.Empty(), timeout=5).height >= 1, 10,
                   "the block holding the ENROLL and REGISTER")
        assert _code(lambda: rpc_pb.ConsoleStub(plain).Status(pb.Empty(), timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
