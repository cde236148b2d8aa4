//! Which engine a piece of code compiles on: the one with the component model's concurrency
//! or the one without.
//!
//! # Why two engines
//! `Config::concurrency_support` is an engine-wide setting, compiled into the code. With it
//! on, wasmtime 48 runs every export call through its task machinery (`call_async` becomes a
//! concurrent call driven by `run_concurrent`) and creates and deletes a host task in a table
//! for every call from the guest into the host (wasmtime's own FIXME on
//! `StoreOpaque::host_task_create` names the cost), whether the component uses concurrency or
//! not. A WASIp2 `wasi:http` request makes dozens of host calls, so a p2 hello served on a
//! concurrent engine lost a third of its throughput at 32 connections against the build
//! before thaw served WASIp3 (bisected and measured in
//! benches/results/2026-12-05-cold-phases/hello-vs-reference; the fix's effect in
//! benches/results/2026-12-05-two-engines). So WASIp2 components and core modules compile on
//! an engine without it, and only the code that needs it pays for it.
//!
//! # What needs it
//! Decided from the wasm before compiling ([`needed`]), by one pass over the component's
//! sections (no validation; the compiler validates):
//! - an import or export of a `wasi:` interface at version 0.3 (WASIp3: `wasi:http/handler`,
//!   its `wasi:cli`, `wasi:clocks`, ...);
//! - an import of `spin:` (thaw's `spin:sqlite`, `spin:key-value`, `spin:variables`,
//!   `spin:postgres`, `spin:redis` are concurrent host functions: async in their WIT);
//! - any canonical built-in of the async ABI (`task.return`, `stream.new`, `waitable-set.*`,
//!   ...) or a lift or lower with the `async` or `callback` option, in the component or a
//!   nested one.
//!
//! A component that needs concurrency in some other way (a `stream` in a synchronous
//! function's type, say) fails validation on the engine without it; the compile then tries
//! the concurrent engine before calling the wasm invalid (see
//! [`crate::engine::artifact::ArtifactCache::compile_and_store`]), and so does a deploy's
//! pre-initialisation snapshot when the engine refuses the component before its init runs
//! ([`crate::engine::snapshot::SnapshotError::Refused`]). Core modules (CGI) never need it.
//!
//! An artifact records which engine made it in its file name (see
//! [`crate::engine::artifact`]), so a load never parses the wasm again.

use wasmparser::{CanonicalFunction, CanonicalOption, Parser, Payload};

use super::Concurrency;
use crate::spec::Kind;

/// Whether `wasm` of `kind` needs the concurrent engine (see the module docs). Bytes that do
/// not parse get [`Concurrency::Off`]: the compiler reports what is wrong with them.
pub fn needed(kind: Kind, wasm: &[u8]) -> Concurrency {
    if kind != Kind::Component {
        return Concurrency::Off;
    }
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(wasm) {
        let Ok(payload) = payload else {
            return Concurrency::Off;
        };
        let on = match payload {
            Payload::Version { .. } => {
                depth += 1;
                false
            }
            Payload::End(_) => {
                depth = depth.saturating_sub(1);
                false
            }
            Payload::ComponentImportSection(imports) if depth == 1 => imports
                .into_iter()
                .flatten()
                .any(|import| name_needs_it(import.name.name, true)),
            Payload::ComponentExportSection(exports) if depth == 1 => exports
                .into_iter()
                .flatten()
                .any(|export| name_needs_it(export.name.name, false)),
            Payload::ComponentCanonicalSection(functions) => functions
                .into_iter()
                .flatten()
                .any(|f| canonical_needs_it(&f)),
            _ => false,
        };
        if on {
            return Concurrency::On;
        }
    }
    Concurrency::Off
}

/// A top-level import (`import`) or export name that needs concurrency.
fn name_needs_it(name: &str, import: bool) -> bool {
    (import && name.starts_with("spin:"))
        || (name.starts_with("wasi:")
            && name
                .split_once('@')
                .is_some_and(|(_, version)| version.starts_with("0.3")))
}

/// A canonical function of the async ABI.
fn canonical_needs_it(function: &CanonicalFunction) -> bool {
    let async_options = |options: &[CanonicalOption]| {
        options
            .iter()
            .any(|o| matches!(o, CanonicalOption::Async | CanonicalOption::Callback(_)))
    };
    match function {
        CanonicalFunction::Lift { options, .. } | CanonicalFunction::Lower { options, .. } => {
            async_options(options)
        }
        CanonicalFunction::ResourceNew { .. }
        | CanonicalFunction::ResourceDrop { .. }
        | CanonicalFunction::ResourceRep { .. } => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name_needs_it("wasi:http/handler@0.3.0", false));
        assert!(name_needs_it("wasi:cli/stdout@0.3.0-rc-2026-03-15", true));
        assert!(name_needs_it("spin:sqlite/sqlite@3.1.0", true));
        assert!(!name_needs_it("wasi:http/incoming-handler@0.2.6", false));
        assert!(!name_needs_it("wasi:cli/environment@0.2.0", true));
        assert!(!name_needs_it("wasi:keyvalue/store@0.2.0-draft", true));
        assert!(!name_needs_it("wasi:config/store@0.2.0-draft", true));
        assert!(!name_needs_it("wizer-initialize", false));
        // Only imports of spin: are the host's concurrent functions.
        assert!(!name_needs_it("spin:thing/export@1.0.0", false));
    }

    #[test]
    fn core_modules_and_garbage_never_need_it() {
        assert_eq!(needed(Kind::Cgi, b"\0asm\x01\0\0\0"), Concurrency::Off);
        assert_eq!(needed(Kind::Component, b"not wasm"), Concurrency::Off);
    }
}
