"""Reading an offline W&B run file back, for the tests that check what reached W&B."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any


def offline_records(path: Path) -> list[Any]:
    """The records of an offline W&B run file: W&B's protobuf ``Record``s, framed as a
    LevelDB log (a 7-byte file header, then 32 KiB blocks of checksummed chunks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out
