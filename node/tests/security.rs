//! Security against the real binary over sockets: client passwords (`--auth-file`)
//! on both ports and their rotation under load, TLS on the client ports (`--tls-*`)
//! and its certificate rotation, and mutual TLS between nodes (`--peer-tls-*`): a
//! certificate from another CA or for another region's identity is refused, and says
//! why in the logs. Certificates are made by the test (`security::pki`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a test: failing loudly is its job

mod common;

use std::io::{BufReader, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use geocache_node::security::pki::{Authority, LeafSpec};
use geocache_tests::NodeAddrs;
use geocache_tests::http::{self, HttpResponse};

const SEC: Duration = Duration::from_secs(1);

/// Replaces `path` the way Kubernetes and careful tools do: write aside, then rename.
fn write_atomically(path: &Path, contents: &str) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, contents).expect("write the new file");
    std::fs::rename(&aside, path).expect("rename it into place");
}

fn metric_of(node: &NodeProcess, sample: &str) -> Option<f64> {
    metric_value(&node.get("/metrics").text(), sample)
}

// ---------------------------------------------------------------------------------
// Passwords
// ---------------------------------------------------------------------------------

fn start_with_passwords(passwords: &str) -> (NodeProcess, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("passwords");
    std::fs::write(&file, passwords).expect("write passwords");
    let node = start_with(NodeOptions::new().arg("--auth-file").arg(&file));
    (node, dir, file)
}

fn put_with(node: &NodeProcess, key: &str, password: Option<&str>) -> HttpResponse {
    let bearer = password.map(|p| format!("Bearer {p}"));
    let headers: Vec<(&str, &str)> = bearer.iter().map(|b| ("Authorization", b.as_str())).collect();
    node.http("PUT", &key_path(key), &headers, b"{\"v\":1}")
}

#[test]
fn a_wrong_or_missing_password_is_refused_on_both_ports() {
    let (node, _dir, _) = start_with_passwords("# clients\ns3cret\n");

    for password in [None, Some("guess-9f3a"), Some("")] {
        let r = put_with(&node, "k", password);
        assert_eq!(r.status, 401, "{password:?}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unauthorized");
        assert!(r.header("www-authenticate").is_some_and(|h| h.starts_with("Bearer")));
    }
    assert_eq!(node.get("/v1/status").status, 401);
    assert_eq!(node.get("/healthz").status, 200);
    assert_eq!(node.get("/readyz").status, 200);
    assert_eq!(node.get("/metrics").status, 200, "metrics are open without --metrics-auth");
    assert_eq!(put_with(&node, "k", Some("s3cret")).status, 201);

    let mut conn = node.resp_conn();
    assert_eq!(conn.cmd(&["GET", "k"]).unwrap(), Frame::Error("NOAUTH Authentication required.".into()));
    assert_eq!(conn.cmd(&["PING"]).unwrap(), Frame::Error("NOAUTH Authentication required.".into()));
    let wrongpass = Frame::Error("WRONGPASS invalid username-password pair or user is disabled.".into());
    assert_eq!(conn.cmd(&["AUTH", "guess-9f3a"]).unwrap(), wrongpass);
    assert_eq!(conn.cmd(&["AUTH", "admin", "s3cret"]).unwrap(), wrongpass);
    assert_eq!(conn.cmd(&["AUTH", "s3cret"]).unwrap(), Frame::Simple("OK".into()));
    assert_eq!(conn.cmd(&["GET", "k"]).unwrap(), Frame::Bulk(b"{\"v\":1}".to_vec()));

    // The real redis-cli, with and without the password.
    let out = node.redis_cli(["GET", "k"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOAUTH"), "{out:?}");
    let out = node.redis_cli(["--no-auth-warning", "-a", "s3cret", "GET", "k"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "{\"v\":1}", "{out:?}");
    let out = node.redis_cli(["--no-auth-warning", "--user", "default", "--pass", "nope", "GET", "k"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("WRONGPASS"), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOAUTH"), "{out:?}");

    // A client that has not authenticated cannot make the node buffer a large value.
    let mut conn = node.resp_conn();
    conn.send_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000000\r\n").unwrap();
    let (reply, closed) = conn.read_until_closed(10 * SEC);
    assert!(closed, "the connection is closed");
    assert!(String::from_utf8_lossy(&reply).starts_with("-ERR Protocol error"), "{}", String::from_utf8_lossy(&reply));

    let metrics = node.get("/metrics").text();
    assert!(metric_value(&metrics, "geocache_auth_failures_total{interface=\"http\"}").unwrap_or(0.0) >= 4.0);
    assert!(metric_value(&metrics, "geocache_auth_failures_total{interface=\"resp\"}").unwrap_or(0.0) >= 4.0);
    let log = node.log_contents();
    for secret in ["s3cret", "guess-9f3a"] {
        assert!(!metrics.contains(secret) && !log.contains(secret), "{secret} leaked");
    }
}

#[test]
fn metrics_need_the_password_with_metrics_auth() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwords");
    std::fs::write(&file, "pw\n").unwrap();
    let node = start_with(NodeOptions::new().arg("--auth-file").arg(&file).arg("--metrics-auth"));
    assert_eq!(node.get("/metrics").status, 401);
    assert_eq!(node.http("GET", "/metrics", &[("Authorization", "Bearer pw")], b"").status, 200);
    assert_eq!(node.get("/readyz").status, 200);
}

#[test]
fn passwords_rotate_under_a_steady_write_load_without_a_failed_request() {
    let (node, _dir, file) = start_with_passwords("old\n");
    let current = Arc::new(Mutex::new("old".to_string()));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::<String>::new())));
    let (http_addr, resp_addr) = (node.http_addr(), node.resp_addr());

    let mut workers = Vec::new();
    let worker_state = || (current.clone(), stop.clone(), ok.clone(), failed.clone());
    for w in 0..2 {
        let (current, stop, ok, failed) = worker_state();
        // HTTP: every request with the password the client is configured with now.
        workers.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let bearer = format!("Bearer {}", current.lock().unwrap());
                let target = key_path(&format!("http-{w}-{i}"));
                match http::request(http_addr, "PUT", &target, &[("Authorization", &bearer)], b"1", 10 * SEC) {
                    Ok(r) if r.status == 201 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) => {
                        failed.lock().unwrap().push(format!("http {}: {}", r.status, r.text()));
                        0
                    }
                    Err(e) => {
                        failed.lock().unwrap().push(format!("http: {e}"));
                        0
                    }
                };
                i += 1;
            }
        }));
        // RESP: a new connection every 20 commands, authenticated with the password
        // of that moment.
        let (current, stop, ok, failed) = worker_state();
        workers.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let password = current.lock().unwrap().clone();
                let mut conn = match RespConn::connect(resp_addr, 10 * SEC) {
                    Ok(c) => c,
                    Err(e) => {
                        failed.lock().unwrap().push(format!("resp connect: {e}"));
                        continue;
                    }
                };
                match conn.cmd(&["AUTH", password.as_str()]) {
                    Ok(Frame::Simple(s)) if s == "OK" => {}
                    other => {
                        failed.lock().unwrap().push(format!("resp auth: {other:?}"));
                        continue;
                    }
                }
                for _ in 0..20 {
                    match conn.cmd(&["SET", &format!("resp-{w}-{i}"), "1"]) {
                        Ok(Frame::Simple(s)) if s == "OK" => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            failed.lock().unwrap().push(format!("resp set: {other:?}"));
                            0
                        }
                    };
                    i += 1;
                }
            }
        }));
    }
    let passwords_now = |n: f64| wait_until(10 * SEC, || metric_of(&node, "geocache_auth_passwords") == Some(n));

    std::thread::sleep(SEC);
    write_atomically(&file, "old\nnew\n");
    assert!(passwords_now(2.0), "the node did not load the second password");
    std::thread::sleep(SEC);
    *current.lock().unwrap() = "new".to_string();
    std::thread::sleep(SEC);
    write_atomically(&file, "# old removed\nnew\n");
    assert!(passwords_now(1.0), "the node did not drop the old password");
    std::thread::sleep(SEC);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a load worker panicked");
    }

    let failed = failed.lock().unwrap();
    assert!(failed.is_empty(), "{} failed requests, first: {:?}", failed.len(), failed.first());
    assert!(ok.load(Ordering::Relaxed) > 100, "too few requests: {}", ok.load(Ordering::Relaxed));
    assert_eq!(put_with(&node, "after", Some("old")).status, 401, "the old password is refused now");
    assert_eq!(put_with(&node, "after", Some("new")).status, 201);
    assert!(node.log_contents().contains("auth file reloaded"));
}

// ---------------------------------------------------------------------------------
// Certificates, HTTPS and a blocking TLS client
// ---------------------------------------------------------------------------------

struct Pki {
    dir: tempfile::TempDir,
}

#[derive(Debug, Clone)]
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        Pki { dir: tempfile::tempdir().expect("temp dir") }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self, name: &str) -> (Authority, PathBuf) {
        let ca = Authority::generate(name, Duration::from_secs(86_400)).expect("a ca");
        let path = self.path(&format!("{name}.crt"));
        std::fs::write(&path, ca.cert_pem()).expect("write the ca");
        (ca, path)
    }

    /// Issues a certificate into `name.crt` / `name.key` (replacing them atomically
    /// when they exist: the key first, as a careless tool would, to show that a
    /// mismatched pair is not taken).
    fn issue(&self, ca: &Authority, name: &str, ips: &[IpAddr], uris: &[String]) -> CertFiles {
        let issued = ca
            .issue(&LeafSpec {
                common_name: name.to_string(),
                dns_names: vec!["localhost".into()],
                ip_addresses: ips.to_vec(),
                uris: uris.to_vec(),
                valid_for: Duration::from_secs(3600),
            })
            .expect("a certificate");
        let files = CertFiles { cert: self.path(&format!("{name}.crt")), key: self.path(&format!("{name}.key")) };
        write_atomically(&files.key, &issued.key_pem);
        write_atomically(&files.cert, &issued.cert_pem);
        files
    }
}

fn tls_client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let roots = geocache_node::security::tls::read_roots("ca", ca).expect("read the ca");
    Arc::new(
        rustls::ClientConfig::builder_with_provider(geocache_node::security::tls::provider())
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// One HTTPS request (`Connection: close`); returns the response and the DER of the
/// certificate the server presented.
fn https(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(HttpResponse, Vec<u8>)> {
    let tcp = TcpStream::connect_timeout(&addr, 10 * SEC)?;
    tcp.set_read_timeout(Some(20 * SEC))?;
    tcp.set_write_timeout(Some(20 * SEC))?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let presented = stream.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default();
    let response = http::read_response(&mut BufReader::new(&mut stream), method == "HEAD")?;
    Ok((response, presented))
}

/// Starts a node whose HTTP port speaks TLS and waits until `/readyz` answers over it.
fn start_tls_node(opts: NodeOptions, client: &Arc<rustls::ClientConfig>) -> NodeProcess {
    let addrs = opts.addrs.expect("tls nodes are started on addresses picked beforehand");
    let mut node = NodeProcess::spawn(bin(), opts);
    let deadline = Instant::now() + 30 * SEC;
    loop {
        assert!(node.is_running(), "the node exited before it was ready:\n{}", node.log_contents());
        if let Ok((r, _)) = https(client, addrs.http, "GET", "/readyz", &[], b"")
            && r.status == 200
        {
            return node;
        }
        assert!(Instant::now() < deadline, "the node was not ready over https within 30s:\n{}", node.log_contents());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tls_args(opts: NodeOptions, files: &CertFiles) -> NodeOptions {
    opts.arg("--tls-cert").arg(&files.cert).arg("--tls-key").arg(&files.key)
}

fn redis_cli_tls(node: &NodeProcess, ca: &Path, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new("redis-cli");
    cmd.arg("--tls").arg("--cacert").arg(ca);
    cmd.arg("-h").arg(node.resp_addr().ip().to_string()).arg("-p").arg(node.resp_addr().port().to_string());
    cmd.args(args).env_remove("REDISCLI_AUTH");
    let out = geocache_tests::run_with_timeout(&mut cmd, None, 30 * SEC).expect("run redis-cli");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_client_ports_speak_tls_with_the_configured_certificate_and_password() {
    let pki = Pki::new();
    let (ca, ca_path) = pki.ca("clients-ca");
    let addrs = NodeAddrs::pick();
    let files = pki.issue(&ca, "server", &[addrs.ip.into()], &[]);
    let passwords = pki.path("passwords");
    std::fs::write(&passwords, "tls-pw\n").unwrap();
    let client = tls_client_config(&ca_path);
    let node =
        start_tls_node(tls_args(NodeOptions::new().addrs(addrs), &files).arg("--auth-file").arg(&passwords), &client);

    let auth = [("Authorization", "Bearer tls-pw")];
    let (r, _) = https(&client, addrs.http, "PUT", &key_path("doc"), &auth, b"{\"a\":1}").unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    let (r, _) = https(&client, addrs.http, "GET", &key_path("doc"), &[], b"").unwrap();
    assert_eq!(r.status, 401, "the password is still needed over TLS");
    let (r, _) = https(&client, addrs.http, "GET", &key_path("doc"), &auth, b"").unwrap();
    assert_eq!((r.status, r.text()), (200, "{\"a\":1}".to_string()));

    // Plain HTTP on the TLS port gets no answer; a client that trusts another CA fails.
    assert!(http::request(addrs.http, "GET", "/readyz", &[], b"", 5 * SEC).map(|r| r.status != 200).unwrap_or(true));
    let (_, other_ca) = pki.ca("other-ca");
    assert!(https(&tls_client_config(&other_ca), addrs.http, "GET", "/readyz", &[], b"").is_err());

    // The real redis-cli over TLS.
    let (ok, out) = redis_cli_tls(&node, &ca_path, &["--no-auth-warning", "-a", "tls-pw", "SET", "greeting", "hi"]);
    assert!(ok && out.trim() == "OK", "{out}");
    let (ok, out) = redis_cli_tls(&node, &ca_path, &["--no-auth-warning", "-a", "tls-pw", "GET", "doc"]);
    assert!(ok && out.trim() == "{\"a\":1}", "{out}");
    let (_, out) = redis_cli_tls(&node, &ca_path, &["GET", "doc"]);
    assert!(out.contains("NOAUTH"), "{out}");
    // A plain RESP client on the TLS port gets nothing it can read as a reply.
    let mut plain = node.resp_conn();
    let _ = plain.send_raw(b"PING\r\n");
    let (reply, _) = plain.read_until_closed(5 * SEC);
    assert!(!String::from_utf8_lossy(&reply).contains("PONG"));
}

#[test]
fn a_rotated_client_certificate_is_served_to_new_connections_without_a_failed_request() {
    let pki = Pki::new();
    let (ca, ca_path) = pki.ca("clients-ca");
    let addrs = NodeAddrs::pick();
    let files = pki.issue(&ca, "server", &[addrs.ip.into()], &[]);
    let client = tls_client_config(&ca_path);
    let node = start_tls_node(tls_args(NodeOptions::new().addrs(addrs), &files), &client);
    let first = std::fs::read_to_string(&files.cert).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let load = {
        let (stop, ok, failed, client) = (stop.clone(), ok.clone(), failed.clone(), client.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                match https(&client, addrs.http, "PUT", &key_path(&format!("k{i}")), &[], b"1") {
                    Ok((r, _)) if r.status == 201 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((r, _)) => failed.lock().unwrap().push(format!("{} {}", r.status, r.text())),
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
                i += 1;
            }
        })
    };
    std::thread::sleep(SEC);
    let rotated = pki.issue(&ca, "server", &[addrs.ip.into()], &[]);
    let reloaded = wait_until(10 * SEC, || {
        https(&client, addrs.http, "GET", "/metrics", &[], b"")
            .ok()
            .and_then(|(r, _)| metric_value(&r.text(), "geocache_tls_reloads_total{files=\"client\"}"))
            == Some(1.0)
    });
    assert!(reloaded, "the node did not reload the certificate:\n{}", node.log_contents());
    std::thread::sleep(SEC);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    let failed = failed.lock().unwrap();
    assert!(failed.is_empty(), "{} failed requests, first: {:?}", failed.len(), failed.first());
    assert!(ok.load(Ordering::Relaxed) > 20);
    let (_, presented) = https(&client, addrs.http, "GET", "/healthz", &[], b"").unwrap();
    let now = std::fs::read_to_string(&rotated.cert).unwrap();
    assert_ne!(first, now);
    let der_now = rustls::pki_types::CertificateDer::pem_slice_iter(now.as_bytes()).next().unwrap().unwrap();
    assert_eq!(presented, der_now.to_vec(), "new connections get the rotated certificate");
}

// ---------------------------------------------------------------------------------
// Mutual TLS between nodes
// ---------------------------------------------------------------------------------

use rustls::pki_types::pem::PemObject as _;

/// A node with `--peer-tls-*`: its certificate from `ca` (with the given identity
/// URIs), trusting `trusted_ca`, linked to `peers`.
fn peer_node(
    pki: &Pki,
    (ca, trusted_ca): (&Authority, &Path),
    id: &str,
    region: &str,
    uris: &[String],
    peers: &[SocketAddr],
    addrs: NodeAddrs,
) -> NodeProcess {
    let files = pki.issue(ca, id, &[addrs.ip.into()], uris);
    let peers: Vec<String> = peers.iter().map(|p| p.to_string()).collect();
    let mut opts = NodeOptions::new()
        .node_id(id)
        .region(region)
        .addrs(addrs)
        .arg("--peer-tls-cert")
        .arg(&files.cert)
        .arg("--peer-tls-key")
        .arg(&files.key)
        .arg("--peer-tls-ca")
        .arg(trusted_ca)
        .args(["--peer-timeout", "1s"]);
    if !peers.is_empty() {
        opts = opts.arg("--peers").arg(peers.join(","));
    }
    start_with(opts)
}

fn region_uri(region: &str) -> Vec<String> {
    vec![geocache_node::security::cert::region_uri(region)]
}

fn peers_up(node: &NodeProcess) -> usize {
    node.status_doc()["peers"].as_array().map_or(0, |p| p.iter().filter(|p| p["state"] == "up").count())
}

fn readable(node: &NodeProcess, key: &str) -> bool {
    node.get(&key_path(key)).status == 200
}

#[test]
fn nodes_of_the_fleet_ca_replicate_over_mutual_tls_and_survive_a_certificate_rotation() {
    let pki = Pki::new();
    let (ca, ca_path) = pki.ca("fleet-ca");
    let (a_addrs, b_addrs) = (NodeAddrs::pick(), NodeAddrs::pick());
    let a = peer_node(&pki, (&ca, &ca_path), "eu-0", "eu", &region_uri("eu"), &[b_addrs.peer], a_addrs);
    let b = peer_node(&pki, (&ca, &ca_path), "us-0", "us", &region_uri("us"), &[a_addrs.peer], b_addrs);
    assert!(wait_until(15 * SEC, || peers_up(&a) == 1 && peers_up(&b) == 1), "the nodes did not link");
    assert_eq!(a.http("PUT", &key_path("over-tls"), &[], b"1").status, 201);
    assert!(wait_until(10 * SEC, || readable(&b, "over-tls")), "the write did not replicate");

    // Rotation under a steady write load: new certificates from the same CA.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, failed, addr) = (stop.clone(), failed.clone(), a.http_addr());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let ok = http::request(addr, "PUT", &key_path(&format!("rot{i}")), &[], b"1", 10 * SEC)
                    .is_ok_and(|r| r.status == 201);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            i
        })
    };
    std::thread::sleep(SEC);
    pki.issue(&ca, "eu-0", &[a_addrs.ip.into()], &region_uri("eu"));
    pki.issue(&ca, "us-0", &[b_addrs.ip.into()], &region_uri("us"));
    let reloaded = |n: &NodeProcess| metric_of(n, "geocache_tls_reloads_total{files=\"peer\"}") == Some(1.0);
    assert!(wait_until(10 * SEC, || reloaded(&a) && reloaded(&b)), "the certificates were not reloaded");
    std::thread::sleep(SEC);
    stop.store(true, Ordering::Relaxed);
    let written = load.join().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(wait_until(10 * SEC, || readable(&b, &format!("rot{}", written - 1))), "replication stopped");
    assert_eq!(peers_up(&a), 1, "the healthy link survived the rotation");
    assert_eq!(metric_of(&a, "geocache_peer_tls_failures_total"), Some(0.0));
}

#[test]
fn a_node_with_a_certificate_from_another_ca_cannot_join_and_both_logs_say_why() {
    let pki = Pki::new();
    let (fleet, fleet_path) = pki.ca("fleet-ca");
    let (other, _) = pki.ca("other-ca");
    let (a_addrs, b_addrs) = (NodeAddrs::pick(), NodeAddrs::pick());
    let a = peer_node(&pki, (&fleet, &fleet_path), "eu-0", "eu", &region_uri("eu"), &[b_addrs.peer], a_addrs);
    // Trusts the fleet CA, but its own certificate comes from another CA.
    let b = peer_node(&pki, (&other, &fleet_path), "eu-1", "eu", &region_uri("eu"), &[a_addrs.peer], b_addrs);
    assert_eq!(b.http("PUT", &key_path("intruder"), &[], b"1").status, 201);
    let refused = wait_until(15 * SEC, || {
        a.log_contents().contains("certificate from another ca")
            && b.log_contents().contains("certificate from another ca")
    });
    assert!(refused, "the logs do not say why:\n--- a ---\n{}\n--- b ---\n{}", a.log_contents(), b.log_contents());
    assert!(!readable(&a, "intruder"), "a write of the intruder reached the fleet");
    assert_eq!(peers_up(&a), 0);
    assert!(metric_of(&a, "geocache_peer_tls_failures_total").unwrap_or(0.0) >= 1.0);
}

#[test]
fn a_node_presenting_a_certificate_for_another_regions_identity_is_refused() {
    let pki = Pki::new();
    let (ca, ca_path) = pki.ca("fleet-ca");
    let (a_addrs, b_addrs) = (NodeAddrs::pick(), NodeAddrs::pick());
    let a = peer_node(&pki, (&ca, &ca_path), "eu-0", "eu", &region_uri("eu"), &[b_addrs.peer], a_addrs);
    // A certificate of region us, on a node that says it is in region eu.
    let b = peer_node(&pki, (&ca, &ca_path), "eu-1", "eu", &region_uri("us"), &[a_addrs.peer], b_addrs);
    assert_eq!(b.http("PUT", &key_path("impostor"), &[], b"1").status, 201);
    let why = "certificate for region us but claims region eu";
    let refused = wait_until(15 * SEC, || a.log_contents().contains(why) && b.log_contents().contains(why));
    assert!(refused, "the logs do not say why:\n--- a ---\n{}\n--- b ---\n{}", a.log_contents(), b.log_contents());
    assert!(b.log_contents().contains("--peer-tls-cert does not authorize this node"), "b warns at start");
    assert!(!readable(&a, "impostor"));
    assert!(metric_of(&a, "geocache_peer_identity_refusals_total").unwrap_or(0.0) >= 1.0);
}

#[test]
fn a_node_without_tls_cannot_join_a_fleet_with_mutual_tls() {
    let pki = Pki::new();
    let (ca, ca_path) = pki.ca("fleet-ca");
    let (a_addrs, b_addrs) = (NodeAddrs::pick(), NodeAddrs::pick());
    let a = peer_node(&pki, (&ca, &ca_path), "eu-0", "eu", &region_uri("eu"), &[b_addrs.peer], a_addrs);
    let b = start_with(
        NodeOptions::new().node_id("eu-1").region("eu").addrs(b_addrs).arg("--peers").arg(a_addrs.peer.to_string()),
    );
    assert_eq!(b.http("PUT", &key_path("plain"), &[], b"1").status, 201);
    assert!(
        wait_until(15 * SEC, || a.log_contents().contains("does it run without tls?")),
        "a does not say why:\n{}",
        a.log_contents()
    );
    assert!(!readable(&a, "plain"));
}
