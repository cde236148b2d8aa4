//! The admin API's bearer token, and the dashboard's sessions.
//!
//! Whoever can reach the admin API can run code on the host, so every admin request must carry
//! `Authorization: Bearer <token>`. The token comes from `--admin-token` / `THAW_ADMIN_TOKEN`,
//! or else from `<data-dir>/admin.token`, which the first start creates with 256 random bits
//! and owner-only permissions (0600) and announces once. The CLI finds the same file when it
//! runs beside the server (same user, same data directory), so local use needs no setup.
//! Tokens are compared in constant time, as SHA-256 digests: a comparison of the raw bytes
//! would return early on a length mismatch and tell an attacker the token's length.
//!
//! # Failed attempts
//! A client address (an IPv6 client's /64) that presents a wrong token (a bearer token, the
//! login form, a cluster peer's token) [`MAX_FAILURES`] times within [`FAILURE_WINDOW`] is
//! backed off until the window ends: its attempts are checked one at a time, each after
//! [`BACKOFF_DELAY`], so however many connections it opens it gets one guess a second; a
//! wrong one is answered 429 (with `Retry-After`). The right token is still accepted, only
//! later. Refusing it outright would let anyone who shares an address with the operators (a
//! TLS proxy in front, a NAT, other users of the machine on loopback) lock them out with ten
//! bad guesses a minute. A stale session cookie is not a guess (a browser sends it after a
//! restart): only presented tokens count. Refusals are logged once per address and window,
//! then summed up ("N failed logins from A in the last minute").
//!
//! # Dashboard sessions
//! A browser cannot be trusted to keep a bearer token out of history, bookmarks and other
//! scripts, so the dashboard ([`super::ui`]) trades the token, once, in a login form's POST
//! body, for a session: 256 random bits in a cookie that is `HttpOnly` (no script reads it),
//! `SameSite=Strict` (no other site's page sends it) and `Path=/`. The token never appears in
//! a URL or in the page. Browsers scope cookies by host, not port, so the data plane on the
//! same host would receive the cookie with every request to a function: it strips it from
//! requests, and drops a function's attempt to set one ([`strip_session_cookie`]). Pages a
//! function serves on that host count as the same site: they can make the browser send
//! requests with the cookie, but not with the `x-thaw-ui` header (a cross-origin custom
//! header needs a CORS preflight the admin API never grants), and cannot read the answers.
//! A separate host name for the admin listener is still the cleaner setup. Sessions live in memory for [`SESSION_TTL`] (a restart logs
//! everyone out), at most [`MAX_SESSIONS`] at once. A request authenticated by the cookie
//! that changes something must also carry the `x-thaw-ui` header, which a cross-origin page
//! cannot add without a CORS preflight the admin API never grants: a second wall behind
//! SameSite, for older browsers.
//!
//! The file is written whole or not at all (a temp file, fsync, then a hard link to the final
//! name, which fails rather than replace a token another start wrote), and a token shorter
//! than [`MIN_TOKEN_LEN`], from the file or the flag, stops the start-up: an empty file left
//! by a full disk must not become a token that locks everyone out, or one anybody can guess.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use subtle::ConstantTimeEq as _;

/// The token file's name in the data directory.
pub const TOKEN_FILE: &str = "admin.token";

/// Shortest token accepted (the generated ones are 64 hex characters).
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin API's secret, and its SHA-256 digest (what presented tokens are compared with).
#[derive(Clone)]
pub struct AdminToken(String, [u8; 32]);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// The configured token, else the data directory's, else a new one saved there.
    /// Returns the token and, if it was just created, the file it was saved to.
    pub fn load_or_create(
        data_dir: &Path,
        configured: Option<&str>,
    ) -> anyhow::Result<(Self, Option<PathBuf>)> {
        if let Some(token) = configured {
            anyhow::ensure!(
                token.len() >= MIN_TOKEN_LEN,
                "the admin token must be at least {MIN_TOKEN_LEN} characters"
            );
            return Ok((Self::new(token.to_owned()), None));
        }
        let path = data_dir.join(TOKEN_FILE);
        if let Some(token) = read_token(&path)? {
            anyhow::ensure!(
                token.len() >= MIN_TOKEN_LEN,
                "the admin token file {} holds {} characters, fewer than {MIN_TOKEN_LEN}: it is \
                 damaged (a first start that could not finish writing it?). Delete it to have a \
                 new token generated, or set --admin-token / THAW_ADMIN_TOKEN",
                path.display(),
                token.len()
            );
            return Ok((Self::new(token), None));
        }
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| anyhow::anyhow!("drawing a random admin token: {e}"))?;
        let token = hex::encode(bytes);
        crate::datadir::create_private_dir(data_dir)?;
        let tmp = data_dir.join(format!("{TOKEN_FILE}.{}.tmp", std::process::id()));
        // A leftover of this pid's earlier crash (pids are reused) would block create_new.
        let _ = std::fs::remove_file(&tmp);
        let written = (|| -> anyhow::Result<()> {
            // create_new: never an existing file (its mode) or a symlink planted there.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(token.as_bytes())?;
            file.sync_all()?;
            // A link, not a rename: it fails if a token appeared meanwhile, never replacing it.
            std::fs::hard_link(&tmp, &path)?;
            std::fs::File::open(data_dir)?.sync_all()?;
            Ok(())
        })();
        let _ = std::fs::remove_file(&tmp);
        written.with_context(|| format!("creating {}", path.display()))?;
        Ok((Self::new(token), Some(path)))
    }

    fn new(token: String) -> Self {
        let digest = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()).into();
        Self(token, digest)
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let presented: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(presented).into();
        bool::from(presented.ct_eq(&self.1))
    }

    /// The token itself (to print it once, or hand it to a client).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "thaw_session";

/// How long a dashboard session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Most dashboard sessions at once; a login beyond it ends the oldest.
pub const MAX_SESSIONS: usize = 64;

/// The header a cookie-authenticated request must carry to change something.
pub const UI_HEADER: &str = "x-thaw-ui";

/// Live dashboard sessions: id → expiry.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Instant>>);

impl Sessions {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session; its id, for the cookie.
    pub fn create(&self) -> anyhow::Result<String> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| anyhow::anyhow!("no randomness for a session id: {e}"))?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut live = self.live();
        live.retain(|_, expiry| *expiry > now);
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(id, _)| id.clone())
        {
            live.remove(&oldest);
        }
        live.insert(id.clone(), now + SESSION_TTL);
        Ok(id)
    }

    /// The session id in a `Cookie` header, if it names a live session. Every
    /// `thaw_session` the header carries is tried: a cookie of that name planted for a
    /// narrower path comes first and must not hide the real one.
    pub fn find(&self, cookies: Option<&[u8]>) -> Option<String> {
        let live = self.live();
        let now = Instant::now();
        session_ids(cookies?)
            .find(|id| live.get(*id).is_some_and(|expiry| *expiry > now))
            .map(str::to_owned)
    }

    /// Ends a session.
    pub fn end(&self, id: &str) {
        self.live().remove(id);
    }
}

/// The `thaw_session` values in a `Cookie` header.
fn session_ids(cookies: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(cookies)
        .unwrap_or("")
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// Keeps the dashboard's session away from functions: removes `thaw_session` from a data
/// plane request's `Cookie` headers (browsers send a host's cookies to every port of it, so
/// a logged-in operator's requests to functions carry it), and drops a function's
/// `Set-Cookie` of that name from its response (which could shadow or replace the real one).
/// Costs nothing when no such cookie is present.
pub fn strip_session_cookie(headers: &mut http::HeaderMap) {
    let needle = SESSION_COOKIE.as_bytes();
    let carries = |value: &http::HeaderValue| {
        value
            .as_bytes()
            .windows(needle.len())
            .any(|window| window == needle)
    };
    if !headers.get_all(http::header::COOKIE).iter().any(carries) {
        return;
    }
    let kept: Vec<http::HeaderValue> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| {
            let text = std::str::from_utf8(value.as_bytes()).ok()?;
            let rest: Vec<&str> = text
                .split(';')
                .map(str::trim)
                .filter(|pair| {
                    pair.split_once('=')
                        .is_none_or(|(name, _)| name != SESSION_COOKIE)
                })
                .collect();
            (!rest.is_empty())
                .then(|| http::HeaderValue::from_str(&rest.join("; ")).ok())
                .flatten()
        })
        .collect();
    headers.remove(http::header::COOKIE);
    for value in kept {
        headers.append(http::header::COOKIE, value);
    }
}

/// Drops a function's `Set-Cookie` for `thaw_session` (see [`strip_session_cookie`]).
pub fn drop_session_set_cookie(headers: &mut http::HeaderMap) {
    let planted = |value: &http::HeaderValue| {
        value
            .as_bytes()
            .trim_ascii_start()
            .strip_prefix(SESSION_COOKIE.as_bytes())
            .is_some_and(|rest| rest.trim_ascii_start().starts_with(b"="))
    };
    if !headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .any(planted)
    {
        return;
    }
    let kept: Vec<http::HeaderValue> = headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter(|v| !planted(v))
        .cloned()
        .collect();
    headers.remove(http::header::SET_COOKIE);
    for value in kept {
        headers.append(http::header::SET_COOKIE, value);
    }
}

/// Who may use the admin API: holders of the token, and dashboard sessions.
#[derive(Clone)]
pub struct AdminAuth {
    /// The token.
    pub token: AdminToken,
    /// The dashboard's sessions.
    pub sessions: Arc<Sessions>,
    /// Failed attempts per client address.
    pub failures: Arc<FailedAttempts>,
}

/// Failed attempts from one address within [`FAILURE_WINDOW`] before it is backed off.
pub const MAX_FAILURES: u32 = 10;

/// The window failed attempts are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Addresses tracked at once; past it the stalest windows are forgotten first.
const MAX_TRACKED: usize = 4096;

/// Failed authentication per client address (see the module's "Failed attempts").
#[derive(Default)]
pub struct FailedAttempts(Mutex<HashMap<std::net::IpAddr, Window>>);

struct Window {
    started: Instant,
    failures: u32,
    /// Taken by each attempt while the address is backed off: one at a time.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// An attempt's turn while its address is backed off (see [`FailedAttempts::wait_turn`]).
pub type Turn = tokio::sync::OwnedMutexGuard<()>;

/// The address failures are counted for: the client's, or its /64 for IPv6 (one host
/// commonly holds a whole /64, and could otherwise rotate through it).
fn key(client: std::net::IpAddr) -> std::net::IpAddr {
    match client {
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            std::net::IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl FailedAttempts {
    /// How long `client` must still wait, if it has used up its attempts.
    pub fn backing_off(&self, client: std::net::IpAddr) -> Option<Duration> {
        self.backed_off(client).map(|(left, _)| left)
    }

    fn backed_off(
        &self,
        client: std::net::IpAddr,
    ) -> Option<(Duration, Arc<tokio::sync::Mutex<()>>)> {
        let client = key(client);
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let window = map.get(&client)?;
        let left = FAILURE_WINDOW.checked_sub(window.started.elapsed())?;
        (window.failures >= MAX_FAILURES && !left.is_zero()).then(|| (left, window.turn.clone()))
    }

    /// For an attempt from `client`: nothing if it is not backed off; else waits for its
    /// turn (one attempt at a time per address) and [`BACKOFF_DELAY`], and returns the turn
    /// (hold it until the token is checked) with what is left of the window.
    pub async fn wait_turn(&self, client: std::net::IpAddr) -> Option<(Turn, Duration)> {
        let (left, turn) = self.backed_off(client)?;
        let turn = turn.lock_owned().await;
        tokio::time::sleep(BACKOFF_DELAY).await;
        Some((turn, left))
    }

    /// Counts a failed attempt by `client` at `what`, and logs it: the first of a window
    /// in full, the rest summed up when the window ends (or when the address is cut off).
    pub fn failed(&self, client: std::net::IpAddr, what: &str) {
        let client = key(client);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() >= MAX_TRACKED && !map.contains_key(&client) {
            map.retain(|_, w| now.duration_since(w.started) < FAILURE_WINDOW);
            if map.len() >= MAX_TRACKED
                && let Some(oldest) = map.iter().min_by_key(|(_, w)| w.started).map(|(a, _)| *a)
            {
                map.remove(&oldest);
            }
        }
        let window = map.entry(client).or_insert_with(|| Window {
            started: now,
            failures: 0,
            turn: Arc::default(),
        });
        if now.duration_since(window.started) >= FAILURE_WINDOW {
            if window.failures > 1 {
                tracing::warn!(%client, "{} failed logins from {client} in the last minute", window.failures);
            }
            window.started = now;
            window.failures = 0;
        }
        window.failures += 1;
        match window.failures {
            1 => tracing::info!(%client, "{what} refused: missing or wrong admin token"),
            MAX_FAILURES => {
                tracing::warn!(%client, "{MAX_FAILURES} failed logins from {client} in the last minute: refusing it until the minute is over")
            }
            _ => {}
        }
    }
}

/// How long each attempt from a backed-off address waits for its check.
pub const BACKOFF_DELAY: Duration = Duration::from_secs(1);

/// The answer to a wrong attempt from an address that is backed off; `wait` is what is
/// left of its window.
pub fn too_many_failures(wait: Duration) -> http::Response<crate::invoke::body::ResponseBody> {
    use crate::api::{ErrorBody, ErrorCode, ErrorDetail};
    let code = ErrorCode::TooManyRequests;
    let body = ErrorBody {
        error: ErrorDetail {
            code,
            message: "too many failed attempts from this address; retry later".into(),
        },
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = http::Response::new(crate::invoke::body::full(body));
    *response.status_mut() = code.status();
    let headers = response.headers_mut();
    headers.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from(wait.as_secs().max(1)),
    );
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

impl AdminAuth {
    /// Token-only access, with no session yet.
    pub fn new(token: AdminToken) -> Self {
        Self {
            token,
            sessions: Arc::default(),
            failures: Arc::default(),
        }
    }

    /// Whether a request presents a token, right or wrong: only those count as guesses (a
    /// session cookie that is no longer live is what a browser sends after a restart).
    pub fn presents_token(headers: &http::HeaderMap) -> bool {
        headers.contains_key(http::header::AUTHORIZATION)
    }

    /// Whether a request may use the admin API: it carries the token, or a live session's
    /// cookie (and, to change something, the [`UI_HEADER`]).
    pub fn allows(&self, headers: &http::HeaderMap, method: &http::Method) -> bool {
        if self.token.accepts(
            headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        ) {
            return true;
        }
        let session = self
            .sessions
            .find(headers.get(http::header::COOKIE).map(|v| v.as_bytes()));
        session.is_some() && (method.is_safe() || headers.contains_key(UI_HEADER))
    }
}

/// The token in a token file, if the file exists.
pub fn read_token(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_owner_only_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (token, created) = AdminToken::load_or_create(dir.path(), None).unwrap();
        let path = created.expect("created on first start");
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let (again, created) = AdminToken::load_or_create(dir.path(), None).unwrap();
        assert!(created.is_none());
        assert_eq!(again.expose(), token.expose());

        let good = format!("Bearer {}", token.expose());
        assert!(token.accepts(Some(good.as_bytes())));
        assert!(!token.accepts(None));
        assert!(
            !token.accepts(Some(token.expose().as_bytes())),
            "the scheme is required"
        );
        assert!(!token.accepts(Some(b"Bearer wrong")));
        assert!(!token.accepts(Some(format!("{good}x").as_bytes())));
    }

    #[test]
    fn an_empty_or_short_token_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        for content in ["", "\n", "short"] {
            std::fs::write(&path, content).unwrap();
            let error = AdminToken::load_or_create(dir.path(), None).unwrap_err();
            assert!(error.to_string().contains("Delete it"), "{error}");
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                content,
                "left as it was"
            );
        }
    }

    #[test]
    fn sessions_need_their_cookie_and_the_ui_header_to_change_things() {
        let auth = AdminAuth::new(AdminToken::new("0123456789abcdef".into()));
        let id = auth.sessions.create().unwrap();
        let with = |cookie: &str, ui: bool| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::COOKIE, cookie.parse().unwrap());
            if ui {
                headers.insert(UI_HEADER, "1".parse().unwrap());
            }
            headers
        };
        let good = format!("other=1; {SESSION_COOKIE}={id}");
        assert!(auth.allows(&with(&good, false), &http::Method::GET));
        assert!(!auth.allows(&with(&good, false), &http::Method::PUT));
        assert!(auth.allows(&with(&good, true), &http::Method::PUT));
        let shadowed = format!("{SESSION_COOKIE}=planted; {SESSION_COOKIE}={id}");
        assert!(auth.allows(&with(&shadowed, false), &http::Method::GET));
        let mut request = with(&format!("a=1; {SESSION_COOKIE}={id}; b=2"), false);
        strip_session_cookie(&mut request);
        assert_eq!(request[http::header::COOKIE], "a=1; b=2");
        let mut response = http::HeaderMap::new();
        response.append(http::header::SET_COOKIE, "x=1".parse().unwrap());
        response.append(
            http::header::SET_COOKIE,
            format!("{SESSION_COOKIE}=evil; Path=/v1").parse().unwrap(),
        );
        drop_session_set_cookie(&mut response);
        assert_eq!(response.get_all(http::header::SET_COOKIE).iter().count(), 1);
        let forged = format!("{SESSION_COOKIE}={}", "0".repeat(64));
        assert!(!auth.allows(&with(&forged, true), &http::Method::GET));
        auth.sessions.end(&id);
        assert!(!auth.allows(&with(&good, true), &http::Method::GET));
    }

    #[test]
    fn configured_tokens_win_and_must_be_long() {
        let dir = tempfile::tempdir().unwrap();
        let (token, created) =
            AdminToken::load_or_create(dir.path(), Some("0123456789abcdef")).unwrap();
        assert!(created.is_none());
        assert_eq!(token.expose(), "0123456789abcdef");
        assert!(AdminToken::load_or_create(dir.path(), Some("short")).is_err());
    }
}
