"""Attack (issue 17, finding 5): a stranger writes terminal escape codes onto the owner's screen.

Names, file names and reasons come from peers; printed raw they clear the owner's screen,
recolour it, move the cursor over the prompt, or reorder text with bidirectional overrides just
before "[g]uest/[m]ember/[r]efuse".  Two lines of defence, each tested over a real link to a
``pairkit`` process:

* a name with control characters (ESC, CR, LF, C1) is refused on the wire before anyone is
  asked (the keystore would refuse to store it anyway);
* everything else a peer sends is shown, never interpreted: the command's stdout and stderr
  replace every character a terminal interprets (``cli.show.safe``), so bidirectional overrides
  and zero-width characters arrive as U+FFFD.
"""

from __future__ import annotations

import io
from pathlib import Path

from pairkit.cli.show import REPLACEMENT, SafeStream, safe
from pairkit.pairing.methods import LocalIdentity
from pairkit.pairing.negotiation import Method
from tests.attack_harness import address_of, evil_join, open_ks
from tests.cli_helpers import Lab

PIN = "482913"
ESCAPES = "\x1b[2J\x1b[31m\x1b[1;1H\rFAKE: Paul's TV\n\x9b2J"
BIDI = "\u202eenohp s'luaP\u202c\u200b"
INTERPRETED = ("\x1b", "\r", "\x9b", "\u202e", "\u202c", "\u200b")


async def test_a_name_with_control_characters_is_refused_before_the_prompt(lab: Lab) -> None:
    paul = lab.device("paul")
    host = await lab.host(paul, "-m", "pin", "--yes", "--pin", PIN)
    mallory = LocalIdentity.generate(f"Mallory{ESCAPES}")
    got = await evil_join(address_of(host), mallory, Method.PIN, pin=PIN)
    assert got.session is None and got.error is not None
    assert "control characters" in str(got.error)
    await host.wait_for(r"error: guest .*without control characters")
    assert "asks to join" not in host.stderr  # nobody was asked
    assert not any(c in host.stderr for c in INTERPRETED)
    assert [p.name for p in open_ks(paul).peers()] == []


async def test_bidi_and_zero_width_characters_are_shown_not_obeyed(lab: Lab) -> None:
    paul = lab.device("paul")
    host = await lab.host(paul, "-m", "pin", "--yes", "--pin", PIN)
    mallory = LocalIdentity.generate(f"Mallory {BIDI}")
    got = await evil_join(address_of(host), mallory, Method.PIN, pin=PIN)
    assert got.error is None and got.session is not None
    await host.wait_for(r"asks to join")
    assert not any(c in host.stderr for c in INTERPRETED)
    shown = f"Mallory {REPLACEMENT}enohp s'luaP{REPLACEMENT}{REPLACEMENT}"
    assert f"{shown} asks to join" in host.stderr
    # stored as it came (the keystore keeps names), shown harmlessly by every later command
    listed = await paul.run("peers")
    assert listed.rc == 0
    assert f"Mallory {REPLACEMENT}enohp" in listed.out
    assert not any(c in listed.out + listed.err for c in INTERPRETED)


async def test_a_file_name_from_a_host_is_shown_not_obeyed(lab: Lab, tmp_path: Path) -> None:
    paul, george = lab.device("paul"), lab.device("george")
    share = tmp_path / "share"
    share.mkdir()
    (share / f"holiday{BIDI}.mp4").write_bytes(b"x" * 100)
    (share / "a\x1b[2Jb.txt").write_bytes(b"y")  # a file name with an escape, on the disk
    # resume too: George lists as a known peer (a host runs it only when allowed: atk19d)
    host = await lab.host(paul, "-m", "pin", "-m", "resume", "--yes", "--pin", PIN,
                          "--share", str(share))
    (await george.join(host.target, "-m", "pin", "--pin", PIN)).ok()
    listed = await george.run("ls", "Paul's phone")
    assert listed.rc == 0, listed.err
    assert not any(c in listed.out + listed.err for c in INTERPRETED)
    assert f"holiday{REPLACEMENT}enohp s'luaP{REPLACEMENT}{REPLACEMENT}.mp4" in listed.out


def test_safe_replaces_what_a_terminal_interprets() -> None:
    assert safe("Paul's phone — café ☕") == "Paul's phone — café ☕"
    assert safe("a\x1b[2Jb") == f"a{REPLACEMENT}[2Jb"
    assert safe("one\ntwo\tthree\r") == f"one{REPLACEMENT}two{REPLACEMENT}three{REPLACEMENT}"
    assert safe("one\ntwo\tthree\r", lines=True) == f"one\ntwo\tthree{REPLACEMENT}"
    assert safe("\u202e\u2066\u200d\u2028\x7f\x85") == REPLACEMENT * 6
    out = io.StringIO()
    stream = SafeStream(out)
    stream.write("x\x1b[31my\n")
    stream.raw_write("\rprogress")
    assert out.getvalue() == f"x{REPLACEMENT}[31my\n\rprogress"
    stream.flush()  # every other attribute is the wrapped stream's
