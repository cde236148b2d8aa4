//! An echo server written against the standard `wasi` crate only, streaming both ways.
//!
//! - `GET /echo/stream?bytes=N`: streams N bytes (a repeating alphabet) in 64 KiB writes,
//!   without holding them in memory.
//! - any other request: status from `?status=NNN` (default 200), the request's method, path
//!   and `x-*` headers reflected as `x-echo-*` response headers, and the request body
//!   streamed back as the response body.

use std::io::Write as _;

use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(Echo);

struct Echo;

impl wasi::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((&path_with_query, ""));
        let param = |key: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_owned())
        };

        if path.ends_with("/stream") {
            let total: u64 = param("bytes").and_then(|b| b.parse().ok()).unwrap_or(0);
            let headers = Fields::from_list(&[
                ("content-type".into(), b"application/octet-stream".to_vec()),
                ("x-echo-bytes".into(), total.to_string().into_bytes()),
            ])
            .expect("valid headers");
            let response = OutgoingResponse::new(headers);
            let body = response.body().expect("body");
            ResponseOutparam::set(out, Ok(response));
            let chunk: Vec<u8> = (0..64 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
            {
                let mut stream = body.write().expect("stream");
                let mut left = total;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    stream.write_all(&chunk[..n]).expect("write");
                    left -= n as u64;
                }
                stream.blocking_flush().expect("flush");
            }
            OutgoingBody::finish(body, None).expect("finish");
            return;
        }

        let method = match request.method() {
            Method::Get => "GET".to_owned(),
            Method::Post => "POST".to_owned(),
            Method::Put => "PUT".to_owned(),
            Method::Delete => "DELETE".to_owned(),
            Method::Patch => "PATCH".to_owned(),
            Method::Head => "HEAD".to_owned(),
            Method::Options => "OPTIONS".to_owned(),
            Method::Connect => "CONNECT".to_owned(),
            Method::Trace => "TRACE".to_owned(),
            Method::Other(m) => m,
        };
        let mut headers: Vec<(String, Vec<u8>)> = vec![
            ("x-echo-method".into(), method.into_bytes()),
            ("x-echo-path".into(), path.as_bytes().to_vec()),
        ];
        let mut content_type = b"application/octet-stream".to_vec();
        for (name, value) in request.headers().entries() {
            if name == "content-type" {
                content_type = value;
            } else if let Some(rest) = name.strip_prefix("x-") {
                headers.push((format!("x-echo-{rest}"), value));
            }
        }
        headers.push(("content-type".into(), content_type));
        let status: u16 = param("status").and_then(|s| s.parse().ok()).unwrap_or(200);

        let response = OutgoingResponse::new(Fields::from_list(&headers).expect("valid headers"));
        response.set_status_code(status).expect("valid status");
        let response_body = response.body().expect("body");
        ResponseOutparam::set(out, Ok(response));

        let request_body = request.consume().expect("request body");
        {
            let mut input = request_body.stream().expect("input stream");
            let mut output = response_body.write().expect("output stream");
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = std::io::Read::read(&mut input, &mut buf).expect("read");
                if n == 0 {
                    break;
                }
                output.write_all(&buf[..n]).expect("write");
            }
            output.blocking_flush().expect("flush");
        }
        OutgoingBody::finish(response_body, None).expect("finish");
    }
}
