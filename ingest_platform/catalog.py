"""The dataset catalog: YAML files that declare which Kafka topics become which Delta tables.

A catalog is one YAML file or a folder of them. Each file has optional ``defaults`` (merged into each of its
datasets) and a list of ``datasets``. Every error names the file, the dataset and the field, so a user can
fix the input without reading code; nothing is ingested from a catalog that does not validate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: libyaml's safe loader when PyYAML has it (10x faster on a catalog of 1,000 datasets), else the Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
OWNER = re.compile(r"^(team:[A-Za-z0-9_-]+|[^@\s]+@[^@\s]+\.[^@\s]+)$")
TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")

#: Partition columns the engine derives from the event time (UTC).
DERIVED_PARTITIONS = ("year", "month", "day", "hour", "date")
#: Column names the engine writes itself; no record field may use them.
RESERVED_COLUMNS = (
    "_kafka_topic",
    "_kafka_partition",
    "_kafka_offset",
    "_kafka_timestamp",
    "_kafka_key",
    "_event_time",
    "_ingested_at",
)
RESERVED_PREFIX = "_kafka_"
#: Prefix of the engine's change-data-capture columns (docs/DESIGN.md §9): ``_cdc_op``, ``_cdc_position``…
CDC_PREFIX = "_cdc_"
#: Suffix of dead-letter tables (``<name>_dlq``); no dataset name may end with it.
DLQ_SUFFIX = "_dlq"
#: Types a field may be given under ``schema:`` (Delta primitive types; ``decimal(p,s)`` takes its precision
#: and scale in the name). docs/DESIGN.md §9.5 says which JSON values each one reads.
FIELD_TYPES = ("string", "long", "integer", "double", "float", "boolean", "timestamp", "date", "binary", "decimal(p,s)")
#: Units of epoch numbers read as ``timestamp`` (``{type: timestamp, unit: ms}``).
TIMESTAMP_UNITS = ("s", "ms", "us", "ns")
#: How a JSON string holds a ``decimal(p,s)`` or ``binary`` value: its text / UTF-8 bytes, or base64 of the
#: bytes (Kafka Connect's encoding of Decimal and bytes values without the converter's schema).
ENCODINGS = ("text", "base64")
_DECIMAL = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
MAX_DECIMAL_PRECISION = 38


class FieldType(str):
    """A field's declared type: the type's name (a ``str``: ``"long"``, ``"decimal(12,2)"``) plus how its JSON
    values are read: ``unit`` of epoch numbers (timestamp), ``encoding`` of strings (decimal, binary).

    Written in the catalog as ``price: decimal(12,2)`` or ``created_at: {type: timestamp, unit: ms}``. Kafka
    Connect schemas (``engines/connect_schema.py``) also give ``byte``, ``short``, ``time`` (a time of day,
    stored as text), ``struct`` (``children``) and ``array`` (``element``), which the catalog does not offer.
    """

    kind: str
    precision: int | None
    scale: int | None
    unit: str | None
    encoding: str | None
    children: Mapping[str, FieldType] | None
    element: FieldType | None

    def __new__(cls, kind: str, *, precision: int | None = None, scale: int | None = None, unit: str | None = None,
                encoding: str | None = None, children: Mapping[str, FieldType] | None = None,
                element: FieldType | None = None) -> FieldType:  # fmt: skip
        if kind == "decimal":
            name = f"decimal({precision},{scale})"
        elif kind == "struct":
            name = "struct<" + ",".join(f"{k}:{v}" for k, v in (children or {}).items()) + ">"
        elif kind == "array":
            name = f"array<{element}>"
        else:
            name = kind
        self = super().__new__(cls, name)
        self.kind, self.precision, self.scale, self.unit, self.encoding = kind, precision, scale, unit, encoding
        self.children, self.element = children, element
        return self

    def __repr__(self) -> str:
        options = "".join(f", {k}={v!r}" for k, v in (("unit", self.unit), ("encoding", self.encoding)) if v)
        return f"FieldType({str(self)!r}{options})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FieldType):
            return (str(self), self.unit, self.encoding) == (str(other), other.unit, other.encoding)
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return str.__hash__(self)

    @classmethod
    def parse(cls, value: object) -> FieldType:
        """A ``schema:`` entry: a type name, or ``{type: <name>, unit: <unit>, encoding: <encoding>}`` (a
        ``description`` beside them is taken off first by ``Dataset``, into ``column_descriptions``)."""
        if isinstance(value, FieldType):
            return value
        options: dict[str, object] = {}
        if isinstance(value, Mapping):
            unknown = set(value) - {"type", "precision", "scale", "unit", "encoding"}
            if unknown:
                hint = ""
                if any(re.match(r"^\d+\s*\)$", str(key)) for key in unknown):  # {type: decimal(12,2)}: YAML split it
                    hint = "; in a {...} mapping quote the type, 'decimal(12,2)', or write {type: decimal, " \
                           "precision: 12, scale: 2}"  # fmt: skip
                raise ValueError(f"unknown key(s) {sorted(map(str, unknown))} (allowed: type, precision, scale, "
                                 f"unit, encoding){hint}")  # fmt: skip
            options = {k: v for k, v in value.items() if k != "type"}
            value = value.get("type")
        if not isinstance(value, str):
            raise ValueError(f"a type name or {{type: ..., unit: ..., encoding: ...}} is expected, got {value!r}")
        name = value.strip().lower()
        precision = scale = None
        decimal = _DECIMAL.match(name)
        if name == "decimal" and ("precision" in options or "scale" in options):
            decimal = _DECIMAL.match(f"decimal({options.pop('precision', '')},{options.pop('scale', 0)})")
            if decimal is None:
                raise ValueError("decimal precision and scale must be whole numbers, e.g. precision: 12, scale: 2")
        elif "precision" in options or "scale" in options:
            raise ValueError(f"'precision' and 'scale' belong to type decimal (write it as decimal(12,2) or "
                             f"{{type: decimal, precision: 12, scale: 2}}), not to {value}")  # fmt: skip
        if decimal:
            precision, scale = int(decimal.group(1)), int(decimal.group(2))
            if not 1 <= precision <= MAX_DECIMAL_PRECISION:
                raise ValueError(f"decimal precision must be 1 to {MAX_DECIMAL_PRECISION}, got {precision}")
            if scale > precision:
                raise ValueError(f"decimal scale ({scale}) must not exceed its precision ({precision})")
            name = "decimal"
        elif name.startswith("decimal"):
            raise ValueError(f"'{value}' needs a precision and a scale, e.g. decimal(12,2)")
        elif name not in FIELD_TYPES:
            raise ValueError(f"unknown type '{value}' (allowed: {', '.join(repr(t) for t in FIELD_TYPES)})")
        unit, encoding = options.get("unit"), options.get("encoding")
        if unit is not None:
            if name != "timestamp":
                raise ValueError(f"'unit' applies to timestamp fields only (epoch numbers), not to {value}")
            if unit not in TIMESTAMP_UNITS:
                raise ValueError(f"unknown unit {unit!r} (allowed: {', '.join(map(repr, TIMESTAMP_UNITS))})")
        if encoding is not None:
            if name not in ("decimal", "binary"):
                raise ValueError(f"'encoding' applies to decimal and binary fields only, not to {value}")
            if encoding not in ENCODINGS:
                raise ValueError(f"unknown encoding {encoding!r} (allowed: {', '.join(map(repr, ENCODINGS))})")
        return cls(name, precision=precision, scale=scale, unit=unit, encoding=encoding)  # type: ignore[arg-type]


class CatalogError(ValueError):
    """Invalid catalog input. ``str()`` reads ``<file>: dataset '<name>': field '<field>': <problem>``."""

    def __init__(self, file: str | Path, problem: str, dataset: str | None = None, field: str | None = None):
        self.file = str(file)
        self.dataset = dataset
        self.field = field
        self.problem = problem
        where = [self.file]
        if dataset is not None:
            where.append(f"dataset '{dataset}'")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(": ".join([*where, problem]))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FileSizeTarget(_Strict):
    """Target size of data files in MB; the guide's 128 MB–1 GB unless a dataset sets its own."""

    min: float = Field(128, gt=0)
    max: float = Field(1024, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> FileSizeTarget:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class Slo(_Strict):
    throughput_rps: float = Field(1000, gt=0)
    latency_s: float = Field(30, gt=0)
    file_size_mb: FileSizeTarget = FileSizeTarget()
    freshness_s: float | None = Field(None, gt=0)


class ExpectedLoad(_Strict):
    """What the producers are expected to send at peak; drives capacity planning and ``engine: auto``."""

    peak_rps: float = Field(gt=0)
    record_bytes: int = Field(gt=0)


class Dataset(_Strict):
    """One Kafka topic ingested into one Delta table."""

    name: str
    source: str
    topic: str
    format: Literal["json", "debezium"]
    mode: Literal["append", "upsert"] = "append"
    key: tuple[str, ...] = ()
    ordering_field: str | None = None
    event_time_field: str | None = None
    partition_by: tuple[str, ...] = ()
    fields: dict[str, Any] = Field(default_factory=dict, alias="schema")  # name -> FieldType (validated below)
    #: Descriptions from ``schema:`` (``{type: ..., description: ...}``, or ``{description: ...}`` alone to
    #: describe a field whose type is inferred); filled from ``schema:`` only, never written in the catalog.
    column_descriptions: dict[str, str] = Field(default_factory=dict)
    engine: Literal["embedded", "spark", "auto"] = "embedded"
    spark_profile: str | None = None  # deploy/spark/profiles/<name>.yaml; default chosen by DAGSTER_DEPLOYMENT
    max_records_per_run: int = Field(1_000_000, gt=0)
    max_batch_bytes: int = Field(256 * 1024 * 1024, gt=0)
    consumer_group: str | None = None
    slo: Slo = Slo()
    expected: ExpectedLoad | None = None
    lag_threshold: int | None = Field(None, gt=0)  # records behind that make the lag sensor request a run
    on_data_loss: Literal["fail", "skip"] = "fail"  # retention gap: fail loudly, or record the gap and go on
    delete_mode: Literal["hard", "soft"] = "hard"  # upsert deletes: remove the row, or flag it (_cdc_deleted)
    schema_evolution: Literal["additive", "strict", "quarantine"] = "additive"  # docs/DESIGN.md §9.4
    max_dlq_ratio: float = Field(0.0, ge=0, le=1)  # share of a batch that may go to <name>_dlq; 0 = fail instead
    vacuum_retention_hours: int = Field(168, ge=0)  # files no longer in the table are deleted after this
    # Continuous ingestion (docs/DESIGN.md §10): served by a stream process instead of runs.
    continuous: bool = False
    trigger_interval_s: float = Field(30, gt=0)  # a micro-batch closes this long after its first record
    stream_group: str | None = None  # the datasets one stream process serves together; default: the source
    materialization_interval_s: float = Field(60, gt=0)  # how often the Dagster layer reports a stream's commits
    # Who runs the group's stream: a Dagster run kept alive by the supervisor sensor, or an external workload
    # (the Kubernetes stream workers) that the supervisor leaves alone. One value per stream group.
    stream_runner: Literal["dagster", "external"] = "dagster"
    description: str | None = None
    owners: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _split_descriptions(cls, data: Any) -> Any:
        """``schema:`` entries may be mappings with a ``description``: it moves to ``column_descriptions`` and
        the rest stays the field's type (``{type: double}`` is ``double``; ``{description: ...}`` alone types
        nothing)."""
        if not isinstance(data, Mapping):
            return data
        if "column_descriptions" in data:
            raise _FieldError("column_descriptions", "describe columns under 'schema:' as "
                              "{name: {type: ..., description: ...}} (or {description: ...} alone)")  # fmt: skip
        key = "schema" if "schema" in data else "fields"
        schema = data.get(key)
        if not isinstance(schema, Mapping):
            return data
        types, descriptions = {}, {}
        for name, declared in schema.items():
            if isinstance(declared, Mapping) and "description" in declared:
                text = declared["description"]
                if not isinstance(text, str) or not text.strip():
                    raise _FieldError(f"schema.{name}.description", f"must be a non-empty text, got {text!r}")
                descriptions[str(name)] = text.strip()
                declared = {k: v for k, v in declared.items() if k != "description"}
                if not declared:
                    continue
            if isinstance(declared, Mapping) and set(declared) == {"type"}:
                declared = declared["type"]
            types[name] = declared
        return {**data, key: types, "column_descriptions": descriptions}

    @field_validator("name", "source", "stream_group")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not IDENTIFIER.match(value):
            raise ValueError(f"'{value}' must start with a letter and hold only letters, digits and '_'")
        return value

    @field_validator("name")
    @classmethod
    def _not_dead_letter_name(cls, value: str) -> str:
        if value.endswith(DLQ_SUFFIX):
            raise ValueError(f"'{value}' ends with '{DLQ_SUFFIX}', the suffix of dead-letter tables; pick another name")
        return value

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not TOPIC_NAME.match(value) or value in (".", ".."):
            raise ValueError(f"'{value}' is not a valid Kafka topic name (letters, digits, '.', '_', '-')")
        return value

    @field_validator("fields")
    @classmethod
    def _field_types(cls, value: dict[str, Any]) -> dict[str, FieldType]:
        types = {}
        for name, declared in value.items():
            try:
                _check_not_reserved(name)
                types[name] = FieldType.parse(declared)
            except ValueError as error:
                raise _FieldError(f"schema.{name}", str(error)) from None
        return types

    @field_validator("owners")
    @classmethod
    def _owners(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for owner in value:
            if not (OWNER.match(owner)):
                raise ValueError(f"owner '{owner}' must be an email address or 'team:<name>'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Dataset:
        seen: set[str] = set()
        for column in self.partition_by:
            if column in seen:
                raise _FieldError("partition_by", f"'{column}' is listed twice")
            seen.add(column)
            if column not in DERIVED_PARTITIONS and column not in self.fields:
                raise _FieldError(
                    "partition_by",
                    f"'{column}' is neither a derived time column ({', '.join(DERIVED_PARTITIONS)}) "
                    f"nor a field declared under 'schema:' (declare it there with its type)",
                )
        if self.mode == "upsert" and not self.key and self.format != "debezium":
            raise _FieldError("key", "mode 'upsert' needs the record key fields, e.g. key: [id]")
        if self.delete_mode == "soft" and (self.mode != "upsert" or self.format != "debezium"):
            raise _FieldError(
                "delete_mode", "'soft' applies to Debezium upserts only (format: debezium, mode: upsert)"
            )
        if self.schema_evolution == "quarantine" and self.max_dlq_ratio == 0:
            raise _FieldError(
                "max_dlq_ratio",
                "schema_evolution 'quarantine' sends records to the dead-letter table; allow some with "
                "max_dlq_ratio (e.g. 0.01 for 1 % of a batch)",
            )
        for name in self.key:
            _check_not_reserved(name, field="key")
        if self.ordering_field is not None:
            _check_not_reserved(self.ordering_field, field="ordering_field")
        if self.event_time_field is not None:
            _check_not_reserved(self.event_time_field, field="event_time_field")
        return self

    @property
    def asset_path(self) -> list[str]:
        return ["lake", self.source, self.name]

    @property
    def table_path(self) -> str:
        """Table location relative to the lake root."""
        return f"{self.source}/{self.name}"

    @property
    def dlq_table_path(self) -> str:
        """Dead-letter table location relative to the lake root (docs/DESIGN.md §9.3)."""
        return f"{self.source}/{self.name}{DLQ_SUFFIX}"

    @property
    def dlq_name(self) -> str:
        """The dead-letter table's name, also the dataset part of its ledger app ids."""
        return f"{self.name}{DLQ_SUFFIX}"

    @property
    def pipeline(self) -> str:
        """The stream group: the datasets one stream process serves together, and the metrics' ``pipeline``."""
        return self.stream_group or self.source

    @property
    def group_id(self) -> str:
        """Kafka consumer group used for monitoring commits (never read back for correctness)."""
        return self.consumer_group or f"ingest-platform.{self.source}.{self.name}"


class _FieldError(ValueError):
    """A model-level problem that belongs to one field (so the error can name it)."""

    def __init__(self, field: str, problem: str):
        self.field = field
        super().__init__(problem)


def is_reserved(name: str) -> bool:
    """Whether ``name`` belongs to the engine's own columns (docs/DESIGN.md §3, §9)."""
    return name.startswith((RESERVED_PREFIX, CDC_PREFIX)) or name in RESERVED_COLUMNS


def _check_not_reserved(name: str, field: str | None = None) -> None:
    if is_reserved(name):
        problem = (
            f"'{name}' is reserved for the engine's own columns "
            f"({RESERVED_PREFIX}*, {CDC_PREFIX}*, _event_time, _ingested_at)"
        )
        raise _FieldError(field, problem) if field else ValueError(problem)


class Catalog(_Strict):
    datasets: tuple[Dataset, ...]
    files: tuple[str, ...]

    def get(self, name: str) -> Dataset:
        for dataset in self.datasets:
            if name in (dataset.name, f"{dataset.source}/{dataset.name}", "/".join(dataset.asset_path)):
                return dataset
        known = ", ".join(d.name for d in self.datasets) or "none"
        raise KeyError(f"no dataset named '{name}' in the catalog (known: {known})")


def load_catalog(path: str | Path) -> Catalog:
    """Load and validate a catalog file, or every ``*.yaml``/``*.yml`` file of a folder (sorted by name)."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
        if not files:
            raise CatalogError(root, "the folder holds no .yaml or .yml catalog file")
    elif root.is_file():
        files = [root]
    else:
        raise CatalogError(root, "no such catalog file or folder (set INGEST_CATALOG to a file or folder)")

    datasets: list[Dataset] = []
    where: dict[str, Path] = {}
    for file in files:
        for dataset in _load_file(file):
            if dataset.name in where:
                raise CatalogError(
                    file, f"duplicate dataset name, already declared in {where[dataset.name]}", dataset.name, "name"
                )
            where[dataset.name] = file
            datasets.append(dataset)
    check_stream_groups(datasets, where)
    return Catalog(datasets=tuple(datasets), files=tuple(str(f) for f in files))


def check_stream_groups(datasets: Iterable[Dataset], files: Mapping[str, str | Path]) -> None:
    """The continuous datasets of one stream group run in one process, so they agree on ``stream_runner``; the
    error names the first dataset that disagrees (its file, the field) and one it disagrees with."""
    first: dict[str, Dataset] = {}
    for dataset in datasets:
        if not dataset.continuous:
            continue
        other = first.setdefault(dataset.pipeline, dataset)
        if other.stream_runner != dataset.stream_runner:
            raise CatalogError(
                files[dataset.name],
                f"'{dataset.stream_runner}' differs from '{other.stream_runner}' of dataset '{other.name}' "
                f"({files[other.name]}) in the same stream group '{dataset.pipeline}'; the continuous datasets of a "
                "stream group are served by one process: give them one stream_runner, or another stream_group",
                dataset.name,
                "stream_runner",
            )


def parse_catalog_text(text: str, file: str | Path = "<string>") -> list[Dataset]:
    """Validate catalog YAML given as text (``file`` is only used in error messages)."""
    try:
        document = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CatalogError(file, f"unreadable YAML{at}: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(document, Mapping):
        raise CatalogError(file, "expected a mapping with 'datasets:' (and optional 'defaults:') at the top level")
    unknown = set(document) - {"defaults", "datasets"}
    if unknown:
        raise CatalogError(file, f"unknown top-level key(s) {sorted(unknown)}; expected 'defaults' and 'datasets'")
    defaults = document.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise CatalogError(file, "'defaults' must be a mapping", field="defaults")
    entries = document.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise CatalogError(file, "'datasets' must be a non-empty list", field="datasets")

    datasets = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        named = isinstance(entry, Mapping) and isinstance(entry.get("name"), str)
        label = entry["name"] if named else f"#{index + 1}"
        if not isinstance(entry, Mapping):
            raise CatalogError(file, "each dataset must be a mapping", dataset=label)
        dataset = _validate(file, label, _merge(defaults, entry))
        if dataset.name in seen:
            raise CatalogError(file, "duplicate dataset name in this file", dataset.name, "name")
        seen.add(dataset.name)
        datasets.append(dataset)
    check_stream_groups(datasets, {d.name: file for d in datasets})
    return datasets


def _load_file(file: Path) -> list[Dataset]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CatalogError(file, f"cannot read the file: {error}") from None
    return parse_catalog_text(text, file)


def _merge(defaults: Mapping[str, Any], entry: Mapping[str, Any]) -> dict[str, Any]:
    """Dataset entry over defaults; nested mappings (``slo``) merge key by key."""
    merged: dict[str, Any] = dict(defaults)
    for key, value in entry.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validate(file: Path | str, label: str, raw: dict[str, Any]) -> Dataset:
    try:
        return Dataset.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        problem = first["msg"].removeprefix("Value error, ")
        ctx_error = (first.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _FieldError):
            field, problem = ctx_error.field, str(ctx_error)
        if first["type"] == "missing":
            problem = "is required"
        elif first["type"] == "extra_forbidden":
            problem = f"unknown field (allowed: {', '.join(sorted(_allowed_fields(first['loc'])))})"
        elif "input" in first and first["type"] not in ("value_error",):
            problem = f"{problem} (got {first['input']!r})"
        more = len(error.errors()) - 1
        if more:
            problem += f" (and {more} more problem{'s' if more > 1 else ''} in this dataset)"
        raise CatalogError(file, problem, label, field) from None


def _allowed_fields(loc: Iterable[Any]) -> set[str]:
    model: type[BaseModel] = Dataset
    for part in list(loc)[:-1]:
        annotation = model.model_fields[str(part)].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return {info.alias or name for name, info in model.model_fields.items() if name != "column_descriptions"}
