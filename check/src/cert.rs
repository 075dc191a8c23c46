//! What the check reports of a certificate: its subject's and issuer's common names and its
//! validity, read with the `x509-cert` crate. rustls verifies certificates; this only
//! describes them.

/// What the check reports about one certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct CertInfo {
    pub subject_cn: Option<String>,
    pub issuer_cn: Option<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// The common name (2.5.4.3) of a distinguished name, its first if several.
fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    let cn = x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    name.0.iter().flat_map(|rdn| rdn.0.iter()).find(|atv| atv.oid == cn).map(|atv| {
        // UTF8String, PrintableString and IA5String all carry text as is
        String::from_utf8_lossy(atv.value.value()).into_owned()
    })
}

/// Reads a DER certificate (with the `x509-cert` crate); `None` if it is not one.
pub fn parse(der: &[u8]) -> Option<CertInfo> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let tbs = &cert.tbs_certificate;
    let unix = |t: &x509_cert::time::Time| i64::try_from(t.to_unix_duration().as_secs()).ok();
    Some(CertInfo {
        subject_cn: common_name(&tbs.subject),
        issuer_cn: common_name(&tbs.issuer),
        not_before: unix(&tbs.validity.not_before)?,
        not_after: unix(&tbs.validity.not_after)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_subject_issuer_and_validity_of_a_real_certificate() {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, "Test CA");
        let issuer = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["broker.test".to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "broker.test");
        p.not_before = rcgen::date_time_ymd(2024, 1, 2);
        p.not_after = rcgen::date_time_ymd(2051, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        let info = parse(cert.der()).expect("parses");
        assert_eq!(info.subject_cn.as_deref(), Some("broker.test"));
        assert_eq!(info.issuer_cn.as_deref(), Some("Test CA"));
        assert_eq!(info.not_before, 1_704_153_600); // 2024-01-02T00:00:00Z
        assert_eq!(info.not_after, 2_561_500_800); // 2051-03-04 (GeneralizedTime past 2049)
    }

    /// A broker may send anything as its certificate: every truncation and every one-byte
    /// change of a real one is read or refused, never a panic.
    #[test]
    fn broken_certificates_are_refused_not_a_panic() {
        let key = rcgen::KeyPair::generate().unwrap();
        let der =
            rcgen::CertificateParams::new(vec!["b.test".to_string()]).unwrap().self_signed(&key).unwrap();
        let der = der.der().to_vec();
        for n in 0..der.len() {
            assert_eq!(parse(&der[..n]), None, "a truncation at {n} is no certificate");
        }
        for i in 0..der.len() {
            let mut d = der.clone();
            d[i] ^= 0xff;
            let _ = parse(&d);
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(parse(b"\x30\x03\x02\x01"), None);
        assert_eq!(parse(&[]), None);
    }
}
