"""The file service's sans-I/O machines (pairing/files.py) played by a guest that asks for what
it should not have, asks out of turn, or sends a file out of place; the same service runs over
real secure links in test_service.py, test_ble_cloud_service.py and test_api.py."""

from __future__ import annotations

import hashlib

import pytest

from pairkit.pairing import wire
from pairkit.pairing.cloud import Role
from pairkit.pairing.errors import (
    AuthenticationError,
    DecodeError,
    ErrorCode,
    NotFoundError,
    PairingTimeout,
    ProtocolError,
    RefusedError,
    RemoteError,
    TooLargeError,
)
from pairkit.pairing.files import (
    Check,
    FileFetch,
    FileList,
    FileServer,
    ServeFile,
    ServeListing,
    Write,
    name_problem,
)
from pairkit.pairing.service import (
    AllowRequest,
    Bye,
    Chunk,
    FileEntry,
    FileHeader,
    GetRequest,
    GrantPolicy,
    Listing,
    ListRequest,
    Refused,
    Scope,
)

NOW = 1_000_000.0
FILES = {"notes.txt", "music/song.ogg"}


def find(name: str) -> str | None:
    return None if name in FILES else f"no shared file called {name!r}"


def server(role: Role = Role.GUEST, *, expires: float | None = None, shared: bool = True
           ) -> FileServer:
    machine = FileServer(GrantPolicy(role, expires=expires), peer_name="George",
                         find=find if shared else None, idle=300.0)
    machine.start(NOW)
    return machine


def replies(machine: FileServer | FileFetch | FileList) -> list[wire.Message]:
    return [wire.decode(m) for m in machine.outgoing()]


@pytest.mark.parametrize("name", ["../secret", "a/../../b", "/etc/passwd", "C:\\x", "", "a\x00b"])
def test_a_bad_name_is_refused_before_the_owner_is_asked(name: str) -> None:
    machine = server()
    machine.receive(GetRequest(name).encode(), NOW)
    assert machine.events() == []  # nobody was asked
    (answer,) = replies(machine)
    assert isinstance(answer, Refused) and answer.reason.startswith("refused:")
    assert name_problem(name) is not None
    assert machine.state == "waiting" and machine.refused == 1


def test_a_missing_file_is_refused_without_asking() -> None:
    machine = server()
    machine.receive(GetRequest("nope.txt").encode(), NOW)
    assert machine.events() == []
    assert replies(machine) == [Refused("no shared file called 'nope.txt'")]


def test_a_resume_past_the_end_is_asked_like_any_request() -> None:
    """Issue 17, finding 8: the file shrank since the guest's .part; the request is not refused
    (the runtime serves it from offset 0 and the guest starts again), so the owner is asked as
    for any file."""
    machine = FileServer(GrantPolicy(Role.GUEST), peer_name="George", find=find,
                         size_of=lambda name: 10, idle=300.0)
    machine.start(NOW)
    machine.receive(GetRequest("notes.txt", 11).encode(), NOW)
    assert [type(e).__name__ for e in machine.events()] == ["AllowRequest"]
    assert replies(machine) == []


def test_the_owner_is_asked_and_a_session_grant_covers_the_next_request() -> None:
    machine = server()
    machine.receive(GetRequest("notes.txt").encode(), NOW)
    (question,) = machine.events()
    assert question == AllowRequest(peer_name="George", what="get", name="notes.txt")
    machine.answer(question, Scope.SESSION, NOW)
    assert machine.events() == [ServeFile("notes.txt", 0)]
    machine.served(NOW + 1)
    machine.receive(GetRequest("music/song.ogg", 10).encode(), NOW + 2)
    assert machine.events() == [ServeFile("music/song.ogg", 10)]  # no second question
    assert machine.prompts == 1


def test_a_refusal_by_the_owner_is_told_and_the_session_goes_on() -> None:
    machine = server()
    machine.receive(ListRequest().encode(), NOW)
    (question,) = machine.events()
    machine.answer(question, Scope.REFUSE, NOW)
    assert replies(machine) == [Refused("the owner refused the request")]
    machine.receive(ListRequest().encode(), NOW)  # it may ask again
    assert isinstance(machine.events()[0], AllowRequest)


def test_an_expired_guest_is_refused_without_a_prompt() -> None:
    machine = server(expires=NOW - 1)
    machine.receive(ListRequest().encode(), NOW)
    assert machine.events() == []
    (answer,) = replies(machine)
    assert isinstance(answer, Refused) and "expired" in answer.reason


def test_a_grant_that_ends_while_a_file_is_sent_stops_it_and_ends_the_service() -> None:
    """Attack review atk21, finding 4: the runtime asks before each chunk; once the grant has
    ended, the answer is no, a Refused (code 11) goes in place of the next chunk, and the
    service is over, as after a request past the end."""
    machine = server(expires=NOW + 60)
    machine.receive(GetRequest("notes.txt").encode(), NOW)
    (question,) = machine.events()
    machine.answer(question, Scope.SESSION, NOW)
    assert machine.events() == [ServeFile("notes.txt", 0)]
    assert machine.still_allowed(NOW + 59) and replies(machine) == []
    assert not machine.still_allowed(NOW + 60)
    (answer,) = replies(machine)
    assert isinstance(answer, Refused) and answer.code == ErrorCode.EXPIRED
    assert "expired" in answer.reason
    assert machine.done and machine.expired and machine.files == 0 and machine.refused == 1
    with pytest.raises(ProtocolError):
        machine.served(NOW + 61)  # what was stopped is not counted as served


def test_only_a_file_being_sent_is_asked_about() -> None:
    machine = server(Role.MEMBER)
    with pytest.raises(ProtocolError):
        machine.still_allowed(NOW)  # nothing asked for yet
    machine.receive(ListRequest().encode(), NOW)
    assert machine.events() == [ServeListing()]
    with pytest.raises(ProtocolError):
        machine.still_allowed(NOW)  # a listing is sent in one message


def test_a_member_is_served_without_a_prompt() -> None:
    machine = server(Role.MEMBER)
    machine.receive(ListRequest().encode(), NOW)
    assert machine.events() == [ServeListing()]


def test_nothing_shared_refuses_every_request() -> None:
    machine = server(Role.MEMBER, shared=False)
    machine.receive(ListRequest().encode(), NOW)
    assert replies(machine) == [Refused("this host shares no folder")]


def test_a_request_while_the_owner_is_asked_is_a_protocol_error() -> None:
    machine = server()
    machine.receive(ListRequest().encode(), NOW)
    machine.events()
    with pytest.raises(ProtocolError):
        machine.receive(GetRequest("notes.txt").encode(), NOW)
    (abort,) = replies(machine)
    assert isinstance(abort, wire.Abort)  # the guest is told why the host stops


def test_an_answer_that_is_not_a_scope_is_refused() -> None:
    machine = server()
    machine.receive(ListRequest().encode(), NOW)
    (question,) = machine.events()
    with pytest.raises(ProtocolError):
        machine.answer(question, True, NOW)


def test_a_negative_offset_does_not_decode() -> None:
    machine = server(Role.MEMBER)
    with pytest.raises(DecodeError):
        machine.receive(GetRequest("notes.txt", -1).encode(), NOW)
    assert machine.failed


def test_a_silent_guest_ends_at_the_idle_deadline() -> None:
    machine = server()
    assert machine.next_deadline() == NOW + 300.0
    machine.on_timeout(NOW + 299)
    with pytest.raises(PairingTimeout):
        machine.on_timeout(NOW + 300)


def test_bye_ends_the_service() -> None:
    machine = server()
    machine.receive(Bye().encode(), NOW)
    assert machine.done


# -- the guest's side --------------------------------------------------------------------------

DATA = b"x" * 40_000
DIGEST = hashlib.sha256(DATA).digest()


def fetch(offset: int = 0) -> FileFetch:
    machine = FileFetch("notes.txt", offset, timeout=10, chunk_timeout=5)
    machine.start(NOW)
    assert replies(machine) == [GetRequest("notes.txt", offset)]
    return machine


def test_a_file_arrives_in_order_and_is_checked() -> None:
    machine = fetch()
    machine.receive(FileHeader("notes.txt", len(DATA), DIGEST, 0).encode(), NOW)
    writes = []
    for off in range(0, len(DATA), 16384):
        machine.receive(Chunk(off, DATA[off:off + 16384]).encode(), NOW)
        writes += machine.events()
    assert b"".join(w.data for w in writes if isinstance(w, Write)) == DATA
    assert isinstance(writes[-1], Check)
    machine.verify(DIGEST, NOW)
    assert machine.complete and machine.refusal is None


@pytest.mark.parametrize("chunk", [Chunk(100, b"abc"), Chunk(0, b""), Chunk(16384, b"abc")])
def test_a_chunk_out_of_place_is_a_protocol_error(chunk: Chunk) -> None:
    machine = fetch()
    machine.receive(FileHeader("notes.txt", len(DATA), DIGEST, 0).encode(), NOW)
    with pytest.raises(ProtocolError):
        machine.receive(chunk.encode(), NOW)
    assert machine.events() == []  # nothing was written


def test_a_chunk_past_the_announced_size_is_a_protocol_error() -> None:
    machine = fetch()
    machine.receive(FileHeader("notes.txt", 10, DIGEST, 0).encode(), NOW)
    with pytest.raises(ProtocolError):
        machine.receive(Chunk(0, b"0123456789A").encode(), NOW)


@pytest.mark.parametrize("header", [
    FileHeader("other.txt", 10, DIGEST, 0),
    FileHeader("notes.txt", 10, DIGEST, 5),
])
def test_a_header_for_another_file_or_offset_is_a_protocol_error(header: FileHeader) -> None:
    machine = fetch()
    with pytest.raises(ProtocolError):
        machine.receive(header.encode(), NOW)


def test_a_file_larger_than_it_was_listed_is_refused_at_its_header() -> None:
    """atk19f (low): a host listed 6 bytes and then announced a gigabyte; the guest that fetches
    what was listed (``get --all``) stops at the header, before anything is written."""
    machine = FileFetch("notes.txt", 0, timeout=10, chunk_timeout=5, listed=6)
    machine.start(NOW)
    replies(machine)
    with pytest.raises(TooLargeError, match="listed it as 6 bytes"):
        machine.receive(FileHeader("notes.txt", 10**9, DIGEST, 0).encode(), NOW)
    assert machine.events() == []


def test_a_file_as_large_as_listed_or_smaller_is_taken() -> None:
    for size in (6, 5, 0):
        machine = FileFetch("notes.txt", 0, timeout=10, chunk_timeout=5, listed=6)
        machine.start(NOW)
        replies(machine)
        machine.receive(FileHeader("notes.txt", size, DIGEST, 0).encode(), NOW)
        assert machine.state in ("body", "checking"), size


@pytest.mark.parametrize(("offset", "size", "room", "taken"), [
    (0, 100, 100, True),
    (0, 101, 100, False),
    (50, 150, 100, True),   # 100 more bytes: they fit
    (50, 151, 100, False),
    (50, 90, 30, False),    # 40 more bytes, 30 free
    (50, 30, 0, True),      # shrank on the host: started again at 0, in the 50 bytes it frees
])
def test_a_file_the_disk_has_no_room_for_is_refused_at_its_header(
    offset: int, size: int, room: int, taken: bool,
) -> None:
    """Whatever a host announces, a file that would not fit where it is saved is refused before
    anything is written (not a disk filled up to the last byte): ``room`` is the free space there,
    the partial file kept so far not counted in it."""
    machine = FileFetch("notes.txt", offset, timeout=10, chunk_timeout=5, room=room)
    machine.start(NOW)
    replies(machine)
    header = FileHeader("notes.txt", size, DIGEST, 0 if size < offset else offset).encode()
    if taken:
        machine.receive(header, NOW)
        assert machine.state in ("body", "checking")
    else:
        with pytest.raises(TooLargeError, match="free where it is saved"):
            machine.receive(header, NOW)
        assert machine.events() == []
        # the host is told the file is too large, never how much room this device has
        # (a number that changes slowly tells one device from another: atk19y finding 1)
        (abort,) = replies(machine)
        assert str(room) not in abort.reason and "bytes" not in abort.reason, abort.reason


def test_a_damaged_file_is_reported_and_the_session_goes_on() -> None:
    machine = fetch()
    machine.receive(FileHeader("notes.txt", 4, DIGEST, 0).encode(), NOW)
    machine.receive(Chunk(0, b"abcd").encode(), NOW)
    machine.events()
    machine.verify(hashlib.sha256(b"abcd").digest(), NOW)
    assert isinstance(machine.refusal, AuthenticationError)
    assert machine.done and replies(machine) == []  # no Abort: the guest may ask again


def test_an_empty_file_is_checked_at_once() -> None:
    machine = fetch()
    empty = hashlib.sha256(b"").digest()
    machine.receive(FileHeader("notes.txt", 0, empty, 0).encode(), NOW)
    assert machine.events() == [Check(0)]
    machine.verify(empty, NOW)
    assert machine.complete


def test_a_refusal_ends_the_request_not_the_session() -> None:
    machine = fetch()
    machine.receive(Refused("the owner refused the request").encode(), NOW)
    assert isinstance(machine.refusal, RefusedError) and machine.done
    listing = FileList(timeout=10)
    listing.start(NOW)
    listing.receive(Refused("no").encode(), NOW)
    assert isinstance(listing.refusal, RefusedError) and replies(listing) == [ListRequest()]


def test_a_listing_is_taken_and_an_abort_is_the_hosts_error() -> None:
    listing = FileList(timeout=10)
    listing.start(NOW)
    entry = FileEntry(name="notes.txt", size=4, type="text/plain")
    listing.receive(Listing((entry,)).encode(), NOW)
    assert listing.files == (entry,)
    other = FileList(timeout=10)
    other.start(NOW)
    with pytest.raises(RemoteError):
        other.receive(wire.Abort(code=1, reason="stop").encode(), NOW)


def test_a_name_the_folder_lacks_is_refused_as_not_found_and_the_guest_says_so() -> None:
    def find_typed(name: str) -> str | NotFoundError | None:
        return None if name in FILES else NotFoundError(f"no shared file called {name!r}")

    machine = FileServer(GrantPolicy(Role.GUEST, expires=None), peer_name="George",
                         find=find_typed, idle=300.0)
    machine.start(NOW)
    machine.receive(GetRequest("nope.txt").encode(), NOW)
    assert machine.events() == []  # nobody was asked
    (answer,) = replies(machine)
    assert answer == Refused("no shared file called 'nope.txt'", int(ErrorCode.NOT_FOUND))
    guest = fetch()
    guest.receive(answer.encode(), NOW)
    assert isinstance(guest.refusal, NotFoundError) and guest.done
    assert not isinstance(guest.refusal, RefusedError)
    # a refusal without a code (an older host, the owner's "no") stays a refusal
    plain = fetch()
    plain.receive(Refused("no shared file called 'nope.txt'").encode(), NOW)
    assert isinstance(plain.refusal, RefusedError)
