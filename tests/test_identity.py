import stat

import pytest

from node.chain.identity import Identity, IdentityError, node_id_for, verify_signature


def test_key_created_once_with_private_mode_and_reloaded(tmp_path):
    first = Identity.load_or_create(tmp_path / "home")
    key_file = tmp_path / "home" / "node.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again = Identity.load_or_create(tmp_path / "home")
    assert again.node_id == first.node_id
    assert len(first.node_id) == 32 and int(first.node_id, 16) >= 0
    assert node_id_for(first.public_key) == first.node_id


def test_signatures_verify_only_for_the_signer_and_message():
    alice, bob = Identity.generate(), Identity.generate()
    sig = alice.sign(b"message")
    assert verify_signature(alice.public_key, sig, b"message")
    assert not verify_signature(bob.public_key, sig, b"message")
    assert not verify_signature(alice.public_key, sig, b"other")
    assert not verify_signature(alice.public_key, sig[:10], b"message")


def test_unreadable_key_file_is_a_clear_error(tmp_path):
    (tmp_path / "node.key").write_text("not a key")
    with pytest.raises(IdentityError, match="node.key is not a readable PEM private key"):
        Identity.load_or_create(tmp_path)
