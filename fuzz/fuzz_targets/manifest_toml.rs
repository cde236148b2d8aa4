//! `thaw.toml` is user input: parsing it (with every spec inside validated) must never
//! panic, and every function of a manifest that parses must have a valid spec.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thaw_spec::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = Manifest::parse(text, std::path::Path::new("/base")) else {
        return;
    };
    for function in &manifest.functions {
        function.spec().validate(&function.name, u64::MAX).unwrap();
        let _ = manifest.code_path(function);
    }
});
