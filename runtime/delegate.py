"""The person behind a device, as the runtime asks them things (issue 12).

Every question a pairing or a session raises goes to a :class:`Delegate`: the CLI answers on the
terminal, an application with its own dialogs, a script or a test with :class:`Agree` or
:class:`Refuse`.  Each hook is awaited, so an answer may take as long as a person needs; the
runtime bounds it (:data:`pairkit.driver.DEFAULT_ANSWER_TIME`) and a question nobody answers ends
the pairing on both sides.

The hooks are named by the events of the sans-I/O core (``Question.hook``):

========================  ===========================================  ======================
hook                      asked when                                   answer
========================  ===========================================  ======================
``confirm_code``          numeric comparison shows a 6-digit code      ``True`` if both match
``allow_join``            a stranger asks to join this host's cloud    a ``Grant`` or ``None``
``join_cloud``            a host made this device a member of its own  ``True`` to join
``allow_request``         a guest asks for the shared files            a ``Scope``
``on_warning``            something the person must hear (``clear``    nothing
                          over an unencrypted link, forced)
``on_event``              anything else the core reports               nothing
========================  ===========================================  ======================
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .pairing.cloud import AllowJoin, Grant, Role
from .pairing.methods import ConfirmCode, InsecureWarning
from .pairing.service import AllowRequest, JoinCloud, Scope

__all__ = [
    "Agree",
    "AllowJoin",
    "AllowRequest",
    "ConfirmCode",
    "Delegate",
    "Grant",
    "InsecureWarning",
    "JoinCloud",
    "Refuse",
    "Role",
    "Scope",
]


@runtime_checkable
class Delegate(Protocol):
    """The questions a person answers, and what they are told (see the module's table)."""

    async def confirm_code(self, q: ConfirmCode) -> bool: ...

    async def allow_join(self, q: AllowJoin) -> Grant | None: ...

    async def join_cloud(self, q: JoinCloud) -> bool: ...

    async def allow_request(self, q: AllowRequest) -> Scope: ...

    async def on_warning(self, event: InsecureWarning) -> None: ...

    async def on_event(self, event: object) -> None: ...


class Refuse:
    """Says no to everything and ignores what it is told: the safe default when an
    application gives no delegate.  Only methods that need nobody's answer succeed (a PIN or
    QR code typed in, a known peer's resume); a stranger's request to join is refused."""

    async def confirm_code(self, q: ConfirmCode) -> bool:
        return False

    async def allow_join(self, q: AllowJoin) -> Grant | None:
        return None

    async def join_cloud(self, q: JoinCloud) -> bool:
        return False

    async def allow_request(self, q: AllowRequest) -> Scope:
        return Scope.REFUSE

    async def on_warning(self, event: InsecureWarning) -> None:
        return None

    async def on_event(self, event: object) -> None:
        return None

    def __repr__(self) -> str:
        return "Refuse()"


class Agree(Refuse):
    """Says yes, as ``--yes`` does in scripts: a joining stranger becomes a guest for
    ``guest_seconds`` (or a member, with ``members=True``), a host's cloud is joined, requests
    are allowed for the session.

    ``confirm_codes`` is off by default: numeric comparison exists so that a person looks at two
    screens, and a program that confirms every code blindly gets no protection from it.
    """

    def __init__(
        self, *, guest_seconds: int = 3600, members: bool = False, confirm_codes: bool = False
    ) -> None:
        self.guest_seconds = guest_seconds
        self.members = members
        self.confirm_codes = confirm_codes

    async def confirm_code(self, q: ConfirmCode) -> bool:
        return self.confirm_codes

    async def allow_join(self, q: AllowJoin) -> Grant | None:
        if self.members:
            return Grant(Role.MEMBER)
        return Grant(Role.GUEST, self.guest_seconds)

    async def join_cloud(self, q: JoinCloud) -> bool:
        return True

    async def allow_request(self, q: AllowRequest) -> Scope:
        return Scope.SESSION

    def __repr__(self) -> str:
        return (f"Agree(guest_seconds={self.guest_seconds}, members={self.members}, "
                f"confirm_codes={self.confirm_codes})")
