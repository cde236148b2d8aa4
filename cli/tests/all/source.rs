//! Functions deployed as source on the language engines (`thaw deploy handler.js`, `thaw
//! deploy app-dir/`): deployed by a `thaw` with nothing on its `PATH` (no node, npm,
//! componentize-js, componentize-py or python), answering through the helper modules, bad
//! source refused at deploy with the engine's message (and nothing changed), a request's
//! exception costing that request only, and a hundred functions per language answering their
//! own text after a `kill -9`.
//!
//! The engines come from `scripts/build-engines` (run by `scripts/test`) in `target/engines`.
//! Without them the test is reported skipped, unless `THAW_REQUIRE_TOOLCHAINS` is set (CI
//! sets it), where that is a failure. One server runs every case: each server compiles both
//! engines once, which is the expensive part of this test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use thaw_runtime::source::{Bundle, Language};

use crate::support::{TestServer, deploy_raw, thaw_command};

/// `target/engines`, where scripts/build-engines writes the engines; `None` if either is
/// missing (and not required).
pub(crate) fn engines() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/engines");
    let built = ["js.wasm", "python.wasm"]
        .iter()
        .all(|f| dir.join(f).is_file());
    if built {
        return Some(dir);
    }
    assert!(
        !crate::support::required("THAW_REQUIRE_TOOLCHAINS"),
        "the language engines are not built in {} (scripts/build-engines)",
        dir.display()
    );
    eprintln!("skipped: the language engines are not built (scripts/build-engines)");
    None
}

/// Writes `files` (path, text) under a fresh directory.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

/// `thaw deploy` with an empty `PATH`: nothing but the thaw binary itself can run. Returns
/// whether it succeeded and what it printed.
fn deploy(server: &TestServer, path: &Path, args: &[&str]) -> (bool, String) {
    let empty = tempfile::tempdir().unwrap();
    let mut all = vec!["deploy", path.to_str().unwrap()];
    all.extend_from_slice(args);
    let output = thaw_command(server, &all)
        .env("PATH", empty.path())
        .env_remove("PYTHONPATH")
        .env_remove("NODE_PATH")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Deploys and expects a refusal naming `expected` (every part), leaving no function `name`.
async fn refused(server: &TestServer, path: &Path, name: &str, args: &[&str], expected: &[&str]) {
    let mut all = vec!["--name", name];
    all.extend_from_slice(args);
    let (ok, text) = deploy(server, path, &all);
    assert!(!ok, "{name} was deployed: {text}");
    assert!(text.contains("400 Bad Request"), "{name}: {text}");
    for part in expected {
        assert!(text.contains(part), "{name}: {part:?} not in: {text}");
    }
    assert!(
        server.admin().get(name).await.is_err(),
        "a refused deploy of {name} left a function"
    );
}

const JS_INDEX: &str = r#"import { greet } from "./lib/greet.js";
import * as helpers from "./lib/greet.js";
import { config, kv, log } from "thaw";

export default {
  async fetch(request) {
    const url = new URL(request.url);
    if (url.searchParams.has("fail")) {
      explode();
    }
    if (url.searchParams.has("ran")) {
      return new Response(`${ran} ${touch(1)} ${api.bump()} ${defaulted()}\n`);
    }
    const calls = kv.open("default").increment("calls");
    log.info("greeted", { calls });
    const text = greet(url.searchParams.get("name") ?? "world", config.get("greeting"));
    return new Response(`${text} (${calls}, ${helpers.PUNCTUATION})\n`);
  },
};

function explode() {
  throw new TypeError("request boom");
}

// State no code may touch before a request: a snapshot's run compiles the functions below
// ahead without running them (the getter and the default value are never evaluated).
let ran = 0;
function touch(n) {
  ran += n;
  return ran;
}
const api = {
  bump() {
    ran += 10;
    return ran;
  },
  get seen() {
    ran += 100;
    return ran;
  },
};
const defaulted = (n = (ran += 1000)) => n;
"#;

const JS_GREET: &str = r#"export const PUNCTUATION = "!";
export function greet(name, greeting) {
  return `${greeting ?? "Hello"}, ${name}${PUNCTUATION}`;
}
"#;

const PY_APP: &str = r#"import random

from thaw import config, kv, log
from thaw_http import Response

from greeting.words import greet


def handle(request):
    if "fail" in request.query:
        explode()
    if "random" in request.query:
        return Response(body=repr(random.random()).encode())
    calls = kv.open("default").increment("calls")
    log.info("greeted", calls=calls)
    text = greet(request.query.get("name", "world"), config.get("greeting"))
    return Response(body=f"{text} ({calls})\n".encode())


def explode():
    raise ValueError("request boom")
"#;

const PY_WORDS: &str = r#"def greet(name, greeting):
    return f"{greeting or 'Hello'}, {name}!"
"#;

#[tokio::test(flavor = "multi_thread")]
async fn source_functions_deploy_without_toolchains_refuse_bad_source_and_survive_a_restart() {
    let Some(built) = engines() else { return };
    // The server's own engines directory (links to the built engines), so that the upgrade
    // below can change what it holds.
    let engines = tempfile::tempdir().unwrap();
    for file in ["js.wasm", "python.wasm"] {
        std::os::unix::fs::symlink(built.join(file), engines.path().join(file)).unwrap();
    }
    // Postgres for `pg` (started here so that one server, which compiles the engines once,
    // runs every case); `None` is reported skipped unless services are required.
    let postgres = thaw_harness::Postgres::start();
    let url = postgres.as_ref().map_or("", |pg| pg.url.as_str());
    let mut server = TestServer::start_with_env(
        &["--engines", engines.path().to_str().unwrap()],
        &[("THAW_SECRET_ORDERS_DB", url)],
    );
    modules_settings_and_state_answer(&server).await;
    busy_functions_tier_up_to_their_snapshots(&server).await;
    sql_answers_from_both_languages(&server).await;
    if postgres.is_some() {
        postgres_answers_from_both_languages(&server).await;
    }
    an_exception_costs_its_request_only(&server).await;
    bad_source_is_refused_and_changes_nothing(&server).await;
    a_hundred_per_language_answer_after_a_kill(&mut server).await;
    an_engine_upgrade_moves_only_what_is_redeployed(&mut server, &built, engines.path()).await;
}

/// A host restarted with a new JS engine (here the same engine with a custom section: a new
/// digest) keeps serving every function on the engine it was deployed with; a redeploy moves
/// that one function to the new engine, and `thaw engines` says which is where.
async fn an_engine_upgrade_moves_only_what_is_redeployed(
    server: &mut TestServer,
    built: &Path,
    engines: &Path,
) {
    let mut upgraded = std::fs::read(built.join("js.wasm")).unwrap();
    let name = b"thaw-test-upgrade";
    upgraded.extend_from_slice(&[0, name.len() as u8 + 1, name.len() as u8]);
    upgraded.extend_from_slice(name);
    std::fs::remove_file(engines.join("js.wasm")).unwrap();
    std::fs::write(engines.join("js.wasm"), upgraded).unwrap();
    server.kill_and_restart(2);
    for name in ["hello-js", "js-7"] {
        let response = server.get(&format!("/{name}")).await;
        assert_eq!(response.status(), 200, "{name} after the upgrade");
    }
    let (ok, text) = deploy(
        server,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../cli/templates/js/index.js"),
        &["--name", "js-7", "--config", "greeting=Hey"],
    );
    assert!(ok, "{text}");
    let response = server.get("/js-7?name=new").await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("Hey, new!"));
    let engines = thaw_command(server, &["engines", "--json"])
        .output()
        .unwrap();
    let engines: Vec<serde_json::Value> = serde_json::from_slice(&engines.stdout).unwrap();
    let js: Vec<_> = engines
        .iter()
        .filter(|e| e["language"] == "js" || e["language"].is_null())
        .collect();
    assert_eq!(js.len(), 2, "the old and the new JS engine: {engines:?}");
    let (new, old): (Vec<_>, Vec<_>) = js.into_iter().partition(|e| e["current"] == true);
    let functions = |e: &serde_json::Value| e["functions"].as_array().unwrap().len();
    assert_eq!(
        new[0]["functions"],
        serde_json::json!(["js-7@v2"]),
        "{engines:?}"
    );
    assert!(old[0]["language"].is_null(), "{engines:?}");
    // hello-js and js-0..js-99 but js-7's new version (its v1 is kept, on the old engine).
    assert_eq!(functions(old[0]), 101, "{engines:?}");
}

/// Source functions under steady traffic move onto their snapshots (the engine with the
/// program loaded, compiled for it), in the background, one at a time, and answer as before:
/// the same text, their state where it was, their counters kept. Each Python instance of the
/// snapshot draws its own random seed (the engine's first entry, which seeds it, happened
/// when the snapshot was taken). A restart loads the snapshots (checked in
/// `a_hundred_per_language_answer_after_a_kill`).
async fn busy_functions_tier_up_to_their_snapshots(server: &TestServer) {
    // (name, what follows the count in its answer, requests so far, requests before).
    let mut functions = Vec::new();
    for (name, suffix) in [("hello-js", ", !)"), ("hello-py", ")")] {
        let before = server.admin().get(name).await.unwrap();
        assert_eq!(before["loaded_from"], "artifact", "on its engine: {before}");
        functions.push((name, suffix, 2, before["requests"].as_u64().unwrap()));
    }
    let started = std::time::Instant::now();
    let mut waiting = functions.len();
    while waiting > 0 {
        // Steady traffic to each function still on its engine, well above the tier-up's
        // rate (5 a second) even on a loaded machine: a few requests at once. Their order,
        // and so their counts, is not known until all are answered.
        waiting = 0;
        for (name, suffix, calls, requests_before) in &mut functions {
            let info = server.admin().get(name).await.unwrap();
            if info["loaded_from"] == "snapshot" {
                assert_eq!(info["kind"], "source", "{info}");
                assert_eq!(
                    info["requests"].as_u64().unwrap(),
                    *requests_before + *calls - 2,
                    "{name}: its counters are kept: {info}"
                );
                continue;
            }
            waiting += 1;
            assert!(
                started.elapsed() < Duration::from_secs(400),
                "{name}: no tier-up after {calls} requests: {info}"
            );
            let path = format!("/{name}?name=busy");
            let answers = futures::future::join_all((0..4).map(|_| server.get(&path))).await;
            let mut counts = Vec::new();
            for response in answers {
                assert_eq!(response.status(), 200, "{name}");
                let text = response.text().await.unwrap();
                let count = text
                    .strip_prefix("Hi, busy! (")
                    .and_then(|t| t.strip_suffix(&format!("{suffix}\n")))
                    .and_then(|n| n.parse::<u64>().ok());
                counts.push(count.unwrap_or_else(|| panic!("{name}: {text:?}")));
            }
            // The same answers on the engine and on the snapshot: the next four counts.
            counts.sort_unstable();
            assert_eq!(
                counts,
                (*calls + 1..=*calls + 4).collect::<Vec<_>>(),
                "{name}"
            );
            *calls += 4;
        }
    }
    // On the snapshots: the same answers, state carried on.
    for (name, suffix, calls, _) in &mut functions {
        for _ in 0..3 {
            *calls += 1;
            let response = server.get(&format!("/{name}?name=busy")).await;
            assert_eq!(
                response.text().await.unwrap(),
                format!("Hi, busy! ({calls}{suffix}\n"),
                "{name}"
            );
        }
    }
    // The snapshot's run compiled hello-js's module-level functions without running any: a
    // fresh instance finds the module's state as its top level left it.
    let response = server.get("/hello-js?ran").await;
    assert_eq!(response.text().await.unwrap(), "0 1 11 1011\n");
    // A fresh instance per request (the default), each seeded on its own.
    assert_fresh_instances_draw_apart(server, "snapshot").await;
}

/// Four requests to hello-py's `random.random()`, each on a fresh instance of `what` (the
/// default), give four different values: no two instances share a seed.
async fn assert_fresh_instances_draw_apart(server: &TestServer, what: &str) {
    let mut draws = std::collections::HashSet::new();
    for _ in 0..4 {
        // A value: thaw_http's query drops a bare `?random`.
        let response = server.get("/hello-py?random=1").await;
        assert_eq!(response.status(), 200);
        draws.insert(response.text().await.unwrap());
    }
    assert_eq!(
        draws.len(),
        4,
        "instances of the {what} share a seed: {draws:?}"
    );
}

/// A JS project of two modules and a Python package, with a setting and state.
async fn modules_settings_and_state_answer(server: &TestServer) {
    let js = project(&[("index.js", JS_INDEX), ("lib/greet.js", JS_GREET)]);
    let py = project(&[
        ("app.py", PY_APP),
        ("greeting/__init__.py", ""),
        ("greeting/words.py", PY_WORDS),
    ]);
    for (name, dir) in [("hello-js", &js), ("hello-py", &py)] {
        let (ok, text) = deploy(
            server,
            dir.path(),
            &["--name", name, "--config", "greeting=Hi"],
        );
        assert!(ok, "{name}: {text}");
        assert!(
            text.contains(&format!("deployed {name} (source)")),
            "{text}"
        );
    }
    for (name, suffix) in [("hello-js", ", !)"), ("hello-py", ")")] {
        for calls in 1..=2 {
            let response = server.get(&format!("/{name}?name=source")).await;
            assert_eq!(response.status(), 200, "{name}");
            assert_eq!(
                response.text().await.unwrap(),
                format!("Hi, source! ({calls}{suffix}\n"),
                "{name}"
            );
        }
    }
    let info = server.admin().get("hello-js").await.unwrap();
    assert_eq!(info["kind"], "source");
    // `thaw engines`: both engines current and loaded, each with its function.
    let engines = thaw_command(server, &["engines", "--json"])
        .output()
        .unwrap();
    let engines: Vec<serde_json::Value> = serde_json::from_slice(&engines.stdout).unwrap();
    assert_eq!(engines.len(), 2, "{engines:?}");
    for (language, function) in [("js", "hello-js@v1"), ("python", "hello-py@v1")] {
        let engine = engines.iter().find(|e| e["language"] == language).unwrap();
        assert_eq!(engine["current"], true, "{engine}");
        assert_eq!(engine["loaded"], true, "{engine}");
        assert_eq!(
            engine["functions"],
            serde_json::json!([function]),
            "{engine}"
        );
    }
    // On the engine, each fresh instance is seeded by its own first entry (componentize-py's
    // runtime, at the program's load), which the engine relies on since it reseeds only the
    // instances of a snapshot (`busy_functions_tier_up_to_their_snapshots` checks those).
    assert_fresh_instances_draw_apart(server, "engine").await;
}

const JS_SQL: &str = r#"import { sql, ThawError } from "thaw";

export default {
  async fetch(request) {
    const url = new URL(request.url);
    const db = sql.open();
    db.execute("CREATE TABLE IF NOT EXISTS seen (id INTEGER PRIMARY KEY, name TEXT, big INTEGER, score REAL, raw BLOB)");
    if (url.searchParams.has("other")) {
      try {
        sql.open("other");
      } catch (e) {
        return new Response(`${e instanceof ThawError} ${e.kind}: ${e.message}\n`);
      }
    }
    db.execute("INSERT INTO seen (name, big, score, raw) VALUES (?, ?, ?, ?)", [
      url.searchParams.get("name"), 9007199254740993n, 1.5, new Uint8Array([1, 2]),
    ]);
    const id = db.lastInsertRowid;
    const rows = db.query("SELECT id, name, big, score, raw, NULL AS none FROM seen WHERE id <= ? ORDER BY id", [id]);
    const shown = rows.map((r) => `${r.id}:${r.name}:${typeof r.big}:${r.score}:${r.raw.length}:${r.none}`);
    return new Response(`${db.changes} ${shown.join(",")}\n`);
  },
};
"#;

const PY_SQL: &str = r#"from thaw import ThawError, sql
from thaw_http import Response


def handle(request):
    db = sql.open()
    db.execute("CREATE TABLE IF NOT EXISTS seen (id INTEGER PRIMARY KEY, name TEXT, big INTEGER, score REAL, raw BLOB)")
    if "other" in request.query:
        try:
            sql.open("other")
        except ThawError as e:
            return Response(body=f"True {e.kind}: {e}\n".encode())
    db.execute(
        "INSERT INTO seen (name, big, score, raw) VALUES (?, ?, ?, ?)",
        [request.query.get("name"), 9007199254740993, 1.5, b""],
    )
    rows = db.query(
        "SELECT id, name, big, score, raw, NULL AS none FROM seen WHERE id <= ? ORDER BY id",
        [db.last_insert_rowid],
    )
    shown = [f"{r['id']}:{r['name']}:{type(r['big']).__name__}:{r['score']}:{len(r['raw'])}:{r['none']}" for r in rows]
    return Response(body=f"{db.changes} {','.join(shown)}\n".encode())
"#;

/// `sql` of the "thaw" module in both languages: a table made, rows written with parameters of
/// each type and read back by column name (a 64-bit integer past 2^53 as a BigInt in
/// JavaScript), and a database the function was not given refused with a ThawError naming the
/// setting. The functions are removed after, leaving the engines as they were.
async fn sql_answers_from_both_languages(server: &TestServer) {
    let js = project(&[("index.js", JS_SQL)]);
    let py = project(&[("app.py", PY_SQL)]);
    for (name, dir, big, none) in [
        ("sql-js", &js, "bigint", "null"),
        ("sql-py", &py, "int", "None"),
    ] {
        let (ok, text) = deploy(server, dir.path(), &["--name", name]);
        assert!(ok, "{name}: {text}");
        for (calls, want) in [
            ("ada", format!("0 1:ada:{big}:1.5:2:{none}\n")),
            (
                "grace",
                format!("0 1:ada:{big}:1.5:2:{none},2:grace:{big}:1.5:2:{none}\n"),
            ),
        ] {
            let response = server.get(&format!("/{name}?name={calls}")).await;
            assert_eq!(response.status(), 200, "{name}");
            assert_eq!(response.text().await.unwrap(), want, "{name}");
        }
        let response = server.get(&format!("/{name}?other=1")).await;
        let text = response.text().await.unwrap();
        assert!(
            text.starts_with("true no-such-database: no SQL database \"other\"")
                || text.starts_with("True no-such-database: no SQL database \"other\""),
            "{name}: {text}"
        );
        assert!(text.contains("sqlite_databases"), "{name}: {text}");
        server.admin().remove(name).await.unwrap();
    }
}

const JS_PG: &str = r#"import { pg } from "thaw";

export default {
  async fetch(request) {
    const url = new URL(request.url);
    try {
      const db = pg.open(url.searchParams.get("db"));
      db.execute("CREATE TABLE IF NOT EXISTS js (id serial PRIMARY KEY, item text, qty int, price numeric, meta jsonb, at timestamptz, day date DEFAULT '2024-02-29')");
      const n = db.execute("INSERT INTO js (item, qty, price, meta, at) VALUES ($1, $2, $3, $4, $5)", [
        "tea", 2, 1.25, { k: [1] }, new Date(Date.UTC(2024, 1, 29, 12, 30)),
      ]);
      if (url.searchParams.has("bad")) db.query("SELECT * FROM nope");
      const rows = db.query("SELECT id, item, qty, price, meta, at, day, NULL AS none FROM js WHERE qty >= $1 ORDER BY id", [2]);
      const shown = rows.map((r) => [r.id, r.item, r.qty, r.price, JSON.stringify(r.meta), r.at.toISOString(), r.day, r.none].join(":"));
      return new Response(`${n} ${shown.join(",")}\n`);
    } catch (e) {
      return new Response(`${e.kind} ${e.code}: ${e.message}\n`);
    }
  },
};
"#;

const PY_PG: &str = r#"import datetime
import decimal
import json

from thaw import ThawError, pg
from thaw_http import Response


def handle(request):
    try:
        db = pg.open(request.query.get("db"))
        db.execute("CREATE TABLE IF NOT EXISTS py (id serial PRIMARY KEY, item text, qty int, price numeric, meta jsonb, at timestamptz, day date DEFAULT '2024-02-29')")
        at = datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.timezone.utc)
        n = db.execute(
            "INSERT INTO py (item, qty, price, meta, at) VALUES ($1, $2, $3, $4, $5)",
            ["tea", 2, decimal.Decimal("1.25"), {"k": [1]}, at],
        )
        if "bad" in request.query:
            db.query("SELECT * FROM nope")
        rows = db.query("SELECT id, item, qty, price, meta, at, day, NULL AS none FROM py WHERE qty >= $1 ORDER BY id", [2])
        shown = [
            ":".join([str(r["id"]), r["item"], str(r["qty"]), str(r["price"]), json.dumps(r["meta"], separators=(",", ":")), r["at"].isoformat(), r["day"].isoformat(), str(r["none"])])
            for r in rows
        ]
        return Response(body=f"{n} {','.join(shown)}\n".encode())
    except ThawError as e:
        return Response(body=f"{e.kind} {getattr(e, 'code', None)}: {e}\n".encode())
"#;

/// `pg` of the "thaw" module in both languages, on a database the deploy names
/// (`--postgres-database orders=env:ORDERS_DB`): parameters of each kind (a language's one
/// number type fitted to `int` and `numeric` columns, JSON, a timestamp) written and read back
/// by column name; the server's error with its SQLSTATE; a name the function was not given
/// refused, naming the setting.
async fn postgres_answers_from_both_languages(server: &TestServer) {
    let js = project(&[("index.js", JS_PG)]);
    let py = project(&[("app.py", PY_PG)]);
    for (name, dir, row, none) in [
        (
            "pg-js",
            &js,
            "tea:2:1.25:{\"k\":[1]}:2024-02-29T12:30:00.000Z:2024-02-29",
            ":",
        ),
        (
            "pg-py",
            &py,
            "tea:2:1.25:{\"k\":[1]}:2024-02-29T12:30:00+00:00:2024-02-29",
            ":None",
        ),
    ] {
        let (ok, text) = deploy(
            server,
            dir.path(),
            &[
                "--name",
                name,
                "--postgres-database",
                "orders=env:ORDERS_DB",
            ],
        );
        assert!(ok, "{name}: {text}");
        for want in [
            format!("1 1:{row}{none}\n"),
            format!("1 1:{row}{none},2:{row}{none}\n"),
        ] {
            let response = server.get(&format!("/{name}?db=orders")).await;
            assert_eq!(response.status(), 200, "{name}");
            assert_eq!(response.text().await.unwrap(), want, "{name}");
        }
        let response = server.get(&format!("/{name}?db=orders&bad=1")).await;
        let text = response.text().await.unwrap();
        assert!(
            text.starts_with("postgres 42P01: Postgres: relation \"nope\" does not exist"),
            "{name}: {text}"
        );
        let response = server.get(&format!("/{name}?db=other")).await;
        let text = response.text().await.unwrap();
        assert!(
            text.starts_with("postgres ") && text.contains("no Postgres database \"other\""),
            "{name}: {text}"
        );
        assert!(text.contains("postgres_databases"), "{name}: {text}");
        server.admin().remove(name).await.unwrap();
    }
}

/// A request's exception: a 500, its stack in the function's log, the next request served.
async fn an_exception_costs_its_request_only(server: &TestServer) {
    for (name, frame) in [
        ("hello-js", "explode@index.js:22:9"),
        ("hello-py", "File \"app.py\", line 21, in explode"),
    ] {
        assert_eq!(server.get(&format!("/{name}?fail=1")).await.status(), 500);
        let response = server.get(&format!("/{name}?name=again")).await;
        assert_eq!(response.status(), 200, "{name} after a failed request");
        let logs = thaw_command(server, &["logs", name]).output().unwrap();
        let logs = String::from_utf8_lossy(&logs.stdout);
        assert!(logs.contains("request boom"), "{name}: {logs}");
        assert!(logs.contains(frame), "{name}: {frame:?} not in {logs}");
    }
}

/// Bad source, each file with the parts its refusal must name (and the deploy's extra flags).
const BAD: [(&str, &str, &[&str], &[&str]); 12] = [
    (
        "syntax.js",
        "const a = 1;\n\nexport default { fetch() { return 1 +; } };\n",
        &[],
        &["syntax.js:3:38: SyntaxError"],
    ),
    (
        "syntax.py",
        "def handle(request):\n    return (\n",
        &[],
        &["syntax.py:2:12: SyntaxError"],
    ),
    (
        "missing.js",
        "import { x } from \"./nope.js\";\nexport default { fetch() {} };\n",
        &[],
        &["cannot find module \"./nope.js\" imported from missing.js"],
    ),
    (
        "missing.py",
        "import nope\n\ndef handle(request):\n    pass\n",
        &[],
        &["No module named 'nope'", "File \"missing.py\", line 1"],
    ),
    (
        "throws.js",
        "function boom() {\n  throw new Error(\"top-level boom\");\n}\nboom();\n",
        &[],
        &[
            "Error: top-level boom",
            "boom@throws.js:2:9",
            "@throws.js:4:1",
        ],
    ),
    (
        "throws.py",
        "def boom():\n    raise ValueError(\"top-level boom\")\n\nboom()\n",
        &[],
        &[
            "ValueError: top-level boom",
            "File \"throws.py\", line 2, in boom",
        ],
    ),
    (
        "loops.js",
        "while (true) {}\n",
        &["--timeout-ms", "1000"],
        &["loops.js's top-level code did not finish within the function's timeout (1000 ms)"],
    ),
    (
        "loops.py",
        "while True:\n    pass\n",
        &["--timeout-ms", "1000"],
        &["loops.py's top-level code did not finish within the function's timeout (1000 ms)"],
    ),
    (
        "nohandler.js",
        "export const x = 1;\n",
        &[],
        &["nohandler.js has no handler"],
    ),
    (
        "nohandler.py",
        "x = 1\n",
        &[],
        &["nohandler.py has no handler"],
    ),
    (
        "meta.js",
        "// import.meta in a comment is no use of it\nexport default { fetch() { return new Response(import.meta.url); } };\n",
        &[],
        &["meta.js:2:48: import.meta is not supported"],
    ),
    (
        "my-app.py",
        "def handle(request):\n    pass\n",
        &[],
        &["my-app.py: not importable as a module"],
    ),
];

/// Bad source: refused at deploy with the engine's message, nothing deployed; a bundle over
/// the size limit is a 413, before any engine runs.
async fn bad_source_is_refused_and_changes_nothing(server: &TestServer) {
    let files: Vec<(&str, &str)> = BAD.iter().map(|(file, text, ..)| (*file, *text)).collect();
    let bad = project(&files);
    for (i, (file, _, args, expected)) in BAD.iter().enumerate() {
        let started = std::time::Instant::now();
        refused(
            server,
            &bad.path().join(file),
            &format!("bad-{i}"),
            args,
            expected,
        )
        .await;
        // The endless ones are stopped at their timeout, not at some later bound.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{file}: the deploy was not stopped"
        );
    }
    let mut huge = Bundle {
        language: Language::Js,
        entry: "index.js".into(),
        files: vec![(
            "index.js".into(),
            "x".repeat(thaw_runtime::source::MAX_BUNDLE_BYTES),
        )],
    }
    .to_bytes();
    huge.push(b'\n');
    let (status, body) = deploy_raw(server, "huge", huge).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("over the limit"), "{body}");
}

/// A hundred functions per language, each its own source, deployed through the admin API,
/// then a kill -9: each answers its own text again, and nothing is compiled.
async fn a_hundred_per_language_answer_after_a_kill(server: &mut TestServer) {
    let mut names = Vec::new();
    for i in 0..100 {
        for language in Language::ALL {
            let name = format!("{language}-{i}");
            let (entry, text) = match language {
                Language::Js => (
                    "index.js",
                    format!(
                        "export default {{ fetch() {{ return new Response(\"{name}\\n\"); }} }};\n"
                    ),
                ),
                Language::Python => (
                    "app.py",
                    format!(
                        "from thaw_http import Response\n\ndef handle(request):\n    return Response(body=b\"{name}\\n\")\n"
                    ),
                ),
            };
            let bundle = Bundle {
                language,
                entry: entry.into(),
                files: vec![(entry.into(), text)],
            };
            let (status, body) = deploy_raw(server, &name, bundle.to_bytes()).await;
            assert_eq!(status, 201, "{name}: {body}");
            names.push(name);
        }
    }
    // Each function loads on its first request (`--load lazy`), once the host has loaded
    // its engines (as it does at start-up in any load mode).
    server.kill_and_restart_with(1, &["--load", "lazy"]);
    let admin = server.admin();
    thaw_harness::wait::eventually(
        "the engines are loaded",
        Duration::from_secs(60),
        || async {
            let engines = admin.typed().engines().await.unwrap();
            engines.iter().filter(|e| e.current).all(|e| e.loaded)
        },
    )
    .await;
    for name in &names {
        let response = server.get(&format!("/{name}")).await;
        assert_eq!(response.status(), 200, "{name}");
        assert_eq!(response.text().await.unwrap(), format!("{name}\n"));
    }
    // The functions that tiered up start on their engine, in memory, instead of waiting for
    // their snapshots' artifacts, which follow in the background: two swaps, each counted.
    for name in ["hello-js", "hello-py"] {
        let response = server.get(&format!("/{name}?name=again")).await;
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        assert!(text.starts_with("Hi, again! ("), "{name}: {text}");
    }
    let status = server
        .wait_for(None, "both snapshots loaded", |s| {
            s["source_snapshots"].as_u64() == Some(2)
        })
        .await;
    assert_eq!(status["source_snapshot_failures"], 0, "{status}");
    for name in ["hello-js", "hello-py"] {
        let info = server.admin().get(name).await.unwrap();
        assert_eq!(info["loaded_from"], "snapshot", "{info}");
        let response = server.get(&format!("/{name}?name=again")).await;
        assert_eq!(response.status(), 200, "{name} on its snapshot");
    }
    let status = server.admin().status().await.unwrap();
    assert_eq!(
        status["compilations"], 0,
        "a restart compiles no engine: {status}"
    );
}
