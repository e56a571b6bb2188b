#!/usr/bin/env python3
"""Writes tests/data/tensorboard/reference.tfevents: TFRecords of Event
messages serialized by the protobuf library and framed by TensorBoard's own
record writer (its CRC-32C), for test_train's TensorBoard tests to match
byte for byte.

    python make_tensorboard_reference.py [OUT]     (needs PyPI `tensorboard`)

The events (wall times, steps, tags and values) are listed in
tests/train/tensorboard_test.cpp in the same order.
"""
import io
import os
import sys

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


def scalars(wall_time, step, values):
    s = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in values])
    return event_pb2.Event(wall_time=wall_time, step=step, summary=s)


EVENTS = [
    event_pb2.Event(wall_time=1700000000.25, file_version="brain.Event:2"),
    event_pb2.Event(wall_time=1700000000.5, step=7,
                    session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)),
    scalars(1700000001.75, 7, [("train/loss", 2.5), ("eval/ppl", 12.25)]),
    # a step of several varint bytes, a tag longer than 127 bytes, a tiny value
    scalars(1700000002.0, 1 << 40, [("t" * 200, -3.0e-7)]),
    scalars(1700000003.0, 0, [("train/lr", 0.0)]),
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "data", "tensorboard", "reference.tfevents")
    buf = io.BytesIO()
    w = RecordWriter(buf)
    for e in EVENTS:
        w.write(e.SerializeToString())
    w.flush()
    with open(out, "wb") as f:
        f.write(buf.getvalue())
    print("wrote", out, len(buf.getvalue()), "bytes")


if __name__ == "__main__":
    main()
