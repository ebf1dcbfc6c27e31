"""Known-answer tests for pairing.cpace against draft-irtf-cfrg-cpace-21's vectors (suite
CPACE-X25519-SHA512).

Sources, both in tests/vectors (see its README):

* ``cpace-testvectors.json``, ``G_25519`` and ``X25519_points``: the vectors printed in the
  draft-21 text, Appendix B.1 (CI = lv_cat(b"A_initiator", b"B_responder")).
* ``cpace-testvectors.md``: the same commit's testvectors.md.  Its string-utility and low-order
  vectors equal the draft's; its X25519 run was generated with another CI,
  ``o_cat(prepend_len(b"A_initiator"), prepend_len(b"B_responder"))``, so every value from g
  on differs from the JSON, but the run is self-consistent and is checked as a second case.
  (Its printed label ``b"CPaceSidOut"`` is a typo: its values use ``b"CPaceSidOutput"``.)

Values that only the draft text has (the intermediate values of calculate_generator for the
JSON's CI, the lexicographic-order checks) are copied below with their section.  The draft
publishes no key-confirmation vectors; those tests recompute §10.4 with the standard library.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pairkit.pairing import cpace
from pairkit.pairing.errors import AuthenticationError, ProtocolError

VECTORS = Path(__file__).parent / "vectors"
_JSON = json.loads((VECTORS / "cpace-testvectors.json").read_text())
# Only the X25519 part of testvectors.md (it is followed by the X448 suite).
_MD = (
    (VECTORS / "cpace-testvectors.md")
    .read_text()
    .split("Test vector for CPace using group X448")[0]
)


def _unhex(d: dict[str, Any]) -> dict[str, bytes]:
    """The hex-encoded entries of a vector block (skipping labels such as ``"H": "SHA-512"``)."""
    return {
        k: bytes.fromhex(v)
        for k, v in d.items()
        if isinstance(v, str) and re.fullmatch(r"(?:[0-9A-Fa-f]{2})*", v)
    }


def _md_blocks() -> list[dict[str, Any]]:
    """The base64-encoded JSON blocks of testvectors.md, in order."""
    blocks = []
    for m in re.finditer(r"~~~ test-vectors\n(.*?)~~~", _MD, re.S):
        b64 = "".join(line.strip().lstrip("#") for line in m.group(1).splitlines())
        blocks.append(json.loads(base64.b64decode(b64)))
    return blocks


def _md_block(key: str) -> dict[str, Any]:
    (block,) = [b for b in _md_blocks() if key in b]
    return block


# draft-21 Appendix B.1.1, "Test vectors for calculate_generator with group X25519", for the
# JSON's inputs (the JSON itself only has g).
_DRAFT21_GENERATOR = {
    "generator_string": bytes.fromhex(
        "0843506163653235350850617373776f72646d" + "00" * 109 + "180b415f696e69746961746f72"
        "0b425f726573706f6e646572107e4b4791d6a8ef019b936c79fb7f2c57"
    ),
    "hash": bytes.fromhex("03998087bdb1a2617bbe25ef5a7c18cd4f84f902328701790958755ee4aed1d3"),
    "decoded": bytes.fromhex("03998087bdb1a2617bbe25ef5a7c18cd4f84f902328701790958755ee4aed153"),
}


def _cases() -> dict[str, dict[str, bytes]]:
    json_case = _unhex(_JSON["G_25519"])
    json_case.update(
        generator_string=_DRAFT21_GENERATOR["generator_string"],
        hash=_DRAFT21_GENERATOR["hash"],
        decoded=_DRAFT21_GENERATOR["decoded"],
    )
    md_case = _unhex(_md_block("ISK_IR"))
    gen = _unhex(_md_block("generator g"))
    assert gen["CI"] == md_case["CI"] and gen["generator g"] == md_case["g"]
    md_case.update(
        generator_string=gen["generator_string(G.DSI,PRS,CI,sid,H.s_in_bytes)"],
        hash=gen["hash generator string"],
        decoded=gen["decoded field element of 255 bits"],
    )
    return {"draft21-json": json_case, "testvectors-md": md_case}


CASES = _cases()
case_ids = pytest.mark.parametrize("name", sorted(CASES))


def test_the_two_cases_differ_only_by_their_ci() -> None:
    a, b = CASES["draft21-json"], CASES["testvectors-md"]
    for key in ("PRS", "sid", "ya", "yb", "ADa", "ADb"):
        assert a[key] == b[key]
    assert a["CI"] != b["CI"] and a["g"] != b["g"]


# --- channel identifier ---------------------------------------------------------------------


def test_channel_identifier_reproduces_the_drafts_ci() -> None:
    assert cpace.channel_identifier(b"A_initiator", b"B_responder") == CASES["draft21-json"]["CI"]


def test_md_ci_is_the_ordered_concatenation_of_the_ids() -> None:
    ci = cpace.o_cat(cpace.prepend_len(b"A_initiator"), cpace.prepend_len(b"B_responder"))
    assert ci == CASES["testvectors-md"]["CI"]


# --- string utilities (Appendix A.1, A.3) ------------------------------------------------------

_FUNCS = {
    "prepend_len": cpace.prepend_len,
    "lv_cat": cpace.lv_cat,
    "o_cat": cpace.o_cat,
    "transcript_ir": cpace.transcript_ir,
    "transcript_oc": cpace.transcript_oc,
}


def _eval_arg(node: ast.expr) -> bytes:
    """A vector's argument: a bytes literal or ``bytes(range(n))``, nothing else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
        return node.value
    if (
        isinstance(node, ast.Call)
        and ast.unparse(node.func) == "bytes"
        and isinstance(node.args[0], ast.Call)
        and ast.unparse(node.args[0].func) == "range"
    ):
        return bytes(range(ast.literal_eval(node.args[0].args[0])))
    raise ValueError(f"unexpected vector argument {ast.unparse(node)}")


def _string_vectors() -> list[Any]:
    out = []
    for block in _md_blocks():
        for expr, expected in block.items():
            name = expr.split("(")[0]
            if name in _FUNCS:
                out.append(pytest.param(expr, bytes.fromhex(expected), id=expr))
    return out


STRING_VECTORS = _string_vectors()


def test_all_string_utility_vectors_were_found() -> None:
    names = {p.values[0].split("(")[0] for p in STRING_VECTORS}
    assert names == set(_FUNCS)
    assert len(STRING_VECTORS) == 11  # 4 prepend_len, 1 lv_cat, 2 each for the rest


@pytest.mark.parametrize(("expr", "expected"), STRING_VECTORS)
def test_string_utility(expr: str, expected: bytes) -> None:
    call = ast.parse(expr, mode="eval").body
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
    args = [_eval_arg(a) for a in call.args]
    assert _FUNCS[call.func.id](*args) == expected


@pytest.mark.parametrize(
    ("a", "b", "larger"),
    [  # draft-21 A.3.3, "string comparison for o_cat"
        (b"\0", b"\0\0", False),
        (b"\1", b"\0\0", True),
        (b"\0\0", b"\0", True),
        (b"\0\0", b"\1", False),
        (b"\0\1", b"\1", False),
        (b"ABCD", b"BCD", False),
    ],
    ids=lambda v: v.hex() if isinstance(v, bytes) else str(v),
)
def test_lexiographically_larger(a: bytes, b: bytes, larger: bool) -> None:
    assert cpace.lexiographically_larger(a, b) is larger


# --- calculate_generator (§8.2, B.1.1) ---------------------------------------------------------


@case_ids
def test_generator_string(name: str) -> None:
    v = CASES[name]
    got = cpace.generator_string(cpace.DSI, v["PRS"], v["CI"], v["sid"], cpace.S_IN_BYTES)
    assert got == v["generator_string"]


@case_ids
def test_generator_string_hash_and_decoding(name: str) -> None:
    v = CASES[name]
    digest = hashlib.sha512(v["generator_string"]).digest()[:32]
    assert digest == v["hash"]
    assert cpace.encode_u_coordinate(cpace.decode_u_coordinate(digest)) == v["decoded"]


@case_ids
def test_generator_g(name: str) -> None:
    v = CASES[name]
    assert cpace.calculate_generator(v["PRS"], v["CI"], v["sid"]) == v["g"]


# --- messages, K, ISK, sid_output (B.1.2 - B.1.7) ---------------------------------------------


@case_ids
def test_message_from_a(name: str) -> None:
    v = CASES[name]
    assert cpace.scalar_mult(v["ya"], v["g"]) == v["Ya"]


@case_ids
def test_message_from_b(name: str) -> None:
    v = CASES[name]
    assert cpace.scalar_mult(v["yb"], v["g"]) == v["Yb"]


@case_ids
def test_k_on_both_sides(name: str) -> None:
    v = CASES[name]
    assert cpace.scalar_mult_vfy(v["ya"], v["Yb"]) == v["K"]
    assert cpace.scalar_mult_vfy(v["yb"], v["Ya"]) == v["K"]


@case_ids
def test_isk_initiator_responder(name: str) -> None:
    v = CASES[name]
    transcript = cpace.transcript_ir(v["Ya"], v["ADa"], v["Yb"], v["ADb"])
    assert cpace.derive_isk(v["sid"], v["K"], transcript) == v["ISK_IR"]


@case_ids
def test_isk_symmetric(name: str) -> None:
    v = CASES[name]
    transcript = cpace.transcript_oc(v["Ya"], v["ADa"], v["Yb"], v["ADb"])
    assert cpace.derive_isk(v["sid"], v["K"], transcript) == v["ISK_SY"]


@case_ids
def test_sid_output_initiator_responder(name: str) -> None:
    v = CASES[name]
    transcript = cpace.transcript_ir(v["Ya"], v["ADa"], v["Yb"], v["ADb"])
    assert cpace.sid_output(transcript) == v["sid_output_ir"]


@case_ids
def test_sid_output_symmetric(name: str) -> None:
    v = CASES[name]
    transcript = cpace.transcript_oc(v["Ya"], v["ADa"], v["Yb"], v["ADb"])
    assert cpace.sid_output(transcript) == v["sid_output_oc"]


def _fixed(value: bytes) -> Callable[[int], bytes]:
    def rng(n: int) -> bytes:
        assert n == len(value)
        return value

    return rng


def _party(v: dict[str, bytes], role: cpace.Role) -> cpace.CPace:
    mine = ("ya", "ADa") if role == "initiator" else ("yb", "ADb")
    return cpace.CPace(
        role, v["PRS"], ci=v["CI"], sid=v["sid"], ad_self=v[mine[1]], rng=_fixed(v[mine[0]])
    )


@case_ids
def test_cpace_object_initiator(name: str) -> None:
    v = CASES[name]
    a = _party(v, "initiator")
    assert a.message() == v["Ya"]
    a.receive(v["Yb"], v["ADb"])
    assert a.isk == v["ISK_IR"]
    assert a.sid_output == v["sid_output_ir"]


@case_ids
def test_cpace_object_responder(name: str) -> None:
    v = CASES[name]
    b = _party(v, "responder")
    b.receive(v["Ya"], v["ADa"])
    assert b.message() == v["Yb"]
    assert b.isk == v["ISK_IR"]
    assert b.sid_output == v["sid_output_ir"]


# --- key confirmation (§10.4; no published vectors) -------------------------------------------


def _reference_tag(v: dict[str, bytes], y: bytes, ad: bytes) -> bytes:
    key = hashlib.sha512(b"CPaceMac" + v["sid"] + v["ISK_IR"]).digest()
    return hmac.new(key, cpace.lv_cat(y, ad), hashlib.sha512).digest()


@case_ids
def test_confirmation_tags_follow_section_10_4(name: str) -> None:
    v = CASES[name]
    a, b = _party(v, "initiator"), _party(v, "responder")
    a.receive(v["Yb"], v["ADb"])
    b.receive(v["Ya"], v["ADa"])
    ta, tb = a.confirmation(), b.confirmation()
    assert ta == _reference_tag(v, v["Ya"], v["ADa"])
    assert tb == _reference_tag(v, v["Yb"], v["ADb"])
    a.verify_confirmation(tb)
    b.verify_confirmation(ta)


# --- invalid and non-canonical points (§8.2.1, §9, B.1.10) -------------------------------------


def _low_order_table() -> tuple[bytes, dict[str, bytes], dict[str, bytes], set[str]]:
    section = _MD.split("Test vectors for G\\_X25519.scalar\\_mult\\_vfy: low order points")[1]

    def table(letter: str) -> dict[str, bytes]:
        rows = re.findall(rf"^({letter}[0-9a-f]): ([0-9a-f]{{64}})$", section, re.M)
        return {name: bytes.fromhex(value) for name, value in rows}

    us, qs = table("u"), table("q")
    (s,) = re.findall(r"^s = ([0-9a-f]{64})$", section, re.M)
    (abort_text,) = re.findall(r"Additionally, (.*?)\s+MUST trigger the abort", section, re.S)
    must_abort = set(re.split(r"\s*,\s*|\s+and\s+", abort_text.strip()))
    return bytes.fromhex(s), us, qs, must_abort


S_LOW, U_LOW, Q_LOW, MUST_ABORT = _low_order_table()
X25519_POINTS = _unhex(_JSON["X25519_points"])


def _digit(json_name: str) -> str:
    """``"Invalid Y10"`` -> ``"a"``: the JSON numbers the draft's u0 ... ub in decimal."""
    return format(int(json_name.removeprefix("Invalid Y")), "x")


def test_low_order_tables_are_complete_and_agree() -> None:
    assert len(X25519_POINTS) == len(U_LOW) == len(Q_LOW) == 12
    for json_name, point in X25519_POINTS.items():
        assert U_LOW["u" + _digit(json_name)] == point
    # The draft's list of inputs that must abort is exactly those whose result is G.I.
    assert MUST_ABORT == {"u0", "u1", "u2", "u3", "u4", "u5", "u7"}
    assert {"u" + k[1:] for k, q in Q_LOW.items() if q == cpace.IDENTITY} == MUST_ABORT


point_ids = pytest.mark.parametrize("json_name", sorted(X25519_POINTS, key=lambda n: int(n[9:])))


@point_ids
def test_scalar_mult_vfy_on_x25519_points(json_name: str) -> None:
    """B.1.10: u0 ... ub give q0 ... qb; where q is G.I we raise instead of returning it."""
    d = _digit(json_name)
    point, expected = X25519_POINTS[json_name], Q_LOW["q" + d]
    if "u" + d in MUST_ABORT:
        with pytest.raises(AuthenticationError):
            cpace.scalar_mult_vfy(S_LOW, point)
    else:
        # A non-canonical encoding (bit 255 set, or >= p): cleared and reduced as RFC 7748
        # asks, it is not a low-order point, and the draft fixes its result.
        assert cpace.scalar_mult_vfy(S_LOW, point) == expected


@point_ids
@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_receive_on_x25519_points(json_name: str, role: cpace.Role) -> None:
    """§9: a message carrying u0 ... u5 or u7 makes either party abort."""
    v = CASES["draft21-json"]
    party = _party(v, role)
    point = X25519_POINTS[json_name]
    if "u" + _digit(json_name) in MUST_ABORT:
        with pytest.raises(AuthenticationError):
            party.receive(point, b"AD")
        assert party.state is cpace.CPaceState.FAILED
        with pytest.raises(ProtocolError):
            _ = party.isk
    else:
        party.receive(point, b"AD")
        assert len(party.isk) == cpace.ISK_SIZE
