//! Secrets in the config file: never written inline, always
//! `{ env = "NAME" }` or `{ file = "path" }`, and read once at start-up
//! into a value whose `Debug` hides it.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// A secret, never written inline: `{ env = "NAME" }` or `{ file = "path" }`
/// (a relative path is read relative to the config file).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl fmt::Debug for Secret {
    // Only where the secret comes from, never its value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("env", &self.env)
            .field("file", &self.file)
            .finish()
    }
}

/// A secret's value, read once at start-up. Its `Debug` hides the value.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

impl Secret {
    /// Reads the secret, trimming the trailing newline editors add.
    pub fn resolve(&self) -> Result<SecretValue, String> {
        let value = match (&self.env, &self.file) {
            (Some(var), None) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
            }
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            _ => return Err("give exactly one of `env` or `file`".into()),
        };
        let value = value.trim_end_matches(['\r', '\n']).to_string();
        if value.trim().is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(SecretValue(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_needs_exactly_one_source() {
        let s = Secret {
            env: None,
            file: None,
        };
        assert!(s.resolve().is_err());
        let s = Secret {
            env: Some("INTAKE_TEST_SURELY_UNSET_VAR".into()),
            file: None,
        };
        assert!(s.resolve().unwrap_err().contains("not set"));
    }
}
