//! A CGI module's standard output: its response, kept in memory up to the response limit.
//!
//! wasmtime-wasi's `MemoryOutputPipe` answers a write past its capacity with a short write
//! and then a closed stream: a guest that ignores write errors (most CGI programs do) exits 0
//! and its truncated output would be sent as a complete `200`. This pipe instead traps the
//! guest with a typed [`StdoutOverLimit`] on the first byte past the limit, so the guest stops
//! at once, whatever it does with errors, and the data plane classifies the trap by type (a
//! `response_body` limit hit, 502), not by the text of a message.
//!
//! Preview1's `fd_write` on stdout goes through the p2 [`OutputStream`] below (in chunks of at
//! most 4 KiB); [`StdoutStream::async_stream`] exists for completeness and fails writes past
//! the limit with an I/O error.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// How much a guest may write per `check-write`: a window, not the remaining capacity, so a
/// guest is never told "0 bytes" (which it could wait on forever) and its first write past
/// the limit is a trap rather than a short write.
const WRITE_WINDOW: usize = 64 * 1024;

/// The trap a CGI module gets when it writes past its output limit.
#[derive(Debug, thiserror::Error)]
#[error("the module wrote more than {0} bytes to stdout")]
pub struct StdoutOverLimit(pub u64);

/// A module's stdout; clones share one buffer.
#[derive(Clone)]
pub struct CgiStdout {
    buffer: Arc<Mutex<BytesMut>>,
    capacity: usize,
}

impl CgiStdout {
    /// A stdout that holds at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            buffer: Arc::default(),
            capacity,
        }
    }

    /// What the module wrote (empty if a clone is still alive somewhere).
    pub fn into_bytes(self) -> Bytes {
        Arc::into_inner(self.buffer)
            .and_then(|m| m.into_inner().ok())
            .map(BytesMut::freeze)
            .unwrap_or_default()
    }

    fn append(&self, bytes: &[u8]) -> Result<(), StdoutOverLimit> {
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if bytes.len() > self.capacity - buffer.len() {
            return Err(StdoutOverLimit(self.capacity as u64));
        }
        buffer.extend_from_slice(bytes);
        Ok(())
    }
}

impl IsTerminal for CgiStdout {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CgiStdout {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl OutputStream for CgiStdout {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes)
            .map_err(|over| StreamError::Trap(over.into()))
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_WINDOW)
    }
}

#[async_trait::async_trait]
impl Pollable for CgiStdout {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CgiStdout {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(
            self.append(buf)
                .map(|()| buf.len())
                .map_err(io::Error::other),
        )
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_capacity_then_traps_with_a_typed_error() {
        let stdout = CgiStdout::new(10);
        let mut stream = stdout.p2_stream();
        stream.write(Bytes::from_static(b"12345")).unwrap();
        stream.write(Bytes::from_static(b"67890")).unwrap();
        match stream.write(Bytes::from_static(b"x")) {
            Err(StreamError::Trap(e)) => assert!(e.downcast_ref::<StdoutOverLimit>().is_some()),
            other => panic!("expected a trap, got {other:?}"),
        }
        drop(stream);
        assert_eq!(&stdout.into_bytes()[..], b"1234567890");
    }
}
