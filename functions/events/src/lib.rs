//! A function for the event tests: it reports every event it is given, and fails or takes
//! its time when asked to.
//!
//! Contract (the tests rely on it):
//! - With `wasi:config` `report` set to a URL, every request POSTs `<ce-type> <ce-id>
//!   <attempt> <ce-source>` there before answering (the tests' collector counts deliveries
//!   by id).
//! - `?fail=N` answers 500 to attempts 1..=N, then 200; `?fail=always` always 500 (`config`
//!   `fail` does the same for every request).
//! - `?status=S` answers S; `?sleep_ms=N` sleeps N ms first; `config` `sleep_ms` does the same for
//!   every request (a schedule's tick has no query).
//! - Otherwise 200 with `ran <ce-id> attempt <n>`; a request that is not an event gets
//!   `not an event`.

use thaw_sdk::event::Event;
use thaw_sdk::{Request, Response, handler};

#[handler]
async fn events(req: Request) -> Result<Response, thaw_sdk::Error> {
    let Some(event) = Event::from(&req) else {
        return Ok(Response::new(b"not an event\n".to_vec()));
    };
    let sleep_ms = thaw_sdk::query(&req, "sleep_ms")
        .or_else(|| thaw_sdk::config::get("sleep_ms").ok().flatten())
        .and_then(|ms| ms.parse::<u64>().ok());
    if let Some(ms) = sleep_ms {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    if let Some(url) = thaw_sdk::config::get("report")? {
        let line = format!(
            "{} {} {} {}",
            event.kind, event.id, event.attempt, event.source
        );
        thaw_sdk::http::post(&url, line.into_bytes()).await?;
    }
    let fail =
        thaw_sdk::query(&req, "fail").or_else(|| thaw_sdk::config::get("fail").ok().flatten());
    let status = match fail.as_deref() {
        Some("always") => 500,
        Some(n) if n.parse::<u32>().is_ok_and(|n| event.attempt <= n) => 500,
        _ => thaw_sdk::query(&req, "status")
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(200),
    };
    let mut response =
        Response::new(format!("ran {} attempt {}\n", event.id, event.attempt).into_bytes());
    *response.status_mut() = thaw_sdk::StatusCode::from_u16(status).unwrap_or_default();
    Ok(response)
}
