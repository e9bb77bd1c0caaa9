"""The results store: every Result, with its steps and checks, in SQLite (WAL) or
PostgreSQL through SQLAlchemy Core. The API is synchronous; async callers wrap it
in asyncio.to_thread. Driver failures surface as StoreError naming the URL with
its password replaced by ***.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from cxtest.errors import StoreError
from cxtest.model import Artifact, CheckResult, Outcome, Result, StepResult

__all__ = ["Store", "create_tables", "metadata", "redact_url"]

SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 10
# Keeps IN (...) lists far below SQLite's and PostgreSQL's bound-parameter limits.
_ID_CHUNK = 500


def _json_text(value: Any) -> str:
    # orjson for the JSON columns: a stress exercise saves about 40 small JSON values per
    # result, and json.dumps was a third of Store.save's time. Values pass _jsonable first.
    return orjson.dumps(value).decode()


_JSON_ENGINE_OPTIONS = {"json_serializer": _json_text}


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in and out, whatever the backend keeps.

    SQLite has no time zone type and compares timestamps as text, so every value
    (stored or used in a WHERE) must be the same naive UTC form there.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        value = _utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# BIGINT would stop SQLite's INTEGER PRIMARY KEY from being the autoincrementing rowid.
_Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

results_table = Table(
    "results",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("run_id", String(64), nullable=False, default=""),
    Column("scenario_id", String(255), nullable=False),
    Column("scenario_name", Text, nullable=False),
    Column("channel", String(32), nullable=False),
    Column("file", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("duration", Float, nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("attempts", Integer, nullable=False, default=1),
    Column("flaky", Boolean, nullable=False, default=False),
    Column("tags", JSON, nullable=False),
    Column("location", String(64), nullable=False),
    Column("measures", JSON, nullable=False),
    Column("checks", JSON, nullable=False),
    Column("artifacts", JSON, nullable=False),
    Index("ix_results_scenario_started", "scenario_id", "started_at"),
    Index("ix_results_run_id", "run_id"),
)

steps_table = Table(
    "steps",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("result_id", _Id, ForeignKey("results.id", ondelete="CASCADE"), nullable=False),
    Column("index", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("started", Float, nullable=False),
    Column("duration", Float, nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("measures", JSON, nullable=False),
    Column("evidence", JSON, nullable=False),
    # PostgreSQL does not index foreign keys by itself; rebuilding Results joins on them.
    Index("ix_steps_result_id", "result_id"),
)

checks_table = Table(
    "checks",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("step_id", _Id, ForeignKey("steps.id", ondelete="CASCADE"), nullable=False),
    Column("name", Text, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("expected", JSON(none_as_null=False)),
    Column("actual", JSON(none_as_null=False)),
    Column("text", Text, nullable=False),
    Index("ix_checks_step_id", "step_id"),
)


# --------------------------------------------------------------------------- URLs and errors

_PASSWORD_IN_NETLOC = re.compile(r"(?P<head>(?:^|://)[^/@:]*:)[^/]*@")
_PASSWORD_IN_QUERY = re.compile(r"(?P<head>[?&]password=)[^&]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL as the user wrote it, with any password shown as ***."""
    url = _PASSWORD_IN_NETLOC.sub(r"\g<head>***@", url)
    return _PASSWORD_IN_QUERY.sub(r"\g<head>***", url)


def _driver_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise StoreError(f"store {redact_url(url)!r} is not a URL: use sqlite:///FILE or postgresql://USER@HOST/DB")
    scheme = scheme.lower()
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        return "postgresql+psycopg://" + rest
    if scheme in ("sqlite", "sqlite+pysqlite"):
        return "sqlite://" + rest
    raise StoreError(
        f"store {redact_url(url)!r}: unsupported database {scheme!r}; use sqlite:///FILE or postgresql://USER@HOST/DB"
    )


def _reason(exc: BaseException, secret: str | None) -> str:
    # The driver's own message, not SQLAlchemy's wrapper: that one carries SQL, bound row data and a docs link.
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(line.strip() for line in str(orig).splitlines() if line.strip()) or type(orig).__name__
    if secret:
        text = text.replace(secret, "***")
    return text


def _hint(dialect: str, reason: str) -> str:
    low = reason.lower()
    if dialect == "sqlite" and ("unable to open" in low or "readonly" in low or "permission" in low):
        return " (check that the folder exists and is writable)"
    if dialect == "postgresql" and ("connection" in low or "could not" in low):
        return " (check that the server is running and the URL names the right host, port, user and database)"
    return ""


# --------------------------------------------------------------------------- values


def _utc(value: datetime) -> datetime:
    # A naive timestamp is taken as UTC: that is what the runner records.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _jsonable(value: Any) -> Any:
    """A value every backend's JSON type accepts; anything else becomes str(value).

    Non-finite floats become strings too: PostgreSQL's JSON rejects NaN and Infinity.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _measures_in(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return {str(k): _jsonable(v) for k, v in (value or {}).items()}


def _measures_out(value: Mapping[str, Any] | None) -> dict[str, Any]:
    # Undo _jsonable's "nan"/"inf" strings: measures are numbers by contract.
    return {k: float(v) if isinstance(v, str) else v for k, v in (value or {}).items()}


def _outcome(value: Outcome | str) -> str:
    return value.value if isinstance(value, Outcome) else Outcome(value).value


def _check_dict(check: CheckResult) -> dict[str, Any]:
    return {
        "name": check.name,
        "outcome": _outcome(check.outcome),
        "expected": _jsonable(check.expected),
        "actual": _jsonable(check.actual),
        "text": check.text,
    }


@functools.lru_cache(maxsize=16)
def _driver_insert(table: Table, dialect: Any) -> tuple[str, list[str], list[Callable[[Any], Any] | None]]:
    """A positional INSERT of every column but the id, as the driver takes it, with each column's bind processor."""
    columns = [column for column in table.columns if column.name != "id"]
    compiled = insert(table).compile(dialect=dialect, column_keys=[column.name for column in columns])
    keys = list(compiled.positiontup or ())
    by_name = {column.name: column for column in columns}
    # A JSON column's processor is the serialiser behind a check for SQLAlchemy's NULL markers, which
    # rows built by save() never hold (None is JSON null in every JSON column here, as it is there).
    return str(compiled), keys, [
        _json_text if isinstance(by_name[key].type, JSON) else by_name[key].type.dialect_impl(dialect).bind_processor(dialect)
        for key in keys
    ]


def _attributes(items: Sequence[Any], *names: str) -> dict[str, list[Any]]:
    """Columns of plain attributes: name -> every item's value."""
    return {name: list(map(operator.attrgetter(name), items)) for name in names}


def _check_from(row: Mapping[str, Any]) -> CheckResult:
    return CheckResult(
        name=row["name"],
        outcome=Outcome(row["outcome"]),
        expected=row["expected"],
        actual=row["actual"],
        text=row["text"],
    )


def _chunks(items: Sequence[int], size: int = _ID_CHUNK) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --------------------------------------------------------------------------- the store


def create_tables(engine: Engine, tables: Sequence[Table] | None = None) -> None:
    """Create missing tables. On PostgreSQL two agents starting at once would both try and one
    would fail on the catalogue's unique index, so creation holds a cluster-wide advisory lock."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7316)")  # any constant shared by all cxtest agents
        metadata.create_all(conn, tables=tables)


class Store:
    """Results history in one database; safe to share between threads."""

    def __init__(self, url: str):
        self.url = url
        self._shown = redact_url(url)
        self._secret: str | None = None
        driver_url = _driver_url(url)
        try:
            parsed = make_url(driver_url)
            self._secret = parsed.password if isinstance(parsed.password, str) and parsed.password else None
            self.dialect = parsed.get_backend_name()
            if self.dialect == "sqlite":
                self.engine = self._sqlite_engine(parsed)
            else:
                self.engine = create_engine(
                    parsed,
                    **_JSON_ENGINE_OPTIONS,
                    # A monitor holds the engine for days; the server may restart underneath it.
                    pool_pre_ping=True,
                    connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
                )
        except StoreError:
            raise
        except (ArgumentError, NoSuchModuleError) as exc:
            raise StoreError(f"store {self._shown!r} is not a usable database URL: {_reason(exc, self._secret)}") from None
        except ValueError as exc:
            # make_url's own parse errors, e.g. a port that is not a number.
            raise StoreError(
                f"store {self._shown!r} is not a usable database URL (check the port is a number): "
                f"{_reason(exc, self._secret)}"
            ) from None
        except ImportError as exc:
            raise StoreError(
                f"store {self._shown!r}: the database driver is not installed ({exc.name or exc}); "
                "reinstall cxtest with its dependencies"
            ) from None
        with self._errors("cannot open"):
            create_tables(self.engine)

    @staticmethod
    def _sqlite_engine(parsed: Any) -> Engine:
        in_memory = parsed.database in (None, "", ":memory:")
        if in_memory:
            # One shared connection: otherwise every thread (asyncio.to_thread) gets its own empty database.
            engine = create_engine(
                parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}, **_JSON_ENGINE_OPTIONS
            )
        else:
            engine = create_engine(parsed, **_JSON_ENGINE_OPTIONS)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            try:
                # WAL lets readers (status, reports) run while a monitor writes; NORMAL is durable
                # across application crashes under WAL and avoids an fsync per commit.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            finally:
                cursor.close()

        return engine

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self._shown!r})"

    def _errors(self, doing: str) -> "_Translate":
        return _Translate(self, doing)

    # ------------------------------------------------------------------ writing

    def save(self, results: Sequence[Result]) -> None:
        """Write the batch in one transaction; every result is committed when this returns."""
        if not results:
            return
        # Column by column: a stress exercise saves 20 rows a result, and a dict per row was
        # a good part of what saving cost.
        result_columns = {
            **_attributes(results, "run_id", "scenario_id", "scenario_name", "channel", "file"),
            "outcome": [_outcome(r.outcome) for r in results],
            **_attributes(results, "started_at", "duration", "message", "attempts", "flaky"),
            "tags": [list(r.tags) for r in results],
            "location": [r.location for r in results],
            "measures": [_measures_in(r.measures) for r in results],
            "checks": [[_check_dict(c) for c in r.checks] for r in results],
            "artifacts": [[{"label": a.label, "path": a.path, "kind": a.kind} for a in r.artifacts] for r in results],
        }
        with self._errors("cannot save results to"), self.engine.begin() as conn:
            result_ids = self._insert(conn, results_table, result_columns)
            steps = [(result_id, step) for result_id, r in zip(result_ids, results) for step in r.steps]
            if not steps:
                return
            only_steps = [step for _, step in steps]
            step_columns = {
                "result_id": [result_id for result_id, _ in steps],
                **_attributes(only_steps, "index", "name"),
                "outcome": [_outcome(step.outcome) for step in only_steps],
                **_attributes(only_steps, "started", "duration", "message"),
                "measures": [_measures_in(step.measures) for step in only_steps],
                "evidence": [_jsonable(dict(step.evidence or {})) for step in only_steps],
            }
            step_ids = self._insert(conn, steps_table, step_columns)
            checks = [(step_id, check) for step_id, (_, step) in zip(step_ids, steps) for check in step.checks]
            if checks:
                check_columns = {
                    "step_id": [step_id for step_id, _ in checks],
                    "name": [check.name for _, check in checks],
                    "outcome": [_outcome(check.outcome) for _, check in checks],
                    "expected": [_jsonable(check.expected) for _, check in checks],
                    "actual": [_jsonable(check.actual) for _, check in checks],
                    "text": [check.text for _, check in checks],
                }
                self._insert(conn, checks_table, check_columns, ids=False)

    def _insert(self, conn: Connection, table: Table, columns: dict[str, list[Any]], ids: bool = True) -> list[int]:
        """Insert rows given column by column; their ids in row order, so child rows can point at them (none when not `ids`)."""
        count = len(next(iter(columns.values())))
        if self.dialect == "postgresql":
            rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
            if not ids:
                conn.execute(insert(table), rows)
                return []
            # Reserving the ids first keeps this a pipelined executemany: INSERT ... RETURNING
            # over many rows is several times slower with psycopg.
            reserved = conn.execute(
                text("SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :n)"),
                {"table": table.name, "n": count},
            ).scalars().all()
            for row, row_id in zip(rows, reserved):
                row["id"] = row_id
            conn.execute(insert(table), rows)
            return list(reserved)
        # SQLite: one executemany, then the ids from the last one. The transaction holds the
        # database's only write lock from its first INSERT, and a row inserted without an id
        # gets max(rowid) + 1 (https://sqlite.org/autoinc.html), so the batch's ids are the n
        # numbers up to the last. INSERT ... RETURNING would run one statement per row.
        statement, keys, processors = _driver_insert(table, conn.dialect)
        # The columns' own bind processors, applied here: SQLAlchemy's per-row parameter
        # handling in execute() was half of a stress exercise's saving (20 rows a result).
        values = [list(map(process, columns[key])) if process else columns[key] for key, process in zip(keys, processors)]
        conn.exec_driver_sql(statement, list(zip(*values)))
        if not ids:
            return []
        last = conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one()
        return list(range(last - count + 1, last + 1))

    # ------------------------------------------------------------------ reading

    def results(
        self,
        scenario_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        outcome: Outcome | None = None,
        run_id: str | None = None,
        limit: int | None = None,
    ) -> list[Result]:
        """Results newest first; `since` is inclusive, `until` exclusive; naive datetimes are UTC."""
        t = results_table
        query = select(t)
        if scenario_id is not None:
            query = query.where(t.c.scenario_id == scenario_id)
        if since is not None:
            query = query.where(t.c.started_at >= since)
        if until is not None:
            query = query.where(t.c.started_at < until)
        if outcome is not None:
            query = query.where(t.c.outcome == _outcome(outcome))
        if run_id is not None:
            query = query.where(t.c.run_id == run_id)
        query = query.order_by(t.c.started_at.desc(), t.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        return self._load(query)

    def latest(self) -> list[Result]:
        """The newest result of each scenario, sorted by scenario_id."""
        return self._newest_per_scenario()

    def previous_results(self, prefix: str, before: datetime, exclude_run_id: str | None = None) -> list[Result]:
        """The newest result of each scenario whose id starts with `prefix` that started before
        `before` and is not from run `exclude_run_id`: what a run compares itself against
        (e.g. prefix "demo/phone_numbers/" for every number of one inventory). Sorted by scenario_id."""
        t = results_table
        wanted = [
            # Not LIKE: SQLite's ignores ASCII case, and "_" in ids like "phone_numbers" is a wildcard there.
            func.substr(t.c.scenario_id, 1, len(prefix)) == prefix,
            t.c.started_at < before,
        ]
        if exclude_run_id is not None:
            wanted.append(t.c.run_id != exclude_run_id)
        return self._newest_per_scenario(*wanted)

    def _newest_per_scenario(self, *conditions: Any) -> list[Result]:
        t = results_table
        rank = (
            func.row_number()
            .over(partition_by=t.c.scenario_id, order_by=(t.c.started_at.desc(), t.c.id.desc()))
            .label("rank")
        )
        ranked = select(t.c.id, rank).where(*conditions).subquery()
        query = (
            select(t)
            .join(ranked, ranked.c.id == t.c.id)
            .where(ranked.c.rank == 1)
            .order_by(t.c.scenario_id)
        )
        return self._load(query)

    def _load(self, query: Any) -> list[Result]:
        with self._errors("cannot read results from"), self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
            ids = [row["id"] for row in rows]
            # Explicit ids rather than a subquery: rows another agent commits meanwhile must not slip in.
            step_rows: list[Mapping[str, Any]] = []
            for chunk in _chunks(ids):
                step_rows += conn.execute(
                    select(steps_table).where(steps_table.c.result_id.in_(chunk))
                ).mappings().all()
            check_rows: list[Mapping[str, Any]] = []
            step_ids = [s["id"] for s in step_rows]
            for chunk in _chunks(step_ids):
                check_rows += conn.execute(
                    select(checks_table).where(checks_table.c.step_id.in_(chunk)).order_by(checks_table.c.id)
                ).mappings().all()

        checks_by_step: dict[int, list[CheckResult]] = {}
        for c in check_rows:
            checks_by_step.setdefault(c["step_id"], []).append(_check_from(c))
        steps_by_result: dict[int, list[tuple[int, int, StepResult]]] = {}
        for s in step_rows:
            step = StepResult(
                index=s["index"],
                name=s["name"],
                outcome=Outcome(s["outcome"]),
                started=s["started"],
                duration=s["duration"],
                message=s["message"],
                checks=tuple(checks_by_step.get(s["id"], ())),
                measures=_measures_out(s["measures"]),
                evidence=dict(s["evidence"] or {}),
            )
            steps_by_result.setdefault(s["result_id"], []).append((s["index"], s["id"], step))

        out = []
        for row in rows:
            steps = sorted(steps_by_result.get(row["id"], ()), key=lambda item: item[:2])
            out.append(
                Result(
                    scenario_id=row["scenario_id"],
                    scenario_name=row["scenario_name"],
                    channel=row["channel"],
                    file=row["file"],
                    outcome=Outcome(row["outcome"]),
                    started_at=row["started_at"],
                    duration=row["duration"],
                    message=row["message"],
                    steps=tuple(step for _, _, step in steps),
                    checks=tuple(_check_from(c) for c in row["checks"] or ()),
                    measures=_measures_out(row["measures"]),
                    artifacts=tuple(Artifact(**a) for a in row["artifacts"] or ()),
                    attempts=row["attempts"],
                    flaky=bool(row["flaky"]),
                    tags=tuple(row["tags"] or ()),
                    location=row["location"],
                    run_id=row["run_id"],
                )
            )
        return out


class _Translate:
    """Turns any driver failure inside the block into a StoreError naming the (redacted) URL."""

    def __init__(self, store: Store, doing: str):
        self.store = store
        self.doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object) -> bool:
        if exc is None or not isinstance(exc, (SQLAlchemyError, OSError, ImportError)):
            return False
        reason = _reason(exc, self.store._secret)
        hint = _hint(self.store.dialect, reason)
        raise StoreError(f"{self.doing} store {self.store._shown!r}: {reason}{hint}") from None
