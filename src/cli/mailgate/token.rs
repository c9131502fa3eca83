//! Step 2 of a run: the bearer token, from `--token-file` or the
//! environment, never from the command line (where `ps` and shell history
//! would show it). It stays wrapped so that no log line, error or panic
//! message can print it.

use std::fmt;
use std::path::PathBuf;

use http::HeaderValue;

use super::args::TOKEN_ENV;
use super::error::MailgateError;

/// The `Authorization: Bearer ...` value, checked and marked sensitive
/// (hyper then never logs it nor puts it in an HTTP/2 header table). Its
/// `Debug` hides the value too, so no log line or panic message carries it.
pub(super) struct Token(pub(super) HeaderValue);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// The token from `--token-file`, else from [`TOKEN_ENV`]. A file given
/// on the command line wins over the environment, as a flag beats an
/// inherited default.
pub(super) fn load_token(token_file: Option<&PathBuf>) -> Result<Token, MailgateError> {
    let (raw, origin) = match token_file {
        Some(path) => {
            let raw = std::fs::read_to_string(path).map_err(|source| MailgateError::TokenFile {
                path: path.clone(),
                source,
            })?;
            (raw, path.display().to_string())
        }
        None => match std::env::var(TOKEN_ENV) {
            Ok(raw) => (raw, TOKEN_ENV.to_owned()),
            Err(std::env::VarError::NotPresent) => return Err(MailgateError::NoToken),
            Err(std::env::VarError::NotUnicode(_)) => return Err(MailgateError::BadToken),
        },
    };
    // Editors and `echo` leave a final newline; it is not part of the token.
    let token = raw.trim_end();
    if token.is_empty() {
        return Err(MailgateError::EmptyToken { origin });
    }
    // The error of from_str says nothing of the value, so it cannot leak it.
    let mut bearer =
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| MailgateError::BadToken)?;
    bearer.set_sensitive(true);
    Ok(Token(bearer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_debug_output_hides_the_secret() {
        let token = Token(HeaderValue::from_static("Bearer s3cret"));
        assert!(
            !format!("{token:?}").contains("s3cret"),
            "Debug printed the token"
        );
    }
}
