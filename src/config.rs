//! The configuration file: one TOML document, typed, unknown keys refused.
//!
//! Loading is two steps: serde reads the file (a syntax error or unknown key
//! names the key and line), then [`Config::validate`] checks what types
//! cannot (forms that make sense, secrets that resolve) and reports every
//! problem at once, so an operator fixes the file in one go.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::admin::AdminConfig;
use crate::redis_connection::RedisConfig;
use crate::sources::http::config::{FormConfig, HttpConfig, MessagesConfig, TokenMode};
use crate::telemetry::LogConfig;
use crate::units::ByteSize;
use crate::validate::Validate;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The public HTTP listener (forms and raw mail).
    #[serde(default)]
    pub http: HttpConfig,
    /// The admin listener (metrics, operations).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Where accepted items are written.
    pub redis: RedisConfig,
    /// `POST /v1/messages`, used by `intake mailgate`.
    #[serde(default)]
    pub messages: MessagesConfig,
    /// The web forms the shop posts to, as `[[form]]` tables.
    #[serde(default, rename = "form")]
    pub forms: Vec<FormConfig>,
    /// Virus scanning with clamd; without it items say `unscanned`.
    #[serde(default)]
    pub scan: Option<crate::scan::ScanConfig>,
    /// IMAP accounts whose mailboxes are polled, as `[[imap]]` tables.
    #[serde(default)]
    pub imap: Vec<crate::sources::imap::ImapConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Rate-limit, collapse and loop rules (`rules/*.toml`).
    #[serde(default)]
    pub rules: crate::guard::config::RulesConfig,
    /// When to stop taking new items (desk high-water mark, Redis memory).
    #[serde(default)]
    pub backpressure: crate::backpressure::BackpressureConfig,
    /// Card-number redaction.
    #[serde(default)]
    pub privacy: crate::parse::redact::PrivacyConfig,
    /// MIME limits; a mail beyond one is quarantined.
    #[serde(default)]
    pub mime: crate::parse::limits::MimeConfig,
    /// The key form tokens are signed with.
    #[serde(default)]
    pub forms_security: Option<crate::sources::http::bots::FormsSecurityConfig>,
    /// Sender authentication (DKIM, SPF, DMARC, ARC); no mail is checked
    /// without it.
    #[serde(default)]
    pub auth: Option<crate::auth::AuthConfig>,
    /// The LMTP listener a mail server delivers into; off without it.
    #[serde(default)]
    pub lmtp: Option<crate::sources::lmtp::LmtpConfig>,
    /// What is kept of items that do not reach the desk.
    #[serde(default)]
    pub audit: crate::pipeline::audit::AuditConfig,
    /// The memory budget for bodies in flight (forms, raw mail, LMTP).
    #[serde(default)]
    pub memory: crate::budget::MemoryConfig,
    /// Acknowledgements to customers through an SMTP relay; off without it.
    #[serde(default)]
    pub acknowledge: Option<crate::acknowledge::AcknowledgeConfig>,
    /// Delivery workers handing the desk to its tool, as `[[delivery]]`
    /// tables.
    #[serde(default, rename = "delivery")]
    pub deliveries: Vec<crate::delivery::config::DeliveryConfig>,
}

/// Every problem found in a config file, one per line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config file {path} has {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::from_toml(&text).map_err(|message| ConfigError::Syntax {
            path: path.to_owned(),
            message,
        })?;
        config.resolve_paths(base);
        config.validate().map_err(|problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        })?;
        Ok(config)
    }

    /// Parses TOML text; the error names the key and line.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Makes relative paths relative to the config file's folder, so a
    /// config works whatever the daemon's working directory.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(dir) = &mut self.rules.dir {
            fix(dir);
        }
        if let Some(tls) = &mut self.http.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        for imap in &mut self.imap {
            imap.resolve_paths(base);
        }
        for delivery in &mut self.deliveries {
            delivery.resolve_paths(base);
        }
        if let Some(acknowledge) = &mut self.acknowledge {
            acknowledge.resolve_paths(base);
        }
        for secret in [
            &mut self.redis.password,
            &mut self.messages.token,
            &mut self.admin.token,
        ]
        .into_iter()
        .flatten()
        {
            if let Some(file) = &mut secret.file {
                fix(file);
            }
        }
        if let Some(file) = self
            .forms_security
            .as_mut()
            .and_then(|f| f.secret.file.as_mut())
        {
            fix(file);
        }
    }

    /// Checks everything serde cannot; returns every problem found. Each
    /// section checks itself ([`Validate`]); what spans sections is
    /// checked here.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        self.redis.validate("redis", &mut problems);
        self.http.validate("http", &mut problems);
        self.messages.validate("messages", &mut problems);
        self.admin.validate("admin", &mut problems);
        if let Some(lmtp) = &self.lmtp {
            lmtp.validate("lmtp", &mut problems);
        }
        if let Some(security) = &self.forms_security {
            security.validate("forms_security", &mut problems);
        }
        if let Some(scan) = &self.scan {
            scan.validate("scan", &mut problems);
        }
        if let Some(auth) = &self.auth {
            auth.validate("auth", &mut problems);
        }
        if let Some(acknowledge) = &self.acknowledge {
            acknowledge.validate("acknowledge", &mut problems);
        }
        self.rules.validate("rules", &mut problems);
        self.mime.validate("mime", &mut problems);
        self.audit.validate("audit", &mut problems);
        self.backpressure.validate("backpressure", &mut problems);
        self.memory.validate("memory", &mut problems);

        // Across sections.
        if self.forms_security.is_none() {
            for form in &self.forms {
                if form.token != TokenMode::Off {
                    problems.push(format!(
                        "form `{}`.token: needs [forms_security] secret to sign tokens",
                        form.id
                    ));
                }
            }
        }
        if self.admin.token.is_some() && self.admin.listen == self.http.listen {
            problems.push("admin.listen: must differ from http.listen".into());
        }
        let mut seen = HashSet::new();
        for (i, form) in self.forms.iter().enumerate() {
            let at = format!("form[{i}] ({})", form.id);
            form.validate(&at, &mut problems);
            if !seen.insert(form.id.as_str()) {
                problems.push(format!("{at}.id: declared twice"));
            }
        }
        let mut watched = HashSet::new();
        for (i, imap) in self.imap.iter().enumerate() {
            let at = format!("imap[{i}] ({})", imap.account());
            imap.validate(&at, &mut problems);
            for mailbox in &imap.mailboxes {
                if !watched.insert((imap.account().to_string(), mailbox.clone())) {
                    problems.push(format!(
                        "{at}.mailboxes: `{mailbox}` of account `{}` is watched twice; give one of the tables another `name`",
                        imap.account()
                    ));
                }
            }
        }
        let mut names = HashSet::new();
        for (i, delivery) in self.deliveries.iter().enumerate() {
            let at = format!("delivery[{i}] ({})", delivery.name);
            delivery.validate(&at, &mut problems);
            if !names.insert(delivery.name.as_str()) {
                problems.push(format!("{at}.name: declared twice"));
            }
        }
        self.memory
            .check_limits("memory", &self.body_limits(), &mut problems);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// Every limit on one body held in memory, by key: the budget must fit
    /// each of them.
    fn body_limits(&self) -> Vec<(String, ByteSize)> {
        let mut limits: Vec<(String, ByteSize)> = self
            .forms
            .iter()
            .map(|form| (format!("form `{}`.max_size", form.id), form.max_size))
            .collect();
        if self.messages.token.is_some() {
            limits.push(("messages.max_size".into(), self.messages.max_size));
        }
        if let Some(lmtp) = &self.lmtp {
            limits.push(("lmtp.max_size".into(), lmtp.max_size));
        }
        limits
    }

    pub fn form(&self, id: &str) -> Option<&FormConfig> {
        self.forms.iter().find(|f| f.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MINIMAL: &str = "[redis]\nurl = \"redis://127.0.0.1:16379\"\n";

    #[test]
    fn minimal_config_gets_sensible_defaults() {
        let c = Config::from_toml(MINIMAL).expect("minimal config parses");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.redis.prefix, "intake");
        assert_eq!(c.messages.max_size.bytes(), 50_000_000);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn hardening_limits_and_form_tokens_are_validated_together() {
        let text = format!(
            "{MINIMAL}[http]\nmax_header_bytes = \"1KiB\"\nmax_headers = 0\nmax_requests_per_ip = 0\n\
             max_connections_per_ip = 0\nbody_rate_grace = \"10ms\"\nshed_grace = \"2d\"\n\
             [[form]]\nid = \"contact\"\ntoken = \"required\"\ntoken_min_age = \"3h\"\n"
        );
        let problems = Config::from_toml(&text).unwrap().validate().unwrap_err();
        for key in [
            "http.max_header_bytes",
            "http.max_headers",
            "http.max_requests_per_ip",
            "http.max_connections_per_ip",
            "http.body_rate_grace",
            "http.shed_grace",
            "needs [forms_security] secret",
            "token_min_age",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(key)),
                "no problem names {key}: {problems:?}"
            );
        }
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.http.max_header_bytes.bytes(), 32 * 1024);
        assert_eq!(c.http.max_requests_per_ip, 32);
        assert_eq!(c.http.max_connections_per_ip, 64);
        assert_eq!(c.http.min_body_rate.bytes(), 500);
    }

    #[test]
    fn the_dev_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/dev/intake.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let c = Config::from_toml(&text).expect("deploy/dev/intake.toml parses");
        assert_eq!(c.http.max_requests_per_ip, 32);
        // The dev LMTP port is fixed (README.md, "The dev stack").
        let lmtp = c.lmtp.as_ref().expect("the dev config has [lmtp]");
        assert_eq!(lmtp.listen.to_string(), "127.0.0.1:2424");
        let problems = crate::validate::problems_of(lmtp, "lmtp");
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn the_body_budget_must_fit_every_body_limit() {
        let text = format!(
            "{MINIMAL}[memory]\nbody_budget = \"20MB\"\n\
             [lmtp]\nlisten = \"127.0.0.1:2424\"\nmax_size = \"30MB\"\n\
             [[form]]\nid = \"contact\"\nmax_size = \"10MB\"\n"
        );
        let problems = Config::from_toml(&text).unwrap().validate().unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("memory.body_budget") && problems[0].contains("lmtp.max_size"),
            "names the budget and the limit it cannot fit: {problems:?}"
        );
        let c = Config::from_toml(MINIMAL).unwrap();
        assert_eq!(c.memory.body_budget.bytes(), 256_000_000);
        assert_eq!(c.memory.body_wait.0, Duration::from_secs(10));
    }

    #[test]
    fn unknown_key_is_refused_by_name() {
        let err = Config::from_toml(&format!("{MINIMAL}[http]\nlisten_on = \"x\"\n"))
            .expect_err("unknown key must be refused");
        assert!(
            err.contains("listen_on"),
            "error should name the key: {err}"
        );
    }

    #[test]
    fn bad_duration_names_key_and_shape() {
        let err = Config::from_toml(&format!("{MINIMAL}[http]\nheader_timeout = \"soon\"\n"))
            .expect_err("bad duration must be refused");
        assert!(err.contains("header_timeout"), "names the key: {err}");
        assert!(err.contains("30s"), "shows an example: {err}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = r#"
            [redis]
            url = "http://wrong"
            [[form]]
            id = "contact us"
            redirect = "javascript:alert(1)"
            [[form]]
            id = "contact us"
            allowed_origins = ["https://shop.example/path"]
        "#;
        let c = Config::from_toml(text).expect("syntax is fine");
        let problems = c.validate().expect_err("must be invalid");
        assert_eq!(problems.len(), 6, "one line per problem: {problems:#?}");
    }
}
