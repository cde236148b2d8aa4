//! A source function's bundle arrives from the admin API in place of wasm: telling it from
//! wasm and parsing it must never panic, and a bundle that parses must survive a round trip
//! unchanged and carry only relative, plain paths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thaw_spec::source::{Bundle, check_path};
use thaw_spec::spec::{Kind, detect_kind};

fuzz_target!(|data: &[u8]| {
    let kind = detect_kind(data);
    let Ok(bundle) = Bundle::parse(data) else {
        return;
    };
    assert_eq!(kind, Ok(Kind::Source));
    for (path, _) in &bundle.files {
        assert!(check_path(path).is_ok());
        assert!(!path.starts_with('/') && !path.split('/').any(|p| p == ".."));
    }
    assert_eq!(Bundle::parse(&bundle.to_bytes()).unwrap(), bundle);
});
