//! {{name}}: answers `{"message": "<greeting>, <name>!", "method", "body", "calls", "upstream", "event"}`.
//!
//! - `?name=` picks the name; the greeting is the `greeting` setting in thaw.toml;
//! - a body must be JSON (anything else is a 400);
//! - `calls` counts the requests so far, in the function's key-value store, which also keeps
//!   the last body (`thaw kv get {{name}} last-body`);
//! - `upstream` is what the configured `upstream` URL answered (null when there is none);
//! - each request logs a structured line: `thaw logs {{name}}` shows it;
//! - `event` is the request's CloudEvents attributes when thaw sent it for a schedule, an
//!   asynchronous invocation (`Prefer: respond-async`) or a queue message (null otherwise).

use serde_json::{Value, json};
use thaw_sdk::{Error, Json, Request, config, event::Event, handler, http, kv, log};

#[handler]
async fn handle(req: Request) -> Result<Json<Value>, Error> {
    let name = thaw_sdk::query(&req, "name").unwrap_or_else(|| "world".into());
    let greeting = config::get("greeting")?.unwrap_or_else(|| "Hello".into());
    let body: Value = if req.body().is_empty() {
        Value::Null
    } else {
        thaw_sdk::json(&req)?
    };
    // State: an atomic counter in the function's own store, and the last body sent.
    let store = kv::Store::open("default")?;
    let calls = store.increment("calls", 1)?;
    if !body.is_null() {
        store.set_json("last-body", &body)?;
    }
    // An outbound call, when one is configured (a refused host is a 502 naming the setting).
    let upstream = match config::get("upstream")?.filter(|url| !url.is_empty()) {
        Some(url) => Value::String(http::get(&url).await?.into_body().text().await?),
        None => Value::Null,
    };
    log::info!("greeted", name = name, calls = calls);
    let event = Event::from(&req).map(|e| {
        json!({"id": e.id, "source": e.source, "type": e.kind, "time": e.time,
               "subject": e.subject, "attempt": e.attempt})
    });
    Ok(Json(json!({
        "message": format!("{greeting}, {name}!"),
        "method": req.method().as_str(),
        "body": body,
        "calls": calls,
        "upstream": upstream,
        "event": event,
    })))
}
