//! The smallest useful function: a greeting, personalised by `?name=` and by the `GREETING`
//! environment variable of its spec.

use thaw_sdk::{Request, handler};

#[handler]
fn hello(req: Request) -> String {
    let greeting = thaw_sdk::env("GREETING").unwrap_or_else(|| "Hello".into());
    let name = thaw_sdk::query(&req, "name").unwrap_or_else(|| "world".into());
    format!("{greeting}, {name}!\n")
}
