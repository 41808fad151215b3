//! `geocache-node fleet --tls`: mutual TLS between the fleet's nodes, as the operator
//! sets it up — a CA made for this fleet and one certificate per region (identity
//! `geocache://<region>/*`), given to every node with `--peer-tls-*`.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::security::cert::region_uri;
use crate::security::pki::{Authority, LeafSpec};

/// How long the fleet's certificates are valid: longer than any demo.
const VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);

/// The node flags that `--tls` sets.
pub const TLS_NODE_FLAGS: [&str; 3] = ["--peer-tls-cert", "--peer-tls-key", "--peer-tls-ca"];

/// Why the fleet's certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FleetTlsError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Pki(#[from] crate::security::pki::PkiError),
}

/// The certificates of a fleet, on disk. A temporary directory is removed when this
/// is dropped.
#[derive(Debug)]
pub struct FleetPki {
    dir: PathBuf,
    temporary: bool,
}

/// Where the fleet keeps its certificates: `<base-dir>/tls`, or a directory of its
/// own under the system's temporary directory.
pub fn tls_dir(base_dir: Option<&Path>) -> (PathBuf, bool) {
    match base_dir {
        Some(base) => (base.join("tls"), false),
        None => (std::env::temp_dir().join(format!("geocache-fleet-{}-tls", std::process::id())), true),
    }
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), FleetTlsError> {
    let open = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(mode).open(path);
    let result = open.and_then(|mut f| io::Write::write_all(&mut f, contents.as_bytes()));
    result.map_err(|source| FleetTlsError::Write { path: path.to_path_buf(), source })
}

impl FleetPki {
    /// Makes a CA and a certificate per region under [`tls_dir`].
    pub fn create(base_dir: Option<&Path>, regions: &[String]) -> Result<FleetPki, FleetTlsError> {
        let (dir, temporary) = tls_dir(base_dir);
        std::fs::create_dir_all(&dir).map_err(|source| FleetTlsError::Write { path: dir.clone(), source })?;
        let pki = FleetPki { dir, temporary };
        let ca = Authority::generate("geocache-fleet", VALIDITY)?;
        write(&pki.ca(), ca.cert_pem(), 0o644)?;
        for region in regions {
            let issued = ca.issue(&LeafSpec {
                common_name: format!("geocache-{region}"),
                dns_names: vec!["localhost".into()],
                uris: vec![region_uri(region)],
                valid_for: VALIDITY,
                ..LeafSpec::default()
            })?;
            write(&pki.cert(region), &issued.cert_pem, 0o644)?;
            write(&pki.key(region), &issued.key_pem, 0o600)?;
        }
        tracing::info!(dir = %pki.dir.display(), regions = regions.len(), "made a ca and a certificate per region for mutual tls");
        Ok(pki)
    }

    /// The CA certificate every node trusts.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    pub fn cert(&self, region: &str) -> PathBuf {
        self.dir.join(format!("{region}.crt"))
    }

    pub fn key(&self, region: &str) -> PathBuf {
        self.dir.join(format!("{region}.key"))
    }

    /// The `--peer-tls-*` flags of a node of `region`.
    pub fn node_args(&self, region: &str) -> Vec<OsString> {
        vec![
            "--peer-tls-cert".into(),
            self.cert(region).into_os_string(),
            "--peer-tls-key".into(),
            self.key(region).into_os_string(),
            "--peer-tls-ca".into(),
            self.ca().into_os_string(),
        ]
    }
}

impl Drop for FleetPki {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_region_gets_a_certificate_for_its_identity_and_keys_are_private() {
        let base = tempfile::tempdir().unwrap();
        let pki = FleetPki::create(Some(base.path()), &["eu".to_string(), "us".to_string()]).unwrap();
        let tls = crate::security::PeerTls::load(&pki.cert("eu"), &pki.key("eu"), &pki.ca(), "eu-0", "eu").unwrap();
        assert_eq!(tls.reloading().get().own.check("eu-1", "eu"), Ok(()));
        assert!(tls.reloading().get().own.check("us-0", "us").is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(pki.key("us")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
        assert_eq!(pki.node_args("us")[1], pki.cert("us").into_os_string());
    }

    #[test]
    fn a_temporary_directory_is_removed_with_the_fleet() {
        let (dir, temporary) = tls_dir(None);
        assert!(temporary);
        let pki = FleetPki::create(None, &["eu".to_string()]).unwrap();
        assert!(dir.join("eu.key").is_file());
        drop(pki);
        assert!(!dir.exists());
    }
}

#[cfg(test)]
mod flag_tests {
    use clap::Parser;

    use crate::fleet::{FleetArgs, FleetError};

    #[test]
    fn with_tls_the_fleet_sets_the_peer_tls_flags_itself() {
        let args = FleetArgs::parse_from(["fleet", "--tls", "--", "--peer-tls-ca", "/x"]);
        assert!(matches!(args.validate(), Err(FleetError::NodeArgs(_))));
        let args = FleetArgs::parse_from(["fleet", "--", "--peer-tls-ca", "/x"]);
        assert!(args.validate().is_ok(), "without --tls, the nodes' own tls flags pass through");
        assert!(FleetArgs::parse_from(["fleet", "--tls"]).validate().is_ok_and(|o| o.tls));
    }
}
