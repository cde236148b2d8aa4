//! Guest stdout/stderr as log lines: into the host's log and into the function's own
//! bounded buffer ([`FunctionLog`]), which `thaw logs` reads and follows.
//!
//! A `wasi:http` function's standard output is not its response, so thaw forwards it, line by
//! line, to `tracing` under the `guest` target with the function's name, and keeps each line
//! with its time, the function's version and the request that wrote it. Lines are capped at
//! 4 KiB (`MAX_LINE`) and the sink never fails a write: a chatty guest must not trap because of
//! its logging.
//!
//! # Bounds
//! A function's buffer keeps its last [`MAX_LOG_BYTES`] of text (and at most
//! [`MAX_LOG_LINES`] lines); older lines are evicted as new ones arrive and counted as
//! dropped, so a guest that prints megabytes costs the host a bounded amount of memory per
//! function. The buffer is memory only: a restart starts it empty (the host's log, with
//! every line, is where history lives).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 4096;
/// Text kept per function.
pub const MAX_LOG_BYTES: usize = 1 << 20;
/// Lines kept per function.
pub const MAX_LOG_LINES: usize = 10_000;

/// One line a function wrote.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// Position in the function's log, from 1, never reused (a follower resumes after it).
    pub seq: u64,
    /// When it was written, ms since the Unix epoch.
    pub unix_ms: u64,
    /// The function's version (its generation) that wrote it.
    pub version: u64,
    /// The request being served (0: none, e.g. output while a warm instance was made).
    pub request: u64,
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    /// The line, without its newline, lossily decoded as UTF-8.
    pub text: Box<str>,
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
    next_seq: u64,
}

/// The recent output of one function (all its versions), bounded.
#[derive(Default)]
pub struct FunctionLog {
    ring: Mutex<Ring>,
    changed: tokio::sync::Notify,
    dropped: AtomicU64,
}

impl std::fmt::Debug for FunctionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionLog").finish_non_exhaustive()
    }
}

impl FunctionLog {
    fn push(&self, version: u64, request: u64, stream: &'static str, text: &str) {
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.next_seq += 1;
        let line = LogLine {
            seq: ring.next_seq,
            unix_ms,
            version,
            request,
            stream,
            text: text.into(),
        };
        ring.bytes += line.text.len();
        ring.lines.push_back(line);
        let mut evicted = 0;
        while ring.bytes > MAX_LOG_BYTES || ring.lines.len() > MAX_LOG_LINES {
            let Some(old) = ring.lines.pop_front() else {
                break;
            };
            ring.bytes -= old.text.len();
            evicted += 1;
        }
        drop(ring);
        if evicted > 0 {
            self.dropped.fetch_add(evicted, Ordering::Relaxed);
        }
        self.changed.notify_waiters();
    }

    /// Lines with `seq > after`, written at or after `since_ms`, the last `tail` of them;
    /// with the last `seq` written so far, read at the same moment (a reader that printed
    /// none of them resumes after it).
    pub fn read(&self, after: u64, since_ms: u64, tail: Option<usize>) -> (Vec<LogLine>, u64) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let matching: Vec<&LogLine> = ring
            .lines
            .iter()
            .filter(|l| l.seq > after && l.unix_ms >= since_ms)
            .collect();
        let skip = tail.map_or(0, |t| matching.len().saturating_sub(t));
        let lines = matching.into_iter().skip(skip).cloned().collect();
        (lines, ring.next_seq)
    }

    /// The last line's `seq` (0 when nothing was written).
    pub fn last_seq(&self) -> u64 {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).next_seq
    }

    /// Lines evicted to keep within the bounds.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Resolves after the next line is written (for following). Create it before reading,
    /// so that a line written in between is not missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

/// A standard output or error stream of one function.
#[derive(Clone)]
pub struct GuestLog {
    function: Arc<str>,
    stream: &'static str,
    log: Arc<FunctionLog>,
    version: u64,
    /// The request the store is serving now (set by the request path).
    request: Arc<AtomicU64>,
}

impl GuestLog {
    /// The stream `stream` ("stdout" or "stderr") of version `version` of `function`,
    /// kept in `log`, each line tagged with the request in `request` when written.
    pub fn new(
        function: Arc<str>,
        stream: &'static str,
        log: Arc<FunctionLog>,
        version: u64,
        request: Arc<AtomicU64>,
    ) -> Self {
        Self {
            function,
            stream,
            log,
            version,
            request,
        }
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            log: self.clone(),
            line: Vec::new(),
        })
    }
}

struct LineWriter {
    log: GuestLog,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end();
        let request = self.log.request.load(Ordering::Relaxed);
        tracing::info!(target: "guest", function = %self.log.function, stream = self.log.stream, request, "{text}");
        self.log
            .log
            .push(self.log.version, request, self.log.stream, text);
        self.line.clear();
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        for chunk in buf.split_inclusive(|&b| b == b'\n') {
            let room = MAX_LINE.saturating_sub(this.line.len());
            this.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.ends_with(b"\n") {
                this.emit();
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.line.is_empty() {
            self.emit();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffer_is_bounded_and_counts_what_it_drops() {
        let log = FunctionLog::default();
        let line = "x".repeat(1000);
        for _ in 0..2000 {
            log.push(1, 7, "stdout", &line);
        }
        let (kept, last) = log.read(0, 0, None);
        assert_eq!(last, 2000);
        assert_eq!(kept.len(), MAX_LOG_BYTES / 1000);
        assert_eq!(log.dropped(), 2000 - kept.len() as u64);
        assert_eq!(kept.last().unwrap().seq, 2000);
        assert_eq!(log.last_seq(), 2000);
        assert_eq!(log.read(1995, 0, None).0.len(), 5);
        assert_eq!(log.read(0, 0, Some(3)).0.len(), 3);
        assert_eq!(log.read(0, 0, Some(3)).0[0].seq, 1998);
        assert!(log.read(0, u64::MAX, None).0.is_empty());
        assert!(log.read(0, 0, Some(0)).0.is_empty());
    }
}
