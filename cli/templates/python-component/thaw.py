"""Configuration, state, SQL, logs and outbound HTTP for a thaw function, over the interfaces
the host offers (wasi:config, wasi:keyvalue, spin:sqlite, spin:postgres, wasi:http, stderr).

    from thaw import config, http, kv, log, pg, sql, ThawError

    greeting = config.get("greeting") or "Hello"
    calls = kv.open("default").increment("calls")
    db = sql.open()  # the function's own SQLite database
    db.execute("INSERT INTO seen (name) VALUES (?)", [name])
    rows = db.query("SELECT name FROM seen WHERE id > ?", [10])  # [{"name": ...}]
    orders = pg.open("orders")  # a database named in postgres_databases
    orders.query("SELECT item FROM orders WHERE qty > $1", [1])  # [{"item": ...}]
    answer = http.fetch("https://api.example.com/v1").text()
    log.info("greeted", calls=calls)
    event = Event.from_request(request)  # a schedule's tick, an async invocation, a message

Every failure is a ThawError with a `kind`: "config", "no-such-store", "access-denied",
"quota" (with `field`, the limit to raise), "kv", "no-such-database", "sql", "postgres" (with
`code`, the SQLSTATE, when the server sent one), "denied" (the host is not in
allowed_outbound_hosts), "too-many-requests", "dns", "connection-refused", "timeout",
"response-too-large" or "fetch".
"""

import datetime
import decimal
import json
import sys
import uuid
from urllib.parse import urlsplit

from componentize_py_types import Err, Ok
from wit_world.imports import atomics, outgoing_handler
from wit_world.imports import wasi_config_store as _config
from wit_world.imports import wasi_keyvalue_store as _store
from wit_world.imports import postgres as _pg
from wit_world.imports import sqlite as _sqlite
from wit_world.imports import streams as _streams
from wit_world.imports import types as _http


class ThawError(Exception):
    """A failure, with its `kind` (see the module's docs) and, for a quota, its `field`."""

    def __init__(self, kind: str, message: str, field: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.field = field


class config:
    """The function's settings (the `config` table of its thaw.toml)."""

    @staticmethod
    def get(key: str) -> str | None:
        """The value of `key`, or None when the function has no such setting."""
        try:
            return _config.get(key)
        except Err as e:
            raise ThawError("config", f"configuration: {getattr(e.value, 'value', e.value)}")

    @staticmethod
    def get_all() -> dict:
        """Every setting."""
        try:
            return dict(_config.get_all())
        except Err as e:
            raise ThawError("config", f"configuration: {getattr(e.value, 'value', e.value)}")


_QUOTA = "over the function's key-value quota "
_QUOTA_FIELDS = ("kv_max_value_kib", "kv_max_keys", "kv_max_mib")


def _kv_error(error, store: str) -> ThawError:
    if isinstance(error, _store.Error_NoSuchStore):
        return ThawError(
            "no-such-store",
            f'no key-value store "{store}" ("default" is the one every host has)',
        )
    if isinstance(error, _store.Error_AccessDenied):
        return ThawError("access-denied", "access to the key-value store denied")
    text = str(getattr(error, "value", error))
    if text.startswith(_QUOTA):
        for field in _QUOTA_FIELDS:
            if text[len(_QUOTA) :].startswith(field):
                return ThawError("quota", f"{text} (raise limits.{field} in thaw.toml)", field)
    return ThawError("kv", f"key-value store: {text}")


class Store:
    """One open store of the function: see `kv.open`."""

    def __init__(self, bucket, name: str):
        self._bucket = bucket
        self._name = name

    def _call(self, f, *args):
        try:
            return f(*args)
        except Err as e:
            raise _kv_error(e.value, self._name)

    def get(self, key: str) -> bytes | None:
        """The value of `key`, or None."""
        return self._call(self._bucket.get, key)

    def get_text(self, key: str) -> str | None:
        """The value of `key` as text, or None."""
        value = self.get(key)
        return None if value is None else value.decode()

    def get_json(self, key: str):
        """The value of `key` parsed as JSON, or None."""
        value = self.get(key)
        return None if value is None else json.loads(value)

    def set(self, key: str, value: bytes | str) -> None:
        """Sets `key` to `value`."""
        self._call(self._bucket.set, key, value.encode() if isinstance(value, str) else value)

    def set_json(self, key: str, value) -> None:
        """Sets `key` to `value` as JSON."""
        self.set(key, json.dumps(value))

    def delete(self, key: str) -> None:
        """Removes `key`."""
        self._call(self._bucket.delete, key)

    def exists(self, key: str) -> bool:
        """Whether `key` has a value."""
        return self._call(self._bucket.exists, key)

    def increment(self, key: str, delta: int = 1) -> int:
        """Adds `delta` to the number at `key` atomically; returns the new value."""
        return self._call(atomics.increment, self._bucket, key, delta)

    def keys(self):
        """Every key, fetched a page at a time."""
        cursor = None
        while True:
            page = self._call(self._bucket.list_keys, cursor)
            yield from page.keys
            cursor = page.cursor
            if cursor is None:
                return


class kv:
    """The function's key-value store."""

    @staticmethod
    def open(name: str = "default") -> Store:
        """Opens the store `name`: "default" is the function's default store."""
        try:
            return Store(_store.open("" if name == "default" else name), name)
        except Err as e:
            raise _kv_error(e.value, name)


def _sql_error(error, database: str) -> ThawError:
    if isinstance(error, _sqlite.Error_NoSuchDatabase):
        return ThawError(
            "no-such-database",
            f'no SQL database "{database}" (list it in sqlite_databases in thaw.toml; '
            '"default" is always there)',
        )
    if isinstance(error, _sqlite.Error_DatabaseFull):
        return ThawError(
            "quota",
            f'the SQL database "{database}" is full (raise limits.sql_max_mib in thaw.toml)',
            "sql_max_mib",
        )
    if isinstance(error, _sqlite.Error_AccessDenied):
        return ThawError("access-denied", "access to SQL denied")
    return ThawError("sql", f"SQL: {getattr(error, 'value', type(error).__name__)}")


def _sql_value(v):
    """A Python value as a SQL parameter: int, float, bool (0/1), str, bytes, None."""
    if v is None:
        return _sqlite.Value_Null()
    if isinstance(v, bool):
        return _sqlite.Value_Integer(int(v))
    if isinstance(v, int):
        if not -(2**63) <= v < 2**63:
            raise ThawError("sql", f"a SQL integer is 64 bits; {v} is not")
        return _sqlite.Value_Integer(v)
    if isinstance(v, float):
        return _sqlite.Value_Real(v)
    if isinstance(v, str):
        return _sqlite.Value_Text(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return _sqlite.Value_Blob(bytes(v))
    raise ThawError(
        "sql",
        f"a SQL parameter is an int, float, bool, str, bytes or None, not {type(v).__name__}",
    )


def _py_value(v):
    return None if isinstance(v, _sqlite.Value_Null) else v.value


class Database:
    """One open SQL database of the function: see `sql.open`."""

    def __init__(self, connection, name: str):
        self._connection = connection
        self._name = name

    def execute(self, statement: str, params=()) -> dict:
        """Runs one statement with `?` parameters (never build SQL from input):
        {"columns": [...], "rows": [{column: value, ...}, ...]}."""
        try:
            result = self._connection.execute(statement, [_sql_value(p) for p in params])
        except Err as e:
            raise _sql_error(e.value, self._name)
        columns = result.columns
        rows = [
            {column: _py_value(value) for column, value in zip(columns, row.values)}
            for row in result.rows
        ]
        return {"columns": columns, "rows": rows}

    def query(self, statement: str, params=()) -> list:
        """The rows of a statement, each a dict by column name."""
        return self.execute(statement, params)["rows"]

    @property
    def last_insert_rowid(self) -> int:
        """The rowid of the last row inserted through this connection."""
        return self._connection.last_insert_rowid()

    @property
    def changes(self) -> int:
        """Rows changed by the last statement."""
        return self._connection.changes()


class sql:
    """The function's SQLite databases."""

    @staticmethod
    def open(name: str = "default") -> Database:
        """Opens the database `name`: "default" is always there."""
        try:
            return Database(_sqlite.Connection.open(name), name)
        except Err as e:
            raise _sql_error(e.value, name)


def _pg_error(error) -> ThawError:
    if isinstance(error, _pg.Error_QueryFailed):
        if isinstance(error.value, _pg.QueryError_DbError):
            db = error.value.value
            failure = ThawError("postgres", f"Postgres: {db.message}")
            failure.code = db.code
            return failure
        return ThawError("postgres", f"Postgres: {error.value.value}")
    return ThawError("postgres", f"Postgres ({type(error).__name__[6:]}): {error.value}")


def _pg_value(v):
    """A Python value as a Postgres parameter: int (fitted by the host to the column's integer
    type), float, bool, str, bytes, Decimal, UUID, date, time, datetime (naive is UTC), dict
    or list as JSON, None."""
    if v is None:
        return _pg.ParameterValue_DbNull()
    if isinstance(v, bool):
        return _pg.ParameterValue_Boolean(v)
    if isinstance(v, int):
        if not -(2**63) <= v < 2**63:
            raise ThawError("postgres", f"a Postgres integer is 64 bits; {v} is not")
        return _pg.ParameterValue_Int64(v)
    if isinstance(v, float):
        return _pg.ParameterValue_Floating64(v)
    if isinstance(v, str):
        return _pg.ParameterValue_Str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return _pg.ParameterValue_Binary(bytes(v))
    if isinstance(v, (dict, list)):
        return _pg.ParameterValue_Jsonb(json.dumps(v).encode())
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc)
        return _pg.ParameterValue_Datetime(
            (v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond * 1000)
        )
    if isinstance(v, datetime.date):
        return _pg.ParameterValue_Date((v.year, v.month, v.day))
    if isinstance(v, datetime.time):
        return _pg.ParameterValue_Time((v.hour, v.minute, v.second, v.microsecond * 1000))
    if isinstance(v, decimal.Decimal):
        # Fixed-point text: str() writes exponents (1E-7), which numeric's text is not.
        return _pg.ParameterValue_Decimal(format(v, "f"))
    if isinstance(v, uuid.UUID):
        return _pg.ParameterValue_Uuid(str(v))
    raise ThawError("postgres", f"{type(v).__name__} is not a Postgres parameter")


def _pg_py(v):
    """A Postgres value as Python: numeric a Decimal, jsonb parsed, dates and times as
    `datetime` objects (a timestamp in UTC), uuid a string."""
    if isinstance(v, _pg.DbValue_DbNull):
        return None
    if isinstance(v, _pg.DbValue_Decimal):
        return decimal.Decimal(v.value)
    if isinstance(v, _pg.DbValue_Jsonb):
        return json.loads(bytes(v.value))
    if isinstance(v, _pg.DbValue_Date):
        return datetime.date(*v.value)
    if isinstance(v, _pg.DbValue_Time):
        h, m, s, ns = v.value
        return datetime.time(h, m, s, ns // 1000)
    if isinstance(v, _pg.DbValue_Datetime):
        y, mo, d, h, mi, s, ns = v.value
        return datetime.datetime(y, mo, d, h, mi, s, ns // 1000, tzinfo=datetime.timezone.utc)
    if isinstance(v, _pg.DbValue_Timestamp):
        return datetime.datetime.fromtimestamp(v.value, datetime.timezone.utc)
    return v.value


class PgDatabase:
    """A Postgres connection from the host's pool: see `pg.open`."""

    def __init__(self, connection):
        self._connection = connection

    def query(self, statement: str, params=()) -> list:
        """The rows of a statement with `$1`, `$2`, ... parameters, each a dict by column."""
        try:
            result = self._connection.query(statement, [_pg_value(p) for p in params])
        except Err as e:
            raise _pg_error(e.value)
        columns = [c.name for c in result.columns]
        return [{c: _pg_py(v) for c, v in zip(columns, row)} for row in result.rows]

    def execute(self, statement: str, params=()) -> int:
        """Runs a statement with `$1`, `$2`, ... parameters; how many rows it changed."""
        try:
            return self._connection.execute(statement, [_pg_value(p) for p in params])
        except Err as e:
            raise _pg_error(e.value)


class pg:
    """Postgres databases, through the host's pools."""

    @staticmethod
    def open(database: str) -> PgDatabase:
        """Opens a database: a name from the function's postgres_databases (its URL is the
        host's secret), or a postgres:// address that allowed_outbound_hosts allows."""
        try:
            return PgDatabase(_pg.Connection.open(database))
        except Err as e:
            raise _pg_error(e.value)


def _write(level: str, msg, fields: dict) -> None:
    line = {"level": level, "msg": str(msg)}
    if fields:
        line["fields"] = fields
    text = json.dumps(line, default=str, ensure_ascii=False)
    if len(text.encode()) > 4000:  # the host keeps 4 KiB of a line: keep it whole JSON
        # 500 characters are at most 3,000 bytes, even escaped.
        text = json.dumps({"level": level, "msg": str(msg)[:500] + "…"}, ensure_ascii=False)
    print(text, file=sys.stderr, flush=True)


class log:
    """Structured logs: `log.info("charged", order=42)`; `thaw logs` shows level and fields."""

    @staticmethod
    def debug(msg, **fields) -> None:
        _write("debug", msg, fields)

    @staticmethod
    def info(msg, **fields) -> None:
        _write("info", msg, fields)

    @staticmethod
    def warn(msg, **fields) -> None:
        _write("warn", msg, fields)

    @staticmethod
    def error(msg, **fields) -> None:
        _write("error", msg, fields)


MAX_RESPONSE_BYTES = 16 << 20


class Response:
    """An outbound call's response: `status`, `headers` (a dict) and the body."""

    def __init__(self, url: str, status: int, headers: dict, body: bytes):
        self.url = url
        self.status = status
        self.headers = headers
        self.body = body

    def text(self) -> str:
        return self.body.decode()

    def json(self):
        return json.loads(self.body)


_METHODS = {
    "GET": _http.Method_Get,
    "HEAD": _http.Method_Head,
    "POST": _http.Method_Post,
    "PUT": _http.Method_Put,
    "DELETE": _http.Method_Delete,
    "OPTIONS": _http.Method_Options,
    "PATCH": _http.Method_Patch,
}


def _shown(url: str) -> str:
    """scheme://host[:port]/path: no user info or query, which may hold a key."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def _http_error(url: str, code) -> ThawError:
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    url = _shown(url)
    kinds = [
        ((_http.ErrorCode_HttpRequestDenied,), "denied",
         f'request to {url} denied: add "{origin}" to allowed_outbound_hosts in thaw.toml'),
        ((_http.ErrorCode_ConnectionLimitReached,), "too-many-requests",
         f"request to {url} refused: this invocation already sent its max_outbound_requests"),
        ((_http.ErrorCode_DnsError, _http.ErrorCode_DnsTimeout, _http.ErrorCode_DestinationNotFound),
         "dns", f"request to {url}: name lookup failed"),
        ((_http.ErrorCode_ConnectionRefused, _http.ErrorCode_ConnectionTerminated,
          _http.ErrorCode_DestinationUnavailable), "connection-refused",
         f"request to {url}: connection refused"),
        ((_http.ErrorCode_ConnectionTimeout, _http.ErrorCode_HttpResponseTimeout,
          _http.ErrorCode_ConnectionReadTimeout, _http.ErrorCode_ConnectionWriteTimeout),
         "timeout", f"request to {url} timed out"),
    ]
    for types, kind, message in kinds:
        if isinstance(code, types):
            return ThawError(kind, message)
    return ThawError("fetch", f"request to {url} failed: {code}")


class http:
    """Outbound HTTP over wasi:http: `http.fetch(url)` returns a `Response`."""

    @staticmethod
    def fetch(url: str, method: str = "GET", headers: dict | None = None,
              body: bytes | str | None = None, max_bytes: int = MAX_RESPONSE_BYTES) -> Response:
        """Sends a request and reads the whole response (at most `max_bytes` of body)."""
        parts = urlsplit(url)
        shown = _shown(url)
        fields = _http.Fields.from_list(
            [(k, str(v).encode("latin-1")) for k, v in (headers or {}).items()]
        )
        request = _http.OutgoingRequest(fields)
        request.set_method(_METHODS[method.upper()]() if method.upper() in _METHODS
                           else _http.Method_Other(method))
        request.set_scheme(_http.Scheme_Https() if parts.scheme == "https" else _http.Scheme_Http())
        request.set_authority(parts.netloc)
        request.set_path_with_query((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        out_body = request.body()
        try:
            future = outgoing_handler.handle(request, None)
        except Err as e:
            raise _http_error(url, e.value)
        data = body.encode() if isinstance(body, str) else (body or b"")
        # When the host refuses the request the body's stream closes: the response says why.
        # The stream is closed before its body in every case (a body dropped while its
        # stream lives traps the instance).
        stream = out_body.write()
        try:
            for start in range(0, len(data), 4096):
                stream.blocking_write_and_flush(data[start : start + 4096])
        except Err:
            pass
        finally:
            stream.__exit__(None, None, None)
        try:
            _http.OutgoingBody.finish(out_body, None)
        except Err:
            pass
        pollable = future.subscribe()
        pollable.block()
        pollable.__exit__(None, None, None)
        result = future.get()
        future.__exit__(None, None, None)
        if result is None or isinstance(result, Err):
            raise ThawError("fetch", f"request to {shown}: no response")
        inner = result.value
        if isinstance(inner, Err):
            raise _http_error(url, inner.value)
        response = inner.value
        status = response.status()
        response_headers = {k: v.decode("latin-1") for k, v in response.headers().entries()}
        incoming = response.consume()
        stream = incoming.stream()
        chunks, size = [], 0
        try:
            while True:
                try:
                    chunk = stream.blocking_read(65536)
                except Err as e:
                    if isinstance(e.value, _streams.StreamError_Closed):
                        break  # the body's end is an error in wasi:io
                    raise ThawError("fetch", f"reading the response from {shown}: cut off")
                size += len(chunk)
                if size > max_bytes:
                    raise ThawError("response-too-large",
                                    f"the response from {shown} is larger than {max_bytes} bytes")
                chunks.append(chunk)
        finally:
            stream.__exit__(None, None, None)
        return Response(url, status, response_headers, b"".join(chunks))


class Event:
    """A request's CloudEvents attributes: thaw sends every schedule tick, asynchronous
    invocation and queue message as an HTTP request with CloudEvents 1.0 binary-mode headers
    (ce-id, ce-source, ce-type, ce-time, ce-subject; the body is the event's data).

        event = Event.from_request(request)
        if event and event.is_schedule_tick: ...

    Delivery is at least once: a retry or a restart can deliver one event again with the same
    `id`; a handler whose effect must not repeat keys it by `id` (in the kv store, say).
    """

    SCHEDULE_TICK = "dev.thaw.schedule.tick"
    ASYNC_INVOCATION = "dev.thaw.invocation"
    NATS_MESSAGE = "dev.thaw.nats.message"
    REDIS_MESSAGE = "dev.thaw.redis.message"

    def __init__(self, id: str, source: str, type: str, time, subject, attempt: int):
        self.id = id  # unique within its source; the same on every retry
        self.source = source  # /thaw/schedules/<function>, /thaw/functions/<function>, ...
        self.type = type  # one of the constants above, or a client's own type
        self.time = time  # RFC 3339, or None
        self.subject = subject  # a cron expression, a path, a subject; or None
        self.attempt = attempt  # which delivery attempt this is, from 1

    @staticmethod
    def from_request(request) -> "Event | None":
        """The event a thaw_http Request carries, or None for a plain request (no ce-id,
        ce-source or ce-type)."""
        h = {name.lower(): value for name, value in request.headers.items()}
        if not all(k in h for k in ("ce-id", "ce-source", "ce-type")):
            return None
        try:
            attempt = int(h.get("ce-thawattempt", "1"))
        except ValueError:
            attempt = 1
        return Event(
            h["ce-id"], h["ce-source"], h["ce-type"], h.get("ce-time"), h.get("ce-subject"), attempt
        )

    @property
    def is_schedule_tick(self) -> bool:
        return self.type == Event.SCHEDULE_TICK

    @property
    def is_async_invocation(self) -> bool:
        return self.type == Event.ASYNC_INVOCATION

    @property
    def is_queue_message(self) -> bool:
        return self.type in (Event.NATS_MESSAGE, Event.REDIS_MESSAGE)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": self.time,
            "subject": self.subject,
            "attempt": self.attempt,
        }
