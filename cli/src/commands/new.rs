//! `thaw new`: a function project that deploys as it is, in one of four languages.
//!
//! The templates live in `cli/templates/` and are compiled into the binary, so `thaw new`
//! works offline and anywhere the binary is. Each is the same small JSON function (query,
//! body, environment), a `thaw.toml`, and a README of a few lines. JavaScript and Python
//! projects are source by default (`source = "."`: the host's language engine runs them, no
//! toolchain); their `-component` variants are built with componentize-js or componentize-py
//! and also get the WASI interfaces they are built against (`wit/deps`, the WIT wasmtime 48
//! ships: componentize-js and componentize-py bundle none).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// `thaw new` flags.
#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// The template: rust, js, python or go
    #[arg(required_unless_present = "list")]
    pub template: Option<String>,
    /// The function's name (a-z, 0-9, '-', '_'); also the project's directory
    #[arg(required_unless_present = "list")]
    pub name: Option<String>,
    /// Where to create the project [default: ./NAME]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// List the templates
    #[arg(long)]
    pub list: bool,
}

/// One file of a template: its path in the project and its text, with `{{name}}`,
/// `{{name_snake}}` and `{{sdk}}` to fill in.
type File = (&'static str, &'static str);

/// A template.
pub struct Template {
    /// What `thaw new` calls it.
    pub name: &'static str,
    /// One line for `--list`.
    pub about: &'static str,
    files: &'static [File],
    /// The WASI WIT version the project's `wit/deps` declares, if it needs them.
    wit: Option<&'static str>,
}

macro_rules! files {
    ($dir:literal: $($path:literal),+ $(,)?) => {
        &[$(($path, include_str!(concat!("../../templates/", $dir, "/", $path)))),+]
    };
}

/// Every template, in `--list` order.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "rust",
        about: "Rust with thaw-sdk (needs rustup's wasm32-wasip2 target)",
        files: files!("rust": "Cargo.toml", "src/lib.rs", "thaw.toml", "README.md", "gitignore"),
        wit: None,
    },
    Template {
        name: "js",
        about: "JavaScript deployed as source, a fetch-style handler (nothing to install)",
        files: files!("js": "index.js", "thaw.toml", "README.md", "gitignore"),
        wit: None,
    },
    Template {
        name: "python",
        about: "Python deployed as source, a plain handler function (nothing to install)",
        files: files!("python": "app.py", "thaw.toml", "README.md", "gitignore"),
        wit: None,
    },
    Template {
        name: "js-component",
        about: "JavaScript as a component built with componentize-js, for native packages or a build step (needs Node.js and npm)",
        files: files!("js-component": "package.json", "src/index.js", "src/thaw.js", "wit/world.wit", "thaw.toml", "README.md", "gitignore"),
        // componentize-js 0.23's engine exports wasi:http 0.2.10.
        wit: Some("0.2.10"),
    },
    Template {
        name: "python-component",
        about: "Python as a component built with componentize-py, for a build step (needs `pip install componentize-py`)",
        files: files!("python-component": "app.py", "thaw.py", "thaw_http.py", "wit/world.wit", "thaw.toml", "README.md", "gitignore"),
        wit: Some("0.2.12"),
    },
    Template {
        name: "go",
        about: "Go, a net/http handler served over CGI, built for wasip1 (needs Go 1.21 or later)",
        files: files!("go": "main.go", "thaw.go", "go.mod", "thaw.toml", "README.md", "gitignore"),
        wit: None,
    },
];

/// The WASI WIT packages, as wasmtime 48 declares them (version 0.2.12).
const WIT_DEPS: &[File] = files!("wit/deps": "cli.wit", "clocks.wit", "filesystem.wit", "http.wit", "io.wit", "random.wit", "sockets.wit");

/// The configuration and key-value interfaces at the versions thaw (and wasmtime 48) link,
/// and SQL (`spin:sqlite@3.0.0` and the synchronous part of `spin:postgres@4.2.0`, which thaw
/// links and wasmtime serve does not): their own versions, untouched by the WASI 0.2.x
/// rewrite.
const WIT_EXTRA: &[File] =
    files!("wit/deps": "config.wit", "keyvalue.wit", "sqlite.wit", "postgres.wit");

/// Creates the project, or lists the templates.
pub fn execute(args: NewArgs) -> anyhow::Result<()> {
    if args.list {
        for template in TEMPLATES {
            println!("{:<17} {}", template.name, template.about);
        }
        return Ok(());
    }
    let (Some(template), Some(name)) = (args.template.as_deref(), args.name.as_deref()) else {
        anyhow::bail!("usage: thaw new TEMPLATE NAME (thaw new --list shows the templates)");
    };
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    let template = TEMPLATES
        .iter()
        .find(|t| t.name == template)
        .with_context(|| {
            let names: Vec<_> = TEMPLATES.iter().map(|t| t.name).collect();
            format!("no template {template:?}; there are {}", names.join(", "))
        })?;
    create(template, name, &dir)?;
    // A source project has nothing to build: `--build` is for the ones whose manifest has a
    // build command.
    let build = if template
        .files
        .iter()
        .any(|(path, text)| *path == "thaw.toml" && text.contains("\nbuild = "))
    {
        " --build"
    } else {
        ""
    };
    println!(
        "created {} ({}) in {}\n  cd {} && thaw deploy{build} thaw.toml",
        name,
        template.name,
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// Writes `template`'s files for function `name` into `dir`, which must not exist or be
/// empty: nothing is ever overwritten.
pub fn create(template: &Template, name: &str, dir: &Path) -> anyhow::Result<()> {
    thaw_runtime::spec::validate_name(name)?;
    // Cargo's package names must start with a letter; thaw's function names may not.
    if template.name == "rust" && !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        anyhow::bail!("a Rust package name must start with a letter: {name:?}");
    }
    if dir.exists() && dir.read_dir()?.next().is_some() {
        anyhow::bail!("{} exists and is not empty", dir.display());
    }
    // Where this binary's SDK lives: the source tree it was built from.
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    let sdk = sdk.canonicalize().unwrap_or(sdk);
    let fill = |text: &str| {
        text.replace("{{name_snake}}", &name.replace('-', "_"))
            .replace("{{name}}", name)
            .replace("{{sdk}}", &sdk.display().to_string())
    };
    let mut files: Vec<(String, String)> = template
        .files
        .iter()
        .map(|(path, text)| {
            // `gitignore` is stored without its dot so that it does not apply to this repository.
            let path = if *path == "gitignore" {
                ".gitignore"
            } else {
                path
            };
            (path.to_owned(), fill(text))
        })
        .collect();
    if let Some(version) = template.wit {
        for (path, text) in WIT_DEPS {
            // Packages and their `@since` gates both say 0.2.12; an engine built against an
            // earlier 0.2.x needs both lowered (a gate may not name an unreleased version).
            files.push((format!("wit/deps/{path}"), text.replace("0.2.12", version)));
        }
        for (path, text) in WIT_EXTRA {
            files.push((format!("wit/deps/{path}"), (*text).to_owned()));
        }
    }
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_fills_in_its_name_and_never_overwrites() {
        for template in TEMPLATES {
            let tmp = tempfile::tempdir().unwrap();
            let dir = tmp.path().join("fn");
            create(template, "my-fn", &dir).unwrap();
            let manifest = std::fs::read_to_string(dir.join("thaw.toml")).unwrap();
            let parsed = thaw_runtime::manifest::Manifest::parse(&manifest, &dir).unwrap();
            assert_eq!(parsed.functions[0].name, "my-fn", "{}", template.name);
            assert!(dir.join(".gitignore").exists());
            for entry in walk(&dir) {
                let text = std::fs::read_to_string(&entry).unwrap();
                assert!(
                    !text.contains("{{"),
                    "{} left a placeholder",
                    entry.display()
                );
            }
            assert!(create(template, "my-fn", &dir).is_err(), "not overwritten");
        }
        let tmp = tempfile::tempdir().unwrap();
        assert!(create(&TEMPLATES[0], "Bad Name", &tmp.path().join("x")).is_err());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }
}
