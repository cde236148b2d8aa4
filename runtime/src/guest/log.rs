//! Guest stdout/stderr as log lines.
//!
//! A `wasi:http` function's standard output is not its response, so thaw forwards it, line by
//! line, to `tracing` under the `guest` target with the function's name. Lines are capped at
//! 4 KiB (`MAX_LINE`) and the sink never fails a write: a chatty guest must not trap because of
//! its logging.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept; the rest of a longer line is dropped.
const MAX_LINE: usize = 4096;

/// A standard output or error stream of one function.
#[derive(Clone)]
pub struct GuestLog {
    function: Arc<str>,
    stream: &'static str,
}

impl GuestLog {
    /// The stream `stream` ("stdout" or "stderr") of function `function`.
    pub fn new(function: Arc<str>, stream: &'static str) -> Self {
        Self { function, stream }
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
        tracing::info!(target: "guest", function = %self.log.function, stream = self.log.stream, "{}", text.trim_end());
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
