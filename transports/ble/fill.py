"""How big a link message should be, so that its ACL packets go out full.

A pairkit message on BLE is one L2CAP PDU or a few: on GATT, one ATT Write Command or
Handle Value Notification (3 bytes of opcode and handle, then the value); on an LE
credit-based channel, one SDU (2 bytes of SDU length, then the data) cut into K-frames of at
most the peer's MPS (Core 5.4 Vol 3 Part A §3.4.3).  Each PDU carries a 4-byte basic L2CAP
header (§3) and is cut by the host into HCI ACL data packets of at most the controller's LE ACL
data packet length (Core 5.4 Vol 4 Part E §5.4.2; bumble's ``Host.send_acl_sdu``), and each
ACL packet becomes at least one link-layer PDU on the air.

A message as large as the channel allows is rarely the best: 2,048 bytes on a channel with an
MPS of 2,048 and 251-byte ACL packets is a K-frame of 2,048 bytes and one of 2 (the SDU length
pushed the last two bytes out), 10 ACL packets in all, two of them nearly empty; 2,002 bytes is
one K-frame and 8 full packets.  :func:`filling_size` picks the size, at most the link's limit,
that carries the most message bytes per ACL packet (the larger one on a tie); where a K-frame
is smaller than a packet, that is a whole number of whole K-frames.  The frames are
cut exactly as before (bumble's ``write`` and pairkit's own path both cut at the peer's MPS);
only the size of a message changes, so a peer sees nothing it could not see before.
"""

from __future__ import annotations

__all__ = ["L2CAP_HEADER", "acl_packets", "filling_size"]

L2CAP_HEADER = 4  #: length + channel ID of every L2CAP PDU (Core 5.4 Vol 3 Part A §3)


def acl_packets(size: int, acl: int, *, first_header: int, mps: int | None = None) -> int:
    """ACL packets of at most ``acl`` bytes that one message of ``size`` bytes takes.

    ``first_header``: bytes before the message in its first PDU (3 for ATT, 2 for an SDU);
    ``mps``: the K-frame size the message is cut at (None: one PDU, as on GATT).
    """
    payload = size + first_header
    if mps is None or payload <= mps:
        return -(-(payload + L2CAP_HEADER) // acl)
    full, rest = divmod(payload, mps)
    packets = full * -(-(mps + L2CAP_HEADER) // acl)
    return packets + (-(-(rest + L2CAP_HEADER) // acl) if rest else 0)


def filling_size(
    limit: int, acl: int, *, first_header: int, mps: int | None = None, least: int = 20
) -> int:
    """The message size from ``least`` to ``limit`` that carries the most bytes per ACL packet.

    ``acl`` is the controller's LE ACL data packet length (0 or less: unknown, then ``limit``);
    ``first_header`` and ``mps`` as in :func:`acl_packets`; of two sizes that carry as much per
    packet, the larger.  ``limit`` at or below ``least`` is returned as it is.

    The packets a message takes grow with its size only where one more byte would start a new
    ACL packet: where the last PDU ends exactly at the end of a packet, or where the last
    K-frame is a whole MPS (the next byte starts a K-frame of its own).  The best size is the
    largest before such a step, so these sizes and ``limit`` are the only candidates.
    """
    if acl <= 0 or limit <= least:
        return limit
    candidates = {limit}
    frame = (limit + first_header) if mps is None else mps
    whole_frames = 0 if mps is None else (limit + first_header) // mps
    for frames_before in range(whole_frames + 1):
        before = frames_before * (mps or 0)
        # the last PDU: a frame of k * acl - 4 bytes (k whole ACL packets), at most one frame
        for k in range(1, (frame + L2CAP_HEADER) // acl + 1):
            candidates.add(before + k * acl - L2CAP_HEADER - first_header)
        if mps is not None and frames_before:
            candidates.add(before - first_header)  # the last K-frame a whole MPS
    best, best_packets = limit, acl_packets(limit, acl, first_header=first_header, mps=mps)
    for size in sorted(candidates):
        if not least <= size <= limit:
            continue
        packets = acl_packets(size, acl, first_header=first_header, mps=mps)
        # more bytes per packet, or as many and larger
        if size * best_packets > best * packets or (
            size * best_packets == best * packets and size > best
        ):
            best, best_packets = size, packets
    return best
