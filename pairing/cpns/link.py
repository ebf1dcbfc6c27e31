"""A member back on its gateway: a new link session from the stored link key (issue 14).

The source's R01 note gives every PNE with UI a LocalEUKey "regardless of the security of the
PAN", and a PNE without UI has its pre-assigned key: so every member holds a key it shares with
its gateway alone, and can open a new secure session on a new link at any time, as the setup
did ("mutual authentication and session key sharing by using LocalEUKey", the source's steps
6-7)::

    member  -> gateway  PnLinkResume(pn_id, pne_id, nonce_pne)
    gateway -> member   PnLinkAccept(nonce_gw, mac_gw)
    member  -> gateway  LinkConfirm(mac_pne)

with the keys of the setup's link session (:func:`keys._link_keys`): ``okm = HKDF(link key,
salt = nonce_gw || nonce_pne, "pairkit/1 cpns link" || pn_id || pne_id || gw_id)``, cut into
the member->gateway key, the gateway->member key, the confirmation key ``kc`` and a public
fingerprint; ``mac_gw = HMAC(kc, "gw" || nonce_gw || nonce_pne)`` and ``mac_pne = HMAC(kc,
"pne" || nonce_gw || nonce_pne)``.  Both nonces are fresh, so every session has fresh keys
(docs/security.md rule 4); a replayed resume meets a new ``nonce_gw`` and cannot confirm.  The
gateway proves first: a stranger who names a member learns only a MAC under a key it does not
hold, over a nonce it will never see again.  The resulting :class:`LinkSession` keys a
:class:`pairing.channel.SecureChannel` that carries the routed traffic (:class:`PnData`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import ClassVar

from ..crypto import Rng, mac, same
from ..errors import AuthenticationError, ConfigError, NotFoundError, ProtocolError
from ..machine import DONE, Machine, Step, step
from ..messages import ID_LEN, KEY_LEN
from .keys import LinkSession, _ids, _link_keys
from .messages import RAND_LEN, LinkConfirm, PnLinkAccept, PnLinkResume


@dataclasses.dataclass(frozen=True)
class ResumeConfig:
    """A member's side: which PN, as which PNE, towards which gateway, with which key."""

    pn_id: bytes
    pne_id: bytes
    gw_id: bytes
    link_key: bytes = dataclasses.field(repr=False)
    step_timeout: float = 30.0

    def __post_init__(self) -> None:
        if not all(len(x) == ID_LEN for x in (self.pn_id, self.pne_id, self.gw_id)):
            raise ConfigError(f"PN, PNE and gateway ids are {ID_LEN} bytes")
        if len(self.link_key) != KEY_LEN:
            raise ConfigError(f"a link key is {KEY_LEN} bytes")
        if not 0.1 <= self.step_timeout <= 3600:
            raise ConfigError("step_timeout must be between 0.1 and 3600 seconds")


R_START = "start"
R_ACCEPT = "await-accept"
R_RESUME = "await-resume"
R_CONFIRM = "await-confirm"


class MemberResume(Machine):
    """The member's side of a link resume (see the module docstring)."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (R_ACCEPT, PnLinkAccept): step("_on_accept", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({R_ACCEPT})

    def __init__(self, config: ResumeConfig, *, rng: Rng = os.urandom) -> None:
        super().__init__(initial_state=R_START)
        self.config = config
        self._nonce = rng(RAND_LEN)
        self.session: LinkSession | None = None

    def _on_start(self, now: float) -> None:
        c = self.config
        self._send(PnLinkResume(c.pn_id, c.pne_id, self._nonce))
        self.state = R_ACCEPT
        self._expect_by(now + c.step_timeout, "the gateway did not answer the link resume")

    def _on_accept(self, msg: PnLinkAccept, now: float) -> None:
        c = self.config
        p2g, g2p, kc, fp = _link_keys(
            c.link_key, _ids(c.pn_id, c.pne_id, c.gw_id), msg.nonce, self._nonce
        )
        if not same(msg.mac, mac(kc, b"gw", msg.nonce, self._nonce)):
            raise AuthenticationError(
                "the gateway did not prove the link key: it is not this PN's gateway"
            )
        self._send(LinkConfirm(mac(kc, b"pne", msg.nonce, self._nonce)))
        self.session = LinkSession(p2g, g2p, fp)
        self._finish()


class GatewayResume(Machine):
    """The gateway's side: ``link_key(pn_id, pne_id)`` gives the stored key of a member (None:
    not a member of that PN here).  Done with :attr:`session` and :attr:`pne_id` set."""

    TABLE: ClassVar[dict[tuple[str, type], Step]] = {
        (R_RESUME, PnLinkResume): step("_on_resume", R_CONFIRM),
        (R_CONFIRM, LinkConfirm): step("_on_confirm", DONE),
    }
    STARTS: ClassVar[frozenset[str]] = frozenset({R_RESUME})

    def __init__(
        self,
        gw_id: bytes,
        link_key: Callable[[bytes, bytes], bytes | None],
        *,
        step_timeout: float = 30.0,
        rng: Rng = os.urandom,
    ) -> None:
        super().__init__(initial_state=R_START)
        self.gw_id = gw_id
        self._lookup = link_key
        self._timeout = step_timeout
        self._rng = rng
        self.session: LinkSession | None = None
        self.pn_id: bytes | None = None
        self.pne_id: bytes | None = None

    def _on_start(self, now: float) -> None:
        self.state = R_RESUME
        self._expect_by(now + self._timeout, "the member did not ask to resume its link")

    def _on_resume(self, msg: PnLinkResume, now: float) -> None:
        key = self._lookup(msg.pn_id, msg.pne_id)
        if key is None:
            raise NotFoundError("this gateway knows no such member of that PN")
        self._nonce = self._rng(RAND_LEN)
        self._keys = _link_keys(
            key, _ids(msg.pn_id, msg.pne_id, self.gw_id), self._nonce, msg.nonce
        )
        self._their = msg.nonce
        self.pn_id, self.pne_id = msg.pn_id, msg.pne_id
        self._send(PnLinkAccept(self._nonce, mac(self._keys[2], b"gw", self._nonce, msg.nonce)))
        self.state = R_CONFIRM
        self._expect_by(now + self._timeout, "the member did not confirm the link session")

    def _on_confirm(self, msg: LinkConfirm, now: float) -> None:
        p2g, g2p, kc, fp = self._keys
        if msg.nonce is not None:
            raise ProtocolError("a resumed link's confirmation carries no nonce")
        if not same(msg.mac, mac(kc, b"pne", self._nonce, self._their)):
            raise AuthenticationError("the member's link confirmation failed")
        self.session = LinkSession(g2p, p2g, fp)
        self._finish()
