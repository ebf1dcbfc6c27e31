"""Being found and finding: the host's hello broadcast and the guest's discovery.

The host advertises a hello (``docs/hello.md``) on transports that can broadcast (BLE, loopback).
It is private by default: outside a visibility window the hello says "not visible", only members
of its cloud recognise it, and strangers who connect anyway are refused.  ``--visible SECONDS``
opens a window that closes on its own.  The tag and, on BLE, the random address rotate at least
every 15 minutes and whenever the window opens or closes; on bumble the address is a resolvable
private address from this device's identity resolving key (:func:`identity_resolving_key`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Callable
from typing import Any

from .pairing import keyschedule
from .pairing.crypto import same
from .pairing.errors import DecodeError, KeystoreError, PairingError
from .pairing.hello import (
    EPOCH_SECONDS,
    Hello,
    decode_hello,
    encode_private,
    make_tag,
    match_tag,
)
from .pairing.keystore import Keystore
from .pairing.keystore.records import clean_name
from .pairing.negotiation import ALL_CAPS, Method
from .transports.ble.privacy import is_resolvable, resolves

TAG_INFO = keyschedule.HELLO_TAG
BLE_ADDRESS = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}(/P)?$")
#: macOS (CoreBluetooth, through bleak) names a device by a UUID instead of its address
APPLE_DEVICE_UUID = re.compile(r"^[0-9A-Fa-f]{8}(-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}$")


def tag_keys(ks: Keystore) -> dict[str, bytes]:
    """The hello-tag key of every cloud this device is in (derived inside the keystore)."""
    return {c.cloud_id: ks.cloud_kdf(c.cloud_id, TAG_INFO, 32) for c in ks.clouds()}


#: The keystore setting holding this device's BLE identity resolving key (16 random bytes).
IRK_SETTING = "ble_irk"


def identity_resolving_key(ks: Keystore) -> bytes:
    """This device's identity resolving key (Core 5.4 Vol 3 Part H §2.4.2.1), made and saved
    in the keystore the first time it is needed; its resolvable private addresses come from it.
    """
    irk = ks.setting(IRK_SETTING)
    if isinstance(irk, bytes) and len(irk) == 16:
        return irk
    with ks.update():  # another process may have made one meanwhile
        irk = ks.setting(IRK_SETTING)
        if not (isinstance(irk, bytes) and len(irk) == 16):
            irk = os.urandom(16)
            ks.set_setting(IRK_SETTING, irk)
    return irk


def irk_for_members(ks: Keystore) -> bytes | None:
    """This device's identity resolving key as it is handed to the members of its cloud
    (``Membership.irk``), or None when the keystore cannot keep one (they then see its
    addresses unlinked, as strangers do)."""
    try:
        return identity_resolving_key(ks)
    except (KeystoreError, OSError):
        return None


def renew_identity_resolving_key(ks: Keystore) -> None:
    """Replace this device's identity resolving key with a fresh one, inside the caller's
    ``ks.update()`` (saved with the rest of that update, never on its own).

    Done when a peer that was given the key is forgotten (``pairkit forget``), in the same save
    that forgets it: the forgotten device can no longer tell this device's new addresses apart
    from anyone's, and no failure leaves it forgotten with the old key in place.  The members
    still kept get the new key at their next session with this host; until then their
    ``discover`` lists its addresses unlinked.  A running host moves to the new key at its
    next address rotation (:class:`Presence`)."""
    ks.set_setting(IRK_SETTING, os.urandom(16))


def home_cloud(ks: Keystore) -> str | None:
    """The cloud whose tag this device's hello carries: the one it owns, else its first."""
    clouds = ks.clouds()
    owned = [c.cloud_id for c in clouds if c.role == "owner"]
    return owned[0] if owned else (clouds[0].cloud_id if clouds else None)


def is_ble_address(text: str) -> bool:
    """A BLE address from ``discover`` (or, on macOS, CoreBluetooth's device UUID)."""
    return bool(BLE_ADDRESS.match(text) or APPLE_DEVICE_UUID.match(text))


class Presence:
    """The host's broadcast: the hello, the visibility window and rotation."""

    def __init__(
        self,
        transport: Any,
        ks: Keystore,
        methods: frozenset[Method],
        *,
        visible_for: float | None,
        l2cap: bool = False,
        wall_clock: Callable[[], float] = time.time,
        rotate_every: float = EPOCH_SECONDS,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.transport = transport
        self.methods = methods
        self.l2cap = l2cap
        self.wall_clock = wall_clock
        self.rotate_every = rotate_every
        self.on_change = on_change
        self._ks = ks
        self._key = self._tag_key()
        self.can_broadcast = hasattr(transport, "start_advertising")
        # Without a broadcast (TCP) the address is given out by hand: always visible.
        self.visible_until: float | None = (
            None if not self.can_broadcast else wall_clock() + (visible_for or 0.0)
        )
        self._task: asyncio.Task[None] | None = None
        #: the identity resolving key the transport's addresses are made with (None: none)
        self._irk: bytes | None = None

    def _tag_key(self) -> bytes | None:
        """The hello-tag key of this device's home cloud, from the keystore as last read."""
        cloud = home_cloud(self._ks)
        return tag_keys(self._ks).get(cloud) if cloud else None

    @property
    def visible(self) -> bool:
        return self.visible_until is None or self.wall_clock() < self.visible_until

    def hello(self) -> Hello:
        return Hello(
            visible=self.visible, caps=ALL_CAPS, methods=self.methods,
            tag=make_tag(self._key, self.wall_clock()), l2cap=self.l2cap,
        )

    def payload(self) -> bytes:
        """What goes on air: the clear hello in a visibility window, else the private form,
        in which a stranger reads no capability, no method and no flag (docs/hello.md)."""
        if self.visible:
            return self.hello().encode()
        return encode_private(self.hello(), self._key, self.wall_clock())

    async def start(self) -> None:
        if not self.can_broadcast:
            return
        use_key = getattr(self.transport, "use_identity_key", None)
        if use_key is not None:
            # Resolvable private addresses from here on (transports.bumble), rotating with
            # the tag; a controller that cannot use them keeps static ones, and we say so.
            try:
                irk = identity_resolving_key(self._ks)
            except (KeystoreError, OSError) as exc:  # a keystore that cannot be written
                privacy = f"static (no identity resolving key could be kept: {exc})"
            else:
                privacy = await use_key(irk)
                self._irk = irk if privacy == "resolvable" else None
            if privacy != "resolvable" and self.on_change is not None:
                self.on_change(f"Bluetooth address: {privacy}")
        await self.transport.start_advertising(self.payload())
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        was_visible = self.visible
        next_rotation = self.wall_clock() + self.rotate_every
        while True:
            now = self.wall_clock()
            wake = next_rotation
            if was_visible and self.visible_until is not None:
                wake = min(wake, self.visible_until)
            await asyncio.sleep(max(0.05, wake - now))
            changed = self.visible != was_visible
            if changed or self.wall_clock() >= next_rotation:
                await self._rotate()
                next_rotation = self.wall_clock() + self.rotate_every
                if changed and self.on_change is not None:
                    self.on_change("visibility window closed: strangers no longer see this host")
                was_visible = self.visible

    async def open_window(self, seconds: float) -> None:
        """Let strangers see and join for ``seconds`` (rotates tag and address)."""
        self.visible_until = self.wall_clock() + seconds
        if self.can_broadcast:
            # Fast advertising while strangers are looking (transports.bumble's policy).
            fast = getattr(self.transport, "advertise_fast", None)
            if fast is not None:
                with contextlib.suppress(Exception):
                    await fast()
            await self._rotate()
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = asyncio.create_task(self._run())

    async def _rotate(self) -> None:
        """A new tag, and on BLE a new random address, together (docs/hello.md "Privacy").

        Advertising stops before the address changes: ``rotate_address`` re-advertises the
        hello it had, and the old tag sent from the new address would link the two.
        """
        renewed = self._follow_keystore()
        rotate = getattr(self.transport, "rotate_address", None)
        if rotate is not None:
            with contextlib.suppress(Exception):
                await self.transport.stop_advertising()
                if renewed is not None:
                    await self.transport.use_identity_key(renewed)  # a fresh RPA under it
                    self._irk = renewed
                else:
                    await rotate()
        await self.transport.start_advertising(self.payload())

    def _follow_keystore(self) -> bytes | None:
        """Take what ``pairkit forget`` changed in another process: the hello-tag key follows a
        renewed cloud secret (docs/security.md "Renewing the cloud secret": the forgotten member
        no longer recognises the tag; attack review atk19p, finding 2), and the returned
        identity resolving key, when it is no longer the one in use, is the renewed one
        (:func:`renew_identity_resolving_key`).  A keystore that cannot be read leaves both."""
        try:
            self._ks.follow()
        except (PairingError, OSError):
            return None
        with contextlib.suppress(PairingError, OSError):
            self._key = self._tag_key()
        if self._irk is None:
            return None
        irk = self._ks.setting(IRK_SETTING)
        if isinstance(irk, bytes) and len(irk) == 16 and not same(irk, self._irk):
            return irk
        return None

    async def pause(self) -> None:
        """The radio went away (:func:`regain_radio`): stop rotating; nothing is on air."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # a rotation may have failed on the lost radio: said by the caller

    async def resume(self) -> None:
        """The radio is back (its transport reopened, with a fresh address): advertise a fresh
        hello from it and rotate as before; the visibility window goes on as it was."""
        await self.pause()
        if not self.can_broadcast:
            return
        await self.transport.start_advertising(self.payload())
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.can_broadcast:
            with contextlib.suppress(Exception):
                await self.transport.stop_advertising()


#: pauses between attempts to reopen a lost radio: 1, 2, 4 ... s, at most 30 s
RADIO_RETRY_FIRST = 1.0
RADIO_RETRY_MAX = 30.0


def radio_retry_pause(attempt: int) -> float:
    """The pause before reopening attempt ``attempt`` (1, 2, ...): doubling, capped."""
    return min(RADIO_RETRY_MAX, RADIO_RETRY_FIRST * 2.0 ** max(0, attempt - 1))


async def regain_radio(
    transport: Any,
    lost: PairingError,
    *,
    retries: int | None,
    say: Callable[[str], None],
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> None:
    """Reopen a transport whose radio was lost (``lost``: the transports.base
    ControllerLostError it raised), with pauses of :func:`radio_retry_pause` between
    attempts; ``say`` gets one line on the loss and one per failed attempt.

    ``retries``: attempts before giving up (None: until it comes back; 0: give up at once).
    Giving up raises ``lost``'s class (code NOT_FOUND: the radio is not there) saying so.
    A transport that cannot reopen (no ``reopen``) gives up at once.
    """
    what = getattr(transport, "lost", None) or str(lost)
    reopen = getattr(transport, "reopen", None)
    if reopen is None or retries == 0:
        why = "not retrying (--radio-retries 0)" if reopen is not None else "it cannot be reopened"
        raise type(lost)(f"{what}; {why}") from None
    attempt = 1
    pause = radio_retry_pause(attempt)
    say(f"{what}; retrying in {pause:g} s")
    said = ""
    while True:
        await sleep(pause)
        try:
            await reopen()
            return
        except PairingError as exc:  # still not there (or not answering yet)
            if retries is not None and attempt >= retries:
                raise type(lost)(
                    f"{what}, and did not come back after {attempt} attempt(s): {exc}"
                ) from None
            attempt += 1
            pause = radio_retry_pause(attempt)
            # A line when the reason changes, else after attempts 2, 4, 8 ...: a host left
            # without its dongle for a day does not fill the journal.
            if str(exc) != said or attempt & (attempt - 1) == 0:
                said = str(exc)
                say(f"the Bluetooth controller is not back yet ({exc}); attempt {attempt} "
                    f"in {pause:g} s")


@dataclasses.dataclass
class Found:
    """One device heard by :func:`discover`: its latest hello and address, and, for a known
    peer whose identity resolving key this device holds, every address it was heard at."""

    address: str
    hello: Hello
    rssi: int | None
    name: str | None
    cloud: str | None
    cloud_name: str | None
    #: the known peer whose identity resolving key resolved the addresses (None: not resolved)
    device: str | None = None
    #: that peer's name as stored at pairing
    device_name: str | None = None
    #: every address heard, oldest first (the latest is ``address``)
    addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.addresses:
            self.addresses = (self.address,)

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "addresses": list(self.addresses),
            "device": (
                {"id": self.device, "name": self.device_name} if self.device is not None
                else None
            ),
            "name": self.name,
            "rssi": self.rssi,
            "methods": sorted(m.label for m in self.hello.methods),
            "visible": self.hello.visible,
            "cloud": self.cloud_name,
        }


class AddressResolver:
    """Which known peer a resolvable private address belongs to, by the identity resolving
    keys this device's keystore holds for its peers (Core 5.4 Vol 6 Part B §1.3.2.3).

    An address resolves to a device only when exactly one held key resolves it: an address
    two keys resolve (a peer that handed over another device's key as its own) is attributed
    to neither.  Each address is resolved once per scan."""

    def __init__(self, ks: Keystore) -> None:
        self._keys = [(p.id, p.name, p.irk) for p in ks.peers() if p.irk is not None]
        self._seen: dict[str, tuple[str, str] | None] = {}

    def __call__(self, address: str) -> tuple[str, str] | None:
        """(peer id, peer name) of the one known peer ``address`` resolves to, else None."""
        if address in self._seen:
            return self._seen[address]
        found = None
        if self._keys and is_resolvable(address):
            matches = [(pid, name) for pid, name, irk in self._keys if resolves(address, irk)]
            found = matches[0] if len(matches) == 1 else None
        self._seen[address] = found
        return found


async def discover(
    transport: Any, ks: Keystore, timeout: float, *, wall_clock: Callable[[], float] = time.time
) -> tuple[list[Found], int]:
    """Every host heard within ``timeout`` s and the garbage count: one entry per address,
    except that the addresses of a known peer whose identity resolving key this device holds
    (a member of its cloud: docs/security.md "Recognising a host across addresses") make one
    entry, with its latest hello and address.  To anyone else a host whose address rotated
    during the scan is two entries, which nothing links (the privacy goal)."""
    keys = tag_keys(ks)
    names = {c.cloud_id: c.name for c in ks.clouds()}
    resolve = AddressResolver(ks)
    found: dict[str, Found] = {}
    garbage = 0
    async for s in transport.scan(timeout):
        try:
            hello = decode_hello(s.payload, keys, wall_clock())
        except DecodeError:
            garbage += 1
            continue
        cloud = hello.cloud or match_tag(hello.tag, keys, wall_clock())
        device = resolve(s.address)
        group = f"device:{device[0]}" if device is not None else s.address
        before = found.get(group)
        addresses = before.addresses if before is not None else ()
        if s.address not in addresses:
            addresses += (s.address,)
        elif addresses[-1] != s.address:  # heard again at an earlier address: latest last
            addresses = (*(a for a in addresses if a != s.address), s.address)
        found[group] = Found(
            # the name the device broadcasts, anyone's word: one line (atk21c)
            s.address, hello, s.rssi, clean_name(s.name, "") or None if s.name else None,
            cloud, names.get(cloud) if cloud else None,
            device=device[0] if device is not None else None,
            device_name=device[1] if device is not None else None,
            addresses=addresses,
        )
    return sorted(found.values(), key=lambda f: (f.cloud_name is None, f.address)), garbage
