//! What a peer's certificate says about who it is, and the rule that binds it to the
//! node id and region the peer claims in its Hello or Welcome.
//!
//! **The rule.** A certificate authorizes node `N` of region `R` when its subject
//! alternative names hold the URI `geocache://R/N` (one node) or `geocache://R/*` (any
//! node of region `R`: the certificate the operator issues per region). Other names
//! (DNS names, IP addresses) only serve the TLS side. A certificate without any
//! `geocache://` URI authorizes nobody.
//!
//! Only the few fields needed are read, with a small bounds-checked DER reader: the
//! subject alternative names and the end of the validity period. The chain and
//! signatures are verified by rustls before anything here runs.

/// Why a certificate could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct CertError(&'static str);

/// Why a certificate does not authorize the identity a peer claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "certificate names no geocache identity (it needs a subject alternative name URI \
         geocache://<region>/<node-id> or geocache://<region>/*) but claims node {node} of region {region}"
    )]
    NoIdentity { node: String, region: String },
    #[error("certificate for region {cert} but claims region {claimed}")]
    OtherRegion { cert: String, claimed: String },
    #[error("certificate for node {cert} of region {region} but claims node {claimed}")]
    OtherNode { cert: String, region: String, claimed: String },
}

/// The identities a certificate names, and when it expires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// `(region, node)` pairs from `geocache://` URIs; node `*` is any node.
    pub identities: Vec<(String, String)>,
    /// Every URI in the subject alternative names.
    pub uris: Vec<String>,
    /// Every DNS name in the subject alternative names.
    pub dns_names: Vec<String>,
    /// The end of the validity period, in Unix seconds.
    pub not_after: Option<i64>,
}

/// The scheme of identity URIs.
pub const URI_SCHEME: &str = "geocache://";

/// The identity URI of one node.
pub fn node_uri(region: &str, node_id: &str) -> String {
    format!("{URI_SCHEME}{region}/{node_id}")
}

/// The identity URI of every node of a region.
pub fn region_uri(region: &str) -> String {
    format!("{URI_SCHEME}{region}/*")
}

/// `(region, node)` of a `geocache://region/node` URI.
fn parse_identity_uri(uri: &str) -> Option<(String, String)> {
    let scheme = uri.get(..URI_SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(URI_SCHEME) {
        return None;
    }
    let (region, node) = uri[URI_SCHEME.len()..].split_once('/')?;
    if region.is_empty() || node.is_empty() || node.contains('/') {
        return None;
    }
    Some((region.to_string(), node.to_string()))
}

impl CertIdentity {
    /// Reads a DER-encoded X.509 certificate.
    pub fn from_der(der: &[u8]) -> Result<CertIdentity, CertError> {
        let mut outer = Der::new(der);
        let cert = outer.take(SEQUENCE, "certificate")?;
        let mut cert = Der::new(cert);
        let tbs = cert.take(SEQUENCE, "tbsCertificate")?;
        let mut tbs = Der::new(tbs);
        if tbs.peek_tag() == Some(0xa0) {
            tbs.next()?; // version
        }
        tbs.take(INTEGER, "serial number")?;
        tbs.take(SEQUENCE, "signature algorithm")?;
        tbs.take(SEQUENCE, "issuer")?;
        let validity = tbs.take(SEQUENCE, "validity")?;
        let mut validity = Der::new(validity);
        validity.next()?; // not before
        let (tag, not_after) = validity.next()?;
        let not_after = parse_time(tag, not_after);
        tbs.take(SEQUENCE, "subject")?;
        tbs.take(SEQUENCE, "subject public key info")?;
        let mut out = CertIdentity { not_after, ..CertIdentity::default() };
        while !tbs.is_empty() {
            let (tag, body) = tbs.next()?;
            if tag != 0xa3 {
                continue; // issuer or subject unique id
            }
            let mut explicit = Der::new(body);
            let mut extensions = Der::new(explicit.take(SEQUENCE, "extensions")?);
            while !extensions.is_empty() {
                let mut ext = Der::new(extensions.take(SEQUENCE, "extension")?);
                let oid = ext.take(OID, "extension id")?;
                if ext.peek_tag() == Some(BOOLEAN) {
                    ext.next()?;
                }
                let value = ext.take(OCTET_STRING, "extension value")?;
                if oid == SUBJECT_ALT_NAME {
                    out.read_general_names(value)?;
                }
            }
        }
        Ok(out)
    }

    fn read_general_names(&mut self, value: &[u8]) -> Result<(), CertError> {
        let mut names = Der::new(Der::new(value).take(SEQUENCE, "subject alternative names")?);
        while !names.is_empty() {
            let (tag, body) = names.next()?;
            let text = || std::str::from_utf8(body).map_err(|_| CertError("a name is not text"));
            match tag {
                0x82 => self.dns_names.push(text()?.to_string()),
                0x86 => {
                    let uri = text()?;
                    if let Some(id) = parse_identity_uri(uri) {
                        self.identities.push(id);
                    }
                    self.uris.push(uri.to_string());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether this certificate authorizes node `node` of region `region`; when it
    /// does not, says why in words an operator can act on.
    pub fn check(&self, node: &str, region: &str) -> Result<(), IdentityError> {
        if self.identities.is_empty() {
            return Err(IdentityError::NoIdentity { node: node.to_string(), region: region.to_string() });
        }
        let same_region: Vec<&str> =
            self.identities.iter().filter(|(r, _)| r == region).map(|(_, n)| n.as_str()).collect();
        if same_region.is_empty() {
            let mut regions: Vec<&str> = self.identities.iter().map(|(r, _)| r.as_str()).collect();
            regions.dedup();
            return Err(IdentityError::OtherRegion { cert: regions.join(", "), claimed: region.to_string() });
        }
        if same_region.iter().any(|n| *n == "*" || *n == node) {
            return Ok(());
        }
        Err(IdentityError::OtherNode {
            cert: same_region.join(", "),
            region: region.to_string(),
            claimed: node.to_string(),
        })
    }
}

const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
/// 2.5.29.17
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// A cursor over DER TLVs with single-byte tags and definite lengths.
struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Der { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn next(&mut self) -> Result<(u8, &'a [u8]), CertError> {
        let (&tag, rest) = self.rest.split_first().ok_or(CertError("truncated"))?;
        if tag & 0x1f == 0x1f {
            return Err(CertError("multi-byte tags are not used in certificates"));
        }
        let (&first, mut rest) = rest.split_first().ok_or(CertError("truncated length"))?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 {
                return Err(CertError("unsupported length"));
            }
            if rest.len() < n {
                return Err(CertError("truncated length"));
            }
            let (bytes, after) = rest.split_at(n);
            rest = after;
            bytes.iter().fold(0usize, |acc, &b| (acc << 8) | b as usize)
        };
        if rest.len() < len {
            return Err(CertError("a value runs past its container"));
        }
        let (body, after) = rest.split_at(len);
        self.rest = after;
        Ok((tag, body))
    }

    fn take(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8], CertError> {
        match self.next() {
            Ok((t, body)) if t == tag => Ok(body),
            Ok(_) => Err(CertError(what)),
            Err(e) => Err(e),
        }
    }
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) in Unix seconds.
fn parse_time(tag: u8, body: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(body).ok()?;
    let s = s.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 if s.len() == 12 => {
            let yy: i64 = s.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        0x18 if s.len() == 14 => (s.get(..4)?.parse().ok()?, &s[4..]),
        _ => return None,
    };
    if !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, minute, second) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_with(uris: &[&str], dns: &[&str]) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        for u in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).unwrap()));
        }
        params.not_after = rcgen::date_time_ymd(2031, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn names_and_expiry_are_read_from_a_certificate() {
        let der = cert_with(&["geocache://eu/eu-0", "spiffe://x/y"], &["eu-0.peers.example"]);
        let id = CertIdentity::from_der(&der).unwrap();
        assert_eq!(id.identities, vec![("eu".to_string(), "eu-0".to_string())]);
        assert_eq!(id.uris, vec!["geocache://eu/eu-0".to_string(), "spiffe://x/y".to_string()]);
        assert_eq!(id.dns_names, vec!["eu-0.peers.example".to_string()]);
        assert_eq!(id.not_after, Some(1_930_348_800)); // 2031-03-04T00:00:00Z
    }

    #[test]
    fn a_node_certificate_authorizes_that_node_only() {
        let id = CertIdentity::from_der(&cert_with(&["geocache://eu/eu-0"], &[])).unwrap();
        assert_eq!(id.check("eu-0", "eu"), Ok(()));
        assert_eq!(
            id.check("eu-1", "eu").unwrap_err().to_string(),
            "certificate for node eu-0 of region eu but claims node eu-1"
        );
        assert_eq!(id.check("eu-0", "us").unwrap_err().to_string(), "certificate for region eu but claims region us");
    }

    #[test]
    fn a_region_certificate_authorizes_every_node_of_its_region() {
        let id = CertIdentity::from_der(&cert_with(&[&region_uri("us")], &["geocache-us.example"])).unwrap();
        assert_eq!(id.check("us-7", "us"), Ok(()));
        assert_eq!(id.check("eu-0", "eu").unwrap_err().to_string(), "certificate for region us but claims region eu");
    }

    #[test]
    fn a_certificate_without_an_identity_authorizes_nobody() {
        let id = CertIdentity::from_der(&cert_with(&["https://example.com/"], &["eu-0"])).unwrap();
        let e = id.check("eu-0", "eu").unwrap_err();
        assert!(matches!(e, IdentityError::NoIdentity { .. }), "{e}");
    }

    #[test]
    fn identity_uris_must_have_a_region_and_a_node() {
        for bad in ["geocache://eu", "geocache:///n", "geocache://eu/", "geocache://eu/a/b", "http://eu/n"] {
            assert_eq!(parse_identity_uri(bad), None, "{bad}");
        }
        assert_eq!(parse_identity_uri("GeoCache://eu/n"), Some(("eu".into(), "n".into())));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let der = cert_with(&["geocache://eu/eu-0"], &[]);
        for cut in 0..der.len() {
            let _ = CertIdentity::from_der(&der[..cut]);
        }
        for bad in [&b""[..], b"\x30", b"\x30\x84\xff\xff\xff\xff", b"\x30\x80", b"\x1f\x01\x00", b"\x30\x03\x02\x01"] {
            assert!(CertIdentity::from_der(bad).is_err());
        }
    }

    #[test]
    fn times_in_both_encodings_are_read() {
        assert_eq!(parse_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(parse_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(parse_time(0x18, b"20310304000000Z"), Some(1_930_348_800));
        assert_eq!(parse_time(0x18, b"2031030400000Z"), None);
        assert_eq!(parse_time(0x17, b"70010100000+Z"), None);
    }
}
