"""The offset ledger: which Kafka offsets a Delta table already holds.

The ledger lives in the table's own Delta log as application transactions (``txn`` actions), one per Kafka
partition: app id ``<dataset>-<partition>``, version = the last offset that the table covers on that
partition (inclusive). The transaction that adds the data also carries the ``txn`` actions, so data and
offsets become visible in one atomic commit. See docs/DESIGN.md, "Offset protocol".

Both engines speak this protocol: deltalake writes many ``txn`` actions in one commit
(``CommitProperties(app_transactions=...)``); delta-spark writes one per commit (``txnAppId``/``txnVersion``).
Both read them back (``DeltaTable.transaction_version``; delta-spark's snapshot ``transactions``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from deltalake import DeltaTable, Transaction


def app_id(dataset: str, partition: int) -> str:
    """The Delta application-transaction id that records ``dataset``'s position on one Kafka partition."""
    return f"{dataset}-{partition}"


def read_ledger(table: DeltaTable | None, dataset: str, partitions: Iterable[int]) -> dict[int, int]:
    """Last offset the table holds per partition; partitions the table has never seen are absent."""
    if table is None:
        return {}
    ledger: dict[int, int] = {}
    for partition in partitions:
        version = table.transaction_version(app_id(dataset, partition))
        if version is not None:
            ledger[partition] = int(version)
    return ledger


def ledger_transactions(dataset: str, last_offsets: Mapping[int, int]) -> list[Transaction]:
    """The ``txn`` actions that record ``last_offsets`` (partition -> last offset covered, inclusive)."""
    return [
        Transaction(app_id=app_id(dataset, partition), version=int(offset))
        for partition, offset in sorted(last_offsets.items())
    ]
