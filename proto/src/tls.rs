//! TLS for `mqtts://` targets. Users name files ([`TlsFiles`]); what travels to agents is the
//! material itself ([`TlsMaterial`]), read once by the controller, so an agent on another host
//! needs none of the controller's files.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a scenario or the command line says about TLS: file paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsFiles {
    /// PEM file of CA certificates to trust; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
    /// Name to verify the broker's certificate against (and send as SNI); the URL's host when absent.
    pub server_name: Option<String>,
    /// Accept any certificate. For lab brokers only; reports say so.
    pub insecure: bool,
}

/// TLS settings with the PEM material read in.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsMaterial {
    pub ca_pem: Option<Vec<u8>>,
    pub cert_pem: Option<Vec<u8>>,
    /// Secret: never printed (see the Debug impl).
    pub key_pem: Option<Vec<u8>>,
    pub server_name: Option<String>,
    pub insecure: bool,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &self.ca_pem.as_ref().map(|b| format!("{} bytes", b.len())))
            .field("cert_pem", &self.cert_pem.as_ref().map(|b| format!("{} bytes", b.len())))
            .field("key_pem", &self.key_pem.as_ref().map(|_| "<redacted>"))
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl TlsFiles {
    /// Reads every named file.
    pub fn read(&self) -> Result<TlsMaterial, ReadError> {
        let read = |p: &Option<PathBuf>| -> Result<Option<Vec<u8>>, ReadError> {
            p.as_deref().map(read_file).transpose()
        };
        Ok(TlsMaterial {
            ca_pem: read(&self.ca_file)?,
            cert_pem: read(&self.cert_file)?,
            key_pem: read(&self.key_file)?,
            server_name: self.server_name.clone(),
            insecure: self.insecure,
        })
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ReadError> {
    std::fs::read(path).map_err(|source| ReadError { path: path.into(), source })
}
