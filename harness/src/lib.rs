//! The one harness of thaw's integration tests (`cli/tests/all`) and benchmarks
//! (`benches/`): what they start, and how they wait.
//!
//! - [`process`]: children killed when dropped, free ports, waiting for a port to listen;
//!   starting `thaw serve` and reading its ready line (from thaw-bench, which `thaw bench`
//!   needs at run time, re-exported here);
//! - [`services`]: the real services a user would run beside thaw, from Debian, on loopback:
//!   etcd, HAProxy, Redis, NATS, Prometheus, and whether CI requires them;
//! - [`certs`]: a test CA and the server certificates it signs;
//! - [`collector`]: a loopback endpoint recording what functions report to it;
//! - [`wait`]: one bounded condition wait, [`wait::eventually`].
//!
//! Tests and benchmarks only: never a dependency of the runtime or the CLI.

pub mod certs;
pub mod collector;
pub mod process;
pub mod services;
pub mod wait;

pub use collector::Collector;
pub use process::{Killed, free_port, wait_port};
pub use services::{
    Etcd, HaProxy, Nats, Postgres, Prometheus, Redis, Registry, required, service_binaries,
};
pub use wait::{eventually, eventually_some};
