"""The results store: every Result in SQLite (WAL) or PostgreSQL through SQLAlchemy Core,
one row each, its steps (with their checks) as JSON. The API is synchronous; async
callers wrap it in asyncio.to_thread. Driver failures surface as StoreError naming the
URL with its password replaced by ***.

Why one row per result: a result is written once, never updated, and always read whole;
its steps and checks have no life of their own. As rows of their own tables they were
20 inserts for a chat conversation, and the store cost a stress worker more CPU than the
conversation's HTTP. Databases from before keep their history: their steps and checks
tables are folded into the results on opening (_fold_step_tables).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
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
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from cxtest import logs
from cxtest.errors import StoreError
from cxtest.model import Artifact, CheckResult, Outcome, Result, StepResult

__all__ = ["Store", "create_tables", "metadata", "redact_url"]

log = logs.get_logger("cxtest.store")

SQLITE_BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 10
_FOLD_BATCH = 1000  # results rewritten per statement when folding an old database's steps


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return str(value)  # datetimes included (passed through to here), and anything else JSON cannot hold


_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def _json_text(value: Any) -> str:
    """A JSON column's text: orjson writes the model's dataclasses, enums and tuples itself, in C.

    NaN and infinities become null, as in JavaScript: JSON has no such numbers and
    PostgreSQL's JSON type refuses them.
    """
    return orjson.dumps(value, default=_json_default, option=_JSON_OPTIONS).decode()


def _json_value(stored: Any) -> Any:
    # SQLite gives a JSON column NUMERIC affinity: a bare number (an old checks row's
    # expected 4) comes back as the number, which SQLAlchemy passes on for json.loads's TypeError.
    return orjson.loads(stored) if isinstance(stored, (str, bytes)) else stored


_JSON_ENGINE_OPTIONS = {"json_serializer": _json_text, "json_deserializer": _json_value}


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
    # [{index, name, outcome, started, duration, message, measures, evidence, checks: [...]}]
    Column("steps", JSON, nullable=False),
    Index("ix_results_scenario_started", "scenario_id", "started_at"),
    Index("ix_results_run_id", "run_id"),
)

# The layout before steps moved into their result's row: read once, to fold them in.
_old = MetaData()
_old_steps = Table(
    "steps",
    _old,
    Column("id", _Id, primary_key=True),
    Column("result_id", _Id),
    Column("index", Integer),
    Column("name", Text),
    Column("outcome", String(16)),
    Column("started", Float),
    Column("duration", Float),
    Column("message", Text),
    Column("measures", JSON),
    Column("evidence", JSON),
)
_old_checks = Table(
    "checks",
    _old,
    Column("id", _Id, primary_key=True),
    Column("step_id", _Id),
    Column("name", Text),
    Column("outcome", String(16)),
    Column("expected", JSON(none_as_null=False)),
    Column("actual", JSON(none_as_null=False)),
    Column("text", Text),
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


def _outcome(value: Outcome | str) -> str:
    return value.value if isinstance(value, Outcome) else Outcome(value).value


def _measures_out(value: Mapping[str, Any] | None) -> dict[str, Any]:
    # Measures are numbers by contract: a NaN or infinity was stored as null (before, as "nan"/"inf").
    return {k: math.nan if v is None else float(v) if isinstance(v, str) else v for k, v in (value or {}).items()}


def _check_from(row: Mapping[str, Any]) -> CheckResult:
    return CheckResult(
        name=row["name"],
        outcome=Outcome(row["outcome"]),
        expected=row["expected"],
        actual=row["actual"],
        text=row["text"],
    )


def _step_from(item: Mapping[str, Any]) -> StepResult:
    return StepResult(
        index=item["index"],
        name=item["name"],
        outcome=Outcome(item["outcome"]),
        started=item["started"],
        duration=item["duration"],
        message=item["message"],
        checks=tuple(_check_from(c) for c in item["checks"]),
        measures=_measures_out(item["measures"]),
        evidence=dict(item["evidence"] or {}),
    )


# --------------------------------------------------------------------------- the store


def create_tables(engine: Engine, tables: Sequence[Table] | None = None) -> None:
    """Create missing tables. On PostgreSQL two agents starting at once would both try and one
    would fail on the catalogue's unique index, so creation holds a cluster-wide advisory lock."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7316)")  # any constant shared by all cxtest agents
        metadata.create_all(conn, tables=tables)


def _fold_step_tables(engine: Engine) -> None:
    """A database from before one row per result: its steps and checks tables move into a
    `steps` column of their results, in one transaction, then the tables go."""
    if "steps" not in inspect(engine).get_table_names():
        return
    with engine.begin() as conn:
        # One agent folds; another that was waiting finds the tables gone.
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7316)")  # as create_tables
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock before looking
        tables = inspect(conn).get_table_names()
        if "steps" not in tables:
            return  # another agent folded them meanwhile
        if "steps" not in {c["name"] for c in inspect(conn).get_columns("results")}:
            conn.exec_driver_sql("ALTER TABLE results ADD COLUMN steps JSON NOT NULL DEFAULT '[]'")
        ids = conn.execute(select(results_table.c.id).order_by(results_table.c.id)).scalars().all()
        log.info("folding the old steps and checks tables into their results, once", results=len(ids))
        for start in range(0, len(ids), _FOLD_BATCH):
            chunk = ids[start : start + _FOLD_BATCH]
            steps = conn.execute(
                select(_old_steps).where(_old_steps.c.result_id.between(chunk[0], chunk[-1])).order_by(_old_steps.c.id)
            ).mappings().all()
            checks: dict[int, list[dict[str, Any]]] = {}
            if steps:
                for c in conn.execute(
                    select(_old_checks).where(_old_checks.c.step_id.between(steps[0]["id"], steps[-1]["id"])).order_by(_old_checks.c.id)
                ).mappings():
                    checks.setdefault(c["step_id"], []).append({k: c[k] for k in ("name", "outcome", "expected", "actual", "text")})
            folded: dict[int, list[dict[str, Any]]] = {}
            for s in sorted(steps, key=lambda s: (s["result_id"], s["index"], s["id"])):
                item = {k: s[k] for k in ("index", "name", "outcome", "started", "duration", "message", "measures", "evidence")}
                folded.setdefault(s["result_id"], []).append({**item, "checks": checks.get(s["id"], [])})
            if folded:
                conn.execute(
                    update(results_table).where(results_table.c.id == bindparam("result_id")).values(steps=bindparam("folded")),
                    [{"result_id": result_id, "folded": items} for result_id, items in folded.items()],
                )
        conn.exec_driver_sql("DROP TABLE checks")
        conn.exec_driver_sql("DROP TABLE steps")


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
            _fold_step_tables(self.engine)

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
        rows = [
            {
                "run_id": r.run_id,
                "scenario_id": r.scenario_id,
                "scenario_name": r.scenario_name,
                "channel": r.channel,
                "file": r.file,
                "outcome": _outcome(r.outcome),
                "started_at": r.started_at,
                "duration": r.duration,
                "message": r.message,
                "attempts": r.attempts,
                "flaky": r.flaky,
                "tags": r.tags,
                "location": r.location,
                "measures": r.measures,
                "checks": r.checks,
                "artifacts": r.artifacts,
                "steps": r.steps,
            }
            for r in results
        ]
        with self._errors("cannot save results to"), self.engine.begin() as conn:
            conn.execute(insert(results_table), rows)

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
        return [
            Result(
                scenario_id=row["scenario_id"],
                scenario_name=row["scenario_name"],
                channel=row["channel"],
                file=row["file"],
                outcome=Outcome(row["outcome"]),
                started_at=row["started_at"],
                duration=row["duration"],
                message=row["message"],
                steps=tuple(_step_from(item) for item in row["steps"]),
                checks=tuple(_check_from(c) for c in row["checks"] or ()),
                measures=_measures_out(row["measures"]),
                artifacts=tuple(Artifact(**a) for a in row["artifacts"] or ()),
                attempts=row["attempts"],
                flaky=bool(row["flaky"]),
                tags=tuple(row["tags"] or ()),
                location=row["location"],
                run_id=row["run_id"],
            )
            for row in rows
        ]


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
