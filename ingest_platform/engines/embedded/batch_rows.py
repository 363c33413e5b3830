"""One batch of Kafka records -> the rows the embedded engine writes, and the records it dead-letters.

Covers both formats (JSON records, Debezium change events), the key check of upserts and the dataset's
schema policy (docs/DESIGN.md §3, §9). Bad records are set aside only when the dataset dead-letters
(``max_dlq_ratio`` > 0, or ``schema_evolution: quarantine``); otherwise the first one fails the batch with
the message naming it, as it always did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from ingest_platform.catalog import DERIVED_PARTITIONS, Dataset, is_reserved
from ingest_platform.engines import connect_schema
from ingest_platform.engines.changes import CDC_DELETED, CDC_DELETED_AT, CDC_OP, CDC_POSITION, DELETE_OP
from ingest_platform.engines.embedded import decode, typed_values
from ingest_platform.engines.embedded.debezium import fill_key_from_message, read_events
from ingest_platform.engines.run_plan import IngestError
from ingest_platform.lake.dead_letters import BadRecord

#: The engine's columns every table has (docs/DESIGN.md §3).
ENGINE_COLUMN_TYPES = {
    "_kafka_topic": pa.string(),
    "_kafka_partition": pa.int32(),
    "_kafka_offset": pa.int64(),
    "_kafka_timestamp": decode.UTC_MICROS,
    "_kafka_key": pa.binary(),
    "_event_time": decode.UTC_MICROS,
    "_ingested_at": decode.UTC_MICROS,
}


#: Row types of the Connect schemas seen by this process (one per table and DDL version; bounded).
_SCHEMAS = connect_schema.SchemaCache()


@dataclass
class KafkaRecords:
    """The records of a batch that have a value (null values are counted, never decoded)."""

    topic: str
    values: list[bytes] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)

    def locate(self, dataset: str, index: int) -> str:
        return f"dataset '{dataset}', record {self.topic}[{self.partitions[index]}] offset {self.offsets[index]}"

    def bad_record(self, index: int, reason: str) -> BadRecord:
        return BadRecord(
            self.partitions[index], self.offsets[index], self.timestamps[index], self.keys[index],
            self.values[index], reason,
        )  # fmt: skip


@dataclass
class BatchRows:
    rows: pa.Table  # record fields, derived partition columns and the engine's columns
    bad: list[BadRecord]
    key: tuple[str, ...]  # upsert key columns (the catalog's, or the Debezium message key's)


def to_rows(dataset: Dataset, records: KafkaRecords, table_schema: pa.Schema | None) -> BatchRows:
    """Decode, check and complete one batch. Raises ``IngestError`` for what cannot be dead-lettered."""
    return _BatchDecoder(dataset, records, table_schema).run()


class _BatchDecoder:
    def __init__(self, dataset: Dataset, records: KafkaRecords, table_schema: pa.Schema | None):
        self.dataset = dataset
        self.records = records
        self.table_schema = table_schema
        self.tolerant = dataset.max_dlq_ratio > 0
        self.bad: dict[int, str] = {}  # record index -> reason
        self.kept: list[int] = []  # record index of each decoded row
        self.schemas = _SCHEMAS

    def fail(self, problem: str) -> IngestError:
        return IngestError(f"{problem} Nothing was committed for this batch.")

    def locate(self, row: int) -> str:
        return self.records.locate(self.dataset.name, self.kept[row])

    def run(self) -> BatchRows:
        dataset = self.dataset
        try:
            if dataset.format == "debezium":
                fields, key, extra = self._debezium()
            else:
                fields, key, extra = self._json(), dataset.key, {}
            fields = decode.normalize_for_delta(fields)
            fields = self._check_key(fields, key)
            fields = self._apply_schema_policy(fields)
        except decode.DecodeError as error:
            message = str(error)
            if not message.startswith("dataset '"):
                message = f"dataset '{dataset.name}', {self._describe()}: {message}"
            raise self.fail(message + self._dlq_hint()) from None
        except decode.SchemaConflict as error:
            raise self.fail(f"dataset '{dataset.name}': {error}{self._dlq_hint()}") from None
        except pa.ArrowException as error:  # a conversion nothing above foresaw: still named, never raw
            raise self.fail(f"dataset '{dataset.name}', {self._describe()}: the batch could not be decoded "
                            f"({type(error).__name__}: {error}).") from None  # fmt: skip
        good = pa.array([index not in self.bad for index in self.kept], pa.bool_())
        fields = fields.filter(good)
        extra = {name: column.filter(good) for name, column in extra.items()}
        self.kept = [index for index in self.kept if index not in self.bad]
        bad = [self.records.bad_record(index, reason) for index, reason in sorted(self.bad.items())]
        return BatchRows(self._complete(fields, extra), bad, tuple(key))

    # -- decoding ---------------------------------------------------------------------------------------------

    def _read(self, values: Sequence[bytes], explicit: pa.Schema, known: pa.Schema,
              indices: Sequence[int] | None = None) -> tuple[pa.Table, list[int]]:  # fmt: skip
        """Bulk read of ``values`` (records ``indices``, default all); when it fails and the dataset
        dead-letters, set the unreadable values aside. Returns the rows and the record index of each."""
        indices = list(range(len(values))) if indices is None else list(indices)
        locate = lambda i: self.records.locate(self.dataset.name, indices[i])  # noqa: E731
        try:
            return decode.read_json_values(values, explicit), indices
        except pa.ArrowInvalid as error:
            if not self.tolerant:
                decode.raise_unreadable(values, locate, error, known)
        except (pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass  # Arrow could not join the types it inferred block by block: read in halves (below)
        table, kept, bad = decode.decode_json_tolerant(values, known)
        if bad and not self.tolerant:
            first = min(bad)
            raise decode.DecodeError(f"{locate(first)}: {bad[first]}")
        self.bad.update({indices[i]: reason for i, reason in bad.items()})
        return table, [indices[i] for i in kept]

    def _record_types(self) -> dict[str, pa.DataType]:
        """The table's record fields (not the engine's columns), whose types new values must fit."""
        if self.table_schema is None:
            return {}
        derived = set(self.dataset.partition_by) & set(DERIVED_PARTITIONS)
        return {f.name: f.type for f in self.table_schema if not is_reserved(f.name) and f.name not in derived}

    def _json(self) -> pa.Table:
        fields = self.dataset.fields
        table, self.kept = self._read(
            self.records.values, decode.declared_schema(fields), decode.declared_schema(fields, self._record_types())
        )
        decode.check_not_reserved(table.column_names)
        return self._convert(table, fields)

    def _convert(self, table: pa.Table, fields) -> pa.Table:
        """Declared fields as their column types; a value that does not convert makes its record bad."""
        table, problems = decode.convert_declared(table, fields)
        for row, reason in sorted(problems.items()):
            self._reject(row, reason)
        return table

    def _debezium(self) -> tuple[pa.Table, tuple[str, ...], dict[str, pa.Array]]:
        """Events grouped by their Connect schema (none: bare events), each group read against its row types
        (docs/DESIGN.md §9.5); the groups' rows are then one table (a DDL in the batch adds columns)."""
        groups: dict[bytes | None, tuple[list[int], list[bytes]]] = {}
        for index, value in enumerate(self.records.values):
            wrapped = connect_schema.split(value)
            schema = None if wrapped is None or wrapped.schema == b"null" else wrapped.schema
            members = groups.setdefault(schema, ([], []))
            members[0].append(index)
            members[1].append(value if wrapped is None else wrapped.payload)
        self.kept = []  # each group appends the records of its rows, in the order the groups' rows are joined
        parts = [self._debezium_group(schema, indices, payloads) for schema, (indices, payloads) in groups.items()]
        images = _concat([part[1] for part in parts])
        extra = {name: pa.concat_arrays([part[2][name] for part in parts]) for name in parts[0][2]}
        key = self.dataset.key
        if not key:
            images, key = self._key_from_messages(images)
        return images, key, extra

    def _debezium_group(self, schema: bytes | None, indices: list[int],
                        payloads: list[bytes]) -> tuple[list[int], pa.Table, dict[str, pa.Array]]:  # fmt: skip
        """(record indices, row images, op/position/event time) of events sharing one Connect schema; the
        records of its rows are appended to ``kept``."""
        fields = self.dataset.fields
        exact = {}
        if schema is not None:
            try:
                exact = self.schemas.image_types(schema)
            except connect_schema.ConnectSchemaError as error:
                first = self.records.locate(self.dataset.name, indices[0])
                raise decode.DecodeError(f"{first} (and {len(indices) - 1} more records with the same Connect "
                                         f"schema): {error}") from None  # fmt: skip
        declared = decode.declared_schema(fields, exact=exact)
        known = decode.declared_schema(fields, self._record_types(), exact=exact)

        def envelope(image: pa.Schema) -> pa.Schema:
            if not len(image):
                return pa.schema([])
            return pa.schema([("before", pa.struct(list(image))), ("after", pa.struct(list(image)))])

        table, kept = self._read(payloads, envelope(declared), envelope(known), indices)
        offset = len(self.kept)  # this group's rows follow the earlier groups' rows
        self.kept += kept
        events = read_events(table)
        for row, reason in sorted(events.bad.items()):
            self._reject(offset + row, reason)
        images = events.images
        decode.check_not_reserved(images.column_names)
        table, problems = decode.convert_declared(images, {**exact, **fields})
        for row, reason in sorted(problems.items()):
            self._reject(offset + row, reason)
        extra = {CDC_OP: events.op, CDC_POSITION: events.position, "_event_ms": events.event_ms}
        return kept, table, extra

    def _key_from_messages(self, images: pa.Table) -> tuple[pa.Table, tuple[str, ...]]:
        """No ``key:`` in the catalog: the message key (a JSON object, maybe wrapped) names and fills it."""
        raw = []
        for index in self.kept:
            key = self.records.keys[index] or b"{}"
            wrapped = connect_schema.split(key)
            raw.append(key if wrapped is None else wrapped.payload)
        try:
            keys = decode.read_json_values(raw, pa.schema([]))
        except pa.ArrowInvalid as error:
            raise decode.DecodeError(
                f"the message keys are not JSON objects ({error}); set key: [...] in the catalog to take the key "
                "from the row image"
            ) from None
        return fill_key_from_message(images, decode.normalize_for_delta(keys))

    # -- checks -----------------------------------------------------------------------------------------------

    def _check_key(self, fields: pa.Table, key: Sequence[str]) -> pa.Table:
        if self.dataset.mode != "upsert":
            return fields
        if not key:
            raise decode.DecodeError("no key: the records carry no message key and the catalog sets no key: [...]")
        missing = pa.array([False] * fields.num_rows, pa.bool_())
        for name in key:
            if name in fields.column_names:
                missing = pc.or_(missing, fields[name].is_null())
            else:
                missing = pa.array([True] * fields.num_rows, pa.bool_())
        for row in pc.indices_nonzero(missing).to_pylist():
            self._reject(row, f"no value for key field(s) {', '.join(key)}")
        return fields

    def _apply_schema_policy(self, fields: pa.Table) -> pa.Table:
        """additive / strict / quarantine (docs/DESIGN.md §9.4) against the table's current schema."""
        policy = self.dataset.schema_evolution
        if self.table_schema is None:
            return fields
        table_types = self._record_types()
        new, changed = decode.schema_differences(fields.schema, pa.schema(list(table_types.items())))
        if policy == "strict" and (new or changed):
            named = [f"'{n}' ({decode.delta_type_name(fields[n].type)})" for n in new]
            parts = [f"new field(s) {', '.join(named)}"] if new else []
            if changed:
                kinds = [
                    f"'{n}' ({decode.delta_type_name(fields[n].type)}, the table stores {decode.delta_type_name(t)})"
                    for n, t in changed.items()
                ]
                parts.append(f"changed type(s) {', '.join(kinds)}")
            raise self.fail(
                f"dataset '{self.dataset.name}', {self._describe()} do not match the table's schema "
                f"(schema_evolution: strict): {'; '.join(parts)}. Change the table deliberately (or use "
                "schema_evolution: additive), then re-run."
            )
        if policy == "quarantine" and new:
            for name in new:
                for row in pc.indices_nonzero(fields[name].is_valid()).to_pylist():
                    self._reject(row, f"field '{name}' is not in the table (schema_evolution: quarantine)")
            fields = fields.drop_columns(new)
        if self.tolerant:  # without dead-lettering, align_to_table fails on the first changed type
            for name, target in changed.items():
                converted, rows = decode.salvage(fields[name], target)
                for row in rows:
                    self._reject(
                        row,
                        f"field '{name}' has type {decode.delta_type_name(fields[name].type)}, the table stores "
                        f"{decode.delta_type_name(target)}",
                    )
                fields = fields.set_column(fields.column_names.index(name), pa.field(name, target), converted)
        return decode.align_to_table(fields, pa.schema(list(table_types.items())), self._describe())

    def _dlq_hint(self) -> str:
        if self.tolerant:
            return ""
        return (
            f" (max_dlq_ratio is 0; set it, e.g. to 0.01, to send such records to {self.dataset.dlq_table_path} "
            "instead of failing)"
        )

    def _reject(self, row: int, reason: str) -> None:
        """Dead-letter decoded row ``row``; without dead-lettering the batch fails naming it."""
        if not self.tolerant:
            raise decode.DecodeError(f"{self.locate(row)}: {reason}")
        self.bad.setdefault(self.kept[row], reason)

    def _describe(self) -> str:
        records = self.records
        spans: dict[int, tuple[int, int]] = {}
        for partition, offset in zip(records.partitions, records.offsets):
            low, high = spans.get(partition, (offset, offset))
            spans[partition] = (min(low, offset), max(high, offset))
        return "records " + ", ".join(f"{records.topic}[{p}] {lo}..{hi}" for p, (lo, hi) in sorted(spans.items()))

    # -- engine columns ---------------------------------------------------------------------------------------

    def _complete(self, fields: pa.Table, extra: dict[str, pa.Array]) -> pa.Table:
        """Declared-but-absent fields as nulls, derived partitions, the reserved and ``_cdc_*`` columns."""
        dataset, records, kept = self.dataset, self.records, self.kept
        n = len(kept)
        for name, kind in dataset.fields.items():
            if name not in fields.column_names:
                column_type = typed_values.arrow_type(kind)
                fields = fields.append_column(pa.field(name, column_type), pa.nulls(n, column_type))
        indices = pa.array(kept, pa.int64())

        def take(values: list, kind: pa.DataType) -> pa.Array:
            return pc.take(pa.array(values, kind), indices)

        stamps = take(records.timestamps, pa.int64())
        kafka_time = _micros_from_ms(pc.if_else(pc.less(stamps, 0), None, stamps))
        event_time = kafka_time
        if "_event_ms" in extra:
            event_time = pc.coalesce(_micros_from_ms(extra["_event_ms"]), kafka_time)
        if dataset.event_time_field and dataset.event_time_field in fields.column_names:
            locate = self.locate
            try:
                parsed = decode.parse_timestamps(fields[dataset.event_time_field], dataset.event_time_field, locate)
            except decode.DecodeError as error:
                raise self.fail(str(error) + ".") from None
            event_time = pc.coalesce(parsed, event_time)
        derived = _derived_partitions(event_time)
        for name in dataset.partition_by:
            if name in derived:
                if name in fields.column_names:
                    fields = fields.drop_columns([name])
                fields = fields.append_column(name, derived[name])
        ingested_at = pa.scalar(datetime.now(timezone.utc), decode.UTC_MICROS)
        columns = {
            "_kafka_topic": pa.repeat(pa.scalar(records.topic, pa.string()), n),
            "_kafka_partition": take(records.partitions, pa.int32()),
            "_kafka_offset": take(records.offsets, pa.int64()),
            "_kafka_timestamp": kafka_time,
            "_kafka_key": take(records.keys, pa.binary()),
            "_event_time": event_time,
            "_ingested_at": pa.repeat(ingested_at, n),
        }
        if dataset.format == "debezium":
            columns[CDC_OP] = extra[CDC_OP]
            columns[CDC_POSITION] = extra[CDC_POSITION]
            if dataset.delete_mode == "soft":
                deleted = pc.equal(extra[CDC_OP], DELETE_OP)
                columns[CDC_DELETED] = deleted
                columns[CDC_DELETED_AT] = pc.if_else(deleted, event_time, pa.scalar(None, decode.UTC_MICROS))
        for name, column in columns.items():
            fields = fields.append_column(name, column)
        return fields


def _micros_from_ms(values: pa.Array) -> pa.Array:
    return pc.cast(pc.multiply(pc.cast(values, pa.int64()), 1000), pa.int64()).cast(decode.UTC_MICROS)


def _derived_partitions(event_time: pa.Array) -> dict[str, pa.Array]:
    return {
        "year": pc.year(event_time).cast(pa.int32()),
        "month": pc.month(event_time).cast(pa.int32()),
        "day": pc.day(event_time).cast(pa.int32()),
        "hour": pc.hour(event_time).cast(pa.int32()),
        "date": pc.cast(event_time, pa.date32()),
    }


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Row images of several Connect schemas as one table: columns one lacks are null there; a column whose
    types differ takes the wider one (an ALTER that widened it), else the types are named."""
    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        raise decode.SchemaConflict(
            f"events of different Connect schemas disagree on a column's type ({error})"
        ) from None
