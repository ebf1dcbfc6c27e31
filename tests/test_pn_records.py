"""Issue 14: the PN inventory and routing table in the keystore (records.PnRecord), kept across
a restart; a keystore from before (tests/vectors/keystore-v1.pk) opens and takes PNs."""

from __future__ import annotations

from pathlib import Path

import pytest

from pairkit.keystore import Keystore
from pairkit.pairing.errors import ConfigError, DecodeError, NotFoundError
from pairkit.pairing.keystore import PnEntry, PnRecord
from pairkit.pairing.keystore.records import clean_name

ROOT = Path(__file__).resolve().parents[1]
PN = "ab" * 16
GW = "cd" * 16
A, B, C = "01" * 16, "02" * 16, "03" * 16


def _record(**kw) -> PnRecord:
    base = dict(
        pn_id=PN, role="gateway", gw_id=GW, gw_name="Paul's phone", setup="all",
        members=(PnEntry(A, "watch", 1, "local_eukey", b"\x11" * 32, "tcp:127.0.0.1:5"),
                 PnEntry(B, "scale", 0, "preassigned", b"\x22" * 32, None)),
        failed=(PnEntry(C, "lamp", reason="the PNE's link confirmation failed"),),
        declined=(PnEntry("04" * 16, "tv"),), updated=12.5,
    )
    base.update(kw)
    return PnRecord(**base)


def test_a_pn_survives_saving_and_opening_again(tmp_path: Path) -> None:
    path = tmp_path / "ks.pk"
    ks = Keystore.create(path, "123456", name="gw")
    record = _record()
    with ks.update():
        ks.set_pn(record)
    again = Keystore.open(path, "123456")
    (back,) = again.pns("gateway")
    assert back == record
    assert again.pns("member") == ()
    assert back.member("watch").route == "tcp:127.0.0.1:5"
    assert back.member(B[:8]).name == "scale"
    with pytest.raises(NotFoundError):
        back.member("lamp")  # failed: not a member
    # the link keys are never in a repr
    assert "11" * 8 not in repr(back) and "\\x11" not in repr(back)


def test_the_frozen_v1_keystore_opens_takes_a_pn_and_opens_again(tmp_path: Path) -> None:
    copy = tmp_path / "keystore.pk"
    copy.write_bytes((ROOT / "tests" / "vectors" / "keystore-v1.pk").read_bytes())
    ks = Keystore.open(copy, "frozen-test-pin")
    assert ks.pns() == ()
    with ks.update():
        ks.set_pn(_record(role="member", members=(), failed=(), declined=(),
                          link_key=b"\x33" * 32, key_source="local_eukey",
                          gateway="tcp:127.0.0.1:7100"))
    again = Keystore.open(copy, "frozen-test-pin")
    (pn,) = again.pns()
    assert pn.role == "member" and pn.gateway == "tcp:127.0.0.1:7100"
    assert again.setting("transport") == "tcp:127.0.0.1:7000"  # what it held is still there
    with again.update():
        again.forget_pn(PN, "member")
    assert Keystore.open(copy, "frozen-test-pin").pns() == ()


def _member(gw_id: str, key: bytes, updated: float) -> PnRecord:
    return _record(role="member", gw_id=gw_id, members=(), failed=(), declined=(), link_key=key,
                   key_source="local_eukey", gateway="tcp:127.0.0.1:7100", updated=updated)


def test_a_member_keeps_the_pns_of_two_gateways_under_one_pn_id(tmp_path: Path) -> None:
    """A PN id names a PN among its gateway's only (the key server keeps a PN under its
    gateway and its id; security finding 5 of the registration's wait review): memberships of
    two gateways' PNs under one id are both kept, each replaced only by its own gateway's;
    one kept before under its PN id alone (a keystore of an earlier pairkit) is replaced by
    its gateway's next one, never by another gateway's; forget_pn drops one gateway's or all."""
    path = tmp_path / "ks.pk"
    ks = Keystore.create(path, "123456", name="watch")
    other = "ef" * 16
    with ks.update():
        ks.set_setting(ks.PN_PREFIX + "member." + PN, _member(GW, b"\x01" * 32, 1.0)._to_cbor())
        ks.set_pn(_member(other, b"\x02" * 32, 2.0))
    assert [(r.gw_id, r.link_key) for r in ks.pns("member")] == [
        (GW, b"\x01" * 32), (other, b"\x02" * 32)]
    with ks.update():
        ks.set_pn(_member(GW, b"\x03" * 32, 3.0))
        ks.set_pn(_member(other, b"\x04" * 32, 4.0))
    again = Keystore.open(path, "123456")
    assert [(r.gw_id, r.link_key) for r in again.pns("member")] == [
        (GW, b"\x03" * 32), (other, b"\x04" * 32)]
    with again.update():
        again.forget_pn(PN, "member", other)
    assert [r.gw_id for r in again.pns("member")] == [GW]
    with again.update():
        again.set_pn(_member(other, b"\x05" * 32, 5.0))
        again.forget_pn(PN, "member")
    assert Keystore.open(path, "123456").pns("member") == ()


@pytest.mark.parametrize(
    "change",
    [
        {"pn_id": "AB" * 16}, {"gw_id": "cd"}, {"role": "relay"}, {"setup": "some"},
        {"gw_name": "a\x1bb"}, {"link_key": b"short"}, {"key_source": "pan"},
        {"members": [PnEntry(A, "x")]},
    ],
)
def test_malformed_records_are_refused(change) -> None:
    with pytest.raises(ConfigError):
        _record(**change)


def test_a_stored_record_that_is_not_one_reads_as_a_decode_error(tmp_path: Path) -> None:
    ks = Keystore.create(tmp_path / "ks.pk", "123456", name="gw")
    ks.set_setting(ks.PN_PREFIX + "gateway." + PN, {"v": 1, "pn": PN})
    with pytest.raises(DecodeError):
        ks.pns()


@pytest.mark.parametrize(
    ("given", "stored"),
    [("watch", "watch"), ("", "(no name)"), ("a\x1b[2Jb", "a [2Jb"), ("x" * 99, "x" * 64),
     ("\n\t", "(no name)")],
)
def test_names_peers_gave_are_cleaned_before_storing(given: str, stored: str) -> None:
    assert clean_name(given) == stored
    PnEntry(A, clean_name(given))  # and then they store
