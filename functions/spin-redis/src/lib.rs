//! A Spin app that reads from Redis through `spin:redis@3.0.0`, which thaw does not offer:
//! thaw's tests check that its deploy is refused with a message naming the interface.

use spin_sdk::http::{IntoResponse, Request};
use spin_sdk::http_service;

#[http_service]
async fn handle(_req: Request) -> impl IntoResponse {
    match spin_sdk::redis::Connection::open("redis://127.0.0.1:6379").await {
        Ok(db) => match db.get("k").await {
            Ok(value) => format!("{value:?}"),
            Err(e) => format!("error: {e}"),
        },
        Err(e) => format!("error: {e}"),
    }
}
