//! The admin API's bearer token.
//!
//! Whoever can reach the admin API can run code on the host, so every admin request must carry
//! `Authorization: Bearer <token>`. The token comes from `--admin-token` / `THAW_ADMIN_TOKEN`,
//! or else from `<data-dir>/admin.token`, which the first start creates with 256 random bits
//! and owner-only permissions (0600) and announces once. The CLI finds the same file when it
//! runs beside the server (same user, same data directory), so local use needs no setup.
//! Tokens are compared in constant time.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use subtle::ConstantTimeEq as _;

/// The token file's name in the data directory.
pub const TOKEN_FILE: &str = "admin.token";

/// The admin API's secret.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// The configured token, else the data directory's, else a new one saved there.
    /// Returns the token and, if it was just created, the file it was saved to.
    pub fn load_or_create(
        data_dir: &Path,
        configured: Option<&str>,
    ) -> anyhow::Result<(Self, Option<PathBuf>)> {
        if let Some(token) = configured {
            anyhow::ensure!(
                token.len() >= 16,
                "the admin token must be at least 16 characters"
            );
            return Ok((Self(token.to_owned()), None));
        }
        let path = data_dir.join(TOKEN_FILE);
        if let Some(token) = read_token(&path)? {
            return Ok((Self(token), None));
        }
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| anyhow::anyhow!("drawing a random admin token: {e}"))?;
        let token = hex::encode(bytes);
        std::fs::create_dir_all(data_dir)?;
        // create_new: two hosts starting on one fresh directory cannot both write it.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        file.write_all(token.as_bytes())?;
        file.sync_all()?;
        Ok((Self(token), Some(path)))
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = authorization.and_then(|v| v.strip_prefix(b"Bearer ")) else {
            return false;
        };
        bool::from(presented.ct_eq(self.0.as_bytes()))
    }

    /// The token itself (to print it once, or hand it to a client).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The token in a token file, if the file exists.
pub fn read_token(path: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_owner_only_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (token, created) = AdminToken::load_or_create(dir.path(), None).unwrap();
        let path = created.expect("created on first start");
        let mode = std::fs::metadata(&path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let (again, created) = AdminToken::load_or_create(dir.path(), None).unwrap();
        assert!(created.is_none());
        assert_eq!(again.expose(), token.expose());

        let good = format!("Bearer {}", token.expose());
        assert!(token.accepts(Some(good.as_bytes())));
        assert!(!token.accepts(None));
        assert!(
            !token.accepts(Some(token.expose().as_bytes())),
            "the scheme is required"
        );
        assert!(!token.accepts(Some(b"Bearer wrong")));
        assert!(!token.accepts(Some(format!("{good}x").as_bytes())));
    }

    #[test]
    fn configured_tokens_win_and_must_be_long() {
        let dir = tempfile::tempdir().unwrap();
        let (token, created) =
            AdminToken::load_or_create(dir.path(), Some("0123456789abcdef")).unwrap();
        assert!(created.is_none());
        assert_eq!(token.expose(), "0123456789abcdef");
        assert!(AdminToken::load_or_create(dir.path(), Some("short")).is_err());
    }
}
