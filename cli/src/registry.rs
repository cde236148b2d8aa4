//! Components in OCI registries: `thaw push` publishes one, `thaw deploy oci://…` pulls one.
//!
//! **Format.** The artifact is the one the CNCF TAG Runtime's *Wasm OCI Artifact* layout
//! describes and `wkg oci push` (the `oci-wasm` crate) writes: an OCI image manifest
//! (`application/vnd.oci.image.manifest.v1+json`) with one layer of media type
//! `application/wasm` holding the component, and a config of media type
//! `application/vnd.wasm.config.v0+json` naming the architecture (`wasm`), the OS (`wasip2` for
//! a component, `wasip1` for a module), the layer's digest and the component's imports and
//! exports. So a component `wkg` publishes deploys on thaw, and one thaw publishes pulls with
//! `wkg oci pull`. A single-layer artifact whose layer is Spin's
//! `application/vnd.wasm.content.layer.v1+wasm` is accepted too. A Spin application's artifact
//! (`spin registry push`: its locked manifest as the config) is refused, pointing at its
//! spin.toml, since its routes, variables and grants would be lost; any other artifact that is
//! not one Wasm layer is refused naming its layers.
//!
//! **Who pulls.** The CLI, not the host: the credentials stay on the deployer's machine (as
//! `docker login` left them, or given as flags), the host needs no route to the registry, and
//! the bytes then take the ordinary deploy path, so a cluster's nodes fetch them from each
//! other as for any upload. The version records where it came from (`origin`,
//! `oci://HOST/REPO@sha256:…`), which `thaw versions` shows.
//!
//! **Integrity.** `oci-client` checks the manifest against the reference's digest when there
//! is one, and every blob against the digest the manifest names, at the end of its stream;
//! a mismatch is an error and nothing is deployed. The layer's declared size is bounded
//! before the pull, and the stream is cut past it, so a registry cannot make the CLI buffer
//! more than a host would accept.
//!
//! **Transport.** HTTPS, except for a registry on a loopback address, which is spoken to in
//! plain HTTP as Docker does (a registry started beside the tests, or a local mirror).

use std::collections::BTreeMap;
use std::io::{BufRead as _, Read as _};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

/// The manifest media type of a Wasm artifact (the OCI image manifest).
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// The config media type of a Wasm artifact.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
/// The layer media type of a Wasm artifact's component.
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";
/// Spin's layer media type for a component, accepted on pull.
pub const SPIN_LAYER_MEDIA_TYPE: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// The config media type of a Spin application (`spin registry push`): its locked manifest,
/// with routes, variables and grants that a component alone would lose.
pub const SPIN_APP_CONFIG_MEDIA_TYPE: &str = "application/vnd.fermyon.spin.application.v1+config";

/// The most a pulled component may weigh: a host's default upload limit, which refuses
/// anything larger anyway.
pub const MAX_COMPONENT_BYTES: u64 = crate::config::DEFAULT_MAX_UPLOAD_MIB << 20;

/// How the CLI authenticates to a registry.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Registry user name; the password is read from stdin (--registry-password-stdin) or
    /// THAW_REGISTRY_PASSWORD [default: the credentials `docker login` stored for the
    /// registry in ~/.docker/config.json or $DOCKER_CONFIG, else anonymous]
    #[arg(long, value_name = "USER")]
    pub registry_user: Option<String>,
    /// With --registry-user: read the password from stdin (its first line)
    #[arg(long, requires = "registry_user")]
    pub registry_password_stdin: bool,
}

/// An `oci://HOST/REPO[:TAG|@sha256:…]` reference.
#[derive(Clone, Debug)]
pub struct OciRef(pub Reference);

impl OciRef {
    /// Parses `oci://…`; `None` if `s` is not an OCI reference at all (a path).
    pub fn parse(s: &str) -> Option<anyhow::Result<Self>> {
        let rest = s.strip_prefix("oci://")?;
        let usage = || {
            format!(
                "{s:?} is not an OCI reference (oci://HOST/REPO:TAG or \
                 oci://HOST/REPO@sha256:DIGEST)"
            )
        };
        // The registry is always named: `oci://team/app` would otherwise mean Docker Hub's
        // `team/app`, which is rarely what a deployer of functions means.
        let host = rest.split('/').next().unwrap_or_default();
        if !rest.contains('/') || !(host.contains(['.', ':']) || host == "localhost") {
            return Some(Err(anyhow::anyhow!(
                "{}: name the registry's host first (oci://registry.example.com/REPO:TAG)",
                usage()
            )));
        }
        Some(rest.parse::<Reference>().map(OciRef).with_context(usage))
    }

    /// The registry's host (and port), as written.
    pub fn registry(&self) -> &str {
        self.0.resolve_registry()
    }

    /// The same repository pinned to a manifest `digest`: `oci://HOST/REPO@sha256:…`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("oci://{}/{}@{digest}", self.registry(), self.0.repository())
    }

    /// A function name for it: the repository's last segment.
    pub fn default_name(&self) -> String {
        let repo = self.0.repository();
        repo.rsplit('/')
            .next()
            .unwrap_or(repo)
            .replace(['.', '_'], "-")
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "oci://{}", self.0.whole())
    }
}

/// A component pulled from a registry.
pub struct Pulled {
    /// The component (or module) bytes, verified against their digest.
    pub wasm: Vec<u8>,
    /// The reference pinned to the manifest's digest: `oci://HOST/REPO@sha256:…`.
    pub pinned: String,
}

/// The `application/vnd.wasm.config.v0+json` config, as `oci-wasm` (wkg) writes it.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct WasmConfig {
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    author: Option<String>,
    architecture: String,
    os: String,
    layer_digests: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    component: Option<ComponentInfo>,
}

/// What a component imports and exports, by interface name.
#[derive(Serialize, Deserialize, Debug)]
struct ComponentInfo {
    exports: Vec<String>,
    imports: Vec<String>,
    target: Option<String>,
}

/// A client for `reference`'s registry, and the credentials to use there.
fn client(reference: &OciRef, args: &RegistryArgs) -> anyhow::Result<(Client, Credentials)> {
    let registry = reference.registry().to_owned();
    let protocol = if is_loopback(&registry) {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        // A stalled registry fails the command rather than hanging it.
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    });
    Ok((client, credentials(&registry, args)?))
}

/// Whether `registry` (`host[:port]`) is a loopback address or `localhost`.
fn is_loopback(registry: &str) -> bool {
    // oci-spec's references have no bracketed IPv6 hosts: `host` or `host:port`.
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Credentials for a registry, and where they came from (for a refusal's message).
struct Credentials {
    auth: RegistryAuth,
    from: String,
}

/// The flags' credentials, else Docker's, else anonymous.
fn credentials(registry: &str, args: &RegistryArgs) -> anyhow::Result<Credentials> {
    if let Some(user) = &args.registry_user {
        let password = if args.registry_password_stdin {
            let mut line = String::new();
            std::io::BufReader::new(std::io::stdin().take(64 << 10))
                .read_line(&mut line)
                .context("reading the registry password from stdin")?;
            let password = line.trim_end_matches(['\r', '\n']).to_owned();
            anyhow::ensure!(
                !password.is_empty(),
                "--registry-password-stdin: stdin gave no password"
            );
            password
        } else {
            std::env::var("THAW_REGISTRY_PASSWORD").context(
                "--registry-user needs a password: --registry-password-stdin or THAW_REGISTRY_PASSWORD",
            )?
        };
        return Ok(Credentials {
            auth: RegistryAuth::Basic(user.clone(), password),
            from: "--registry-user".into(),
        });
    }
    if std::env::var_os("THAW_REGISTRY_PASSWORD").is_some() {
        eprintln!("thaw: warning: THAW_REGISTRY_PASSWORD is used only with --registry-user");
    }
    let anonymous = |from: &str| Credentials {
        auth: RegistryAuth::Anonymous,
        from: from.to_owned(),
    };
    // Docker keys Docker Hub's entry by its old v1 URL.
    let server = match registry {
        "index.docker.io" | "docker.io" => "https://index.docker.io/v1/",
        other => other,
    };
    // Docker's own lookup: $DOCKER_CONFIG/config.json, else ~/.docker/config.json. No file
    // is no credentials, as for `docker pull`.
    let Some(path) = std::env::var_os("DOCKER_CONFIG")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".docker"))
        })
        .map(|dir| dir.join("config.json"))
        .filter(|path| path.is_file())
    else {
        return Ok(anonymous("no credentials"));
    };
    let from = format!("the Docker config {}", path.display());
    let read = std::fs::File::open(&path)
        .map_err(|_| docker_credential::CredentialRetrievalError::ConfigReadError)
        .and_then(|file| {
            docker_credential::get_credential_from_reader(std::io::BufReader::new(file), server)
        });
    match read {
        Ok(docker_credential::DockerCredential::UsernamePassword(user, password)) => {
            Ok(Credentials {
                auth: RegistryAuth::Basic(user, password),
                from,
            })
        }
        Ok(docker_credential::DockerCredential::IdentityToken(_)) => anyhow::bail!(
            "{from} holds an identity token for {registry}, which thaw cannot use; pass \
             --registry-user"
        ),
        // No entry for this registry, or a credential store that has none for it:
        // anonymous, as `docker pull` would be.
        Err(
            docker_credential::CredentialRetrievalError::NoCredentialConfigured
            | docker_credential::CredentialRetrievalError::HelperFailure { .. },
        ) => Ok(anonymous("no credentials")),
        // A config that is there but unusable: said, so that a refusal is not a mystery.
        Err(e) => {
            eprintln!(
                "thaw: warning: {from} could not be read for {registry} ({e}); trying without \
                 credentials"
            );
            Ok(anonymous("no credentials"))
        }
    }
}

/// `error` in words a deployer can act on: refused credentials and missing references
/// named as such, the rest as the client gave it.
fn explain(error: OciDistributionError, reference: &OciRef, creds: &Credentials) -> anyhow::Error {
    let status = match &error {
        OciDistributionError::RequestError(e) => e.status().map(|s| s.as_u16()),
        OciDistributionError::ServerError { code, .. } => Some(*code),
        _ => None,
    };
    let refused = matches!(status, Some(401 | 403))
        || match &error {
            OciDistributionError::AuthenticationFailure(_)
            | OciDistributionError::UnauthorizedError { .. } => true,
            OciDistributionError::RegistryError { envelope, .. } => envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied)),
            _ => false,
        };
    // (Not `ImageManifestNotFoundError`: oci-client raises it for an image index with no
    // entry for its platform, which is no missing reference.)
    let missing = status == Some(404)
        || match &error {
            OciDistributionError::RegistryError { envelope, .. } => {
                envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                })
            }
            _ => false,
        };
    let registry = reference.registry();
    if refused {
        let context = match &creds.auth {
            RegistryAuth::Basic(user, _) => format!(
                "the registry {registry} refused the credentials of {user:?} (from {}) for \
                 {reference}",
                creds.from
            ),
            _ => format!(
                "the registry {registry} wants credentials for {reference}: pass \
                 --registry-user, or `docker login {registry}`"
            ),
        };
        return anyhow::anyhow!(error).context(context);
    }
    if missing {
        return anyhow::anyhow!(error).context(format!("{reference} does not exist"));
    }
    if let OciDistributionError::DigestError(e) = &error {
        return digest_mismatch(reference, e);
    }
    anyhow::anyhow!(error).context(format!(
        "talking to the registry {registry} about {reference}"
    ))
}

/// Pulls the component `reference` names and verifies it.
pub async fn pull(reference: &OciRef, args: &RegistryArgs) -> anyhow::Result<Pulled> {
    let (client, creds) = client(reference, args)?;
    let image = &reference.0;
    let (manifest, digest) = client
        .pull_image_manifest(image, &creds.auth)
        .await
        .map_err(|e| explain(e, reference, &creds))?;
    let layer = component_layer(&manifest, reference)?;
    anyhow::ensure!(
        u64::try_from(layer.size).is_ok_and(|size| size <= MAX_COMPONENT_BYTES),
        "{reference}: its component declares {} bytes, over the limit of {MAX_COMPONENT_BYTES}",
        layer.size
    );
    let mut stream = client
        .pull_blob_stream(image, layer)
        .await
        .map_err(|e| explain(e, reference, &creds))?;
    let mut wasm = Vec::with_capacity(layer.size as usize);
    while let Some(chunk) = stream.try_next().await.map_err(|e| {
        // The verifying stream reports a digest mismatch as an I/O error wrapping it.
        let digest_error = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<oci_client::errors::DigestError>());
        match digest_error {
            Some(d) => digest_mismatch(reference, d),
            None => anyhow::anyhow!(e).context(format!("pulling {reference}")),
        }
    })? {
        anyhow::ensure!(
            wasm.len() + chunk.len() <= layer.size as usize,
            "refused {reference}: the registry sent more than the {} bytes its manifest declares",
            layer.size
        );
        wasm.extend_from_slice(&chunk);
    }
    anyhow::ensure!(
        wasm.len() == layer.size as usize,
        "refused {reference}: the registry sent {} bytes, not the {} its manifest declares",
        wasm.len(),
        layer.size
    );
    Ok(Pulled {
        wasm,
        pinned: reference.pinned(&digest),
    })
}

/// A blob or manifest whose bytes do not match their digest: refused, naming both.
fn digest_mismatch(reference: &OciRef, error: &oci_client::errors::DigestError) -> anyhow::Error {
    anyhow::anyhow!("{error}").context(format!(
        "refused {reference}: what the registry sent does not match its digest (a tampered or \
         corrupt blob); nothing was deployed"
    ))
}

/// The one layer of a Wasm artifact, or an error naming what the artifact holds instead.
fn component_layer<'m>(
    manifest: &'m OciImageManifest,
    reference: &OciRef,
) -> anyhow::Result<&'m OciDescriptor> {
    anyhow::ensure!(
        manifest.config.media_type != SPIN_APP_CONFIG_MEDIA_TYPE,
        "{reference} is a Spin application (`spin registry push`), whose routes, variables \
         and grants are in its locked manifest, not in a component: deploy it from its \
         spin.toml with `thaw deploy spin.toml`"
    );
    let wasm_layers: Vec<_> = manifest
        .layers
        .iter()
        .filter(|l| l.media_type == LAYER_MEDIA_TYPE || l.media_type == SPIN_LAYER_MEDIA_TYPE)
        .collect();
    match (wasm_layers.as_slice(), manifest.layers.len()) {
        ([layer], 1) => Ok(layer),
        _ => {
            let kinds: Vec<_> = manifest
                .layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect();
            anyhow::bail!(
                "{reference} is not a single Wasm component (config {}, layers {kinds:?}); thaw \
                 deploys an artifact with one {LAYER_MEDIA_TYPE} layer, as `wkg oci push` and \
                 `thaw push` publish",
                manifest.config.media_type
            )
        }
    }
}

/// Publishes `wasm` (a component or a module) at `reference`, titled `title`; returns the
/// reference pinned to the manifest's digest.
pub async fn push(
    reference: &OciRef,
    args: &RegistryArgs,
    wasm: Vec<u8>,
    title: &str,
) -> anyhow::Result<String> {
    let (client, creds) = client(reference, args)?;
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let layer = ImageLayer::new(wasm, LAYER_MEDIA_TYPE.to_owned(), None);
    let is_component = wasmparser::Parser::is_component(&layer.data);
    let config = WasmConfig {
        created: created.clone(),
        author: None,
        architecture: "wasm".to_owned(),
        os: if is_component { "wasip2" } else { "wasip1" }.to_owned(),
        layer_digests: vec![layer.sha256_digest()],
        component: is_component
            .then(|| interface_names(&layer.data))
            .transpose()?,
    };
    let config = Config::new(
        serde_json::to_vec(&config)?,
        CONFIG_MEDIA_TYPE.to_owned(),
        None,
    );
    let annotations = BTreeMap::from([
        ("org.opencontainers.image.created".to_owned(), created),
        (
            "org.opencontainers.image.title".to_owned(),
            title.to_owned(),
        ),
    ]);
    let layers = [layer];
    let mut manifest = OciImageManifest::build(&layers, &config, Some(annotations));
    manifest.media_type = Some(MANIFEST_MEDIA_TYPE.to_owned());
    // The manifest's bytes are ours, so its digest is known, not asked for afterwards (when
    // another push to the tag may have moved it).
    let body = serde_json::to_vec(&manifest)?;
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body))
    );
    let image = &reference.0;
    let explained = |e| explain(e, reference, &creds);
    client
        .auth(image, &creds.auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(explained)?;
    for (data, blob_digest) in [
        (&layers[0].data[..], layers[0].sha256_digest()),
        (&config.data[..], config.sha256_digest()),
    ] {
        client
            .push_blob(image, data, &blob_digest)
            .await
            .map_err(explained)?;
    }
    client
        .push_manifest_raw(
            image,
            body,
            http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE),
        )
        .await
        .map_err(explained)?;
    Ok(reference.pinned(&digest))
}

/// A component's top-level imports and exports, by name (`wasi:http/incoming-handler@0.2.0`),
/// as `oci-wasm` lists them.
fn interface_names(wasm: &[u8]) -> anyhow::Result<ComponentInfo> {
    let mut info = ComponentInfo {
        exports: Vec::new(),
        imports: Vec::new(),
        target: None,
    };
    let mut depth = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.context("the component does not parse")? {
            wasmparser::Payload::ModuleSection { .. }
            | wasmparser::Payload::ComponentSection { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth = depth.saturating_sub(1),
            wasmparser::Payload::ComponentImportSection(imports) if depth == 0 => {
                for import in imports {
                    info.imports.push(import?.name.name.to_owned());
                }
            }
            wasmparser::Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports {
                    info.exports.push(export?.name.name.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(info)
}
