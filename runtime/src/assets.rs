//! Static assets: a function's files, served by the host from memory without starting a
//! guest.
//!
//! A version's assets are its uploaded bundle ([`crate::asset_spec`]: a tar archive, stored
//! content-addressed like wasm), read once when the version is built (at deploy, at start-up,
//! or when a cluster node takes the version) into an index of the archive's own bytes: a file
//! is a `Bytes` slice of the archive, so serving one copies nothing. Versions with the same
//! bundle share one index.
//!
//! # What a request gets
//! - `GET` and `HEAD` only; any other method goes to the function.
//! - The path below the function's route, percent-decoded, names a file; `/dir/` (and
//!   `/dir` when `dir/index.html` exists) is `dir/index.html`. The lookup is in the index,
//!   never in a filesystem, so no path can reach outside the bundle: the request's `..`,
//!   encoded `/`, `\` and `.` are refused before routing (`check_target`), and the bundle
//!   cannot hold links or `..` ([`crate::asset_spec::parse_bundle`]).
//! - `Content-Type` by extension (`mime_guess`), `ETag` (the content's xxh3-128, one per
//!   encoding), `Last-Modified` (the file's time in the archive), `Cache-Control: public,
//!   max-age=0, must-revalidate` (browsers revalidate, and get 304s).
//! - `If-None-Match`, else `If-Modified-Since`: 304.
//! - One `Range` (`bytes=a-b`, `a-`, `-n`): 206, or 416 when unsatisfiable; with `If-Range`
//!   naming another ETag, the whole file. Several ranges get the whole file (RFC 9110 allows
//!   it; multipart answers are rarely used).
//! - `x.br` and `x.gz` beside `x` are `x`'s precompressed forms, chosen by `Accept-Encoding`
//!   (br first), with `Content-Encoding` and `Vary: Accept-Encoding`.
//! - With `spa`, a navigation (`GET` accepting `text/html`) to no file gets `index.html`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::asset_spec::AssetsSpec;

/// One file and its precompressed forms.
#[derive(Debug)]
struct Asset {
    plain: Representation,
    br: Option<Representation>,
    gzip: Option<Representation>,
    content_type: HeaderValue,
    /// `None` for a file whose archive time means nothing (0 or 1: reproducible builds set
    /// that on every file, and `If-Modified-Since` would then call changed files unchanged).
    last_modified: Option<HeaderValue>,
    modified: u64,
}

#[derive(Debug, Clone)]
struct Representation {
    body: Bytes,
    etag: HeaderValue,
}

/// A bundle's files by path.
#[derive(Debug, Default)]
pub struct AssetIndex {
    files: HashMap<String, Asset>,
}

/// A version's assets and how they are served.
#[derive(Debug, Clone)]
pub struct FunctionAssets {
    /// The files.
    pub index: Arc<AssetIndex>,
    /// See [`AssetsSpec::spa`].
    pub spa: bool,
    /// See [`AssetsSpec::run_function_first`].
    pub run_function_first: bool,
    /// The function is only these files ([`thaw_spec::assets::ASSETS_ONLY_WASM`]): a path
    /// that is no asset is the host's 404, never a guest's.
    pub only: bool,
}

impl FunctionAssets {
    /// The assets of `spec` from the bundle of its digest, read by `read` (the stored blob)
    /// unless another version holds that bundle's index already.
    pub fn load(
        spec: &AssetsSpec,
        code_digest: &str,
        read: impl FnOnce(&str) -> anyhow::Result<Bytes>,
    ) -> anyhow::Result<Option<Self>> {
        let Some(digest) = &spec.digest else {
            return Ok(None);
        };
        let index = shared(digest, || AssetIndex::from_bundle(read(digest)?))?;
        Ok(Some(Self {
            index,
            spa: spec.spa,
            run_function_first: spec.run_function_first,
            only: code_digest == thaw_spec::assets::ASSETS_ONLY_DIGEST,
        }))
    }

    /// The answer to a request for `path` (the request's path below the function's route,
    /// starting with `/`), if the assets have one; `None` sends it to the function.
    pub fn serve(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<Response<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        let decoded = percent_encoding::percent_decode_str(path.trim_start_matches('/'))
            .decode_utf8()
            .ok()?;
        if let Some(asset) = self.index.find(&decoded) {
            return Some(respond(asset, method, headers));
        }
        // The SPA's page, for a navigation: chosen by `Accept`, so caches must know.
        if self.spa && accepts_html(headers) {
            let mut response = respond(self.index.files.get("index.html")?, method, headers);
            response
                .headers_mut()
                .append(header::VARY, HeaderValue::from_static("accept"));
            return Some(response);
        }
        None
    }
}

/// The index of the bundle `digest`: the one a live version holds, or `make`'s.
pub fn shared(
    digest: &str,
    make: impl FnOnce() -> anyhow::Result<AssetIndex>,
) -> anyhow::Result<Arc<AssetIndex>> {
    static SHARED: Mutex<Option<HashMap<String, Weak<AssetIndex>>>> = Mutex::new(None);
    if let Some(index) = SHARED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(digest)
        .and_then(Weak::upgrade)
    {
        return Ok(index);
    }
    // Built outside the lock (up to 64 MiB hashed): two builders of one digest both build,
    // and the second's is kept.
    let index = Arc::new(make()?);
    let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    let shared = shared.get_or_insert_with(HashMap::new);
    shared.retain(|_, weak| weak.strong_count() > 0);
    shared.insert(digest.to_owned(), Arc::downgrade(&index));
    Ok(index)
}

impl AssetIndex {
    /// The index of a bundle (checked again: a blob is trusted no more than an upload).
    pub fn from_bundle(bundle: Bytes) -> anyhow::Result<Self> {
        let files = crate::asset_spec::parse_bundle(&bundle).map_err(anyhow::Error::msg)?;
        let body = |range: &std::ops::Range<usize>| bundle.slice(range.clone());
        let mut index = AssetIndex::default();
        for file in &files {
            let content = body(&file.range);
            let content_type = mime_guess::from_path(&file.path)
                .first_raw()
                .map(|mime| match mime {
                    // Text without a charset is read as Latin-1 by some clients.
                    m if m.starts_with("text/") || m == "application/javascript" => {
                        HeaderValue::from_str(&format!("{m}; charset=utf-8"))
                    }
                    m => HeaderValue::from_str(m),
                })
                .and_then(Result::ok)
                .unwrap_or(HeaderValue::from_static("application/octet-stream"));
            let when = UNIX_EPOCH + Duration::from_secs(file.mtime);
            index.files.insert(
                file.path.clone(),
                Asset {
                    plain: representation(content, ""),
                    br: None,
                    gzip: None,
                    content_type,
                    last_modified: (file.mtime > 1).then(|| {
                        HeaderValue::from_str(&httpdate::fmt_http_date(when))
                            .expect("an HTTP date is a valid header")
                    }),
                    modified: file.mtime,
                },
            );
        }
        // Precompressed siblings become their file's other encodings.
        for file in &files {
            for (suffix, gzip) in [(".br", false), (".gz", true)] {
                let Some(base) = file.path.strip_suffix(suffix) else {
                    continue;
                };
                if let Some(asset) = index.files.get_mut(base) {
                    let encoded = Some(representation(body(&file.range), &suffix[1..]));
                    if gzip {
                        asset.gzip = encoded;
                    } else {
                        asset.br = encoded;
                    }
                }
            }
        }
        Ok(index)
    }

    fn find(&self, path: &str) -> Option<&Asset> {
        if path.is_empty() || path.ends_with('/') {
            return self.files.get(&format!("{path}index.html"));
        }
        self.files
            .get(path)
            .or_else(|| self.files.get(&format!("{path}/index.html")))
    }

    /// How many files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

fn representation(body: Bytes, encoding: &str) -> Representation {
    let hash = xxhash_rust::xxh3::xxh3_128(&body);
    let etag = if encoding.is_empty() {
        format!("\"{hash:032x}\"")
    } else {
        format!("\"{hash:032x}-{encoding}\"")
    };
    Representation {
        body,
        etag: HeaderValue::from_str(&etag).expect("hex is a valid header"),
    }
}

fn accepts_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("text/html")))
}

/// Whether `Accept-Encoding` accepts `coding` (listed without `q=0`).
fn accepts_encoding(headers: &HeaderMap, coding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            name.eq_ignore_ascii_case(coding) && !refused
        })
}

fn respond(asset: &Asset, method: &Method, headers: &HeaderMap) -> Response<Bytes> {
    let (chosen, encoding) = match (&asset.br, &asset.gzip) {
        (Some(br), _) if accepts_encoding(headers, "br") => (br, Some("br")),
        (_, Some(gzip)) if accepts_encoding(headers, "gzip") => (gzip, Some("gzip")),
        _ => (&asset.plain, None),
    };
    let mut response = Response::new(Bytes::new());
    let out = response.headers_mut();
    out.insert(header::ETAG, chosen.etag.clone());
    if let Some(last_modified) = &asset.last_modified {
        out.insert(header::LAST_MODIFIED, last_modified.clone());
    }
    out.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=0, must-revalidate"),
    );
    if asset.br.is_some() || asset.gzip.is_some() {
        out.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    if not_modified(
        headers,
        &chosen.etag,
        asset.last_modified.is_some().then_some(asset.modified),
    ) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }
    out.insert(header::CONTENT_TYPE, asset.content_type.clone());
    out.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Some(encoding) = encoding {
        out.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    }
    let len = chosen.body.len() as u64;
    let range = headers
        .get(header::RANGE)
        .filter(|_| {
            headers
                .get(header::IF_RANGE)
                .is_none_or(|tag| tag == chosen.etag)
        })
        .and_then(|v| v.to_str().ok())
        .map(|v| byte_range(v, len));
    let body = match range {
        Some(Range::Satisfiable(start, end)) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            let out = response.headers_mut();
            out.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("digits"),
            );
            chosen.body.slice(start as usize..=end as usize)
        }
        Some(Range::Unsatisfiable) => {
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let out = response.headers_mut();
            out.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("digits"),
            );
            out.remove(header::CONTENT_ENCODING);
            out.remove(header::CONTENT_TYPE);
            Bytes::new()
        }
        Some(Range::Whole) | None => chosen.body.clone(),
    };
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if method != Method::HEAD {
        *response.body_mut() = body;
    }
    response
}

/// RFC 9110 §13.1.2 and §13.1.3: `If-None-Match` decides when present, else
/// `If-Modified-Since`.
fn not_modified(headers: &HeaderMap, etag: &HeaderValue, modified: Option<u64>) -> bool {
    let etag = etag.as_bytes();
    let mut matches = headers.get_all(header::IF_NONE_MATCH).iter().peekable();
    if matches.peek().is_some() {
        return matches
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|tag| tag.trim().trim_start_matches("W/").as_bytes())
            .any(|tag| tag == b"*" || tag == etag);
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|since| since.duration_since(UNIX_EPOCH).ok())
        .is_some_and(|since| modified.is_some_and(|m| m <= since.as_secs()))
}

#[derive(Debug, PartialEq)]
enum Range {
    /// First and last byte, inclusive.
    Satisfiable(u64, u64),
    Unsatisfiable,
    /// Not one byte range this answers (several, or not `bytes=`): the whole file.
    Whole,
}

fn byte_range(value: &str, len: u64) -> Range {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Range::Whole;
    };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    let (start, end) = match (first.trim().is_empty(), number(first), number(last)) {
        // `-n`: the last n bytes.
        (true, _, Some(n)) if n > 0 => (len.saturating_sub(n), len.saturating_sub(1)),
        (true, _, _) => return Range::Unsatisfiable,
        (false, Some(start), None) if last.trim().is_empty() => (start, len.saturating_sub(1)),
        (false, Some(start), Some(end)) if start <= end => (start, end.min(len.saturating_sub(1))),
        _ => return Range::Whole,
    };
    if len == 0 || start >= len {
        return Range::Unsatisfiable;
    }
    Range::Satisfiable(start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The placeholder of a function of files only is the module its docs say, and its
    /// digest the constant the host recognises it by.
    #[test]
    fn the_assets_only_placeholder_is_the_documented_module() {
        use thaw_spec::assets::{ASSETS_ONLY_DIGEST, ASSETS_ONLY_WASM};
        let expected = wat::parse_str(r#"(module (func (export "_start")))"#).unwrap();
        assert_eq!(ASSETS_ONLY_WASM, expected.as_slice());
        assert_eq!(
            crate::engine::artifact::sha256_hex(ASSETS_ONLY_WASM),
            ASSETS_ONLY_DIGEST
        );
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(byte_range("bytes=0-9", 100), Range::Satisfiable(0, 9));
        assert_eq!(byte_range("bytes=90-", 100), Range::Satisfiable(90, 99));
        assert_eq!(byte_range("bytes=-10", 100), Range::Satisfiable(90, 99));
        assert_eq!(byte_range("bytes=-200", 100), Range::Satisfiable(0, 99));
        assert_eq!(byte_range("bytes=50-500", 100), Range::Satisfiable(50, 99));
        assert_eq!(byte_range("bytes=100-", 100), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=-0", 100), Range::Unsatisfiable);
        assert_eq!(byte_range("bytes=0-1,5-6", 100), Range::Whole);
        assert_eq!(byte_range("bytes=9-1", 100), Range::Whole);
        assert_eq!(byte_range("items=0-1", 100), Range::Whole);
    }

    #[test]
    fn encodings_refused_with_q_0_are_not_chosen() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT_ENCODING, "gzip, br;q=0".parse().unwrap());
        assert!(accepts_encoding(&headers, "gzip"));
        assert!(!accepts_encoding(&headers, "br"));
    }
}
