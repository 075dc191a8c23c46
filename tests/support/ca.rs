//! A certificate authority made by the test: a CA, and server/client certificates it signs.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// PEM files of one certificate.
pub struct Pem {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        TestCa { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    /// Writes the CA certificate to `dir/<file>`.
    pub fn write_ca(&self, dir: &Path, file: &str) -> PathBuf {
        let p = dir.join(file);
        super::mosquitto::write_readable(&p, self.issuer.pem());
        p
    }

    /// A certificate for `names` (DNS names or IP addresses), written as `<stem>.pem`/`<stem>.key`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> Pem {
        self.issue_with(dir, stem, names, |_| {})
    }

    /// Like [`TestCa::issue`], expired since 2020.
    pub fn issue_expired(&self, dir: &Path, stem: &str, names: &[&str]) -> Pem {
        self.issue_with(dir, stem, names, |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    fn issue_with(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        tweak(&mut params);
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or(stem));
        for n in names {
            match n.parse::<std::net::IpAddr>() {
                Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => params.subject_alt_names.push(SanType::DnsName((*n).try_into().unwrap())),
            }
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pem = Pem { cert: dir.join(format!("{stem}.pem")), key: dir.join(format!("{stem}.key")) };
        super::mosquitto::write_readable(&pem.cert, cert.pem());
        super::mosquitto::write_readable(&pem.key, key.serialize_pem());
        pem
    }
}
