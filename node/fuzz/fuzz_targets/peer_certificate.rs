//! The certificate reader that binds a peer to its identity
//! (`security::CertIdentity::from_der`) on arbitrary bytes: it must never panic.
#![no_main]

use geocache_node::security::CertIdentity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = CertIdentity::from_der(data) {
        let _ = id.check("node", "region");
    }
});
