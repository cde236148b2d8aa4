//! Dropping the data segments a snapshot emptied.
//!
//! A language engine is itself a Wizer snapshot (componentize-js and componentize-py take one
//! at build time), so its core module carries its heap as active data segments: up to
//! 10,000, Wizer's limit. Snapshotting it again ([`super::snapshot`]) keeps every data
//! index valid, as Wizer must without knowing the code: each of those active segments, already
//! applied, becomes an *empty passive* segment, and the new heap follows as new active ones.
//! Harmless to the memory (the new active segments fold into one copy-on-write image, as
//! before), but wasmtime keeps every passive segment as runtime data of the module: 8 bytes
//! of metadata each in the artifact, and a pass over all of them in every instantiation to
//! fill the instance's table of segment pointers. For the JS engine that pass was 2.4% of
//! the host's CPU serving a snapshot, against 0.07% for the same engine's own build
//! (`perf`, benches/results/2026-12-04-issues-24-25-rerun).
//!
//! An empty passive segment can only be seen by `memory.init` and `data.drop`, which name a
//! segment by index. So a core module whose code has neither (checked, operator by operator,
//! only where a data-count section allows them at all) loses its empty passive segments and
//! the others keep their order; one that uses them is left as it is.

use std::ops::Range;

use anyhow::Context as _;
use wasm_encoder::Encode as _;
use wasmparser::{Chunk, DataKind, Encoding, Operator, Parser, Payload};

/// `component` with the empty passive data segments of each of its top-level core modules
/// removed where no code can refer to them (see the module docs); the bytes unchanged
/// otherwise.
pub fn drop_emptied_segments(component: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let mut compacted = Vec::new();
    for range in top_level_modules(&component)? {
        if let Some(module) = compact_module(&component[range.clone()])? {
            compacted.push((range, module));
        }
    }
    if compacted.is_empty() {
        return Ok(component);
    }
    let mut out = wasm_encoder::Component::new();
    let mut parser = Parser::new(0);
    let mut rest = &component[..];
    loop {
        let (payload, consumed) = match parser.parse(rest, true)? {
            Chunk::Parsed { payload, consumed } => (payload, consumed),
            Chunk::NeedMoreData(_) => anyhow::bail!("the component ends early"),
        };
        rest = &rest[consumed..];
        match payload {
            Payload::Version { .. } => {}
            Payload::End(_) => break,
            payload => {
                let Some((id, range)) = payload.as_section() else {
                    continue;
                };
                if let Payload::ModuleSection {
                    unchecked_range, ..
                }
                | Payload::ComponentSection {
                    unchecked_range, ..
                } = &payload
                {
                    // Nested items are copied whole, not parsed on.
                    rest = &rest[unchecked_range.len()..];
                }
                let data = compacted
                    .iter()
                    .find(|(at, _)| *at == range)
                    .map_or(&component[range], |(_, module)| &module[..]);
                out.section(&wasm_encoder::RawSection { id, data });
            }
        }
    }
    Ok(out.finish())
}

/// Where each top-level core module of `component` lies.
fn top_level_modules(component: &[u8]) -> anyhow::Result<Vec<Range<usize>>> {
    let mut modules = Vec::new();
    let mut parser = Parser::new(0);
    let mut rest = component;
    loop {
        let (payload, consumed) = match parser.parse(rest, true)? {
            Chunk::Parsed { payload, consumed } => (payload, consumed),
            Chunk::NeedMoreData(_) => anyhow::bail!("the component ends early"),
        };
        rest = &rest[consumed..];
        match payload {
            Payload::Version {
                encoding: Encoding::Module,
                ..
            } => anyhow::bail!("a core module, not a component"),
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                rest = &rest[unchecked_range.len()..];
                modules.push(unchecked_range);
            }
            Payload::ComponentSection {
                unchecked_range, ..
            } => rest = &rest[unchecked_range.len()..],
            Payload::End(_) => return Ok(modules),
            _ => {}
        }
    }
}

/// `module` without its empty passive data segments, or `None` when it has none or its
/// code may refer to a segment by index.
fn compact_module(module: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let mut data = None;
    let mut data_count = false;
    for payload in Parser::new(0).parse_all(module) {
        match payload.context("parsing a core module")? {
            Payload::DataCountSection { .. } => data_count = true,
            // Validation allows `memory.init` and `data.drop` only after a data-count section.
            Payload::CodeSectionEntry(body) if data_count => {
                for op in body.get_operators_reader()? {
                    if matches!(op?, Operator::MemoryInit { .. } | Operator::DataDrop { .. }) {
                        return Ok(None);
                    }
                }
            }
            Payload::DataSection(reader) => data = Some(reader),
            _ => {}
        }
    }
    let Some(reader) = data else {
        return Ok(None);
    };
    let mut kept = Vec::new();
    let mut dropped = 0;
    for segment in reader.clone() {
        let segment = segment?;
        if matches!(segment.kind, DataKind::Passive) && segment.data.is_empty() {
            dropped += 1;
        } else {
            kept.push(segment.range);
        }
    }
    if dropped == 0 {
        return Ok(None);
    }
    let count = u32::try_from(kept.len())?;
    let mut section = Vec::new();
    count.encode(&mut section);
    for range in &kept {
        section.extend_from_slice(&module[range.clone()]);
    }
    let mut out = wasm_encoder::Module::new();
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload?;
        let Some((id, range)) = payload.as_section() else {
            continue;
        };
        match payload {
            Payload::DataCountSection { .. } => {
                out.section(&wasm_encoder::DataCountSection { count });
            }
            Payload::DataSection(_) => {
                out.section(&wasm_encoder::RawSection { id, data: &section });
            }
            _ => {
                out.section(&wasm_encoder::RawSection {
                    id,
                    data: &module[range],
                });
            }
        }
    }
    Ok(Some(out.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A component of one core module: `wat` with `body` as its function's code.
    fn component_of(body: &str) -> Vec<u8> {
        let module = wat::parse_str(format!(
            r#"(module
                (memory 1)
                (func (export "f") {body})
                (data "")
                (data (i32.const 16) "kept")
                (data "")
                (data "passive"))"#
        ))
        .unwrap();
        let mut component = wasm_encoder::Component::new();
        component.section(&wasm_encoder::RawSection {
            id: wasm_encoder::ComponentSectionId::CoreModule as u8,
            data: &module,
        });
        component.finish()
    }

    /// The data segments of the component's one core module: (passive, bytes), and
    /// whether it has a data-count section.
    fn segments(component: &[u8]) -> (Vec<(bool, Vec<u8>)>, Option<u32>) {
        // Valid as wasmtime sees it.
        wasmtime::component::Component::new(&wasmtime::Engine::default(), component).unwrap();
        let range = top_level_modules(component).unwrap().remove(0);
        let (mut segments, mut count) = (Vec::new(), None);
        for payload in Parser::new(0).parse_all(&component[range]) {
            match payload.unwrap() {
                Payload::DataSection(reader) => {
                    for s in reader {
                        let s = s.unwrap();
                        segments.push((matches!(s.kind, DataKind::Passive), s.data.to_vec()));
                    }
                }
                Payload::DataCountSection { count: n, .. } => count = Some(n),
                _ => {}
            }
        }
        (segments, count)
    }

    #[test]
    fn empty_passive_segments_go_when_no_code_names_a_segment() {
        let before = component_of("");
        let after = drop_emptied_segments(before.clone()).unwrap();
        assert_ne!(after, before);
        assert_eq!(
            segments(&after).0,
            [(false, b"kept".to_vec()), (true, b"passive".to_vec())]
        );
    }

    #[test]
    fn a_module_whose_code_names_segments_is_left_alone() {
        for body in [
            "(memory.init 3 (i32.const 0) (i32.const 0) (i32.const 7))",
            "(data.drop 0)",
        ] {
            let before = component_of(body);
            assert_eq!(segments(&before).1, Some(4), "{body}");
            let after = drop_emptied_segments(before.clone()).unwrap();
            assert_eq!(after, before, "{body}");
        }
    }
}
