//! A function's static assets: how they are declared, and the bundle they are uploaded in.
//!
//! The deployer's CLI packs the asset directory into a tar archive (ustar, as the `tar`
//! crate writes it) and sends it beside the wasm; the host stores the archive as one
//! content-addressed blob (like wasm, so a cluster's nodes fetch it from each other by digest)
//! and serves its files without starting a guest (thaw-runtime's `assets` module).
//!
//! # What a bundle may hold
//! Regular files and directories, nothing else: a symbolic or hard link, a device or a FIFO
//! is refused (a link is how a path escapes its root). Every path is relative, UTF-8, without
//! `.` or `..` components, backslashes or NUL, at most [`MAX_PATH_BYTES`]; at most
//! [`MAX_FILES`] files and [`MAX_BUNDLE_BYTES`] of content in all. Each refusal is an error
//! naming the entry.

use serde::{Deserialize, Serialize};

/// Most bytes of file content in one function's assets. They are served from memory.
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;
/// Most files in one function's assets.
pub const MAX_FILES: usize = 10_000;
/// Longest path of one asset.
pub const MAX_PATH_BYTES: usize = 1024;

/// The code of a function that is only static assets, deployed with no wasm:
/// `(module (func (export "_start")))`, a WASI command that does nothing.
///
/// Why a placeholder rather than a kind of function without code: a version's lifecycle
/// (records, rollbacks and splits, the cluster's fetch by digest, garbage collection) is
/// keyed by its code's digest, and 36 bytes of it buy all of that unchanged. The host never
/// runs it: a request for a path that is no asset is answered 404 by the host itself (see
/// thaw-runtime's `assets` module), and the deploy refuses what would start it (schedules,
/// triggers, `run_function_first`).
pub const ASSETS_ONLY_WASM: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // types: () -> ()
    0x03, 0x02, 0x01, 0x00, // functions: one of type 0
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export _start
    0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b, // code: an empty body
];

/// sha256 of [`ASSETS_ONLY_WASM`], hex: a version whose digest this is is assets only.
pub const ASSETS_ONLY_DIGEST: &str =
    "5647c39a1d25d8728350f9619025292a62e78a602068a2ad9b6f075751c93d99";

/// How a function's assets are served (`assets = { dir = "public", spa = true }` in a
/// manifest; the directory itself is the deployer's, uploaded as a bundle).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetsSpec {
    /// A single-page app: a navigation (a `GET` that accepts `text/html`) to a path that is
    /// no asset gets `/index.html` instead of the function.
    #[serde(default)]
    pub spa: bool,
    /// The function answers first; an asset is served only where it answers 404 to a
    /// `GET` or `HEAD`. By default assets come first and the function gets the rest.
    #[serde(default)]
    pub run_function_first: bool,
    /// The bundle's sha256, set by the host at deploy (a spec sent with a digest of its own
    /// is refused: the files must come with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// One file of a bundle: its path (relative, `/`-separated), where its content is in the
/// archive, and its modification time (Unix seconds, as the archive says).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleFile {
    /// The path below the asset root, without a leading `/`.
    pub path: String,
    /// The content's byte range in the archive.
    pub range: std::ops::Range<usize>,
    /// Modification time, Unix seconds.
    pub mtime: u64,
}

/// The files of a bundle, checked (see the module docs); the error names the entry.
pub fn parse_bundle(archive: &[u8]) -> Result<Vec<BundleFile>, String> {
    let mut files = Vec::new();
    let mut total: u64 = 0;
    let mut entries = tar::Archive::new(archive);
    let entries = entries
        .entries()
        .map_err(|e| format!("the assets are not a tar archive: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("the assets archive is damaged: {e}"))?;
        let raw = entry.path_bytes();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let path = check_path(&raw).map_err(|why| format!("asset {name:?}: {why}"))?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => continue,
            tar::EntryType::Regular | tar::EntryType::Continuous => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(format!(
                    "asset {name:?}: a link (assets are files; a link could point outside them)"
                ));
            }
            other => return Err(format!("asset {name:?}: not a regular file ({other:?})")),
        }
        let Some(path) = path else {
            return Err(format!("asset {name:?}: a file must have a name"));
        };
        let size = entry.size();
        total = total.saturating_add(size);
        if total > MAX_BUNDLE_BYTES {
            return Err(format!(
                "the assets are over the limit of {} MiB",
                MAX_BUNDLE_BYTES >> 20
            ));
        }
        if files.len() == MAX_FILES {
            return Err(format!("the assets hold more than {MAX_FILES} files"));
        }
        let start = entry.raw_file_position() as usize;
        let end = start
            .checked_add(size as usize)
            .filter(|end| *end <= archive.len())
            .ok_or_else(|| format!("asset {name:?}: the archive ends inside it"))?;
        // At most the last second of year 9999: an archive's time is a u64 (base-256 in GNU
        // headers), and an HTTP date has four digits of year.
        let mtime = entry.header().mtime().unwrap_or(0).min(253_402_300_799);
        files.push(BundleFile {
            path,
            range: start..end,
            mtime,
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(twice) = files.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(format!("asset {:?} is in the archive twice", twice[0].path));
    }
    Ok(files)
}

/// `raw` as a relative asset path (`None` for the root itself), or why not.
fn check_path(raw: &[u8]) -> Result<Option<String>, &'static str> {
    let text = std::str::from_utf8(raw).map_err(|_| "not UTF-8")?;
    if text.len() > MAX_PATH_BYTES {
        return Err("a path over 1024 bytes");
    }
    if text.starts_with('/') {
        return Err("an absolute path");
    }
    if text.contains(['\\', '\0']) {
        return Err("a backslash or NUL in the path");
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err("a '..' component"),
            part => parts.push(part),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(1_700_000_000);
            // Written raw: `append_data` itself refuses `..`, and the test needs it.
            let bytes = path.as_bytes();
            header.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
            if *kind == tar::EntryType::Symlink {
                header.set_link_name("/etc/passwd").unwrap();
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    #[test]
    fn files_and_directories_parse_with_their_content() {
        let bytes = archive(&[
            ("css/", tar::EntryType::Directory, b""),
            ("./index.html", tar::EntryType::Regular, b"<h1>hi</h1>"),
            ("css/site.css", tar::EntryType::Regular, b"body{}"),
        ]);
        let files = parse_bundle(&bytes).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["css/site.css", "index.html"]);
        assert_eq!(&bytes[files[1].range.clone()], b"<h1>hi</h1>");
        assert_eq!(files[1].mtime, 1_700_000_000);
    }

    #[test]
    fn links_escapes_and_oddities_are_refused_naming_the_entry() {
        for (entries, says) in [
            (
                vec![("../etc/passwd", tar::EntryType::Regular, &b"x"[..])],
                "'..'",
            ),
            (
                vec![("a/../../b", tar::EntryType::Regular, &b"x"[..])],
                "'..'",
            ),
            (
                vec![("/etc/passwd", tar::EntryType::Regular, &b"x"[..])],
                "absolute",
            ),
            (
                vec![("a\\..\\b", tar::EntryType::Regular, &b"x"[..])],
                "backslash",
            ),
            (vec![("link", tar::EntryType::Symlink, &b""[..])], "a link"),
            (
                vec![("fifo", tar::EntryType::Fifo, &b""[..])],
                "not a regular file",
            ),
            (
                vec![
                    ("a.txt", tar::EntryType::Regular, &b"x"[..]),
                    ("./a.txt", tar::EntryType::Regular, &b"y"[..]),
                ],
                "twice",
            ),
        ] {
            let e = parse_bundle(&archive(&entries)).unwrap_err();
            assert!(e.contains(says), "{entries:?}: {e}");
        }
        let e = parse_bundle(&[7u8; 1024]).unwrap_err();
        assert!(e.contains("damaged") || e.contains("not a tar"), "{e}");
    }
}
