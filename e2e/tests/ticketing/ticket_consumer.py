"""A ticketing system's consumer of fleet.tickets.v1, in another language than Fleetstream.

usage: ticket_consumer.py --brokers HOST:PORT[,...] --group GROUP --tenant TENANT_ID
                          --schemas AVRO_DIR [--topic fleet.tickets.v1] [--out FILE]
                          [--until-end] [--max-secs N]

Reads the topic from the beginning (a new group starts at the earliest offset) with
confluent-kafka, decodes every record's Avro single-object encoding with fastavro -- the
C3 01 marker, the 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema's
Parsing Canonical Form, the binary datum -- and writes one JSON line per ticket event of
TENANT_ID to FILE (default stdout), flushed line by line. Timestamps are microseconds
since the epoch; `_partition` and `_offset` say where the record was.

Offsets are committed (synchronously) after the lines of a batch are written, so a
consumer restarted with the same group goes on where it stopped (at-least-once: it may
print again what it printed just before a crash; a ticketing system deduplicates by
`event_id`).

Runs until SIGTERM / SIGINT, or with --until-end until every assigned partition has
reached its end (exit 0). --max-secs bounds the run (exit 3 when reached in --until-end
mode, 0 otherwise). A record that is not a TicketEvent this schema set knows is reported
on stderr and skipped; the count is in the summary line on stderr at exit.
"""

import argparse
import datetime
import io
import json
import pathlib
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException
from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form

MAGIC = b"\xc3\x01"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
MICRO = datetime.timedelta(microseconds=1)


def log(msg: str) -> None:
    print(f"ticket_consumer: {msg}", file=sys.stderr, flush=True)


def load_schemas(avro_dir: pathlib.Path):
    """Fingerprint (header bytes) -> (schema name, parsed schema), for every .avsc."""
    by_fp = {}
    for f in sorted(avro_dir.glob("*.avsc")):
        schema = parse_schema(json.loads(f.read_text()))
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
        by_fp[fp] = (schema["name"], schema)
    return by_fp


def to_json(v):
    if isinstance(v, datetime.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=datetime.timezone.utc)
        return (v - EPOCH) // MICRO
    raise TypeError(f"cannot serialize {type(v)}")


def decode(data: bytes, by_fp) -> dict:
    if data is None or len(data) < 10 or data[:2] != MAGIC:
        raise ValueError(f"not Avro single-object encoded (starts {data[:2]!r})" if data else "empty value")
    fp = data[2:10]
    if fp not in by_fp:
        raise ValueError(f"unknown writer schema fingerprint {fp.hex()}")
    name, schema = by_fp[fp]
    if name != "io.fleetstream.TicketEvent":
        raise ValueError(f"a {name} record, not a TicketEvent")
    buf = io.BytesIO(data[10:])
    value = schemaless_reader(buf, schema, None)
    if buf.read():
        raise ValueError("trailing bytes after the datum")
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--tenant", required=True)
    ap.add_argument("--schemas", required=True, type=pathlib.Path)
    ap.add_argument("--topic", default="fleet.tickets.v1")
    ap.add_argument("--out", type=pathlib.Path)
    ap.add_argument("--until-end", action="store_true")
    ap.add_argument("--max-secs", type=float, default=0.0)
    args = ap.parse_args()

    by_fp = load_schemas(args.schemas)
    if not any(name == "io.fleetstream.TicketEvent" for name, _ in by_fp.values()):
        log(f"no TicketEvent schema in {args.schemas}")
        return 2
    out = open(args.out, "a", encoding="utf-8") if args.out else sys.stdout

    running = True

    def stop(signum, _frame):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    assigned = set()
    at_end = set()

    def on_assign(consumer, partitions):
        assigned.update(p.partition for p in partitions)
        log(f"assigned {sorted(p.partition for p in partitions)} of {args.topic}")

    def on_revoke(consumer, partitions):
        for p in partitions:
            assigned.discard(p.partition)
            at_end.discard(p.partition)

    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "session.timeout.ms": 6000,
        "client.id": "fleet-e2e-ticket-consumer",
    })
    consumer.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke)
    started = time.monotonic()
    seen = mine = skipped = 0
    code = 0
    try:
        while running:
            if args.max_secs and time.monotonic() - started > args.max_secs:
                if args.until_end:
                    log(f"did not reach the end within {args.max_secs} s "
                        f"(assigned {sorted(assigned)}, at end {sorted(at_end)})")
                    code = 3
                break
            msgs = consumer.consume(num_messages=500, timeout=0.5)
            wrote = False
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(m.partition())
                        continue
                    if err.fatal():
                        raise KafkaException(err)
                    log(f"consumer error (retried by the client): {err}")
                    continue
                at_end.discard(m.partition())
                seen += 1
                try:
                    ev = decode(m.value(), by_fp)
                except Exception as e:  # noqa: BLE001 -- report any bad record and go on
                    skipped += 1
                    log(f"partition {m.partition()} offset {m.offset()} skipped: {e}")
                    continue
                if ev.get("tenant_id") != args.tenant:
                    continue
                ev["_partition"] = m.partition()
                ev["_offset"] = m.offset()
                out.write(json.dumps(ev, default=to_json, sort_keys=True) + "\n")
                out.flush()
                mine += 1
                wrote = True
            if msgs and any(m.error() is None for m in msgs):
                # After the lines are out: at-least-once towards the ticketing system.
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException as e:
                    log(f"commit failed ({e}); records will be read again")
            if args.until_end and assigned and assigned <= at_end and not wrote:
                break
    finally:
        consumer.close()
        log(f"stopped: {seen} records read, {mine} ticket events of tenant {args.tenant}, "
            f"{skipped} skipped")
        if out is not sys.stdout:
            out.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
