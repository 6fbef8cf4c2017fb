"""Reading offline W&B run files, to check what a run logged (wandb has no reader for them)."""

from __future__ import annotations

import glob
import struct


def wandb_records(path: str) -> list:
    """Records of an offline W&B run file (a LevelDB-style log of protobuf `Record`s)."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    pos, block, buf, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def run_records(root: str, run_id: str) -> dict[str, list]:
    """The records of the offline run `run_id` under a storage root, by record type."""
    files = glob.glob(f"{root}/wandb/wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    assert len(files) == 1, f"no single W&B run file for {run_id}: {files}"
    by_kind: dict[str, list] = {}
    for record in wandb_records(files[0]):
        by_kind.setdefault(record.WhichOneof("record_type"), []).append(record)
    return by_kind


def history_keys(by_kind: dict[str, list]) -> set[str]:
    """Every metric name logged to the run's history."""
    return {"/".join(i.nested_key) or i.key for h in by_kind.get("history", [])
            for i in h.history.item}
