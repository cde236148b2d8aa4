//! The dashboard: a web page on the admin listener (`/ui`), its three files compiled into the
//! binary (no CDN, nothing fetched from elsewhere), behind the admin token.
//!
//! | method and path   | does                                                   |
//! |-------------------|--------------------------------------------------------|
//! | `GET /ui`         | the page (a login form until a session exists)         |
//! | `GET /ui/app.js`, `/ui/style.css` | its script and style                   |
//! | `POST /ui/login`  | `token=<admin token>` (form body) → session cookie, 303 to `/ui` |
//! | `POST /ui/logout` | ends the session (with `x-thaw-ui`, like every change; else 403) |
//!
//! The page holds no data and no secret: everything it shows comes from the admin API
//! (`/v1/...`, `/metrics`), which the session cookie opens (see [`super::auth`] for the
//! cookie's flags and the `x-thaw-ui` header changes need). It polls the API:
//! functions with their versions and split, requests per second and the start-kind mix over
//! the last minutes (`/v1/history`), the start-latency distribution per kind (the
//! `thaw_start_duration_seconds` buckets of `/metrics`), limit hits, and the last log lines
//! of a chosen function; and it can roll back, promote and change a split.
//!
//! The charts are drawn as SVG by a few functions of the page's own script rather than with a
//! charting library: the page must work from the binary alone, and a library vendored into
//! it would be more code to review than the charts themselves. Every response carries a
//! strict Content-Security-Policy (scripts and styles from the page's own origin only, no
//! inline script, no framing) and `Cache-Control: no-store`.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;

use super::auth::{AdminAuth, SESSION_COOKIE, SESSION_TTL};
use crate::invoke::body::{ResponseBody, full};

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Largest login body (a form with one token field).
const MAX_LOGIN_BYTES: usize = 4096;

/// Whether `path` is the dashboard's.
pub fn is_ui(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// Serves a dashboard request (no authentication needed to reach these: the page is
/// public, login checks the token, logout needs the session).
pub async fn handle(
    auth: &AdminAuth,
    req: Request<Incoming>,
    client: std::net::IpAddr,
) -> Response<ResponseBody> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ui" | "/ui/") => asset(INDEX, "text/html; charset=utf-8"),
        (&Method::GET, "/ui/app.js") => asset(SCRIPT, "text/javascript; charset=utf-8"),
        (&Method::GET, "/ui/style.css") => asset(STYLE, "text/css; charset=utf-8"),
        (&Method::POST, "/ui/login") => login(auth, req, client).await,
        (&Method::POST, "/ui/logout") if !req.headers().contains_key(super::auth::UI_HEADER) => {
            status(StatusCode::FORBIDDEN)
        }
        (&Method::POST, "/ui/logout") => {
            let cookies = req.headers().get(http::header::COOKIE);
            if let Some(id) = auth.sessions.find(cookies.map(|v| v.as_bytes())) {
                auth.sessions.end(&id);
            }
            redirect(Some(format!(
                "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
            )))
        }
        _ => with_headers(
            Response::builder()
                .status(StatusCode::NOT_FOUND)
                .body(full(Bytes::from_static(b"not found\n"))),
        ),
    }
}

/// `token=...` in a form body: a session cookie and a redirect to the page, or the page's
/// login form again with `#denied` (no secret in the URL either way).
async fn login(
    auth: &AdminAuth,
    req: Request<Incoming>,
    client: std::net::IpAddr,
) -> Response<ResponseBody> {
    let body = match http_body_util::Limited::new(req.into_body(), MAX_LOGIN_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => return status(StatusCode::PAYLOAD_TOO_LARGE),
    };
    let token = form_urlencoded::parse(&body)
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    let bearer = format!("Bearer {}", token.trim());
    let turn = auth.failures.wait_turn(client).await;
    if !auth.token.accepts(Some(bearer.as_bytes())) {
        auth.failures.failed(client, "dashboard login");
        if let Some((_turn, left)) = turn {
            return super::auth::too_many_failures(left);
        }
        let mut response = redirect(None);
        response.headers_mut().insert(
            http::header::LOCATION,
            HeaderValue::from_static("/ui#denied"),
        );
        return response;
    }
    match auth.sessions.create() {
        Ok(id) => {
            tracing::info!("dashboard login");
            redirect(Some(format!(
                "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
                SESSION_TTL.as_secs()
            )))
        }
        Err(e) => {
            tracing::error!("dashboard login failed: {e:#}");
            status(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

fn asset(body: &'static str, content_type: &'static str) -> Response<ResponseBody> {
    with_headers(
        Response::builder()
            .header(http::header::CONTENT_TYPE, content_type)
            .body(full(Bytes::from_static(body.as_bytes()))),
    )
}

/// 303 to the page, setting `cookie` if given.
fn redirect(cookie: Option<String>) -> Response<ResponseBody> {
    let mut builder = Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(http::header::LOCATION, "/ui");
    if let Some(cookie) = cookie {
        builder = builder.header(http::header::SET_COOKIE, cookie);
    }
    with_headers(builder.body(full(Bytes::new())))
}

fn status(status: StatusCode) -> Response<ResponseBody> {
    with_headers(Response::builder().status(status).body(full(Bytes::new())))
}

/// The page's security headers on every dashboard response.
fn with_headers(response: http::Result<Response<ResponseBody>>) -> Response<ResponseBody> {
    let mut response = response.expect("static response parts are valid");
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}
