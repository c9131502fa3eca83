//! Trust anchors for the connections intake makes (mailgate to the
//! gateway, the IMAP source to a mail server): the CA file the operator
//! named, or else the system's CA bundle. Verification is never skipped.

use std::path::{Path, PathBuf};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Where Unix systems keep their CA bundle, in the order openssl-probe
/// looks: Debian/Ubuntu/Alpine, RHEL/Fedora, SUSE, older RHEL, BSD and
/// macOS, FreeBSD.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/share/certs/ca-root-nss.crt",
];

/// Why no trust anchors could be had.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("cannot read CA file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("CA file {} holds no PEM certificate", path.display())]
    Empty { path: PathBuf },
    #[error("CA file {} has a certificate rustls refuses", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("no system CA bundle found (SSL_CERT_FILE, /etc/ssl/certs/...); name a CA file")]
    NoSystemBundle,
}

/// The PEM file [`load`] would read: `ca_file` when given, else the
/// first system bundle found; for clients that take PEM bytes (lettre).
pub fn bundle_path(ca_file: Option<&Path>) -> Result<PathBuf, RootsError> {
    if let Some(path) = ca_file {
        return Ok(path.to_owned());
    }
    std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or(RootsError::NoSystemBundle)
}

/// The certificates of `ca_file` alone when given, else the system bundle
/// (`SSL_CERT_FILE` first, as OpenSSL does).
pub fn load(ca_file: Option<&Path>) -> Result<RootCertStore, RootsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect())
                .map_err(|source| RootsError::Read {
                    path: path.to_owned(),
                    source,
                })?;
            if certs.is_empty() {
                return Err(RootsError::Empty {
                    path: path.to_owned(),
                });
            }
            for cert in certs {
                roots.add(cert).map_err(|source| RootsError::Invalid {
                    path: path.to_owned(),
                    source,
                })?;
            }
        }
        None => {
            let candidates = std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .into_iter()
                .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from));
            for path in candidates {
                // A bundle with one odd certificate is still a bundle: take
                // what parses, as the system's own TLS libraries do.
                if let Ok(certs) = CertificateDer::pem_file_iter(&path) {
                    let (added, _ignored) =
                        roots.add_parsable_certificates(certs.filter_map(Result::ok));
                    if added > 0 {
                        break;
                    }
                }
            }
            if roots.is_empty() {
                return Err(RootsError::NoSystemBundle);
            }
        }
    }
    Ok(roots)
}
