"""A third-party consumer of Fleetstream's topics: confluent-kafka's Consumer with its
AvroDeserializer and SchemaRegistryClient, as an analytics team would run it.

usage: consume.py BOOTSTRAP REGISTRY_URL COUNT TOPIC [TOPIC...]

Reads COUNT records from the start of each TOPIC, decodes each value with the writer
schema the deserializer fetches from the registry by the id in the record's Confluent
header, and prints one JSON object per record on stdout:
{"topic", "partition", "offset", "key", "schema_id", "value"} (timestamp-micros fields,
which fastavro reads as datetimes, are given back as integer microseconds since the epoch).
Bounded in time: exits 1 with a reason on stderr if a record is missing after 60 s.
"""

import datetime
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def plain(v):
    if isinstance(v, datetime.datetime):
        delta = v - EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, bytes):
        return list(v)
    return v


def main() -> int:
    bootstrap, url, count, topics = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    registry = SchemaRegistryClient({"url": url, "timeout": 10})
    deserialize = AvroDeserializer(registry)
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"fleet-registry-interop-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe(topics)
    got = {t: 0 for t in topics}
    deadline = time.monotonic() + 60
    try:
        while any(n < count for n in got.values()):
            if time.monotonic() > deadline:
                print(f"timed out; records read per topic: {got}", file=sys.stderr)
                return 1
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().fatal():
                    raise KafkaException(msg.error())
                continue
            data = msg.value()
            ctx = SerializationContext(msg.topic(), MessageField.VALUE)
            value = deserialize(data, ctx)
            print(json.dumps({
                "topic": msg.topic(),
                "partition": msg.partition(),
                "offset": msg.offset(),
                "key": msg.key().decode() if msg.key() is not None else None,
                "schema_id": int.from_bytes(data[1:5], "big"),
                "value": plain(value),
            }, sort_keys=True), flush=True)
            got[msg.topic()] += 1
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
