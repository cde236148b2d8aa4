//! Spin application manifests (`spin.toml`, `spin_manifest_version = 2`) read as thaw
//! functions: `thaw deploy spin.toml` deploys each HTTP component with the thaw equivalent of
//! each setting, and `thaw build spin.toml` runs their build commands.
//!
//! | Spin | thaw |
//! |---|---|
//! | `[[trigger.http]] route = "/api/..."` | `route = "/api"` (thaw routes are prefixes: an exact Spin route also serves the paths below it) |
//! | `[application.trigger.http] base` | joined in front of each route |
//! | `[component.x] source = "x.wasm"` | `wasm`, relative to the manifest |
//! | `build = { command, workdir }` | `build` (`thaw build`) |
//! | `environment` | `env` |
//! | `allowed_outbound_hosts` (and v1's `allowed_http_hosts`) | `allowed_outbound_hosts` |
//! | `sqlite_databases` | `sqlite_databases` (`default` is always there) |
//! | `key_value_stores` | accepted: every label is one of the function's own buckets |
//! | `files = [{ source, destination }]` | `dirs`, read-only |
//! | `[variables]` + component `variables` | `config`: a default becomes a value; a required variable with no default a secret `env:NAME` (the host's `THAW_SECRET_NAME`) |
//!
//! Everything else is listed in [`SpinApp::notes`], never dropped silently: keys thaw does
//! not support, and settings it reads differently. What cannot be honoured at all (a
//! component from a URL or a registry, a route with `:param` segments, a non-HTTP trigger, a
//! file glob) is an error naming it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use toml::{Table, Value};

use crate::config::{ConfigValue, SecretRef};
use crate::spec::DirGrant;
use crate::spec::FunctionSpec;

/// Whether manifest text is a Spin manifest.
pub fn is_spin_manifest(text: &str) -> bool {
    text.parse::<Table>()
        .is_ok_and(|t| t.contains_key("spin_manifest_version"))
}

/// A Spin manifest read as thaw functions.
#[derive(Clone, Debug)]
pub struct SpinApp {
    /// One function per HTTP component, in trigger order.
    pub functions: Vec<SpinComponent>,
    /// What thaw did not take over as it is, one line each.
    pub notes: Vec<String>,
}

/// One HTTP component as a thaw function (`crate::manifest` makes it a manifest entry).
#[derive(Clone, Debug)]
pub struct SpinComponent {
    /// The component's id: the function's name.
    pub name: String,
    /// Its wasm, relative to the manifest.
    pub wasm: PathBuf,
    /// Its build command, run in the manifest's directory.
    pub build: Option<String>,
    /// Its deploy spec.
    pub spec: FunctionSpec,
}

/// An application variable.
struct Variable {
    default: Option<String>,
    secret: bool,
}

/// Reads a Spin manifest's text (`base`: the directory its paths are relative to, only for
/// `files`; `source` and `build.workdir` stay relative, as a thaw manifest's).
pub fn translate(text: &str, base: &Path) -> anyhow::Result<SpinApp> {
    let file: Table = text.parse().context("parsing the Spin manifest")?;
    let mut notes = Vec::new();
    match file.get("spin_manifest_version") {
        Some(Value::Integer(2)) => {}
        Some(other) => bail!(
            "spin_manifest_version {other} is not supported: thaw reads version 2 (`spin doctor` upgrades a manifest)"
        ),
        None => bail!("not a Spin manifest: no spin_manifest_version"),
    }
    for key in file.keys() {
        if ![
            "spin_manifest_version",
            "application",
            "variables",
            "trigger",
            "component",
        ]
        .contains(&key.as_str())
        {
            notes.push(format!("`{key}` is not supported and was ignored"));
        }
    }
    let application = table(&file, "application")?;
    let base_route = application_base(&application, &mut notes)?;
    let variables = variables(&file)?;
    let components = table(&file, "component")?;
    let triggers = file
        .get("trigger")
        .and_then(Value::as_table)
        .cloned()
        .unwrap_or_default();
    if let Some(kind) = triggers.keys().find(|k| *k != "http") {
        bail!("`[[trigger.{kind}]]`: thaw starts Spin components by HTTP only");
    }
    let http = triggers
        .get("http")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut functions = Vec::new();
    for trigger in &http {
        let trigger = trigger
            .as_table()
            .context("a `[[trigger.http]]` entry is not a table")?;
        for key in trigger.keys() {
            if !["route", "component", "id", "executor"].contains(&key.as_str()) {
                notes.push(format!(
                    "trigger.http `{key}` is not supported and was ignored"
                ));
            }
        }
        if let Some(executor) = trigger.get("executor") {
            let kind = executor.get("type").and_then(Value::as_str).unwrap_or("");
            anyhow::ensure!(
                kind == "spin",
                "executor {kind:?}: thaw runs `wasi:http` components (Spin's default executor); a WAGI module is a thaw CGI function, deployed with its own spec"
            );
        }
        let id = match trigger.get("component") {
            Some(Value::String(id)) => id.clone(),
            Some(_) => bail!(
                "an inline `component` in `[[trigger.http]]` is not supported: name a `[component.NAME]`"
            ),
            None => bail!("a `[[trigger.http]]` has no `component`"),
        };
        let route = match trigger.get("route") {
            Some(Value::String(route)) => {
                if !route.ends_with("...") && route != "/" {
                    notes.push(format!(
                        "route {route:?} is exact on Spin; on thaw it is a prefix and also serves the paths below it"
                    ));
                }
                route_prefix(&base_route, route)?
            }
            Some(Value::Table(_)) => bail!(
                "component {id:?}: a private route (reachable only by service chaining) has no equivalent on thaw, which would make it public"
            ),
            _ => bail!("the `[[trigger.http]]` of {id:?} has no usable `route`"),
        };
        if functions.iter().any(|f: &SpinComponent| f.name == id) {
            bail!("component {id:?} has two HTTP routes: thaw serves a function on one route");
        }
        let component = components
            .get(&id)
            .and_then(Value::as_table)
            .with_context(|| format!("no `[component.{id}]` for the route {route:?}"))?;
        functions.push(function(
            &id, route, component, &variables, base, &mut notes,
        )?);
    }
    for id in components.keys() {
        if !functions.iter().any(|f| &f.name == id) {
            notes.push(format!(
                "component {id:?} has no HTTP trigger and was not deployed"
            ));
        }
    }
    anyhow::ensure!(
        !functions.is_empty(),
        "the Spin manifest has no HTTP component"
    );
    Ok(SpinApp { functions, notes })
}

fn table(file: &Table, key: &str) -> anyhow::Result<Table> {
    match file.get(key) {
        Some(Value::Table(t)) => Ok(t.clone()),
        Some(_) => bail!("`{key}` is not a table"),
        None => Ok(Table::new()),
    }
}

fn application_base(application: &Table, notes: &mut Vec<String>) -> anyhow::Result<String> {
    for key in application.keys() {
        if !["name", "version", "description", "authors", "trigger"].contains(&key.as_str()) {
            notes.push(format!(
                "application `{key}` is not supported and was ignored"
            ));
        }
    }
    let base = application
        .get("trigger")
        .and_then(|t| t.get("http"))
        .and_then(|h| h.get("base"))
        .and_then(Value::as_str)
        .unwrap_or("/");
    // Spin's base is a path; without its '/' it would read as one of thaw's host routes.
    anyhow::ensure!(
        base.starts_with('/'),
        "[application.trigger.http] base {base:?} must start with '/'"
    );
    Ok(base.trim_end_matches('/').to_owned())
}

fn variables(file: &Table) -> anyhow::Result<BTreeMap<String, Variable>> {
    let mut out = BTreeMap::new();
    for (name, v) in table(file, "variables")? {
        let v = v
            .as_table()
            .with_context(|| format!("variable {name:?} is not a table"))?;
        let default = v.get("default").and_then(Value::as_str).map(str::to_owned);
        let required = v.get("required").and_then(Value::as_bool).unwrap_or(false);
        anyhow::ensure!(
            default.is_some() != required,
            "variable {name:?} needs either `default` or `required = true`"
        );
        let secret = v.get("secret").and_then(Value::as_bool).unwrap_or(false);
        out.insert(name, Variable { default, secret });
    }
    Ok(out)
}

/// A Spin route (`/api/...`, `/exact`) under `base`, as a thaw route prefix.
fn route_prefix(base: &str, route: &str) -> anyhow::Result<String> {
    let path = route
        .strip_suffix("/...")
        .or_else(|| route.strip_suffix("..."));
    let path = path.unwrap_or(route);
    if path.split('/').any(|s| s.starts_with(':')) {
        bail!("route {route:?}: `:param` segments are not supported (thaw routes are prefixes)");
    }
    let joined = format!("{base}/{}", path.trim_matches('/'));
    let joined = joined.trim_end_matches('/');
    Ok(if joined.is_empty() {
        "/".into()
    } else {
        joined.to_owned()
    })
}

fn strings(component: &Table, key: &str, id: &str) -> anyhow::Result<Vec<String>> {
    match component.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .with_context(|| format!("component {id:?}: `{key}` holds a non-string"))
            })
            .collect(),
        Some(_) => bail!("component {id:?}: `{key}` is not a list"),
    }
}

fn function(
    id: &str,
    route: String,
    component: &Table,
    variables: &BTreeMap<String, Variable>,
    base: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<SpinComponent> {
    const TAKEN: &[&str] = &[
        "source",
        "description",
        "build",
        "environment",
        "allowed_outbound_hosts",
        "allowed_http_hosts",
        "sqlite_databases",
        "key_value_stores",
        "files",
        "variables",
    ];
    for key in component.keys() {
        if !TAKEN.contains(&key.as_str()) {
            notes.push(format!(
                "component {id:?}: `{key}` is not supported and was ignored"
            ));
        }
    }
    let wasm = match component.get("source") {
        Some(Value::String(path)) => PathBuf::from(path),
        Some(Value::Table(_)) => bail!(
            "component {id:?}: a `source` from a URL or a registry is not supported; build or download the .wasm and name its path"
        ),
        _ => bail!("component {id:?} has no `source`"),
    };
    let build = match component.get("build") {
        None => None,
        Some(build) => {
            let command = build
                .get("command")
                .and_then(Value::as_str)
                .with_context(|| format!("component {id:?}: `build` has no `command`"))?;
            Some(match build.get("workdir").and_then(Value::as_str) {
                Some(dir) => format!("cd '{}' && {command}", dir.replace('\'', "'\\''")),
                None => command.to_owned(),
            })
        }
    };
    let env = match component.get("environment") {
        None => BTreeMap::new(),
        Some(Value::Table(t)) => t
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|v| (k.clone(), v.to_owned()))
                    .with_context(|| format!("component {id:?}: environment {k:?} is not a string"))
            })
            .collect::<anyhow::Result<_>>()?,
        Some(_) => bail!("component {id:?}: `environment` is not a table"),
    };
    let mut allowed = Vec::new();
    for host in strings(component, "allowed_outbound_hosts", id)? {
        if host == "self" || host.contains("://self") {
            notes.push(format!(
                "component {id:?}: {host:?} (the app's own routes) has no equivalent on thaw and was left out"
            ));
        } else {
            allowed.push(host);
        }
    }
    // Spin 1's list: a host allows both schemes; `insecure:allow-all` every host.
    for host in strings(component, "allowed_http_hosts", id)? {
        match host.as_str() {
            "insecure:allow-all" => allowed.extend(["http://*:*".into(), "https://*:*".into()]),
            "self" => notes.push(format!(
                "component {id:?}: allowed_http_hosts \"self\" has no equivalent on thaw and was left out"
            )),
            _ if host.contains("://") => allowed.push(host),
            _ => allowed.extend([format!("http://{host}"), format!("https://{host}")]),
        }
    }
    let sqlite_databases = strings(component, "sqlite_databases", id)?
        .into_iter()
        .filter(|name| name != "default")
        .collect();
    let stores = strings(component, "key_value_stores", id)?;
    if stores.iter().any(|s| s != "default") {
        notes.push(format!(
            "component {id:?}: key_value_stores are the function's own buckets on thaw; any label opens one"
        ));
    }
    let dirs = files(component, id, base)?;
    let config = component_variables(component, id, variables, notes)?;
    Ok(SpinComponent {
        name: id.to_owned(),
        wasm,
        build,
        spec: FunctionSpec {
            route: Some(route),
            env,
            allowed_outbound_hosts: allowed,
            dirs,
            sqlite_databases,
            config,
            ..Default::default()
        },
    })
}

fn files(component: &Table, id: &str, base: &Path) -> anyhow::Result<Vec<DirGrant>> {
    let Some(files) = component.get("files") else {
        return Ok(Vec::new());
    };
    let files = files
        .as_array()
        .with_context(|| format!("component {id:?}: `files` is not a list"))?;
    files
        .iter()
        .map(|entry| match entry {
            Value::Table(t) => {
                let source = t.get("source").and_then(Value::as_str);
                let destination = t.get("destination").and_then(Value::as_str);
                let (Some(source), Some(destination)) = (source, destination) else {
                    bail!("component {id:?}: a `files` entry needs `source` and `destination`");
                };
                let host = base.join(source);
                anyhow::ensure!(
                    host.is_dir(),
                    "component {id:?}: files source {} is not a directory (thaw grants directories)",
                    host.display()
                );
                // A manifest gives its app files beside it, never the host's other files.
                let host = std::fs::canonicalize(&host)?;
                anyhow::ensure!(
                    host.starts_with(std::fs::canonicalize(base)?),
                    "component {id:?}: files source {source:?} is outside the manifest's directory"
                );
                Ok(DirGrant {
                    host,
                    guest: destination.to_owned(),
                    writable: false,
                })
            }
            Value::String(pattern) => bail!(
                "component {id:?}: files pattern {pattern:?}: thaw grants directories; write {{ source = \"DIR\", destination = \"/\" }}"
            ),
            _ => bail!("component {id:?}: a `files` entry is neither a pattern nor a table"),
        })
        .collect()
}

/// A component's `variables` table as configuration: each value's `{{ name }}` templates
/// filled from the application's variables.
fn component_variables(
    component: &Table,
    id: &str,
    variables: &BTreeMap<String, Variable>,
    notes: &mut Vec<String>,
) -> anyhow::Result<BTreeMap<String, ConfigValue>> {
    for (name, variable) in variables {
        if variable.secret && variable.default.is_some() {
            notes.push(format!(
                "variable {name:?} is a secret with a default: thaw reads it from the host's THAW_SECRET_{} and the default is not used",
                name.to_uppercase()
            ));
        }
    }
    let mut config = BTreeMap::new();
    let Some(table) = component.get("variables") else {
        return Ok(config);
    };
    let table = table
        .as_table()
        .with_context(|| format!("component {id:?}: `variables` is not a table"))?;
    for (key, template) in table {
        let template = template
            .as_str()
            .with_context(|| format!("component {id:?}: variable {key:?} is not a string"))?;
        config.insert(
            key.clone(),
            fill(template, variables)
                .with_context(|| format!("component {id:?}: variable {key:?} = {template:?}"))?,
        );
    }
    Ok(config)
}

/// A template: literal text and `{{ name }}` references. One reference alone to a required
/// variable becomes a secret; everything else must resolve to text from defaults.
fn fill(template: &str, variables: &BTreeMap<String, Variable>) -> anyhow::Result<ConfigValue> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").context("an unclosed `{{`")?;
        let name = rest[start + 2..start + end].trim();
        let variable = variables
            .get(name)
            .with_context(|| format!("no application variable {name:?}"))?;
        match &variable.default {
            Some(default) if !variable.secret => out.push_str(default),
            _ if template.trim() == &rest[start..start + end + 2] && out.is_empty() => {
                let secret: SecretRef = format!("env:{}", name.to_uppercase())
                    .parse()
                    .map_err(anyhow::Error::msg)?;
                return Ok(ConfigValue::Secret { secret });
            }
            _ => bail!(
                "{name:?} is a secret or has no default: it can only be used alone (`{{{{ {name} }}}}`), as a thaw secret"
            ),
        }
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(ConfigValue::Value(out))
}

#[cfg(test)]
mod tests;
