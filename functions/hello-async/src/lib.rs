//! `functions/hello` as an `async fn`: the same greeting on the SDK's executor, so that the
//! benchmarks can show what the async path costs a request beside the sync one.

use thaw_sdk::{Request, handler};

#[handler]
async fn hello(req: Request) -> String {
    let greeting = thaw_sdk::env("GREETING").unwrap_or_else(|| "Hello".into());
    let name = thaw_sdk::query(&req, "name").unwrap_or_else(|| "world".into());
    format!("{greeting}, {name}!\n")
}
