"""Interop check with another Avro implementation (fastavro).

usage: avro_interop.py AVRO_DIR WORK_DIR

Reads every WORK_DIR/rust/<name>.bin (single-object encoded by the Rust codec): checks the
C3 01 marker and that the header's fingerprint is fastavro's CRC-64-AVRO fingerprint of
the .avsc, decodes the datum with fastavro, and writes WORK_DIR/decoded/<name>.json.
Then re-encodes each decoded record with agent_id set to "py-<name>" into
WORK_DIR/python/<name>.bin, with a header fastavro computed, for Rust to decode.
"""

import datetime
import io
import json
import pathlib
import sys

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

MAGIC = b"\xc3\x01"


def main() -> int:
    avro_dir = pathlib.Path(sys.argv[1])
    work = pathlib.Path(sys.argv[2])
    by_fp = {}
    for f in sorted(avro_dir.glob("*.avsc")):
        schema = parse_schema(json.loads(f.read_text()))
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
        by_fp[fp] = (f.name, schema)
    (work / "decoded").mkdir(exist_ok=True)
    (work / "python").mkdir(exist_ok=True)
    count = 0
    for rec in sorted((work / "rust").glob("*.bin")):
        data = rec.read_bytes()
        if data[:2] != MAGIC:
            print(f"{rec.name}: bad marker {data[:2]!r}", file=sys.stderr)
            return 1
        fp = data[2:10]
        if fp not in by_fp:
            print(f"{rec.name}: header fingerprint {fp.hex()} is not fastavro's fingerprint of any .avsc: "
                  f"{[k.hex() for k in by_fp]}", file=sys.stderr)
            return 1
        avsc, schema = by_fp[fp]
        buf = io.BytesIO(data[10:])
        value = schemaless_reader(buf, schema, None)
        if buf.read():
            print(f"{rec.name}: trailing bytes", file=sys.stderr)
            return 1
        (work / "decoded" / (rec.stem + ".json")).write_text(json.dumps(value, default=to_json, sort_keys=True))
        value["agent_id"] = "py-" + rec.stem
        out = io.BytesIO()
        out.write(MAGIC + fp)
        schemaless_writer(out, schema, value)
        (work / "python" / rec.name).write_bytes(out.getvalue())
        count += 1
    print(f"fastavro decoded and re-encoded {count} records")
    return 0


def to_json(v):
    if isinstance(v, bytes):
        return {"bytes_hex": v.hex()}
    if isinstance(v, datetime.datetime):
        return {"timestamp_micros": int(v.timestamp() * 1_000_000) if v.microsecond == 0 else
                (int(v.timestamp()) * 1_000_000 + v.microsecond)}
    raise TypeError(f"cannot serialize {type(v)}")


if __name__ == "__main__":
    sys.exit(main())
