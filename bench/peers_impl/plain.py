"""Peer (a): a plain confluent-kafka consume loop with orjson and a dict of open windows.

An optional sixth argument sets the consumer's ``fetch.queue.backoff.ms`` (peer
``plain-tuned``: the one consumer setting Vigil changes from librdkafka's defaults, so the
two compare on their processing alone).
"""

from __future__ import annotations

import sys
from datetime import datetime

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench.peers_impl import WINDOW_MS, finish, fold, mark_first


def main(brokers: str, topic: str, out: str, readings: int, stats: str,
         queue_backoff_ms: int | None = None) -> None:
    tuning = {} if queue_backoff_ms is None else {"fetch.queue.backoff.ms": queue_backoff_ms}
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "peer-plain",
                         "enable.auto.commit": False, "fetch.wait.max.ms": 10, **tuning})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5,
                         "queue.buffering.max.messages": 1_000_000})
    windows: dict[str, tuple[int, dict[str, list[float]]]] = {}
    seen = 0
    while seen < readings:
        msgs = consumer.consume(5000, 0.1)
        if msgs and seen == 0:
            mark_first(stats)
        for m in msgs:
            if m.error() is not None:
                continue
            r = orjson.loads(m.value())
            ts = int(datetime.fromisoformat(r["ts"]).timestamp() * 1000)
            start = ts - ts % WINDOW_MS
            sensor = r["sensor_id"]
            cur = windows.get(sensor)
            if cur is None or cur[0] != start:
                if cur is not None:
                    producer.produce(out, orjson.dumps(finish(cur[1], sensor, cur[0])),
                                     sensor.encode())
                cur = windows[sensor] = (start, {})
            fold(cur[1], r["values"])
            seen += 1
        producer.poll(0)
    for sensor, (start, acc) in windows.items():
        producer.produce(out, orjson.dumps(finish(acc, sensor, start)), sensor.encode())
    producer.flush(60)
    consumer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5],
         int(sys.argv[6]) if len(sys.argv) > 6 else None)
