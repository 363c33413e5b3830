"""Realistic demo records (orders, clicks, payments) and a fast producer for them.

Used by ``make demo``, the benchmarks and tests. Records are deterministic for a given seed so a test can
reproduce what it produced.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

from confluent_kafka import Producer

from ingest_platform.kafka.client import KafkaConnection

_COUNTRIES = [("DE", "Berlin"), ("FR", "Paris"), ("US", "Austin"), ("GB", "Leeds"), ("NL", "Utrecht"), ("JP", "Osaka")]
_CURRENCIES = ["EUR", "EUR", "EUR", "USD", "USD", "GBP", "JPY"]
_STATUSES = ["placed", "placed", "placed", "paid", "shipped", "cancelled"]
_PAGES = ["/", "/search", "/product/{sku}", "/cart", "/checkout", "/account", "/product/{sku}/reviews"]
_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/142.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 19_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:145.0) Gecko/20100101 Firefox/145.0",
]


#: Event times lie up to this far before the generation clock, unless ``records`` is given another spread
#: (tests and benchmarks: several hours, so time partitions vary; the demo: seconds, so latency SLOs hold).
DEFAULT_SPREAD_S = 6 * 3600.0


def _when(rng: random.Random, now: datetime, spread_s: float) -> datetime:
    return now - timedelta(seconds=rng.uniform(0, spread_s))


def order(rng: random.Random, index: int, now: datetime, spread_s: float = DEFAULT_SPREAD_S) -> tuple[bytes, bytes]:
    customer = f"c-{rng.randrange(50_000):06d}"
    items = [
        {"sku": f"SKU-{rng.randrange(5000):05d}", "qty": rng.randint(1, 4), "price": round(rng.uniform(2, 180), 2)}
        for _ in range(rng.randint(1, 4))
    ]
    country, city = rng.choice(_COUNTRIES)
    record = {
        "order_id": f"o-{index:09d}",
        "customer_id": customer,
        "created_at": _when(rng, now, spread_s).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "status": rng.choice(_STATUSES),
        "currency": rng.choice(_CURRENCIES),
        "items": items,
        "total": round(sum(i["qty"] * i["price"] for i in items), 2),
        "shipping": {"country": country, "city": city, "express": rng.random() < 0.2},
        "coupon": rng.choice([None, None, None, "WELCOME10", "BF2026"]),
    }
    return customer.encode(), json.dumps(record, separators=(",", ":")).encode()


def click(rng: random.Random, index: int, now: datetime, spread_s: float = DEFAULT_SPREAD_S) -> tuple[bytes, bytes]:
    session = f"s-{rng.randrange(200_000):07x}"
    record = {
        "event_id": f"e-{index:010d}",
        "session_id": session,
        "user_id": rng.choice([None, f"c-{rng.randrange(50_000):06d}"]),
        "event": rng.choice(["page_view", "page_view", "page_view", "click", "add_to_cart", "search"]),
        "url": rng.choice(_PAGES).format(sku=f"SKU-{rng.randrange(5000):05d}"),
        "referrer": rng.choice([None, "https://search.example/", "https://news.example/deals"]),
        "user_agent": rng.choice(_AGENTS),
        "viewport": {"w": rng.choice([390, 1280, 1920]), "h": rng.choice([844, 800, 1080])},
        "duration_ms": rng.randint(20, 30_000),
    }
    return session.encode(), json.dumps(record, separators=(",", ":")).encode()


def payment(rng: random.Random, index: int, now: datetime, spread_s: float = DEFAULT_SPREAD_S) -> tuple[bytes, bytes]:
    payment_id = f"p-{index:09d}"
    record = {
        "payment_id": payment_id,
        "order_id": f"o-{rng.randrange(max(index, 1) * 5):09d}",
        "amount": round(rng.uniform(1, 900), 2),
        "currency": rng.choice(_CURRENCIES),
        "method": rng.choice(["card", "card", "paypal", "sepa", "apple_pay"]),
        "paid_at": int(_when(rng, now, spread_s).timestamp() * 1000),  # epoch milliseconds
        "risk_score": round(rng.random(), 4),
        "three_ds": rng.random() < 0.7,
    }
    return payment_id.encode(), json.dumps(record, separators=(",", ":")).encode()


Generator = Callable[[random.Random, int, datetime, float], tuple[bytes, bytes]]


def padded(size: int) -> Generator:
    """Order-like records padded to about ``size`` bytes (benchmarks ask for ~400-byte records)."""

    def make(rng: random.Random, index: int, now: datetime, spread_s: float = DEFAULT_SPREAD_S) -> tuple[bytes, bytes]:
        key, value = order(rng, index, now, spread_s)
        record = json.loads(value)
        record["note"] = ""
        missing = size - len(json.dumps(record, separators=(",", ":")))
        record["note"] = "x" * max(0, missing)
        return key, json.dumps(record, separators=(",", ":")).encode()

    return make


GENERATORS: dict[str, Generator] = {
    "orders": order,
    "clicks": click,
    "payments": payment,
}


def records(
    kind: str, count: int, seed: int = 7, start: int = 0, spread_s: float = DEFAULT_SPREAD_S, live: bool = False
) -> Iterator[tuple[bytes, bytes]]:
    """``count`` records of ``kind`` (orders, clicks, payments, padded<N>), event times up to ``spread_s``
    before the clock: the start time, or with ``live`` the time each record is made (a steady producer)."""
    make = GENERATORS[kind] if kind in GENERATORS else padded(int(kind.removeprefix("padded")))
    rng = random.Random(seed * 1_000_003 + start)
    now = datetime.now(timezone.utc)
    for index in range(start, start + count):
        if live:
            now = datetime.now(timezone.utc)
        yield make(rng, index, now, spread_s)


def produce(
    kafka: KafkaConnection,
    topic: str,
    items: Iterator[tuple[bytes | None, bytes | None]],
    partition: int | None = None,
) -> int:
    """Produce every (key, value) and wait until all are acknowledged; returns the count. Keys pick partitions."""
    producer = Producer(kafka.producer_config())
    errors: list[str] = []

    def delivered(error, _message) -> None:
        if error is not None:
            errors.append(error.str())

    count = 0
    for key, value in items:
        while True:
            try:
                if partition is None:
                    producer.produce(topic, value=value, key=key, on_delivery=delivered)
                else:
                    producer.produce(topic, value=value, key=key, partition=partition, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)  # local queue full: let deliveries drain
        count += 1
        if count % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    if remaining or errors:
        raise RuntimeError(f"producing to {topic} failed: {remaining} undelivered, errors: {errors[:3]}")
    return count
