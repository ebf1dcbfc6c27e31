"""pairkit's one exception root.

Every error a pairing, a channel, a keystore or a transport raises is a :class:`PairingError`.
The split follows h11/wsproto: a :class:`LocalError` is something *we* detected (bad input from
the peer, a wrong PIN, a deadline that passed) and may carry a wire code to tell the peer; a
:class:`RemoteError` is something the *peer* reported to us.  The text of an exception is what a
person reads on the command line, so it says what happened and, where it can, what to do.
"""

from __future__ import annotations

import builtins
from enum import IntEnum


class ErrorCode(IntEnum):
    """Error codes that may travel on the wire (an ``Abort`` message carries one)."""

    UNKNOWN = 1
    DECODE = 2  #: a message could not be decoded
    PROTOCOL = 3  #: a message that is not legal in the current state
    AUTH_FAILED = 4  #: a MAC, signature, PIN or key confirmation did not verify
    TIMEOUT = 5  #: a deadline passed
    REFUSED = 6  #: a person or a policy said no
    LOCKED_OUT = 7  #: too many failed attempts; try again later
    UNSUPPORTED = 8  #: no common version, method or capability
    INSECURE = 9  #: the method needs an encrypted link and this one is not
    REPLAY = 10  #: a record or message was seen before
    EXPIRED = 11  #: a code, grant or ticket is past its expiry
    CLOSED = 12  #: the link or channel is closed
    NOT_FOUND = 13  #: no such peer, file, key or prekey
    PERMISSION = 14  #: not allowed
    INTERNAL = 15  #: a bug on the sender's side
    TOO_LARGE = 16  #: a message or buffer exceeded its limit
    CANCELLED = 17  #: the person on the sending side cancelled (Ctrl-C); no reason is shown
    BUSY = 18  #: the host is serving as many peers as it can: try again in a moment


class PairingError(Exception):
    """Root of every pairkit error."""

    code: ErrorCode = ErrorCode.UNKNOWN
    #: what the peer is told in the ``Abort`` instead of this error's text, for errors whose
    #: text is for this side's operator only (a database's own words, where it is); ``None``:
    #: the text itself
    peer_text: str | None = None

    def __init__(self, message: str | None = None, *, code: ErrorCode | None = None) -> None:
        if code is not None:
            self.code = code
        super().__init__(message if message is not None else (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class LocalError(PairingError):
    """An error detected on this side; its code may be sent to the peer in an ``Abort``."""


class RemoteError(PairingError):
    """The peer reported an error and stopped."""

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.UNKNOWN) -> None:
        super().__init__(f"the peer stopped: {message}", code=code)


class UserCancelled(LocalError):
    """The person on this side cancelled (Ctrl-C): the peer is told with an ``Abort`` of code
    ``cancelled`` and reads "the other side cancelled" (docs/protocol.md §1.2)."""

    code = ErrorCode.CANCELLED


#: what a person reads when the peer's person cancelled (the Abort's own reason is not shown)
OTHER_SIDE_CANCELLED = "the other side cancelled"


class DecodeError(LocalError, ValueError):
    """A message from the peer could not be decoded (malformed, too large or of unknown shape)."""

    code = ErrorCode.DECODE


class ProtocolError(LocalError):
    """The peer sent a message that is not legal at this point of the protocol."""

    code = ErrorCode.PROTOCOL


class TransitionError(ProtocolError, builtins.AssertionError):
    """A machine moved to a state its transition table does not allow: a bug in pairkit, not
    the peer's doing (STYLE.md rule 3).  It poisons the machine like any other error."""


class AuthenticationError(LocalError):
    """Authentication failed: a key, MAC, signature or confirmation code did not match."""

    code = ErrorCode.AUTH_FAILED


class UnusableKeyError(AuthenticationError):
    """A public key that proves nothing: an Ed25519 key of small order, or one not written in
    its one canonical form (docs/security.md rule 1).  Signatures made with no private key
    pass for such a key, so it is refused wherever a device shows one."""


class PairingTimeout(LocalError, builtins.TimeoutError):
    """The peer did not answer in time."""

    code = ErrorCode.TIMEOUT


class RefusedError(LocalError):
    """The request was refused."""

    code = ErrorCode.REFUSED


class LockedOutError(LocalError):
    """Too many failed attempts; further attempts are refused for a while."""

    code = ErrorCode.LOCKED_OUT


class UnsupportedError(LocalError):
    """The two sides have no version, method or capability in common."""

    code = ErrorCode.UNSUPPORTED


class InsecureLinkError(LocalError):
    """The method sends a key in the clear and the link is not encrypted."""

    code = ErrorCode.INSECURE


class ExpiredError(LocalError):
    """The code, grant or ticket has expired."""

    code = ErrorCode.EXPIRED


class ReplayError(LocalError):
    """A record or message was replayed, reordered or duplicated."""

    code = ErrorCode.REPLAY


class TooLargeError(LocalError, ValueError):
    """A message or buffer exceeded its size limit."""

    code = ErrorCode.TOO_LARGE


class GrownFileError(TooLargeError):
    """A file the host announced larger than its listing gave (``get --all`` fetches what was
    listed): that file is refused, and the others are fetched (atk19y finding 7)."""


class BusyError(LocalError):
    """The host is busy with other peers; try again in a moment."""

    code = ErrorCode.BUSY


class LinkClosedError(PairingError):
    """The link is closed."""

    code = ErrorCode.CLOSED


class AccessDeniedError(PairingError):
    """Not allowed (a path outside the shared folder, a request the policy forbids)."""

    code = ErrorCode.PERMISSION


class TransportError(PairingError):
    """A transport (BLE, TCP, loopback) failed."""


class ConfigError(PairingError, ValueError):
    """A configuration or argument is not valid."""


class KeystoreError(PairingError):
    """The keystore could not be used."""

    #: a peer is told no more: where the keystore is (the owner's home directory) and what its
    #: disk said are the owner's (issue 17's rule)
    peer_text = "this device cannot use its keystore now; its owner is told why"


class WrongPinError(KeystoreError):
    """Wrong PIN or passphrase for the keystore."""

    code = ErrorCode.AUTH_FAILED


class KeystoreCorruptError(KeystoreError):
    """The keystore file is damaged or has been tampered with."""

    code = ErrorCode.AUTH_FAILED


class NotFoundError(PairingError, LookupError):
    """No such peer, file or key."""

    code = ErrorCode.NOT_FOUND


_BY_CODE: dict[ErrorCode, type[LocalError]] = {
    ErrorCode.DECODE: DecodeError,
    ErrorCode.PROTOCOL: ProtocolError,
    ErrorCode.AUTH_FAILED: AuthenticationError,
    ErrorCode.TIMEOUT: PairingTimeout,
    ErrorCode.REFUSED: RefusedError,
    ErrorCode.LOCKED_OUT: LockedOutError,
    ErrorCode.UNSUPPORTED: UnsupportedError,
    ErrorCode.INSECURE: InsecureLinkError,
    ErrorCode.EXPIRED: ExpiredError,
    ErrorCode.REPLAY: ReplayError,
    ErrorCode.TOO_LARGE: TooLargeError,
    ErrorCode.BUSY: BusyError,
}


def local_error_for(code: int, message: str) -> LocalError:
    """Build the local error class that matches a wire code (for tests and symmetric reporting)."""
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except (ValueError, KeyError):
        cls = LocalError
    return cls(message)
