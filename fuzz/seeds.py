#!/usr/bin/env python3
"""Writes the hand-made seeds of the vfio_user_server target into
corpus/vfio_user_server/. Each input is a list of records
[fd spec: u8][length: u16 LE][bytes]; the fd spec's low two bits are how
many descriptors to attach, then two bits per descriptor for its kind
(0 sealed memfd, 1 eventfd, 2 pipe write end, 3 unsealed memfd)."""
import os
import struct

OUT = os.path.join(os.path.dirname(__file__), "corpus", "vfio_user_server")


def msg(mid, cmd, body, flags=0, size=None):
    size = 16 + len(body) if size is None else size
    return struct.pack("<HHIII", mid, cmd, size, flags, 0) + body


def rec(data, spec=0):
    return struct.pack("<BH", spec, len(data)) + data


VERSION = msg(1, 1, struct.pack("<HH", 0, 0) + b'{"capabilities":{"max_msg_fds":8}}\0')
INFO = msg(2, 4, struct.pack("<IIII", 16, 0, 0, 0))
REGION2 = msg(3, 5, struct.pack("<IIIIQQ", 32, 0, 2, 0, 0, 0))
IRQINFO = msg(4, 7, struct.pack("<IIII", 16, 0, 2, 0))
DMA_MAP = msg(5, 2, struct.pack("<IIQQQ", 32, 3, 0, 0x1000_0000, 0x10000))
DMA_UNMAP = msg(6, 3, struct.pack("<IIQQ", 24, 0, 0x1000_0000, 0x10000))
SET_IRQS = msg(7, 8, struct.pack("<IIIII", 20, (1 << 2) | (1 << 5), 2, 0, 1))


def region_write(mid, region, off, data):
    return msg(mid, 10, struct.pack("<QII", off, region, len(data)) + data)


def region_read(mid, region, off, n):
    return msg(mid, 9, struct.pack("<QII", off, region, n))


SEEDS = {
    "version": [rec(VERSION)],
    "discover": [rec(VERSION + INFO + REGION2 + IRQINFO + region_read(8, 7, 0, 4))],
    "dma_map_unmap": [rec(VERSION), rec(DMA_MAP, 0x01), rec(DMA_UNMAP)],
    "dma_map_pipe": [rec(VERSION), rec(DMA_MAP, 0x09)],
    "msix_eventfd": [rec(VERSION), rec(SET_IRQS, 0x05)],
    "msix_pipe": [rec(VERSION), rec(SET_IRQS, 0x09)],
    # ACKNOWLEDGE | DRIVER, then a queue select and size, then DRIVER_OK.
    "bring_up": [
        rec(VERSION),
        rec(DMA_MAP, 0x01),
        rec(region_write(9, 0, 20, b"\x03") + region_write(10, 0, 22, b"\x00\x00")
            + region_write(11, 0, 24, b"\x40\x00") + region_write(12, 0, 20, b"\x0f")),
    ],
    "no_reply": [rec(VERSION), rec(msg(13, 9, struct.pack("<QII", 0, 7, 4), flags=1 << 4))],
    "bad_size": [rec(VERSION + msg(14, 4, b"", size=8))],
    "short_body": [rec(VERSION + msg(15, 2, struct.pack("<II", 32, 3)))],
    "reset": [rec(VERSION + msg(16, 13, b""))],
}

os.makedirs(OUT, exist_ok=True)
for name, recs in SEEDS.items():
    with open(os.path.join(OUT, "seed-" + name), "wb") as f:
        f.write(b"".join(recs))
