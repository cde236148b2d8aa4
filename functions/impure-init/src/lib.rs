//! Initialisation that depends on the host (the wall clock): not snapshot-able.

use std::sync::OnceLock;

use thaw_sdk::{Request, handler, init};

static STARTED: OnceLock<std::time::SystemTime> = OnceLock::new();

#[init]
fn remember_start() {
    STARTED.get_or_init(std::time::SystemTime::now);
}

#[handler]
fn handle(_req: Request) -> String {
    let started = STARTED.get_or_init(std::time::SystemTime::now);
    format!("started {started:?}\n")
}
