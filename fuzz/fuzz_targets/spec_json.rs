//! A function spec arrives as JSON from the admin API: parsing and validating it must never
//! panic, and a spec that validates must resolve and survive a round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thaw_spec::spec::{FunctionSpec, LimitDefaults};

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<FunctionSpec>(data) else {
        return;
    };
    let name = spec.route.as_deref().map_or("f", |r| r.trim_start_matches('/'));
    if spec.validate(name, 1 << 30).is_err() {
        return;
    }
    let _ = spec.limits.resolve(&LimitDefaults::default());
    let _ = spec.route_or_default(name);
    let again: FunctionSpec = serde_json::from_slice(&serde_json::to_vec(&spec).unwrap()).unwrap();
    assert_eq!(again, spec);
});
