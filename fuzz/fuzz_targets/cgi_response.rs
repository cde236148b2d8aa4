//! The CGI response parser reads whatever a guest printed on stdout: it must never panic,
//! and what it accepts must be a response hyper can send.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thaw_spec::cgi;

fuzz_target!(|data: &[u8]| {
    let Ok(response) = cgi::parse_response(bytes::Bytes::copy_from_slice(data)) else {
        return;
    };
    // The body is what followed the header section, byte for byte.
    assert!(data.ends_with(&response.body));
    // Whatever it accepted fits in a real response.
    let mut built = http::Response::new(());
    *built.status_mut() = response.status;
    *built.headers_mut() = response.headers;
    assert!(built.status().as_u16() >= 100 && built.status().as_u16() <= 999);
});
