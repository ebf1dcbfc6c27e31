"""An admitted link as the driver reads it (runtime/admission.py ``Admitted``): the cheaper
wait of issue 13 (``recv_ready``, then ``recv_nowait``) keeps what ``Admitted.recv`` keeps:
the first-flight deadline, the count of what the guest said, and the error a closed or evicted
link ends with.  Over real loopback links."""

from __future__ import annotations

import asyncio

import pytest

from pairkit.admission import Admission, AdmissionLimits
from pairkit.driver import MessagePipe
from pairkit.pairing.errors import LinkClosedError
from pairkit.transports.loopback import loopback_pair


async def test_the_driver_waits_through_recv_for_the_first_message_then_on_the_link() -> None:
    """Before the first message the pipe has no ``recv_ready`` to offer (the driver awaits
    ``Admitted.recv``, which holds the first-flight deadline); after it, the link's own future,
    done once a message is there, and a message read that way is counted."""
    guest, host = loopback_pair()
    admitted = Admission(AdmissionLimits()).admit(host)
    assert admitted is not None
    pipe, sender = MessagePipe(admitted, guest=False), MessagePipe(guest, guest=True)
    assert pipe.poll_unabsorbed() is None
    assert pipe.recv_ready() is None  # first flight: through recv and its deadline
    await sender.send(b"one")
    assert await asyncio.wait_for(pipe.recv(), 2) == b"one"
    assert admitted.received == 1
    assert pipe.poll_unabsorbed() is None
    ready = pipe.recv_ready()
    assert ready is not None and not ready.done()
    await sender.send(b"two")
    await asyncio.wait_for(ready, 2)
    assert pipe.poll_unabsorbed() == b"two"
    assert admitted.received == 2 and admitted.spoken
    await guest.close()
    await host.close()


async def test_the_first_flight_holds_until_the_first_whole_message_however_it_is_read() -> None:
    """A first message cut into fragments: until its last fragment is in, the pipe offers no
    ``recv_ready`` (the first-flight deadline holds), whether the fragments were read through
    ``recv`` or polled; a first fragment alone, then silence, ends at the first flight."""
    from pairkit.pairing.errors import PairingTimeout
    from pairkit.pairing.framing import fragment

    guest, host = loopback_pair()
    admitted = Admission(AdmissionLimits(first_flight=0.3)).admit(host)
    assert admitted is not None
    pipe = MessagePipe(admitted, guest=False)
    pieces = fragment(bytes(100), 40)
    assert len(pieces) == 3
    await guest.send(pieces[0])
    assert pipe.poll_unabsorbed() is None  # the first fragment, polled
    assert admitted.received == 1 and admitted.spoken and not admitted.first_in
    assert pipe.recv_ready() is None
    await guest.send(pieces[1])
    await guest.send(pieces[2])
    assert await asyncio.wait_for(pipe.recv(), 2) == bytes(100)  # the rest, through recv
    assert admitted.first_in and pipe.recv_ready() is not None
    await guest.close()
    await host.close()

    guest, host = loopback_pair()
    admitted = Admission(AdmissionLimits(first_flight=0.3)).admit(host)
    assert admitted is not None
    await guest.send(pieces[0])
    with pytest.raises(PairingTimeout, match=r"sent no whole message within 0\.3 s of connecting"):
        await asyncio.wait_for(MessagePipe(admitted, guest=False).recv(), 10)
    await guest.close()
    await host.close()


async def test_an_evicted_link_ends_the_wait_with_the_error_recv_gives() -> None:
    """One place: a second guest's link evicts the first, silent past the idle grace.  The
    first's pending wait ends, and its next read raises what ``recv`` raises."""
    admission = Admission(AdmissionLimits(max_pending=1, idle_grace=0.0))
    first_guest, first_host = loopback_pair()
    first = admission.admit(first_host)
    assert first is not None
    pipe = MessagePipe(first, guest=False)
    await MessagePipe(first_guest, guest=True).send(b"hello")
    assert await asyncio.wait_for(pipe.recv(), 2) == b"hello"
    ready = pipe.recv_ready()
    assert ready is not None and not ready.done()
    second_guest, second_host = loopback_pair()
    assert admission.admit(second_host) is not None
    await asyncio.wait_for(ready, 2)  # told "busy" and closed
    with pytest.raises(LinkClosedError) as polled:
        pipe.poll_unabsorbed()
    with pytest.raises(LinkClosedError) as awaited:
        await first.recv()
    assert str(polled.value) == str(awaited.value)
    assert admission.refused == 1 and first.received == 1
    await admission.close()
    for link in (first_guest, second_guest, second_host):
        await link.close()
