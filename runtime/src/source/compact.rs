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
//! An empty passive segment can only be seen by the instructions that name a segment by
//! index: `memory.init`, `data.drop`, and the GC proposal's `array.new_data` and
//! `array.init_data`. So a core module whose code has none of them (checked, operator by
//! operator, only where a data-count section allows them at all) loses its empty passive
//! segments and the others keep their order; one that uses them is left as it is. (The name
//! section's names of data segments, if any, keep their old indices: nothing but tools that
//! print them reads those.)

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
        let module = component
            .get(range.clone())
            .context("a module past the end")?;
        if let Some(module) = compact_module(module)? {
            compacted.push((range, module));
        }
    }
    if compacted.is_empty() {
        return Ok(component);
    }
    let mut out = wasm_encoder::Component::new();
    for_each_top_level(&component, |payload| {
        if let Some((id, range)) = payload.as_section() {
            let data = match compacted.iter().find(|(at, _)| *at == range) {
                Some((_, module)) => &module[..],
                None => component.get(range).context("a section past the end")?,
            };
            out.section(&wasm_encoder::RawSection { id, data });
        }
        Ok(())
    })?;
    Ok(out.finish())
}

/// Where each top-level core module of `component` lies.
fn top_level_modules(component: &[u8]) -> anyhow::Result<Vec<Range<usize>>> {
    let mut modules = Vec::new();
    for_each_top_level(component, |payload| {
        if let Payload::ModuleSection {
            unchecked_range, ..
        } = payload
        {
            modules.push(unchecked_range.clone());
        }
        Ok(())
    })?;
    Ok(modules)
}

/// Calls `f` with each top-level payload of `component` up to its end; a nested module or
/// component is one payload, its contents skipped (copied whole, never parsed on).
fn for_each_top_level<'a>(
    component: &'a [u8],
    mut f: impl FnMut(&Payload<'a>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut parser = Parser::new(0);
    let mut rest = component;
    loop {
        let (payload, consumed) = match parser.parse(rest, true)? {
            Chunk::Parsed { payload, consumed } => (payload, consumed),
            Chunk::NeedMoreData(_) => anyhow::bail!("the component ends early"),
        };
        rest = &rest[consumed..];
        match &payload {
            Payload::Version {
                encoding: Encoding::Module,
                ..
            } => anyhow::bail!("a core module, not a component"),
            Payload::End(_) => return Ok(()),
            Payload::ModuleSection {
                unchecked_range, ..
            }
            | Payload::ComponentSection {
                unchecked_range, ..
            } => {
                rest = rest
                    .get(unchecked_range.len()..)
                    .context("a nested module past the end")?;
            }
            _ => {}
        }
        f(&payload)?;
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
            // Validation allows an instruction naming a data segment only after a data-count
            // section.
            Payload::CodeSectionEntry(body) if data_count => {
                for op in body.get_operators_reader()? {
                    if matches!(
                        op?,
                        Operator::MemoryInit { .. }
                            | Operator::DataDrop { .. }
                            | Operator::ArrayNewData { .. }
                            | Operator::ArrayInitData { .. }
                    ) {
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

    const EMPTIED: &str = r#"(data "")"#;

    /// A component holding one core module built from `wat` (with `{body}` as its one
    /// function's code and `{emptied}` for each empty passive segment), a data-count section
    /// of `data_count` inserted before its code when given, and a custom section after it.
    fn component_of(body: &str, emptied: &str, data_count: Option<u32>) -> Vec<u8> {
        // The GC proposal's array type only where the body uses it.
        let types = if body.contains("array") {
            "(type $bytes (array i8))"
        } else {
            ""
        };
        let text = format!(
            r#"(module
                {types}
                (memory 1)
                (func (export "f") {body})
                {emptied}
                (data (i32.const 16) "kept")
                {emptied}
                (data "passive"))"#
        );
        let wasm = wat::parse_str(text).unwrap();
        let mut module = wasm_encoder::Module::new();
        for payload in Parser::new(0).parse_all(&wasm) {
            let payload = payload.unwrap();
            let Some((id, range)) = payload.as_section() else {
                continue;
            };
            if let (Payload::CodeSectionStart { .. }, Some(count)) = (&payload, data_count) {
                module.section(&wasm_encoder::DataCountSection { count });
            }
            module.section(&wasm_encoder::RawSection {
                id,
                data: &wasm[range],
            });
        }
        let module = module.finish();
        let mut component = wasm_encoder::Component::new();
        component.section(&wasm_encoder::RawSection {
            id: wasm_encoder::ComponentSectionId::CoreModule as u8,
            data: &module,
        });
        component.section(&wasm_encoder::CustomSection {
            name: "kept too".into(),
            data: b"\x00\x01".into(),
        });
        component.finish()
    }

    /// The data segments of the component's one core module as (passive, bytes), and its
    /// data-count section's count.
    fn segments(component: &[u8]) -> (Vec<(bool, Vec<u8>)>, Option<u32>) {
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

    /// Compiles `component` as wasmtime would serve it.
    fn compiles(component: &[u8]) {
        wasmtime::component::Component::new(&wasmtime::Engine::default(), component).unwrap();
    }

    #[test]
    fn empty_passive_segments_go_when_no_code_names_a_segment() {
        for data_count in [None, Some(4)] {
            let before = component_of("", EMPTIED, data_count);
            compiles(&before);
            let after = drop_emptied_segments(before).unwrap();
            compiles(&after);
            // Exactly what the same module without them encodes to, every other section and
            // the component's custom section included.
            let expected = component_of("", "", data_count.map(|_| 2));
            assert_eq!(after, expected, "data count {data_count:?}");
            assert_eq!(
                segments(&after),
                (
                    vec![(false, b"kept".to_vec()), (true, b"passive".to_vec())],
                    data_count.map(|_| 2)
                )
            );
        }
    }

    #[test]
    fn a_module_whose_code_names_segments_is_left_alone() {
        for body in [
            "(memory.init 3 (i32.const 0) (i32.const 0) (i32.const 7))",
            "(data.drop 0)",
            "(drop (array.new_data $bytes 3 (i32.const 0) (i32.const 1)))",
            "(array.init_data $bytes 3 (array.new_default $bytes (i32.const 1)) (i32.const 0) (i32.const 0) (i32.const 1))",
        ] {
            // wat adds the data-count section these need.
            let before = component_of(body, EMPTIED, None);
            assert_eq!(segments(&before).1, Some(4), "{body}");
            let after = drop_emptied_segments(before.clone()).unwrap();
            assert_eq!(after, before, "{body}");
        }
    }

    #[test]
    fn a_core_module_is_refused() {
        let module = wat::parse_str("(module)").unwrap();
        let e = drop_emptied_segments(module).unwrap_err().to_string();
        assert!(e.contains("not a component"), "{e}");
    }
}
