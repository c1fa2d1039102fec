#!/usr/bin/env python3
"""Checks for the local Fleetstream test services (run with the services venv's python).

    smoke.py ready [--bootstrap HOST:PORT] [--timeout S]
        Exit 0 once the broker answers a metadata request and lists itself.
    smoke.py kafka [--bootstrap HOST:PORT] [--timeout S]
        Create a throw-away topic, produce one message, consume it back, delete the topic.
    smoke.py avro
        Round-trip one record through fastavro (checks the venv's interop packages).
    smoke.py registry [--url URL] [--timeout S]
        Wait until the schema registry (Confluent REST API at URL) answers, register a schema
        under subject fleet-smoke-value with compatibility BACKWARD, read it back by id, and
        round-trip one record through confluent-kafka's AvroSerializer/AvroDeserializer.

Everything is bounded in time; failures print a reason on stderr and exit non-zero.
"""

import argparse
import io
import sys
import time
import uuid


def log(msg):
    # stderr, like the progress lines of scripts/services.sh (whose stdout is kept for `env`)
    print(f"  smoke: {msg}", file=sys.stderr, flush=True)


def fail(msg):
    print(f"  smoke: FAILED: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def check_ready(bootstrap, timeout):
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    # log_level 3: keep librdkafka's connection-refused/timeout chatter out while the broker boots
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000, "log_level": 3})
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            md = admin.list_topics(timeout=min(3.0, max(0.5, deadline - time.monotonic())))
            if md.brokers and md.controller_id >= 0:
                ids = ",".join(str(b) for b in sorted(md.brokers))
                log(f"broker(s) {ids} ready at {bootstrap}, controller {md.controller_id}, "
                    f"{len(md.topics)} topic(s)")
                return
            last = f"metadata without brokers/controller (controller_id={md.controller_id})"
        except Exception as e:  # KafkaException while the broker is still starting
            last = str(e)
        time.sleep(0.5)
    fail(f"broker at {bootstrap} not ready after {timeout:.0f}s: {last}")


def check_kafka(bootstrap, timeout):
    from confluent_kafka import Consumer, KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    deadline = time.monotonic() + timeout
    left = lambda: max(1.0, deadline - time.monotonic())  # noqa: E731
    topic = f"fleet-smoke-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})

    # Topic auto-creation is disabled on the broker: create explicitly (retry while it settles).
    while True:
        try:
            admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)],
                                operation_timeout=10)[topic].result(timeout=left())
            break
        except KafkaException as e:
            err = e.args[0]
            if getattr(err, "code", lambda: None)() == 36:  # TOPIC_ALREADY_EXISTS
                break
            if time.monotonic() >= deadline or not err.retriable():
                fail(f"create topic {topic}: {err}")
            time.sleep(0.5)
    log(f"created topic {topic}")

    try:
        payload = f"hello fleetstream {uuid.uuid4()}".encode()
        delivered = []
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all",
                             "enable.idempotence": True})
        producer.produce(topic, key=b"smoke", value=payload,
                         on_delivery=lambda err, msg: delivered.append((err, msg)))
        remaining = producer.flush(timeout=left())
        if remaining or not delivered:
            fail(f"produce to {topic}: message not delivered in time")
        err, msg = delivered[0]
        if err is not None:
            fail(f"produce to {topic}: {err}")
        log(f"produced 1 message to {topic}[{msg.partition()}]@{msg.offset()}")

        consumer = Consumer({"bootstrap.servers": bootstrap,
                             "group.id": f"fleet-smoke-{uuid.uuid4().hex[:8]}",
                             "auto.offset.reset": "earliest",
                             "enable.auto.commit": False})
        try:
            consumer.subscribe([topic])
            got = None
            while got is None and time.monotonic() < deadline:
                m = consumer.poll(0.5)
                if m is None:
                    continue
                if m.error():
                    if m.error().fatal():
                        fail(f"consume from {topic}: {m.error()}")
                    continue
                got = m
            if got is None:
                fail(f"consume from {topic}: nothing received within {timeout:.0f}s")
            if got.value() != payload or got.key() != b"smoke":
                fail(f"consume from {topic}: got {got.key()!r}={got.value()!r}, want {payload!r}")
            log(f"consumed it back from {topic}[{got.partition()}]@{got.offset()}")
        finally:
            consumer.close()
    finally:
        try:
            admin.delete_topics([topic], operation_timeout=10)[topic].result(timeout=15)
            log(f"deleted topic {topic}")
        except Exception as e:  # not fatal for the check itself
            log(f"warning: could not delete topic {topic}: {e}")


def check_avro():
    import fastavro

    schema = fastavro.parse_schema({
        "type": "record", "name": "Ping", "namespace": "fleetstream.smoke",
        "fields": [{"name": "id", "type": "long"}, {"name": "note", "type": "string"}],
    })
    rec = {"id": 42, "note": "hello"}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, rec)
    buf.seek(0)
    back = fastavro.schemaless_reader(buf, schema)
    if back != rec:
        fail(f"fastavro round trip: got {back!r}, want {rec!r}")
    import confluent_kafka
    log(f"fastavro {fastavro.__version__} round trip ok; confluent-kafka {confluent_kafka.__version__}, "
        f"librdkafka {confluent_kafka.libversion()[0]}")


def check_registry(url, timeout):
    import json

    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    deadline = time.monotonic() + timeout
    client = SchemaRegistryClient({"url": url, "timeout": 5})
    subject = "fleet-smoke-value"
    last = "no answer"
    while True:
        try:
            client.get_subjects()
            break
        except Exception as e:  # connection refused, 5xx while the registry boots
            last = str(e)
        if time.monotonic() >= deadline:
            fail(f"schema registry at {url} does not answer within {timeout:.0f}s: {last}")
        time.sleep(1)
    schema_str = json.dumps({
        "type": "record", "name": "Ping", "namespace": "fleetstream.smoke",
        "fields": [{"name": "id", "type": "long"}, {"name": "note", "type": "string"}],
    })
    try:
        client.set_compatibility(subject, "BACKWARD")
        schema_id = client.register_schema(subject, Schema(schema_str, "AVRO"))
        level = client.get_compatibility(subject)
        back = client.get_schema(schema_id)
        ser = AvroSerializer(client, schema_str, conf={"auto.register.schemas": False,
                                                       "use.latest.version": True})
        de = AvroDeserializer(client)
        ctx = SerializationContext("fleet-smoke", MessageField.VALUE)
        rec = {"id": 42, "note": "hello"}
        data = ser(rec, ctx)
        got = de(data, ctx)
    except Exception as e:
        fail(f"schema registry at {url}: {type(e).__name__}: {e}")
    if level != "BACKWARD":
        fail(f"subject {subject}: compatibility {level!r} after setting BACKWARD")
    if json.loads(back.schema_str) != json.loads(schema_str):
        fail(f"schema {schema_id} read back differs: {back.schema_str}")
    if data[:1] != b"\x00" or int.from_bytes(data[1:5], "big") != schema_id or got != rec:
        fail(f"Avro serializer round trip: {data[:5].hex()} -> {got!r}, want id {schema_id} and {rec!r}")
    log(f"schema registry at {url}: registered {subject} as id {schema_id} (BACKWARD), "
        "serializer/deserializer round trip ok")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("check", choices=["ready", "kafka", "avro", "registry"])
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--url", default="http://127.0.0.1:18081/apis/ccompat/v7")
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    if a.check == "ready":
        check_ready(a.bootstrap, a.timeout)
    elif a.check == "kafka":
        check_kafka(a.bootstrap, a.timeout)
    elif a.check == "registry":
        check_registry(a.url, a.timeout)
    else:
        check_avro()


if __name__ == "__main__":
    main()
