//! The rows of functions deployed as source (`JS source: …`, `Python source: …`), beside the
//! same languages' component rows (`JS: …`, `Python: …`) in the same run: the `thaw new js`
//! and `thaw new python` templates' source, on the engines in `target/engines`
//! (scripts/build-engines), cold from disk, first after start, deployed new, and warm.

use thaw_spec::source::{Bundle, Language};

/// A template's files: path and text.
pub type Files = &'static [(&'static str, &'static str)];

/// The source languages: the row prefix, the language, the template's files.
pub const SOURCES: [(&str, Language, Files); 2] = [
    (
        "JS source",
        Language::Js,
        &[(
            "index.js",
            include_str!("../../../cli/templates/js/index.js"),
        )],
    ),
    (
        "Python source",
        Language::Python,
        &[(
            "app.py",
            include_str!("../../../cli/templates/python/app.py"),
        )],
    ),
];

/// The component rows' prefix of the same language.
pub fn component_prefix(language: Language) -> &'static str {
    match language {
        Language::Js => "JS",
        Language::Python => "Python",
    }
}

/// A template's source as the bundle `thaw deploy` uploads, named `name`.
pub fn bundle(language: Language, files: &[(&str, &str)], name: &str) -> Vec<u8> {
    Bundle {
        language,
        entry: files[0].0.to_owned(),
        files: files
            .iter()
            .map(|(path, text)| ((*path).to_owned(), text.replace("{{name}}", name)))
            .collect(),
    }
    .to_bytes()
}

/// `bundle` with a comment holding `nonce` at the end of its entry module: new source (a new
/// digest), the same function. What a redeploy of an edited function uploads.
pub fn with_nonce(language: Language, files: &[(&str, &str)], nonce: &str) -> Vec<u8> {
    let comment = match language {
        Language::Js => format!("\n// {nonce}\n"),
        Language::Python => format!("\n# {nonce}\n"),
    };
    let mut files: Vec<(&str, String)> = files.iter().map(|(p, t)| (*p, (*t).to_owned())).collect();
    files[0].1.push_str(&comment);
    let borrowed: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    bundle(language, &borrowed, "fn")
}

/// A one-file function that answers `name`: the density run's functions, each different.
pub fn answering(language: Language, name: &str) -> Vec<u8> {
    let (entry, text) = match language {
        Language::Js => (
            "index.js",
            format!("export default {{ fetch() {{ return new Response(\"{name}\\n\"); }} }};\n"),
        ),
        Language::Python => (
            "app.py",
            format!(
                "from thaw_http import Response\n\ndef handle(request):\n    return Response(body=b\"{name}\\n\")\n"
            ),
        ),
    };
    Bundle {
        language,
        entry: entry.to_owned(),
        files: vec![(entry.to_owned(), text)],
    }
    .to_bytes()
}
