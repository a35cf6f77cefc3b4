"""Member-to-member transport: Raft messages between peers and snapshot transfer.

``Transport`` (peer.py) carries ``petcd.raft.types.Message`` over long-lived TCP streams and
sends snapshots on connections of their own; ``codec`` encodes the messages.
"""

from petcd.transport.codec import (
    CodecError,
    decode_batch,
    decode_message,
    encode_batch,
    encode_message,
)
from petcd.transport.peer import PeerStats, Transport, TransportError

__all__ = [
    "CodecError",
    "PeerStats",
    "Transport",
    "TransportError",
    "decode_batch",
    "decode_message",
    "encode_batch",
    "encode_message",
]
