//! Guest stdout/stderr as log lines: into the host's log and into the function's own
//! bounded buffer ([`FunctionLog`]), which `thaw logs` reads and follows.
//!
//! A `wasi:http` function's standard output is not its response, so thaw forwards it, line by
//! line, to `tracing` under the `guest` target with the function's name, and keeps each line
//! with its time, the function's version and the request that wrote it. Lines are capped at
//! 4 KiB (`MAX_LINE`) and the sink never fails a write: a chatty guest must not trap because of
//! its logging.
//!
//! # Lines
//! A line ends at a newline, not at a write: `print!("a"); print!("b"); println!()` is one
//! line `ab`, as `wasmtime serve` prints it. The unfinished line lives with the store's
//! stream (Rust's std asks for a fresh `wasi:cli` stream for every write, so it cannot live
//! in the writer) and is flushed when the instance ends.
//!
//! # The host's copy
//! Every line also goes to the host's own log, escaped (no control character of a guest
//! reaches a terminal or a log viewer: a `\r` cannot overwrite a host line) and rate-limited
//! per function ([`set_host_copy_rate`], `thaw serve --guest-log-to-host`, 100 lines per
//! second by default, 0 for none): a guest printing megabytes fills its own bounded buffer,
//! not the host's disk. Suppressed lines are summed up in one line ("suppressed N lines from
//! F") when the function may log again.
//!
//! # Bounds
//! A function's buffer keeps its last [`MAX_LOG_BYTES`] of text (and at most
//! [`MAX_LOG_LINES`] lines); older lines are evicted as new ones arrive and counted as
//! dropped, so a guest that prints megabytes costs the host a bounded amount of memory per
//! function. The buffer is memory only: a restart starts it empty.
//!
//! # Structured lines
//! thaw's SDKs write a log call as one JSON object on one stderr line,
//! `{"level":"info","msg":"charged","fields":{"order":42}}` ([`structured`]). The buffer keeps
//! the text as written; the admin API reads level, message and fields out of it when it
//! serves the line. Parsing on read keeps the guest's write path a copy, costs only the
//! reader, and a line that merely looks like JSON stays plain text. Under another host
//! (`wasmtime serve`) the same line is readable as it stands.
//!
//! # Followers
//! `thaw logs -f` waits on [`FunctionLog::changed`]. A reader finds its place by `seq`
//! (lines are numbered without gaps, so the position is arithmetic, not a scan), and a
//! follower that was woken waits [`FOLLOW_BATCH`] before it reads, so a guest printing
//! 10,000 lines wakes each follower a few times, not 10,000 times. At most
//! [`MAX_FOLLOWERS`] follow one function at once ([`FunctionLog::follow`]).

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
/// Followers of one function at once; more are refused (the admin API answers 429).
pub const MAX_FOLLOWERS: usize = 16;
/// How long a woken follower lets lines gather before it reads them.
pub const FOLLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(100);
/// Default lines per second per function copied to the host's log.
pub const DEFAULT_HOST_COPY_RATE: u32 = 100;

/// Lines per second per function copied to the host's log (0: none). A process-wide
/// setting, like the log subscriber it feeds: set once by `thaw serve` at start.
static HOST_COPY_RATE: std::sync::atomic::AtomicU32 =
    std::sync::atomic::AtomicU32::new(DEFAULT_HOST_COPY_RATE);

/// Sets how many lines per second each function may copy to the host's log (0: none).
pub fn set_host_copy_rate(lines_per_second: u32) {
    HOST_COPY_RATE.store(lines_per_second, Ordering::Relaxed);
}

/// [`escape_controls`] for bytes that may not be UTF-8 (a value, a response body): invalid
/// bytes become `\xNN`; newlines are kept, so text stays readable (a line break cannot
/// overwrite what is already on the terminal, a `\r` or an escape sequence could).
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for (i, line) in chunk.valid().split('\n').enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&escape_controls(line));
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `text` with every control character but tab escaped (`\r`, `\u{1b}`, ...): C0, DEL and
/// C1, which a terminal or log viewer would act on. Borrowed when there is none.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    let is_control = |c: char| c != '\t' && c.is_control();
    if !text.chars().any(is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_control(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

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

/// A structured line's parts: see the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Structured {
    /// `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The message.
    pub message: String,
    /// The fields in the order written, strings as they are, anything else as compact JSON.
    pub fields: Vec<(String, String)>,
}

/// `text` as a structured line, if it is one: a JSON object starting `{"level":` with a known
/// level, a string `msg` and an optional object `fields`, and nothing else.
pub fn structured(text: &str) -> Option<Structured> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        level: String,
        msg: String,
        #[serde(default)]
        fields: Fields,
    }
    /// An object's members in their order (serde_json's map would sort them).
    #[derive(Default)]
    struct Fields(Vec<(String, serde_json::Value)>);
    impl<'de> serde::Deserialize<'de> for Fields {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Members;
            impl<'de> serde::de::Visitor<'de> for Members {
                type Value = Fields;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Fields, A::Error> {
                    let mut out = Vec::new();
                    while let Some(member) = map.next_entry()? {
                        out.push(member);
                    }
                    Ok(Fields(out))
                }
            }
            d.deserialize_map(Members)
        }
    }
    // Cheap refusal first: most lines are plain text.
    if !text.starts_with("{\"level\":") {
        return None;
    }
    let line: Line = serde_json::from_str(text).ok()?;
    let level = ["debug", "info", "warn", "error"]
        .into_iter()
        .find(|l| *l == line.level)?;
    let fields = line
        .fields
        .0
        .into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k, s),
            other => (k, other.to_string()),
        })
        .collect();
    Some(Structured {
        level,
        message: line.msg,
        fields,
    })
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
    followers: Arc<std::sync::atomic::AtomicUsize>,
    host_copy: Mutex<HostCopy>,
}

/// The host-log copy's budget for one function: a token bucket of one second.
#[derive(Default)]
struct HostCopy {
    second: u64,
    used: u32,
    suppressed: u64,
}

/// A place among a function's followers, given back when dropped.
pub struct Follower(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for FunctionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionLog").finish_non_exhaustive()
    }
}

impl FunctionLog {
    fn push(&self, function: &str, version: u64, request: u64, stream: &'static str, text: &str) {
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        self.copy_to_host(function, now() / 1000, stream, request, text);
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock, and never before the previous line: times stay in `seq`
        // order, which `read` searches by.
        let unix_ms = now().max(ring.lines.back().map_or(0, |l| l.unix_ms));
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

    /// The host-log copy of one line, within the function's rate.
    fn copy_to_host(
        &self,
        function: &str,
        second: u64,
        stream: &'static str,
        request: u64,
        text: &str,
    ) {
        let rate = HOST_COPY_RATE.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let mut copy = self.host_copy.lock().unwrap_or_else(|p| p.into_inner());
        if copy.second != second {
            copy.second = second;
            copy.used = 0;
            if copy.suppressed > 0 {
                tracing::warn!(target: "guest", function = %function, "suppressed {} lines from {function} (over --guest-log-to-host {rate} lines per second)", copy.suppressed);
                copy.suppressed = 0;
            }
        }
        if copy.used >= rate {
            copy.suppressed += 1;
            return;
        }
        copy.used += 1;
        drop(copy);
        tracing::info!(target: "guest", function = %function, stream, request, "{}", escape_controls(text));
    }

    /// Lines with `seq > after`, written at or after `since_ms`, the last `tail` of them;
    /// with the last `seq` written so far, read at the same moment (a reader that printed
    /// none of them resumes after it). Costs what it returns, not what the buffer holds:
    /// `seq`s have no gaps, so `after` is an index.
    pub fn read(&self, after: u64, since_ms: u64, tail: Option<usize>) -> (Vec<LogLine>, u64) {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let first_seq = ring.lines.front().map_or(0, |l| l.seq);
        let mut start = usize::try_from(after.saturating_sub(first_seq.saturating_sub(1)))
            .unwrap_or(usize::MAX)
            .min(ring.lines.len());
        if since_ms > 0 {
            // Times never decrease with `seq` (`push` reads the clock under the lock and
            // never goes below the previous line's), so this is a binary search.
            start = start.max(ring.lines.partition_point(|l| l.unix_ms < since_ms));
        }
        let len = ring.lines.len();
        let start = tail.map_or(start, |t| start.max(len.saturating_sub(t)));
        let lines = ring.lines.range(start..).cloned().collect();
        (lines, ring.next_seq)
    }

    /// A place among the function's followers, or `None` when [`MAX_FOLLOWERS`] already
    /// follow it.
    pub fn follow(&self) -> Option<Follower> {
        let taken = self.followers.fetch_add(1, Ordering::AcqRel);
        let follower = Follower(self.followers.clone());
        (taken < MAX_FOLLOWERS).then_some(follower)
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

/// A standard output or error stream of one function, for one store.
#[derive(Clone)]
pub struct GuestLog(Arc<Stream>);

/// What the clones of one [`GuestLog`] share: where lines go, and the unfinished line.
struct Stream {
    function: Arc<str>,
    stream: &'static str,
    log: Arc<FunctionLog>,
    version: u64,
    /// The request the store is serving now (set by the request path).
    request: Arc<AtomicU64>,
    /// Text written since the last newline, at most [`MAX_LINE`] bytes of it.
    line: Mutex<Vec<u8>>,
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
        Self(Arc::new(Stream {
            function,
            stream,
            log,
            version,
            request,
            line: Mutex::new(Vec::new()),
        }))
    }
}

impl Stream {
    /// Takes `buf` in: every finished line is emitted, the rest kept for the next write.
    fn write(&self, buf: &[u8]) {
        let mut line = self.line.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in buf.split_inclusive(|&b| b == b'\n') {
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.ends_with(b"\n") {
                self.emit(&mut line);
            }
        }
    }

    fn emit(&self, line: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        let request = self.request.load(Ordering::Relaxed);
        self.log
            .push(&self.function, self.version, request, self.stream, text);
        line.clear();
    }
}

impl Drop for Stream {
    /// The instance is gone (its store dropped every clone): its last, unfinished line is
    /// written as it is.
    fn drop(&mut self) {
        let mut line = std::mem::take(self.line.get_mut().unwrap_or_else(|p| p.into_inner()));
        if !line.is_empty() {
            self.emit(&mut line);
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
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.0.write(buf);
        Poll::Ready(Ok(buf.len()))
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
    #[test]
    fn structured_lines_are_read_and_others_left_as_text() {
        let line = structured(
            r#"{"level":"warn","msg":"charged card","fields":{"order":42,"who":"a b","ok":true,"tags":["x"]}}"#,
        )
        .unwrap();
        assert_eq!(line.level, "warn");
        assert_eq!(line.message, "charged card");
        let fields: Vec<(&str, &str)> = line
            .fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                ("order", "42"),
                ("who", "a b"),
                ("ok", "true"),
                ("tags", r#"["x"]"#)
            ]
        );
        assert_eq!(
            structured(r#"{"level":"info","msg":"no fields"}"#)
                .unwrap()
                .fields,
            []
        );
        for plain in [
            "plain text",
            r#"{"level":"loud","msg":"x"}"#,
            r#"{"level":"info","msg":"x","extra":1}"#,
            r#"{"level":"info","msg":"cut off"#,
            r#"{"msg":"x","level":"info"}"#,
        ] {
            assert_eq!(structured(plain), None, "{plain}");
        }
    }

    use super::*;

    #[test]
    fn the_buffer_is_bounded_and_counts_what_it_drops() {
        let log = FunctionLog::default();
        let line = "x".repeat(1000);
        for _ in 0..2000 {
            log.push("f", 1, 7, "stdout", &line);
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
        assert!(log.read(5000, 0, None).0.is_empty());
    }

    #[test]
    fn lines_end_at_newlines_not_at_writes_and_the_last_is_kept() {
        let log = Arc::new(FunctionLog::default());
        let stream = GuestLog::new(
            Arc::from("f"),
            "stdout",
            log.clone(),
            1,
            Arc::new(AtomicU64::new(3)),
        );
        // Rust's std takes a fresh stream for each write: the line outlives the writers.
        for part in [
            "start a print ",
            "1",
            "2",
            "3",
            "4\nsecond ",
            "line\nunfinished",
        ] {
            let mut writer = Box::into_pin(StdoutStream::async_stream(&stream));
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let written = writer.as_mut().poll_write(&mut cx, part.as_bytes());
            assert!(matches!(written, Poll::Ready(Ok(n)) if n == part.len()));
        }
        let texts = |log: &FunctionLog| -> Vec<String> {
            log.read(0, 0, None)
                .0
                .iter()
                .map(|l| l.text.to_string())
                .collect()
        };
        assert_eq!(texts(&log), ["start a print 1234", "second line"]);
        drop(stream);
        assert_eq!(
            texts(&log),
            ["start a print 1234", "second line", "unfinished"]
        );
    }

    #[test]
    fn control_characters_are_escaped_for_terminals() {
        assert_eq!(escape_bytes(b"ok\xff\x1b\nnext"), "ok\\xff\\u{1b}\nnext");
        assert_eq!(escape_controls("plain\ttab"), "plain\ttab");
        assert_eq!(
            escape_controls("\r[host] forged\u{1b}]0;title\u{7}\u{9b}2J"),
            "\\r[host] forged\\u{1b}]0;title\\u{7}\\u{9b}2J"
        );
    }

    #[test]
    fn followers_are_capped_and_give_their_place_back() {
        let log = FunctionLog::default();
        let places: Vec<_> = (0..MAX_FOLLOWERS).map(|_| log.follow().unwrap()).collect();
        assert!(log.follow().is_none());
        drop(places);
        assert!(log.follow().is_some());
    }
}
