//! Secrets the subcommands need, so that none has to appear on a command line (where `ps` and
//! shell history show it): every secret flag also reads an environment variable (clap's `env`,
//! named like the node's config key) and a `--…-file`. A file wins over the variable; a trailing
//! newline in the file is not part of the secret.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The environment variable of the node's shared gRPC token, still read by the token flags
/// when their role's own variable is unset (single-node setups of earlier versions).
const SHARED_TOKEN_ENV: &str = "WSGW_SERVER__GRPC__TOKEN";

/// The secret from `file` when given, else `value` (flag or environment), else empty.
pub fn read(value: Option<&str>, file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the secret file {}", path.display()))?;
        let secret = text.strip_suffix('\n').unwrap_or(&text);
        return Ok(secret.strip_suffix('\r').unwrap_or(secret).to_owned());
    }
    Ok(value.unwrap_or_default().to_owned())
}

/// A gRPC token: `read`, falling back to the node's shared token variable.
pub fn token(value: Option<&str>, file: Option<&PathBuf>) -> anyhow::Result<String> {
    let token = read(value, file.map(PathBuf::as_path))?;
    if token.is_empty() && file.is_none() {
        return Ok(std::env::var(SHARED_TOKEN_ENV).unwrap_or_default());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_wins_and_loses_its_trailing_newline_only() {
        let dir = std::env::temp_dir().join(format!("wsgw-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cret \r\n").expect("write");
        assert_eq!(read(Some("flag"), Some(&dir)).expect("read"), "s3cret ");
        assert_eq!(read(Some("flag"), None).expect("flag"), "flag");
        assert_eq!(read(None, None).expect("none"), "");
        let missing = dir.with_extension("missing");
        let err = read(None, Some(&missing)).expect_err("no file");
        assert!(err.to_string().contains("secret file"), "{err}");
        let _ = std::fs::remove_file(dir);
    }
}
