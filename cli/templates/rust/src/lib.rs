//! {{name}}: answers `{"message": "<GREETING>, <name>!", "method": ..., "body": ...}`.
//! `?name=` picks the name, the `GREETING` environment variable (set in thaw.toml) the
//! greeting; a body must be JSON (anything else is a 400).

use thaw_sdk::{Error, Json, Request, handler};

#[handler]
fn handle(req: Request) -> Result<Json<serde_json::Value>, Error> {
    let name = thaw_sdk::query(&req, "name").unwrap_or_else(|| "world".into());
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".into());
    let body: serde_json::Value = if req.body().is_empty() {
        serde_json::Value::Null
    } else {
        thaw_sdk::json(&req)?
    };
    Ok(Json(serde_json::json!({
        "message": format!("{greeting}, {name}!"),
        "method": req.method().as_str(),
        "body": body,
    })))
}
