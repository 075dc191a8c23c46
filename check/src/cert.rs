//! Just enough X.509 (DER) to report a certificate: its subject's common name and validity.
//! rustls verifies certificates; this only describes them.

/// What the check reports about one certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct CertInfo {
    pub subject_cn: Option<String>,
    pub issuer_cn: Option<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

struct Der<'a> {
    b: &'a [u8],
}

impl<'a> Der<'a> {
    /// The next TLV: (tag, contents).
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let tag = *self.b.first()?;
        let first = *self.b.get(1)? as usize;
        let (len, hdr) = if first < 0x80 {
            (first, 2)
        } else {
            let n = first & 0x7f;
            if n == 0 || n > 4 {
                return None;
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *self.b.get(2 + i)? as usize;
            }
            (len, 2 + n)
        };
        let body = self.b.get(hdr..hdr + len)?;
        self.b = &self.b[hdr + len..];
        Some((tag, body))
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn time(tag: u8, v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = s.get(0..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(0..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let n = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let days = days_from_civil(year, n(0)?, n(2)?);
    Some(days * 86_400 + n(4)? * 3_600 + n(6)? * 60 + n(8)?)
}

fn common_name(name: &[u8]) -> Option<String> {
    let mut rdns = Der { b: name };
    while let Some((_, set)) = rdns.next() {
        let mut atvs = Der { b: set };
        while let Some((_, atv)) = atvs.next() {
            let mut d = Der { b: atv };
            let (_, oid) = d.next()?;
            if oid == [0x55, 0x04, 0x03] {
                let (_, v) = d.next()?;
                return Some(String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    None
}

/// Reads a DER certificate; `None` if it is not one this can read.
pub fn parse(der: &[u8]) -> Option<CertInfo> {
    let (_, cert) = Der { b: der }.next()?;
    let (_, tbs) = Der { b: cert }.next()?;
    let mut t = Der { b: tbs };
    let (mut tag, mut v) = t.next()?;
    if tag == 0xa0 {
        (tag, v) = t.next()?; // version; then the serial number
    }
    let _ = (tag, v);
    t.next()?; // signature algorithm
    let (_, issuer) = t.next()?;
    let (_, validity) = t.next()?;
    let (_, subject) = t.next()?;
    let mut val = Der { b: validity };
    let (tb, nb) = val.next()?;
    let (ta, na) = val.next()?;
    Some(CertInfo {
        subject_cn: common_name(subject),
        issuer_cn: common_name(issuer),
        not_before: time(tb, nb)?,
        not_after: time(ta, na)?,
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

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(parse(b"\x30\x03\x02\x01"), None);
        assert_eq!(parse(&[]), None);
    }
}
