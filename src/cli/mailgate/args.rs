//! The command line of `intake mailgate` and the checked types its values
//! parse into. A value that cannot work (a `--url` that is not http(s), a
//! zero `--timeout`) is refused here, as a usage error (exit 64), before
//! anything is read: it would not start working on a retry.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

use super::client::ClientHeaders;
use crate::units::ByteSize;

/// The environment variable that carries the token when `--token-file` is
/// not given. Read by hand rather than through clap: a clap `env` needs a
/// flag, and a `--token` flag would put the secret in `ps` output and shell
/// history.
pub const TOKEN_ENV: &str = "INTAKE_MAILGATE_TOKEN";

/// The gateway's endpoint for raw messages, appended to a base `--url`.
const MESSAGES_PATH: &str = "/v1/messages";

/// `intake mailgate`: hand one message on stdin to a running gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct MailgateArgs {
    /// The gateway: a base URL such as `http://127.0.0.1:8080` (then
    /// `/v1/messages` is appended), or the full `.../v1/messages` endpoint.
    /// Only http and https; no user:password part (the token is the
    /// credential).
    #[arg(long, value_name = "URL", value_parser = GatewayUrl::parse)]
    pub url: GatewayUrl,

    /// File holding the bearer token (trailing whitespace and newline are
    /// trimmed; an empty file is refused). Without it, the token comes from
    /// the environment variable INTAKE_MAILGATE_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// SMTP envelope sender (Postfix `--sender=${sender}`); may be empty for
    /// a bounce. Sent as `X-Intake-Envelope-Sender`.
    #[arg(long, value_name = "ADDR", value_parser = envelope_address)]
    pub sender: Option<HeaderValue>,

    /// Take the envelope sender from this environment variable instead
    /// (Exim's pipe sets `SENDER`, empty for a bounce, and refuses the
    /// sender on its command line as tainted). Unset, or holding control
    /// characters: no sender is sent.
    #[arg(long, value_name = "NAME", conflicts_with = "sender")]
    pub sender_env: Option<String>,

    /// SMTP envelope recipient (Postfix `--recipient=${recipient}`);
    /// repeatable, and one flag may take several. Each is sent as its own
    /// `X-Intake-Envelope-Recipient` header.
    #[arg(long, value_name = "ADDR", num_args = 1.., value_parser = envelope_address)]
    pub recipient: Vec<HeaderValue>,

    /// The IP address of the SMTP client the mail server took the mail
    /// from (Postfix `--client-address=${client_address}`), which SPF
    /// checks; sent as `X-Intake-Client-Address`. Empty or `unknown` (no
    /// client: local submission) is no client; anything else that is no IP
    /// address is left out with a warning, never an error.
    #[arg(long, value_name = "ADDR", value_parser = clap::value_parser!(OsString))]
    pub client_address: Option<OsString>,

    /// The name that SMTP client gave in HELO / EHLO (Postfix
    /// `--helo=${client_helo}`); sent as `X-Intake-Client-Helo`. Empty or
    /// `unknown` is none; a name over 255 bytes, not UTF-8 or with control
    /// characters is left out with a warning.
    #[arg(long, value_name = "NAME", value_parser = clap::value_parser!(OsString))]
    pub helo: Option<OsString>,

    /// More envelope recipients as trailing arguments, after `--` (Exim's
    /// `$pipe_addresses`, which Exim expands to one argument per address);
    /// sent after the `--recipient` ones.
    #[arg(value_name = "RECIPIENT", value_parser = envelope_address)]
    pub recipients: Vec<HeaderValue>,

    /// Deadline for the whole exchange with the gateway (name lookup,
    /// connect, TLS, upload, answer), e.g. `30s` or `2m`. Past it the mail
    /// is kept for a retry rather than waited on.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
    pub timeout: Duration,

    /// Largest message accepted on stdin, e.g. `25MB` (10^6) or `50MiB`
    /// (2^20). A bigger one is refused for good (5.3.4) before the gateway
    /// is contacted, so it never costs a retry loop.
    #[arg(long, value_name = "SIZE", default_value = "50MiB", value_parser = parse_max_size)]
    pub max_size: ByteSize,

    /// PEM file with the CA certificate(s) that sign the gateway's
    /// certificate, for an https URL under a private CA. Only these are
    /// then trusted; without it the system's CA bundle is used. Ignored for
    /// http.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

impl MailgateArgs {
    /// The envelope sender: `--sender`, or the variable `--sender-env`
    /// names.
    pub fn envelope_sender(&self) -> Option<HeaderValue> {
        if let Some(sender) = &self.sender {
            return Some(sender.clone());
        }
        let value = std::env::var_os(self.sender_env.as_ref()?)?;
        envelope_address(value.to_str()?).ok()
    }

    /// The SMTP client headers of `--client-address` and `--helo`, and a
    /// warning for each value left out.
    pub fn client_headers(&self) -> ClientHeaders {
        ClientHeaders::of(
            self.client_address.as_deref().map(OsStr::new),
            self.helo.as_deref().map(OsStr::new),
        )
    }

    /// Every envelope recipient: the `--recipient` ones, then the trailing
    /// ones, in the order given.
    pub fn all_recipients(&self) -> impl Iterator<Item = &HeaderValue> {
        self.recipient.iter().chain(&self.recipients)
    }
}

/// The transport of `--url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayScheme {
    /// Plain HTTP (loopback, or a host-local deployment).
    Http,
    /// HTTPS with rustls.
    Https,
}

/// A checked `--url`, reduced to what the exchange needs.
#[derive(Debug, Clone)]
pub struct GatewayUrl {
    /// http or https.
    pub scheme: GatewayScheme,
    /// The host without IPv6 brackets, as resolved and as checked against
    /// the TLS certificate.
    pub host: String,
    /// The port, defaulted by scheme.
    pub port: u16,
    /// The request target: the URL's path with `/v1/messages` appended
    /// unless it already ends so, and its query if any.
    pub path_and_query: PathAndQuery,
    /// The `Host` header: the URL's authority as written.
    pub(super) host_header: HeaderValue,
}

impl GatewayUrl {
    /// Checks a `--url`. Errors become clap usage errors (exit 64): a URL
    /// that cannot work will not start working on a retry.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: Uri = text
            .parse()
            .map_err(|err| format!("not a URL ({err}); expected e.g. http://127.0.0.1:8080"))?;
        let scheme = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP => GatewayScheme::Http,
            Some(scheme) if *scheme == Scheme::HTTPS => GatewayScheme::Https,
            Some(other) => return Err(format!("scheme {other} not supported; use http or https")),
            None => return Err("no scheme; expected e.g. http://127.0.0.1:8080".to_owned()),
        };
        let authority = uri.authority().ok_or("no host in the URL")?;
        if authority.as_str().contains('@') {
            return Err(
                "no user:password in the URL, please: the token is the credential".to_owned(),
            );
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err("no host in the URL".to_owned());
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            GatewayScheme::Http => 80,
            GatewayScheme::Https => 443,
        });
        let path = uri.path();
        let path = if path.ends_with(MESSAGES_PATH) {
            path.to_owned()
        } else {
            format!("{}{MESSAGES_PATH}", path.trim_end_matches('/'))
        };
        let target = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        let path_and_query =
            PathAndQuery::from_str(&target).map_err(|err| format!("bad path: {err}"))?;
        let host_header =
            HeaderValue::from_str(authority.as_str()).map_err(|err| format!("bad host: {err}"))?;
        Ok(GatewayUrl {
            scheme,
            host,
            port,
            path_and_query,
            host_header,
        })
    }

    /// The host as written in a URL (IPv6 in brackets), for messages.
    pub(super) fn host_for_display(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for GatewayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            GatewayScheme::Http => "http",
            GatewayScheme::Https => "https",
        };
        write!(
            f,
            "{scheme}://{}:{}{}",
            self.host_for_display(),
            self.port,
            self.path_and_query
        )
    }
}

/// Checks an envelope address for use as a header value. UTF-8 (SMTPUTF8
/// addresses) passes; CR, LF and other control characters, which could
/// forge headers, do not. Empty is allowed: the null sender of a bounce.
fn envelope_address(text: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_bytes(text.as_bytes())
        .map_err(|_| "control characters are not allowed in an address".to_owned())
}

/// Parses `--timeout`; zero would fail every delivery, so it is refused.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|err| format!("{err}; expected e.g. 30s, 2m"))?;
    if duration.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    Ok(duration)
}

/// Parses `--max-size` with the config file's size grammar, so that a
/// size reads the same on the command line and in `intake.toml`; zero
/// would refuse every mail, so it is refused.
fn parse_max_size(text: &str) -> Result<ByteSize, String> {
    let size = ByteSize::parse(text)?;
    if size.bytes() == 0 {
        return Err("must be more than zero".to_owned());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_gets_the_messages_path_appended() {
        let url = GatewayUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(url.path_and_query.as_str(), "/v1/messages");
        assert_eq!(url.port, 8080);
        let url = GatewayUrl::parse("https://desk.example/intake/").unwrap();
        assert_eq!(url.path_and_query.as_str(), "/intake/v1/messages");
        assert_eq!(url.port, 443);
    }

    #[test]
    fn full_endpoint_url_is_used_as_is() {
        let url = GatewayUrl::parse("http://[::1]:9000/v1/messages?tenant=a").unwrap();
        assert_eq!(url.path_and_query.as_str(), "/v1/messages?tenant=a");
        assert_eq!(
            url.host, "::1",
            "IPv6 host must lose its brackets for lookup and TLS"
        );
        assert_eq!(url.to_string(), "http://[::1]:9000/v1/messages?tenant=a");
    }

    #[test]
    fn url_with_other_scheme_or_credentials_is_refused() {
        assert!(
            GatewayUrl::parse("ftp://gw/").is_err(),
            "ftp must be refused"
        );
        assert!(
            GatewayUrl::parse("127.0.0.1:8080").is_err(),
            "a URL needs a scheme"
        );
        assert!(
            GatewayUrl::parse("http://user:secret@gw/").is_err(),
            "credentials in the URL must be refused"
        );
    }

    #[test]
    fn trailing_addresses_are_recipients_after_the_flagged_ones() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: MailgateArgs,
        }
        let cli = Cli::try_parse_from([
            "mailgate",
            "--url=http://127.0.0.1:8080",
            "--recipient=support@shop.test",
            "--",
            "sales@shop.test",
            "-dash@shop.test",
        ])
        .unwrap();
        let all: Vec<_> = cli.args.all_recipients().collect();
        assert_eq!(
            all,
            ["support@shop.test", "sales@shop.test", "-dash@shop.test"],
            "flagged first, then the trailing ones, a leading dash after -- included"
        );
        assert!(
            Cli::try_parse_from(["mailgate", "--url=http://x", "--", "bad\raddr"]).is_err(),
            "a trailing address is checked as a flagged one is"
        );
    }

    #[test]
    fn client_flags_take_any_value_and_never_fail() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: MailgateArgs,
        }
        let parse = |flags: &[&str]| {
            let mut argv = vec!["mailgate", "--url=http://127.0.0.1:8080"];
            argv.extend_from_slice(flags);
            Cli::try_parse_from(argv)
                .unwrap_or_else(|e| panic!("{flags:?}: {e}"))
                .args
                .client_headers()
        };
        let given = parse(&["--client-address=203.0.113.7", "--helo=mx.customer.test"]);
        assert_eq!(given.address.unwrap(), "203.0.113.7");
        assert_eq!(given.helo.unwrap(), "mx.customer.test");
        let spaced = parse(&["--client-address", "2001:db8::7", "--helo", "mx"]);
        assert_eq!(spaced.address.unwrap(), "2001:db8::7");
        // What Postfix's pipe passes for a locally submitted mail.
        assert_eq!(
            parse(&["--client-address=", "--helo="]),
            ClientHeaders::default()
        );
        assert_eq!(
            parse(&["--client-address=unknown", "--helo=unknown"]),
            ClientHeaders::default()
        );
        let odd = parse(&["--client-address=-not-an-ip", "--helo=-dash.example"]);
        assert_eq!(odd.address, None);
        assert_eq!(
            odd.helo.unwrap(),
            "-dash.example",
            "a dash after = is a value"
        );
        assert_eq!(odd.warnings.len(), 1, "{:?}", odd.warnings);
        assert_eq!(parse(&[]), ClientHeaders::default());
    }

    #[test]
    fn zero_max_size_is_refused() {
        assert!(
            parse_max_size("0").is_err(),
            "a zero limit would refuse every mail"
        );
        assert_eq!(parse_max_size("1KB").unwrap().bytes(), 1_000);
    }
}
