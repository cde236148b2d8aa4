use super::*;

fn read(text: &str) -> anyhow::Result<SpinApp> {
    translate(text, Path::new("."))
}

#[test]
fn the_test_apps_manifest_becomes_one_function_with_every_setting() {
    let text = include_str!("../../../../functions/spin-app/spin.toml");
    assert!(is_spin_manifest(text));
    let app = read(text).unwrap();
    assert_eq!(app.notes, Vec::<String>::new());
    let [f] = &app.functions[..] else {
        panic!("{:?}", app.functions)
    };
    assert_eq!(f.name, "spin-app");
    assert_eq!(f.spec.route.as_deref(), Some("/spin-app"));
    assert_eq!(
        f.wasm,
        Path::new("../../target/guests/wasm32-wasip2/release/spin_app.wasm")
    );
    assert_eq!(
        f.spec.allowed_outbound_hosts,
        [
            "http://127.0.0.1:*",
            "postgres://127.0.0.1:*",
            "redis://127.0.0.1:*"
        ]
    );
    assert_eq!(f.spec.env.get("MODE").map(String::as_str), Some("test"));
    assert!(
        f.spec.sqlite_databases.is_empty(),
        "default is always there"
    );
    assert_eq!(
        f.spec.config.get("greeting"),
        Some(&ConfigValue::Value("hello from spin.toml".into()))
    );
    assert_eq!(
        f.spec.config.get("token"),
        Some(&ConfigValue::Secret {
            secret: "env:API_TOKEN".parse().unwrap()
        })
    );
    assert_eq!(
        f.spec.config.get("redis_url"),
        Some(&ConfigValue::Secret {
            secret: "env:REDIS_URL".parse().unwrap()
        })
    );
    f.spec.validate(&f.name, u64::MAX).unwrap();
}

const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "shop"
[application.trigger.http]
base = "/shop"
[variables]
host = { default = "db.local" }
[[trigger.http]]
route = "/..."
component = "front"
[[trigger.http]]
route = "/api/orders"
component = "orders"
executor = { type = "spin" }
[component.front]
source = "front.wasm"
allowed_http_hosts = ["example.com"]
ai_models = ["llama2-chat"]
[component.front.variables]
url = "postgres://{{ host }}:5432/shop"
[component.orders]
source = "orders.wasm"
sqlite_databases = ["default", "orders"]
key_value_stores = ["cache"]
build = { command = "cargo build", workdir = "orders" }
[component.cron]
source = "cron.wasm"
"#;

#[test]
fn routes_join_the_base_and_unsupported_keys_are_listed() {
    let app = read(APP).unwrap();
    let routes: Vec<_> = app
        .functions
        .iter()
        .map(|f| (f.name.as_str(), f.spec.route.as_deref().unwrap()))
        .collect();
    assert_eq!(routes, [("front", "/shop"), ("orders", "/shop/api/orders")]);
    let front = &app.functions[0];
    assert_eq!(
        front.spec.allowed_outbound_hosts,
        ["http://example.com", "https://example.com"]
    );
    assert_eq!(
        front.spec.config.get("url"),
        Some(&ConfigValue::Value("postgres://db.local:5432/shop".into()))
    );
    let orders = &app.functions[1];
    assert_eq!(orders.spec.sqlite_databases, ["orders"]);
    assert_eq!(orders.build.as_deref(), Some("cd 'orders' && cargo build"));
    for note in [
        "route \"/api/orders\" is exact on Spin",
        "component \"front\": `ai_models` is not supported",
        "component \"orders\": key_value_stores are the function's own buckets",
        "component \"cron\" has no HTTP trigger",
    ] {
        assert!(
            app.notes.iter().any(|n| n.contains(note)),
            "{note:?} not in {:?}",
            app.notes
        );
    }
}

#[test]
fn what_thaw_cannot_honour_is_an_error_naming_it() {
    for (change, error) in [
        (
            ("route = \"/api/orders\"", "route = \"/api/:id\""),
            "`:param` segments",
        ),
        (
            (
                "source = \"orders.wasm\"",
                "source = { url = \"https://x/o.wasm\", digest = \"sha256:00\" }",
            ),
            "from a URL or a registry",
        ),
        (
            (
                "[component.cron]",
                "[[trigger.redis]]\nchannel = \"c\"\ncomponent = \"cron\"\n[component.cron]",
            ),
            "HTTP only",
        ),
        (
            ("component = \"orders\"", "component = \"front\""),
            "two HTTP routes",
        ),
        (
            (
                "url = \"postgres://{{ host }}:5432/shop\"",
                "url = \"{{ nope }}\"",
            ),
            "no application variable \"nope\"",
        ),
        (
            ("spin_manifest_version = 2", "spin_manifest_version = 1"),
            "version 2",
        ),
        (
            (
                "executor = { type = \"spin\" }",
                "executor = { type = \"wagi\" }",
            ),
            "a WAGI module",
        ),
        (
            ("route = \"/...\"", "route = { private = true }"),
            "would make it public",
        ),
    ] {
        let text = APP.replace(change.0, change.1);
        assert_ne!(text, APP, "{change:?} changed nothing");
        let e = format!("{:#}", read(&text).unwrap_err());
        assert!(e.contains(error), "{change:?}: {e}");
    }
    let secret_in_text = APP.replace(
        "host = { default = \"db.local\" }",
        "host = { required = true, secret = true }",
    );
    let e = format!("{:#}", read(&secret_in_text).unwrap_err());
    assert!(e.contains("can only be used alone"), "{e}");
}

#[test]
fn files_are_granted_only_from_the_manifests_own_directory() {
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app");
    std::fs::create_dir_all(app.join("static")).unwrap();
    let manifest = |source: &str| {
        APP.replace(
            "source = \"front.wasm\"",
            &format!("source = \"front.wasm\"\nfiles = [{{ source = \"{source}\", destination = \"/\" }}]"),
        )
    };
    let app_dir = translate(&manifest("static"), &app).unwrap();
    assert_eq!(
        app_dir.functions[0].spec.dirs[0].host,
        app.join("static").canonicalize().unwrap()
    );
    for outside in ["..", "/", "static/../.."] {
        let e = format!("{:#}", translate(&manifest(outside), &app).unwrap_err());
        assert!(
            e.contains("outside the manifest's directory"),
            "{outside}: {e}"
        );
    }
}
