"""Capabilities, methods and the table that picks a method (DESIGN.md step 4).

Each side announces its capabilities and the methods it allows (but in ``kk``, whose
announcements are the same from every device: :data:`KK_METHODS`).  The guest proposes a method
(the one its user asked for, or the first of :data:`PREFERENCE` that the table allows); the host
checks the proposal against the same table and either accepts it or stops with
:class:`~pairing.errors.UnsupportedError`.  Both announcements and the choice go into the
transcript of every method (each announcement's ``hello_hash``, docs/protocol.md §2-§3, salts
the method's keys), so a man in the middle who rewrites
them makes the handshake fail: this is what defeats method confusion and downgrade, as BLE's
IO-capability exchange is bound into its confirmation values (Core spec Vol 3 Part H §2.3.5.6).

The table (``requirements``): a method is possible when

============  =============================================================================
method        requires
============  =============================================================================
``resume``    the guest knows the host (a stored peer with prekeys, or its static key for KK)
``qr``        the host can display (a QR code) and the guest can scan one (or was given it)
``pin``       the host can display and the guest can type digits
``compare``   both can display and both can confirm yes/no
``clear``     the link is already encrypted at the link layer (or the user forces it)
``ttp``       both can reach the same trusted third party (its own issue)
============  =============================================================================

and preference, strongest and least effort first: resume, qr, pin, compare, clear.
"""

from __future__ import annotations

from enum import CONFORM, IntEnum, IntFlag

from .errors import UnsupportedError


class Caps(IntFlag, boundary=CONFORM):
    """What a device can do for pairing.

    Bits it does not name are dropped (``CONFORM``): an IntFlag keeps every value it is asked
    to make, and a peer's announcement may carry any 64-bit value, so a flag made from a
    peer's integer must not add one object to the process per value (issue 13's review)."""

    NONE = 0
    DISPLAY = 1  #: can show a PIN, a code or a QR code
    KEYPAD = 2  #: can type digits
    CONFIRM = 4  #: can ask yes/no
    SCAN_QR = 8  #: can read a QR code (camera, or a URI pasted by the user)
    ENCRYPTED_LINK = 16  #: the link under this pairing is encrypted at the link layer


ALL_CAPS = Caps.DISPLAY | Caps.KEYPAD | Caps.CONFIRM | Caps.SCAN_QR


class Method(IntEnum):
    """Pairing methods; the value goes on the wire."""

    PIN = 1
    QR = 2
    COMPARE = 3
    CLEAR = 4
    RESUME = 5
    KK = 6  #: the fallback of ``resume`` when no prekey is left (Noise IK since session 22)
    TTP = 7

    @property
    def label(self) -> str:
        # one look-up (issue 13): an enum member's ``name`` is a Python-level descriptor
        return _LABELS[self]

    @property
    def base(self) -> Method:
        """The method a join request's word for this one is: ``kk`` is ``resume``'s fallback
        on the same stored keys, so either said allows either (docs/protocol.md §10)."""
        return Method.RESUME if self is Method.KK else self

    @classmethod
    def parse(cls, text: str) -> Method:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(m.label for m in cls if m is not cls.KK)
            raise ValueError(f"unknown method {text!r}; expected one of: {names}") from None


#: the methods that prove a claimed known device's key before anyone is asked anything (resume
#: and kk by the stored key, ttp by the key server's word on the enrolled key): a join request's
#: claim of a known device id is honoured with these only (docs/protocol.md §10)
PROVES_A_KNOWN_KEY: frozenset[Method] = frozenset({Method.RESUME, Method.KK, Method.TTP})

#: what a ``kk`` announcement carries as its methods and capabilities, from every device alike:
#: kk's own bit, which says no more than its ``method`` does, and no capability.  A known
#: device's kk Announce goes in the clear before Noise IK's encryption, and its real settings
#: were the same at each return: a listener linked a private host's rotating addresses by them
#: (attack review atk22c, finding 2; docs/protocol.md §8).  Nothing needs them: kk's row of the
#: table reads no capability, and each side checks that it allows kk (or resume) on its own
#: settings (:func:`choose`); a kk Announce that carries more is refused.
KK_METHODS: int = 1 << int(Method.KK)
KK_CAPS: int = 0

#: each method's label, its name in lower case
_LABELS: dict[Method, str] = {m: m.name.lower() for m in Method}

PREFERENCE: tuple[Method, ...] = (
    Method.RESUME,
    Method.QR,
    Method.PIN,
    Method.COMPARE,
    Method.CLEAR,
)


def methods_mask(methods: frozenset[Method] | set[Method] | tuple[Method, ...]) -> int:
    """Methods as a bit mask (bit ``m.value``), as they travel in hellos and offers."""
    mask = 0
    for m in methods:
        mask |= 1 << int(m)
    return mask


def methods_from_mask(mask: int) -> frozenset[Method]:
    """The methods whose bits are set in ``mask`` (other bits are ignored)."""
    # Every method's bit is below bit 8, so the low byte decides: one of 256 sets, each made
    # once (issue 13: iterating the enum cost more than the rest of a negotiation check).
    low = mask & 0xFF
    found = _FROM_MASK.get(low)
    if found is None:
        found = _FROM_MASK[low] = frozenset(m for m in Method if low & (1 << int(m)))
    return found


_FROM_MASK: dict[int, frozenset[Method]] = {}
assert max(Method) < 8, "methods_from_mask reads only a mask's low byte"


def missing_for(
    method: Method, guest: Caps | int, host: Caps | int, *, knows_peer: bool = False
) -> str | None:
    """Why ``method`` is impossible with these capabilities, or ``None`` when it is possible.

    The capabilities may be given as plain integers (a peer's announcement as it came)."""
    # The bits are tested on plain integers: each operation on an IntFlag makes a flag value
    # through the enum machinery, a microsecond or two apiece (issue 13).
    g, h = int(guest), int(host)
    if method in (_RESUME, _KK):
        return None if knows_peer else "the guest does not know this host yet"
    if method is _QR:
        if not h & _DISPLAY:
            return "the host cannot display a QR code"
        if not g & _SCAN_QR:
            return "the guest cannot scan a QR code"
        return None
    if method is _PIN:
        if not h & _DISPLAY:
            return "the host cannot display a PIN"
        if not g & _KEYPAD:
            return "the guest cannot type a PIN"
        return None
    if method is _COMPARE:
        if not (h & g & _DISPLAY and h & g & _CONFIRM):
            return "both sides must be able to display a code and confirm it"
        return None
    if method is _CLEAR:
        if not (h & _ENCRYPTED_LINK and g & _ENCRYPTED_LINK):
            return "the link is not encrypted"
        return None
    if method is _TTP:
        return None
    return "unknown method"


#: the members as module names: a member read through its class costs about 80 ns more, as
#: EnumType's __getattr__ sends every read of a class attribute through a hook (Python 3.11),
#: and a negotiation check read six (issue 13)
_PIN, _QR, _COMPARE, _CLEAR, _RESUME, _KK, _TTP = (
    Method.PIN, Method.QR, Method.COMPARE, Method.CLEAR, Method.RESUME, Method.KK, Method.TTP
)
#: why a host refuses resume or kk it does not allow, naming none of the methods it allows
NO_WAY_BACK = "the host does not let known devices back by resume or kk; pair again"
#: the methods either of which allows kk
_BACK: frozenset[Method] = frozenset({Method.RESUME, Method.KK})
_DISPLAY, _KEYPAD, _CONFIRM, _SCAN_QR, _ENCRYPTED_LINK = (
    int(Caps.DISPLAY), int(Caps.KEYPAD), int(Caps.CONFIRM), int(Caps.SCAN_QR),
    int(Caps.ENCRYPTED_LINK),
)


def choose(
    guest_caps: Caps | int,
    guest_methods: frozenset[Method],
    host_caps: Caps | int,
    host_methods: frozenset[Method],
    *,
    proposed: Method | None = None,
    knows_peer: bool = False,
) -> Method:
    """The method both sides agree on (the table above), or :class:`UnsupportedError`.

    With ``proposed``, that method is checked; without, the first of :data:`PREFERENCE`
    that both allow and the capabilities support is taken.
    """
    common = guest_methods & host_methods
    candidates = (proposed,) if proposed is not None else PREFERENCE
    reasons = []
    for method in candidates:
        if method is _KK:
            # resume's fallback on the same stored keys: a side allows it when it allows either
            # (a kk announcement says kk's bit only, KK_METHODS)
            allowed = not (_BACK.isdisjoint(guest_methods) or _BACK.isdisjoint(host_methods))
        else:
            allowed = method in common
        if not allowed and method in _BACK:
            # said in the clear to a known device coming back, whose return a listener hears:
            # none of a private host's settings (session 23)
            reasons.append(NO_WAY_BACK)
            continue
        if not allowed:
            host_list = ", ".join(sorted(m.label for m in host_methods)) or "none"
            reasons.append(f"the host allows only: {host_list}")
            continue
        why = missing_for(method, guest_caps, host_caps, knows_peer=knows_peer)
        if why is None:
            return method
        reasons.append(why)
    if proposed is not None:
        raise UnsupportedError(f"method '{proposed.label}' cannot be used: {reasons[0]}")
    raise UnsupportedError("no pairing method suits both devices: " + "; ".join(reasons))
