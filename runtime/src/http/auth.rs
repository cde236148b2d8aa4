//! The admin API's bearer token.
//!
//! Whoever can reach the admin API can run code on the host, so every admin request must carry
//! `Authorization: Bearer <token>`. The token comes from `--admin-token` / `THAW_ADMIN_TOKEN`,
//! or else from `<data-dir>/admin.token`, which the first start creates with 256 random bits
//! and owner-only permissions (0600) and announces once. The CLI finds the same file when it
//! runs beside the server (same user, same data directory), so local use needs no setup.
//! Tokens are compared in constant time.
//!
//! The file is written whole or not at all (a temp file, fsync, then a hard link to the final
//! name, which fails rather than replace a token another start wrote), and a token shorter
//! than [`MIN_TOKEN_LEN`], from the file or the flag, stops the start-up: an empty file left
//! by a full disk must not become a token that locks everyone out, or one anybody can guess.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use subtle::ConstantTimeEq as _;

/// The token file's name in the data directory.
pub const TOKEN_FILE: &str = "admin.token";

/// Shortest token accepted (the generated ones are 64 hex characters).
pub const MIN_TOKEN_LEN: usize = 16;

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
                token.len() >= MIN_TOKEN_LEN,
                "the admin token must be at least {MIN_TOKEN_LEN} characters"
            );
            return Ok((Self(token.to_owned()), None));
        }
        let path = data_dir.join(TOKEN_FILE);
        if let Some(token) = read_token(&path)? {
            anyhow::ensure!(
                token.len() >= MIN_TOKEN_LEN,
                "the admin token file {} holds {} characters, fewer than {MIN_TOKEN_LEN}: it is \
                 damaged (a first start that could not finish writing it?). Delete it to have a \
                 new token generated, or set --admin-token / THAW_ADMIN_TOKEN",
                path.display(),
                token.len()
            );
            return Ok((Self(token), None));
        }
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| anyhow::anyhow!("drawing a random admin token: {e}"))?;
        let token = hex::encode(bytes);
        crate::datadir::create_private_dir(data_dir)?;
        let tmp = data_dir.join(format!("{TOKEN_FILE}.{}.tmp", std::process::id()));
        // A leftover of this pid's earlier crash (pids are reused) would block create_new.
        let _ = std::fs::remove_file(&tmp);
        let written = (|| -> anyhow::Result<()> {
            // create_new: never an existing file (its mode) or a symlink planted there.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(token.as_bytes())?;
            file.sync_all()?;
            // A link, not a rename: it fails if a token appeared meanwhile, never replacing it.
            std::fs::hard_link(&tmp, &path)?;
            std::fs::File::open(data_dir)?.sync_all()?;
            Ok(())
        })();
        let _ = std::fs::remove_file(&tmp);
        written.with_context(|| format!("creating {}", path.display()))?;
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
    fn an_empty_or_short_token_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKEN_FILE);
        for content in ["", "\n", "short"] {
            std::fs::write(&path, content).unwrap();
            let error = AdminToken::load_or_create(dir.path(), None).unwrap_err();
            assert!(error.to_string().contains("Delete it"), "{error}");
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                content,
                "left as it was"
            );
        }
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
