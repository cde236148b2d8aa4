// thaw.js: configuration, state, SQL and logs for a thaw function, over the interfaces the
// host offers (wasi:config, wasi:keyvalue, spin:sqlite, spin:postgres, wasi:http, stderr). The global `fetch` works as
// ever; `fetch` here sends over wasi:http itself so that a failure says why (a refused host
// names the setting to change).
//
//   import { config, kv, sql, pg, log, fetch, Event, ThawError } from "./thaw.js";
//   const greeting = config.get("greeting") ?? "Hello";
//   const calls = kv.open("default").increment("calls");
//   const db = sql.open(); // the function's own SQLite database
//   db.execute("INSERT INTO seen (name) VALUES (?)", [name]);
//   const rows = db.query("SELECT name FROM seen WHERE id > ?", [10]); // [{ name: ... }]
//   const orders = pg.open("orders"); // a database named in postgres_databases
//   orders.query("SELECT item FROM orders WHERE qty > $1", [1]); // [{ item: ... }]
//   log.info("greeted", { calls });
//   const event = Event.from(request); // a schedule's tick, an async invocation, a message
//
// Every failure is a ThawError with a `kind`: "config", "no-such-store", "access-denied",
// "quota" (with `field`, the limit to raise), "kv", "no-such-database", "sql", "postgres" (with
// `code`, the SQLSTATE, when the server sent one), "denied" (the host is not in
// allowed_outbound_hosts), "too-many-requests", "dns", "connection-refused", "timeout",
// "response-too-large" or "fetch".
import { get as configGet, getAll as configGetAll } from "wasi:config/store@0.2.0-rc.1";
import { open as openBucket } from "wasi:keyvalue/store@0.2.0-draft";
import { increment as atomicIncrement } from "wasi:keyvalue/atomics@0.2.0-draft";
import { Connection as SqlConnection } from "spin:sqlite/sqlite@3.0.0";
import { Connection as PgConnection } from "spin:postgres/postgres@4.2.0";
import { handle as handleOutgoing } from "wasi:http/outgoing-handler@0.2.10";
import { Fields, OutgoingBody, OutgoingRequest } from "wasi:http/types@0.2.10";

export class ThawError extends Error {
  constructor(kind, message, field) {
    super(message);
    this.name = "ThawError";
    this.kind = kind;
    if (field !== undefined) this.field = field;
  }
}

// A WIT error variant as the bindings throw it: `{ tag, val }`, possibly in `payload`.
function variant(e) {
  const v = e?.payload ?? e;
  return typeof v === "object" && v !== null && "tag" in v ? v : { tag: "other", val: String(e) };
}

export const config = {
  /** The value of `key`, or null when the function has no such setting. */
  get(key) {
    try {
      return configGet(key) ?? null;
    } catch (e) {
      const { tag, val } = variant(e);
      throw new ThawError("config", `configuration (${tag}): ${val}`);
    }
  },
  /** Every setting, as an object. */
  getAll() {
    try {
      return Object.fromEntries(configGetAll());
    } catch (e) {
      const { tag, val } = variant(e);
      throw new ThawError("config", `configuration (${tag}): ${val}`);
    }
  },
};

const QUOTA = "over the function's key-value quota ";
const QUOTA_FIELDS = ["kv_max_value_kib", "kv_max_keys", "kv_max_mib"];

function kvError(e, store) {
  const { tag, val } = variant(e);
  if (tag === "no-such-store") {
    return new ThawError(tag, `no key-value store "${store}" ("default" is the one every host has)`);
  }
  if (tag === "access-denied") return new ThawError(tag, "access to the key-value store denied");
  const text = String(val);
  if (text.startsWith(QUOTA)) {
    const field = QUOTA_FIELDS.find((f) => text.slice(QUOTA.length).startsWith(f));
    if (field) return new ThawError("quota", `${text} (raise limits.${field} in thaw.toml)`, field);
  }
  return new ThawError("kv", `key-value store: ${text}`);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

class Store {
  #bucket;
  #name;
  constructor(bucket, name) {
    this.#bucket = bucket;
    this.#name = name;
  }
  #call(f) {
    try {
      return f();
    } catch (e) {
      throw kvError(e, this.#name);
    }
  }
  /** The value of `key` as bytes (Uint8Array), or null. */
  get(key) {
    return this.#call(() => this.#bucket.get(key)) ?? null;
  }
  /** The value of `key` as text, or null. */
  getText(key) {
    const v = this.get(key);
    return v === null ? null : decoder.decode(v);
  }
  /** The value of `key` parsed as JSON, or null. */
  getJson(key) {
    const v = this.getText(key);
    return v === null ? null : JSON.parse(v);
  }
  /** Sets `key` to `value` (a string or a Uint8Array). */
  set(key, value) {
    const bytes = typeof value === "string" ? encoder.encode(value) : value;
    this.#call(() => this.#bucket.set(key, bytes));
  }
  /** Sets `key` to `value` as JSON. */
  setJson(key, value) {
    this.set(key, JSON.stringify(value));
  }
  /** Removes `key`. */
  delete(key) {
    this.#call(() => this.#bucket.delete(key));
  }
  /** Whether `key` has a value. */
  exists(key) {
    return this.#call(() => this.#bucket.exists(key));
  }
  /** Adds `delta` (default 1) to the number at `key`, atomically; returns the new value. */
  increment(key, delta = 1) {
    return Number(this.#call(() => atomicIncrement(this.#bucket, key, BigInt(delta))));
  }
  /** Every key, fetched a page at a time. */
  *keys() {
    let cursor;
    do {
      const page = this.#call(() => this.#bucket.listKeys(cursor));
      yield* page.keys;
      cursor = page.cursor;
    } while (cursor !== undefined && cursor !== null);
  }
}

export const kv = {
  /** Opens the store `name`: "default" is the function's default store. */
  open(name = "default") {
    try {
      return new Store(openBucket(name === "default" ? "" : name), name);
    } catch (e) {
      throw kvError(e, name);
    }
  },
};

function sqlError(e, database) {
  const { tag, val } = variant(e);
  if (tag === "no-such-database") {
    return new ThawError(tag, `no SQL database "${database}" (list it in sqlite_databases in thaw.toml; "default" is always there)`);
  }
  if (tag === "database-full") {
    return new ThawError("quota", `the SQL database "${database}" is full (raise limits.sql_max_mib in thaw.toml)`, "sql_max_mib");
  }
  if (tag === "access-denied") return new ThawError(tag, "access to SQL denied");
  return new ThawError("sql", val === undefined ? `SQL: ${tag}` : `SQL: ${val}`);
}

// A JavaScript value as a SQL parameter: integers (number or BigInt), other numbers, booleans
// (0/1), strings, bytes, null.
function sqlValue(v) {
  if (v === null || v === undefined) return { tag: "null" };
  switch (typeof v) {
    case "boolean":
      return { tag: "integer", val: v ? 1n : 0n };
    case "bigint":
      if (v < -(2n ** 63n) || v >= 2n ** 63n) throw new ThawError("sql", `a SQL integer is 64 bits; ${v} is not`);
      return { tag: "integer", val: v };
    case "number":
      return Number.isSafeInteger(v) ? { tag: "integer", val: BigInt(v) } : { tag: "real", val: v };
    case "string":
      return { tag: "text", val: v };
  }
  if (v instanceof Uint8Array) return { tag: "blob", val: v };
  if (v instanceof ArrayBuffer) return { tag: "blob", val: new Uint8Array(v) };
  throw new ThawError("sql", `a SQL parameter is a number, BigInt, boolean, string, Uint8Array or null, not ${typeof v}`);
}

// A SQL value as JavaScript: an integer is a number when it fits one exactly, else a BigInt.
function jsValue(v) {
  switch (v.tag) {
    case "integer":
      return v.val >= BigInt(Number.MIN_SAFE_INTEGER) && v.val <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v.val) : v.val;
    case "null":
      return null;
    default:
      return v.val;
  }
}

class Database {
  #connection;
  #name;

  constructor(connection, name) {
    this.#connection = connection;
    this.#name = name;
  }

  /**
   * Runs one statement with `?` parameters (never build SQL from input): `{ columns, rows }`,
   * each row an object by column name.
   */
  execute(statement, params = []) {
    let result;
    try {
      result = this.#connection.execute(statement, params.map(sqlValue));
    } catch (e) {
      throw sqlError(e, this.#name);
    }
    const { columns } = result;
    const rows = result.rows.map((row) => {
      const out = {};
      // defineProperty, not assignment: a column named __proto__ is a column like any other.
      row.values.forEach((v, i) =>
        Object.defineProperty(out, columns[i], { value: jsValue(v), enumerable: true, writable: true, configurable: true }),
      );
      return out;
    });
    return { columns, rows };
  }

  /** The rows of a statement, each an object by column name. */
  query(statement, params = []) {
    return this.execute(statement, params).rows;
  }

  /** The rowid of the last row inserted through this connection. */
  get lastInsertRowid() {
    return jsValue({ tag: "integer", val: this.#connection.lastInsertRowid() });
  }

  /** Rows changed by the last statement. */
  get changes() {
    return Number(this.#connection.changes());
  }
}

export const sql = {
  /** Opens the function's SQLite database `name`: "default" is always there. */
  open(name = "default") {
    try {
      return new Database(SqlConnection.open(name), name);
    } catch (e) {
      throw sqlError(e, name);
    }
  },
};

function pgError(e) {
  const { tag, val } = variant(e);
  if (tag === "query-failed") {
    const error = new ThawError("postgres", `Postgres: ${val.tag === "db-error" ? val.val.message : val.val}`);
    if (val.tag === "db-error") error.code = val.val.code;
    return error;
  }
  return new ThawError("postgres", `Postgres (${tag}): ${val}`);
}

const two = (n) => String(n).padStart(2, "0");

// A JavaScript value as a Postgres parameter: integers (number or BigInt, which the host fits
// to the column's integer type), other numbers, booleans, strings, bytes, a Date (a
// timestamp, to the millisecond), other objects as JSON, null.
function pgValue(v) {
  if (v === null || v === undefined) return { tag: "db-null" };
  switch (typeof v) {
    case "boolean":
      return { tag: "boolean", val: v };
    case "bigint":
      if (v < -(2n ** 63n) || v >= 2n ** 63n) throw new ThawError("postgres", `a Postgres integer is 64 bits; ${v} is not`);
      return { tag: "int64", val: v };
    case "number":
      return Number.isSafeInteger(v) ? { tag: "int64", val: BigInt(v) } : { tag: "floating64", val: v };
    case "string":
      return { tag: "str", val: v };
  }
  if (v instanceof Uint8Array) return { tag: "binary", val: v };
  if (v instanceof ArrayBuffer) return { tag: "binary", val: new Uint8Array(v) };
  if (v instanceof Date) {
    return {
      tag: "datetime",
      val: [v.getUTCFullYear(), v.getUTCMonth() + 1, v.getUTCDate(), v.getUTCHours(), v.getUTCMinutes(), v.getUTCSeconds(), v.getUTCMilliseconds() * 1e6],
    };
  }
  return { tag: "jsonb", val: encoder.encode(JSON.stringify(v)) };
}

// A Postgres value as JavaScript: integers as numbers (a bigint column's BigInt when it does
// not fit one exactly), jsonb parsed, a date "YYYY-MM-DD", a time "HH:MM:SS.nnnnnnnnn", a
// timestamp a Date (to the millisecond), numeric and uuid as strings.
function pgJs(v) {
  switch (v.tag) {
    case "int64":
      return v.val >= BigInt(Number.MIN_SAFE_INTEGER) && v.val <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v.val) : v.val;
    case "db-null":
      return null;
    case "jsonb":
      return JSON.parse(decoder.decode(v.val));
    case "date": {
      const [y, m, d] = v.val;
      return `${String(y).padStart(4, "0")}-${two(m)}-${two(d)}`;
    }
    case "time": {
      const [h, m, s, ns] = v.val;
      return `${two(h)}:${two(m)}:${two(s)}.${String(ns).padStart(9, "0")}`;
    }
    case "datetime": {
      const [y, mo, d, h, mi, s, ns] = v.val;
      return new Date(Date.UTC(y, mo - 1, d, h, mi, s, Math.floor(ns / 1e6)));
    }
    case "timestamp":
      return new Date(Number(v.val) * 1000);
    default:
      return v.val;
  }
}

class PgDatabase {
  #connection;

  constructor(connection) {
    this.#connection = connection;
  }

  /** The rows of a statement with `$1`, `$2`, ... parameters, each an object by column name. */
  query(statement, params = []) {
    let result;
    try {
      result = this.#connection.query(statement, params.map(pgValue));
    } catch (e) {
      throw pgError(e);
    }
    const columns = result.columns.map((c) => c.name);
    return result.rows.map((row) => {
      const out = {};
      row.forEach((v, i) =>
        Object.defineProperty(out, columns[i], { value: pgJs(v), enumerable: true, writable: true, configurable: true }),
      );
      return out;
    });
  }

  /** Runs a statement with `$1`, `$2`, ... parameters; how many rows it changed. */
  execute(statement, params = []) {
    try {
      return Number(this.#connection.execute(statement, params.map(pgValue)));
    } catch (e) {
      throw pgError(e);
    }
  }
}

export const pg = {
  /**
   * Opens a Postgres database: a name from the function's postgres_databases (its URL is the
   * host's secret), or a postgres:// address that allowed_outbound_hosts allows. The
   * connection comes from the host's pool and goes back when the request ends.
   */
  open(database) {
    try {
      return new PgDatabase(PgConnection.open(database));
    } catch (e) {
      throw pgError(e);
    }
  },
};

// BigInt (a u64 from the store, say) as its digits: JSON has no such type.
const plain = (_key, value) => (typeof value === "bigint" ? value.toString() : value);

function write(level, msg, fields) {
  const line = { level, msg: String(msg) };
  if (fields && Object.keys(fields).length > 0) line.fields = fields;
  let text = JSON.stringify(line, plain);
  // The host keeps 4 KiB of a line: keep it whole JSON (500 characters are at most 3,000
  // bytes, even escaped).
  if (encoder.encode(text).length > 4000) {
    text = JSON.stringify({ level, msg: String(msg).slice(0, 500) + "…" });
  }
  console.error(text);
}

/** Structured logs: `log.info("charged", { order: 42 })`; `thaw logs` shows level and fields. */
export const log = {
  debug: (msg, fields) => write("debug", msg, fields),
  info: (msg, fields) => write("info", msg, fields),
  warn: (msg, fields) => write("warn", msg, fields),
  error: (msg, fields) => write("error", msg, fields),
};

const MAX_RESPONSE_BYTES = 16 << 20;

// scheme://host[:port]/path: no user info or query, which may hold a key.
function shown(url) {
  return `${url.origin}${url.pathname}`;
}

function httpError(fullUrl, code) {
  const url = shown(fullUrl);
  const origin = fullUrl.origin;
  const tag = code?.tag ?? String(code);
  const kinds = {
    "HTTP-request-denied": ["denied", `request to ${url} denied: add "${origin}" to allowed_outbound_hosts in thaw.toml`],
    "connection-limit-reached": ["too-many-requests", `request to ${url} refused: this invocation already sent its max_outbound_requests`],
    "DNS-error": ["dns", `request to ${url}: name lookup failed`],
    "DNS-timeout": ["dns", `request to ${url}: name lookup timed out`],
    "destination-not-found": ["dns", `request to ${url}: name lookup failed`],
    "connection-refused": ["connection-refused", `request to ${url}: connection refused`],
    "connection-terminated": ["connection-refused", `request to ${url}: connection closed`],
    "destination-unavailable": ["connection-refused", `request to ${url}: connection refused`],
    "connection-timeout": ["timeout", `request to ${url} timed out connecting`],
    "HTTP-response-timeout": ["timeout", `request to ${url} timed out waiting for the response`],
    "connection-read-timeout": ["timeout", `request to ${url} timed out reading the response`],
  };
  const [kind, message] = kinds[tag] ?? ["fetch", `request to ${url} failed: ${tag}`];
  return new ThawError(kind, message);
}

/**
 * `fetch(url, { method, headers, body })` over wasi:http itself, returning a standard
 * Response; a failure is a ThawError of the kinds above (a refused host names the setting).
 * It waits for each response in turn and reads the body whole (at most 16 MiB, or
 * `maxBytes`); for calls in flight together or streamed bodies use the global `fetch`,
 * whose failures are an untyped NetworkError.
 */
export async function fetch(input, init = {}) {
  const url = new URL(typeof input === "string" ? input : input.url);
  const method = (init.method ?? "GET").toUpperCase();
  const headers = new Headers(init.headers ?? {});
  const entries = [];
  headers.forEach((value, name) => entries.push([name, encoder.encode(value)]));
  const request = new OutgoingRequest(Fields.fromList(entries));
  const methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
  request.setMethod(methods.includes(method) ? { tag: method.toLowerCase() } : { tag: "other", val: method });
  request.setScheme({ tag: url.protocol === "https:" ? "HTTPS" : "HTTP" });
  request.setAuthority(url.host);
  request.setPathWithQuery(url.pathname + url.search);
  const outgoing = request.body();
  let future;
  try {
    future = handleOutgoing(request, undefined);
  } catch (e) {
    throw httpError(url, variant(e));
  }
  const body = init.body === undefined || init.body === null ? new Uint8Array()
    : typeof init.body === "string" ? encoder.encode(init.body) : new Uint8Array(init.body);
  // When the host refuses the request the body's stream closes: the response says why.
  // Every child handle is disposed before its parent (a parent dropped first traps).
  const out = outgoing.write();
  try {
    for (let at = 0; at < body.length; at += 4096) {
      out.blockingWriteAndFlush(body.subarray(at, at + 4096));
    }
  } catch (_) {
    // reported by the response below
  } finally {
    out[Symbol.dispose]?.();
  }
  try {
    OutgoingBody.finish(outgoing, undefined);
  } catch (_) {
    // reported by the response below
  }
  const ready = future.subscribe();
  ready.block();
  ready[Symbol.dispose]?.();
  const result = future.get();
  future[Symbol.dispose]?.();
  if (result?.tag !== "ok") throw new ThawError("fetch", `request to ${shown(url)}: no response`);
  if (result.val.tag === "err") throw httpError(url, result.val.val);
  const response = result.val.val;
  const responseHeaders = new Headers();
  const fields = response.headers();
  for (const [name, value] of fields.entries()) {
    responseHeaders.append(name, decoder.decode(value));
  }
  fields[Symbol.dispose]?.();
  const status = response.status();
  const incoming = response.consume();
  const stream = incoming.stream();
  const limit = init.maxBytes ?? MAX_RESPONSE_BYTES;
  const chunks = [];
  let size = 0;
  try {
    for (;;) {
      let chunk;
      try {
        chunk = stream.blockingRead(65536n);
      } catch (e) {
        if (variant(e).tag === "closed") break; // the body's end is an error in wasi:io
        throw new ThawError("fetch", `reading the response from ${shown(url)}: cut off`);
      }
      size += chunk.length;
      if (size > limit) {
        throw new ThawError("response-too-large", `the response from ${shown(url)} is larger than ${limit} bytes`);
      }
      chunks.push(chunk);
    }
  } finally {
    stream[Symbol.dispose]?.();
    incoming[Symbol.dispose]?.();
    response[Symbol.dispose]?.();
  }
  const all = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    all.set(chunk, at);
    at += chunk.length;
  }
  return new Response(status === 204 || status === 304 ? null : all, { status, headers: responseHeaders });
}

/**
 * A request's CloudEvents attributes: thaw sends every schedule tick, asynchronous invocation
 * and queue message as an HTTP request with CloudEvents 1.0 binary-mode headers (ce-id,
 * ce-source, ce-type, ce-time, ce-subject; the body is the event's data).
 *
 *   const event = Event.from(request);
 *   if (event?.isScheduleTick) { ... }
 *
 * Delivery is at least once: a retry or a restart can deliver one event again with the same
 * `id`; a handler whose effect must not repeat keys it by `id` (in the kv store, say).
 */
export class Event {
  static SCHEDULE_TICK = "dev.thaw.schedule.tick";
  static ASYNC_INVOCATION = "dev.thaw.invocation";
  static NATS_MESSAGE = "dev.thaw.nats.message";
  static REDIS_MESSAGE = "dev.thaw.redis.message";

  constructor(id, source, type, time, subject, attempt) {
    /** Unique within its source; the same on every retry. */
    this.id = id;
    /** Where it comes from: /thaw/schedules/<function>, /thaw/functions/<function>, ... */
    this.source = source;
    /** What happened: one of the constants above, or a client's own type. */
    this.type = type;
    /** When it happened (RFC 3339), or null. */
    this.time = time;
    /** What it is about within the source (a cron expression, a path, a subject), or null. */
    this.subject = subject;
    /** Which delivery attempt this is, from 1. */
    this.attempt = attempt;
  }

  /** The event a standard Request carries, or null for a plain request (no ce-id, ce-source or ce-type). */
  static from(request) {
    const h = request.headers;
    const [id, source, type] = [h.get("ce-id"), h.get("ce-source"), h.get("ce-type")];
    if (id === null || source === null || type === null) return null;
    const attempt = Number.parseInt(h.get("ce-thawattempt") ?? "1", 10);
    return new Event(id, source, type, h.get("ce-time"), h.get("ce-subject"), Number.isNaN(attempt) ? 1 : attempt);
  }

  get isScheduleTick() {
    return this.type === Event.SCHEDULE_TICK;
  }
  get isAsyncInvocation() {
    return this.type === Event.ASYNC_INVOCATION;
  }
  get isQueueMessage() {
    return this.type === Event.NATS_MESSAGE || this.type === Event.REDIS_MESSAGE;
  }
}
