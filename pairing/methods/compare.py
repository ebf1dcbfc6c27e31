"""``compare`` (6 flights; docs/protocol.md §5).

Offer(PK_G) -> Accept(HPKE(PK_G, SK) = enc||ct, C = HMAC(N_H, "commit"||PK_G||enc||th)) ->
Reveal(N_G) -> Reveal(N_H, Noise message 1) -> [both users compare the code] -> Noise messages
2 and 3 of the identity handshake.
The host commits to its key share (enc) and nonce before it sees the guest's nonce, as in BLE LE
Secure Connections numeric comparison (Core spec Vol 3 Part H §2.3.5.6.2): a man in the middle
must fix one side's values before learning the other's nonce, so the six digits
``HMAC(th, "code"||PK_G||enc||N_G||N_H) mod 10^6`` match with probability 10^-6 per attempt.
SK comes from HPKE base mode (RFC 9180 §5.1; X25519, HKDF-SHA256, ChaCha20-Poly1305) with
``th`` in ``info``.  The identity handshake is ``Noise_XXpsk0`` (PSK = HKDF(SK, salt=th,
"pairkit/1 identity psk compare")), whose ``es`` and ``se`` tokens make each side prove the static
key it announces (docs/security.md, rule 1).  Its first message (``psk, e``: no identity, it only
proves knowledge of SK, which a man in the middle holds too) travels in the host's Reveal; each
side sends its identity (message 2, message 3) only after its own person confirmed the code
(docs/security.md, "compare: what may cross before the people confirmed the code").

HPKE encryption draws its ephemeral itself (``cryptography``), not from the machine's ``rng``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .. import keyschedule
from ..crypto import same, x25519_loaded
from ..errors import (
    AuthenticationError,
    BusyError,
    DecodeError,
    LockedOutError,
    PairingError,
    PairingTimeout,
    RefusedError,
)
from ..machine import Question, WaitTurn
from ..messages import DEFAULT_STEP_MS, Accept, Announce, NoiseMessage, Offer, Reveal
from ..negotiation import Method
from .common import (
    CODE_ANSWER_TIME,
    HPKE_SUITE,
    S_ASK,
    S_NOISE,
    S_REVEAL,
    S_TURN,
    TURN_POLL,
    ConfirmCode,
    _identity_psk,
)
from .handshake import GuestSide, HostSide


class CompareGuest(GuestSide):
    _eph: X25519PrivateKey
    _sealed: bytes
    _commit: bytes
    _ng: bytes
    _sk: bytes
    _host_name: str

    def _compare_offer(self, hello: Announce) -> dict[str, Any]:
        self._eph, public = x25519_loaded(self._rng)
        # How long we wait for the host's Reveal, when it is not the default: a host waiting
        # its turn tells us it is busy before we would give up on it (CodeTurns).
        step_ms = round(self.config.step_timeout * 1000)
        if step_ms == DEFAULT_STEP_MS:
            return {"pk": public}
        return {"pk": public, "step_ms": step_ms}

    def _compare_accept(self, msg: Accept, now: float) -> None:
        if msg.sealed is None or msg.commit is None:
            raise DecodeError("the host's Accept lacks its sealed key or commitment")
        self._sealed = msg.sealed
        self._commit = msg.commit
        self._ng = self._rng(16)
        self._send(Reveal(self._ng))
        self._expect(now, S_REVEAL)

    def _on_reveal(self, msg: Reveal, now: float) -> None:
        assert self._offer is not None and self._offer.pk is not None
        if msg.noise is None:
            raise DecodeError("the host's Reveal lacks its Noise message (an older pairkit?)")
        enc = self._sealed[:32]
        expected = keyschedule.compare_commit(msg.nonce, self._offer.pk, enc, self._th)
        if not same(expected, self._commit):
            raise AuthenticationError("the host's commitment does not match: a man in the middle?")
        try:
            self._sk = HPKE_SUITE.decrypt(
                self._sealed,
                self._eph,
                info=keyschedule.compare_info(self._th),
            )
        except Exception:  # InvalidTag or a malformed enc: both mean the same here
            raise AuthenticationError("the host's sealed key could not be opened") from None
        if len(self._sk) != 32:
            raise DecodeError("the session key must be 32 bytes")
        # Message 1 proves only that the host holds this SK (so might a man in the middle):
        # read now, so a damaged one stops us before the person is asked; the code decides.
        self._noise_read_first(_identity_psk(self._sk, self._th, self.method), msg.noise)
        code = keyschedule.compare_code(self._th, self._offer.pk, enc, self._ng, msg.nonce)
        self.state = S_ASK
        self._expect_by(None)
        self._emit(ConfirmCode(code=code, peer_name=self._host_name))

    def _on_answer(self, question: Question, value: Any, now: float) -> None:
        if value is not True:
            raise RefusedError("the codes were not confirmed; pairing cancelled")
        # Our identity goes only now; the host answers with its own once its person confirmed.
        self._noise_send_second()
        self.state = S_NOISE
        self._expect_by(
            now + max(self.config.step_timeout, 120.0),
            "the host's owner did not confirm the code in time",
        )


class CompareHost(HostSide):
    _sk: bytes
    _enc: bytes
    _nh: bytes
    _ng: bytes
    #: until when we wait for a place to show our code (CodeTurns)
    _turn_ends: float
    #: whether our wait for a place ends early, to look again (places held elsewhere)
    _polling: bool = False
    #: until when our person's yes to our code is taken (its place holds a step longer)
    _code_ends: float = math.inf
    #: when our person confirmed our code (None: not yet)
    _confirmed_at: float | None = None

    def _offer_compare(self, msg: Offer, hello: Announce, now: float) -> None:
        # Each code we show and nobody confirms was a try at matching another screen's code (a
        # man in the middle who leaves each one that does not suit her, and comes back): they
        # are counted like wrong PINs (docs/security.md, "compare: what may cross before the
        # people confirmed the code").
        self._check_compare_lock(now)
        if msg.pk is None:
            raise DecodeError("the guest's Offer lacks its public key")
        try:
            guest_key = X25519PublicKey.from_public_bytes(msg.pk)
        except ValueError:
            raise DecodeError("the guest's public key is malformed") from None
        self._sk = self._rng(32)
        try:
            sealed = HPKE_SUITE.encrypt(
                self._sk, guest_key, info=keyschedule.compare_info(self._th)
            )
        except ValueError:  # a low-order key: X25519 gives the all-zero secret (RFC 7748 §6.1)
            raise AuthenticationError("the guest's public key is not acceptable") from None
        self._enc = sealed[:32]
        self._nh = self._rng(16)
        commit = keyschedule.compare_commit(self._nh, msg.pk, self._enc, self._th)
        self._send(Accept(hello=hello, sealed=sealed, commit=commit))
        self._expect(now, S_REVEAL)

    def _on_reveal(self, msg: Reveal, now: float) -> None:
        if msg.noise is not None:
            raise DecodeError("the guest's Reveal carries a Noise message; it holds a nonce only")
        self._ng = msg.nonce
        # Our N_H lets a man in the middle compute our code: it goes out only while the lock
        # would hold were every code out to fail (CodeTurns); otherwise we wait our turn, for
        # half the shorter of our step and the guest's, so that a guest told busy hears it
        # before it would give up on us (a longer step the guest claims changes nothing).
        step_ms = self._offer.step_ms
        guest_step = (DEFAULT_STEP_MS if step_ms is None else step_ms) / 1000
        self._turn_ends = now + min(self.config.step_timeout, guest_step) / 2
        self._show_code_in_turn(now)

    def _on_turn(self, question: Question, value: Any, now: float) -> None:
        """The driver's answer to our :class:`WaitTurn`: look again (``True``, or ``False`` at
        a look now and then), or the wait is over (``False`` at its end)."""
        last = now >= self._turn_ends or (value is not True and not self._polling)
        self._show_code_in_turn(now, last=last)

    def _show_code_in_turn(self, now: float, *, last: bool = False) -> None:
        turns = self.host.compare_turns
        # Our place is a try under way, kept (by the runtime, in the keystore) before our code
        # goes out: checked and taken in one step, so that no other host process of the device
        # takes the last one meanwhile; one that cannot be kept raises, and no code goes out.
        # It holds until our person's answer is due (we refuse one that comes later).  take
        # reads the lock (closed, or no place free: no place is taken), so it is not
        # read here before it as well (issue 13: the same read twice at one time); a lock
        # closed since our Offer, or as the place was looked for, is said here after it.
        self._code_ends = now + max(CODE_ANSWER_TIME, 3 * self.config.step_timeout)
        if not turns.take(self, now, self._code_ends + self.config.step_timeout):
            self._check_compare_lock(now)
            if last:
                # (how many codes are out is not said: a stranger need not know)
                raise BusyError(
                    "other compare codes are waiting for their confirmation here; "
                    "try again in a moment"
                )
            self.state = S_TURN
            self._expect_by(None)
            # Places held by other host processes free up without waking us: we look again
            # now and then, within our wait.
            deadline = self._turn_ends
            if turns.poll and now + TURN_POLL < deadline:
                deadline = now + TURN_POLL
            self._polling = deadline < self._turn_ends
            self._emit(WaitTurn(subscribe=self._subscribe_turn, deadline=deadline))
            return
        assert self._offer.pk is not None and self.method is not None
        # N_H with the identity handshake's message 1: it holds no identity and proves only
        # knowledge of SK, so it may go before our person confirmed (docs/security.md).
        first = self._noise_initiator(_identity_psk(self._sk, self._th, self.method))
        self._send(Reveal(self._nh, noise=first))
        code = keyschedule.compare_code(self._th, self._offer.pk, self._enc, self._ng, self._nh)
        self.state = S_ASK
        self._expect_by(None)
        self._emit(ConfirmCode(code=code, peer_name=self._offer.hello.name))

    def _subscribe_turn(self, wake: Callable[[], None] | None) -> None:
        self.host.compare_turns.subscribe(self, wake)

    def _on_answer(self, question: Question, value: Any, now: float) -> None:
        if value is not True:
            raise RefusedError("the codes were not confirmed; pairing cancelled")
        if now >= self._code_ends:
            # Our place held until then: after it, the code counts as a failed try, whoever
            # reads the lock, and a yes for it is refused.
            raise PairingTimeout("the code was not confirmed in time; pairing cancelled")
        # Confirmed by our person: no failed try, and our place goes to the next code (a give
        # back that cannot be kept raises: the place then counts as a failure at its end).
        self._confirmed_at = now
        self.host.compare_turns.settle(self, confirmed=True, now=now)
        # Only now is the guest's message 2 read (the driver held one that came early), and
        # only after it our identity goes, in message 3.  The guest's person may still be
        # looking at the code.
        self.state = S_NOISE
        self._expect_by(
            now + max(self.config.step_timeout, 120.0),
            "the guest's owner did not confirm the code in time",
        )

    def _on_noise(self, msg: NoiseMessage, now: float) -> None:
        if self.method is Method.COMPARE:
            # Our place, given back when our person confirmed, is kept by now (a machine that
            # took a place since kept it with its own): else we keep it before we go on.
            self.host.compare_lock.flush(now)
        super()._on_noise(msg, now)

    def _check_compare_lock(self, now: float) -> None:
        wait = self.host.compare_lock.locked_for(now)
        if wait > 0:
            raise LockedOutError(
                "too many compare codes were shown and not confirmed: compare is locked for "
                f"{math.ceil(wait)} more seconds"
            )

    def _fail(self, exc: PairingError) -> None:
        try:
            if self.method is Method.COMPARE and not self.failed:
                # A code of ours that was out and not confirmed counts as a failed try (the
                # guest left, or our person said no); a place held or waited for is given up.
                # (A count the keystore cannot keep raises: the place kept counts at its end.)
                self.host.compare_turns.settle(self, confirmed=False)
                # A place given back and not kept yet (our person confirmed, then the
                # exchange failed) is kept now if it can be (else with the next change).
                if self._confirmed_at is not None:
                    with contextlib.suppress(PairingError):
                        self.host.compare_lock.flush(self._confirmed_at)
        finally:
            super()._fail(exc)
