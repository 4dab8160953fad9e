"""The control channel: frames keep their order and content, the end of the other side
reads as None, and a frame length past the bound ends the channel instead of allocating."""

from __future__ import annotations

import socket
import struct

from config import load_text
from dtab import read_dtab
from proxy.workers import MAX_FRAME, Channel


def test_frames_round_trip_in_order_and_the_end_is_none(run) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        left, right = await Channel.open(a), await Channel.open(b)
        cfg = load_text("workers: 2\nrouters:\n- protocol: http\n  dtab: /svc => /$/inet/127.0.0.1/1\n")
        left.send({"id": 1, "op": "start", "config": cfg})
        left.send({"id": 2, "op": "set_dtab", "label": "default", "dtab": read_dtab("/a => /b")})
        first, second = await right.recv(), await right.recv()
        assert first is not None and first["config"] == cfg  # the validated object itself
        assert second == {"id": 2, "op": "set_dtab", "label": "default", "dtab": read_dtab("/a => /b")}
        left.close()
        assert await right.recv() is None
        right.close()

    run(main())


def test_a_frame_past_the_bound_ends_the_channel(run) -> None:
    async def main() -> None:
        a, b = socket.socketpair()
        right = await Channel.open(b)
        a.sendall(struct.pack(">I", MAX_FRAME + 1))
        assert await right.recv() is None
        a.close()
        right.close()

    run(main())

