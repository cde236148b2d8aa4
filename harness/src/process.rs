//! Children, ports, and `thaw serve`.

use std::process::Child;
use std::time::{Duration, Instant};

pub use thaw_bench::probe::{serve_command, wait_ready_line};

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free now (another process may take it before the caller binds it; the
/// services started here bind it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

/// Waits until something listens on loopback `port`, at most `bound` (a bound for a hung
/// start, not a speed claim); `false` if nothing did.
pub fn wait_port(port: u16, bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}
