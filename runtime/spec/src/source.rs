//! A function deployed as source: the bundle `thaw deploy handler.js` uploads in place of wasm.
//!
//! A bundle is one line of header, `#thaw-source v1`, then JSON: the language, the entry
//! module and the files (path, UTF-8 text). The header is what tells a bundle from wasm
//! ([`crate::spec::detect_kind`]) without parsing the rest; JSON keeps it readable in the data
//! directory and costs nothing that matters at a deploy. The bundle is stored as it came, under
//! its sha256, like wasm: the function's identity is its source plus the engine it was
//! deployed with.

use serde::{Deserialize, Serialize};

/// The first bytes of every source bundle.
pub const HEADER: &[u8] = b"#thaw-source v1\n";

/// The most a bundle may hold, all files together: source, not dependencies with binaries.
pub const MAX_BUNDLE_BYTES: usize = 8 << 20;

/// The most files a bundle may hold.
pub const MAX_FILES: usize = 1_000;

/// A source function's language: which engine runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// JavaScript ES modules, on thaw's SpiderMonkey engine (componentize-js).
    Js,
    /// A pure-Python package, on thaw's CPython engine (componentize-py).
    Python,
}

impl Language {
    /// Every language, in a stable order.
    pub const ALL: [Language; 2] = [Language::Js, Language::Python];

    /// The name used in bundles, file names (`js.wasm`) and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Js => "js",
            Language::Python => "python",
        }
    }

    /// The language of a source file, by its extension.
    pub fn of_path(path: &str) -> Option<Language> {
        if path.ends_with(".js") || path.ends_with(".mjs") {
            Some(Language::Js)
        } else if path.ends_with(".py") {
            Some(Language::Python)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A function's source, as uploaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Which engine runs it.
    pub language: Language,
    /// The path (among `files`) of the module holding the handler.
    pub entry: String,
    /// Every file: a path relative to the project (`/`-separated, no `.` or `..` parts) and
    /// its text.
    pub files: Vec<(String, String)>,
}

impl Bundle {
    /// The bundle's bytes: the header, then JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = HEADER.to_vec();
        serde_json::to_writer(&mut out, self).expect("a bundle serializes");
        out
    }

    /// Parses and checks a bundle: the header, the JSON, the size, and every path. The error
    /// is the deployer's to read.
    pub fn parse(bytes: &[u8]) -> Result<Bundle, String> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(format!(
                "the source bundle is {} bytes, over the limit of {MAX_BUNDLE_BYTES}",
                bytes.len()
            ));
        }
        let json = bytes
            .strip_prefix(HEADER)
            .ok_or("not a source bundle (no `#thaw-source v1` header)")?;
        let bundle: Bundle =
            serde_json::from_slice(json).map_err(|e| format!("invalid source bundle: {e}"))?;
        bundle.check()?;
        Ok(bundle)
    }

    fn check(&self) -> Result<(), String> {
        if self.files.is_empty() {
            return Err("the source bundle has no files".into());
        }
        if self.files.len() > MAX_FILES {
            return Err(format!(
                "the source bundle has {} files, over the limit of {MAX_FILES}",
                self.files.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (path, _) in &self.files {
            check_path(path)?;
            if !seen.insert(path.as_str()) {
                return Err(format!("{path} is in the source bundle twice"));
            }
        }
        if !seen.contains(self.entry.as_str()) {
            return Err(format!(
                "the entry module {} is not among the files deployed",
                self.entry
            ));
        }
        if Language::of_path(&self.entry) != Some(self.language) {
            return Err(format!(
                "the entry module {} is not a {} file",
                self.entry, self.language
            ));
        }
        Ok(())
    }
}

/// A bundle path: relative, `/`-separated, of plain parts (no empty, `.` or `..` part, no
/// backslash or control character), at most 512 bytes.
pub fn check_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid path {path:?} in the source bundle: {why}"));
    if path.is_empty() || path.len() > 512 {
        return bad("empty or over 512 bytes");
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return bad("control character or backslash");
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return bad("it must be relative, with no empty, `.` or `..` parts");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(entry: &str, files: &[&str]) -> Bundle {
        Bundle {
            language: Language::Js,
            entry: entry.into(),
            files: files
                .iter()
                .map(|p| (p.to_string(), String::new()))
                .collect(),
        }
    }

    #[test]
    fn a_bundle_round_trips_and_bad_ones_are_refused() {
        let ok = bundle("handler.js", &["handler.js", "lib/util.js"]);
        assert_eq!(Bundle::parse(&ok.to_bytes()).unwrap(), ok);
        for (bad, why) in [
            (bundle("main.js", &["handler.js"]), "not among"),
            (bundle("handler.py", &["handler.py"]), "not a js file"),
            (bundle("a.js", &["a.js", "a.js"]), "twice"),
            (bundle("a.js", &["a.js", "../x.js"]), "invalid path"),
            (bundle("a.js", &["a.js", "/etc/x.js"]), "invalid path"),
            (bundle("a.js", &["a.js", "b/./c.js"]), "invalid path"),
            (bundle("a.js", &[]), "no files"),
        ] {
            let err = Bundle::parse(&bad.to_bytes()).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        assert!(Bundle::parse(b"{}").unwrap_err().contains("header"));
        let mut huge = HEADER.to_vec();
        huge.resize(MAX_BUNDLE_BYTES + 1, b' ');
        assert!(Bundle::parse(&huge).unwrap_err().contains("over the limit"));
    }
}
