//! Client authentication: the passwords of `--auth-file`, checked in constant time,
//! reloaded when the file changes.
//!
//! The file holds one accepted password per line; surrounding whitespace is trimmed,
//! and blank lines and lines starting with `#` are ignored. Several passwords may be
//! accepted at once, which is how a password is rotated: add the new one, move the
//! clients over, remove the old one. Only SHA-256 digests of the passwords are kept in
//! memory; a candidate is hashed and compared with every digest, without stopping at a
//! match, so the time taken says nothing about which password (or how much of one)
//! matched.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use subtle::ConstantTimeEq;

use super::SecurityError;
use super::files::FileStamp;

/// Why a password file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordFileError {
    #[error("holds no password (only blank lines and comments)")]
    Empty,
    #[error("line {line}: a password may not contain control characters")]
    ControlCharacter { line: usize },
}

/// A set of accepted passwords, kept as SHA-256 digests. Its `Debug` shows only how
/// many there are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Passwords {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Passwords({} accepted)", self.digests.len())
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Passwords {
    /// Parses the contents of a password file.
    pub fn parse(text: &[u8]) -> Result<Passwords, PasswordFileError> {
        let mut digests = Vec::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            if line.iter().any(|b| b.is_ascii_control()) {
                return Err(PasswordFileError::ControlCharacter { line: i + 1 });
            }
            let d = digest(line);
            if !digests.contains(&d) {
                digests.push(d);
            }
        }
        if digests.is_empty() {
            return Err(PasswordFileError::Empty);
        }
        Ok(Passwords { digests })
    }

    /// How many passwords are accepted.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `candidate` is one of the passwords, in time independent of which one
    /// and of how much of it matched.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let d = digest(candidate);
        let mut ok = subtle::Choice::from(0);
        for known in &self.digests {
            ok |= known.ct_eq(&d);
        }
        ok.into()
    }
}

/// Which interface refused a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    Http,
    Resp,
}

/// The accepted passwords of `--auth-file`, reloaded when the file changes.
pub struct ClientAuth {
    path: PathBuf,
    current: RwLock<Arc<Passwords>>,
    seen: Mutex<Option<FileStamp>>,
    last_error: Mutex<Option<String>>,
    /// Whether `/metrics` needs a password too (`--metrics-auth`).
    pub protect_metrics: bool,
    pub failures_http: AtomicU64,
    pub failures_resp: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("path", &self.path)
            .field("passwords", &*self.current.read())
            .field("protect_metrics", &self.protect_metrics)
            .finish()
    }
}

fn read_passwords(path: &Path) -> Result<Passwords, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    Passwords::parse(&bytes).map_err(|e| e.to_string())
}

impl ClientAuth {
    /// Loads the password file; refuses an unreadable or empty one.
    pub fn load(path: &Path, protect_metrics: bool) -> Result<ClientAuth, SecurityError> {
        let stamp = FileStamp::of(path);
        let passwords = read_passwords(path).map_err(|message| SecurityError::File {
            flag: "auth-file",
            path: path.to_path_buf(),
            message,
        })?;
        tracing::info!(path = %path.display(), passwords = passwords.len(), "client authentication on");
        Ok(ClientAuth {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(passwords)),
            seen: Mutex::new(stamp),
            last_error: Mutex::new(None),
            protect_metrics,
            failures_http: AtomicU64::new(0),
            failures_resp: AtomicU64::new(0),
            reloads: AtomicU64::new(0),
            reload_errors: AtomicU64::new(0),
        })
    }

    /// Whether `candidate` is an accepted password; counts a refusal on `interface`.
    pub fn verify(&self, candidate: &[u8], interface: Interface) -> bool {
        let ok = self.current.read().accepts(candidate);
        if !ok {
            self.refused(interface);
        }
        ok
    }

    /// Counts a refused client (wrong or missing password).
    pub fn refused(&self, interface: Interface) {
        let counter = match interface {
            Interface::Http => &self.failures_http,
            Interface::Resp => &self.failures_resp,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// How many passwords are accepted now.
    pub fn accepted(&self) -> usize {
        self.current.read().len()
    }

    /// Reloads the file when it changed. A file that cannot be read or holds no
    /// password keeps the current passwords (a file caught half-written must not lock
    /// every client out); it is tried again on the next call.
    pub fn reload_if_changed(&self) {
        let stamp = FileStamp::of(&self.path);
        if stamp == *self.seen.lock() {
            return;
        }
        match read_passwords(&self.path) {
            Ok(passwords) => {
                let count = passwords.len();
                let changed = {
                    let mut current = self.current.write();
                    let changed = **current != passwords;
                    *current = Arc::new(passwords);
                    changed
                };
                *self.seen.lock() = stamp;
                *self.last_error.lock() = None;
                if changed {
                    self.reloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(path = %self.path.display(), passwords = count, "auth file reloaded");
                }
            }
            Err(message) => {
                let mut last = self.last_error.lock();
                if last.as_deref() != Some(message.as_str()) {
                    self.reload_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        path = %self.path.display(), error = %message,
                        "auth file refused; keeping the passwords accepted so far"
                    );
                    *last = Some(message);
                }
            }
        }
    }
}

/// The password of an `Authorization: Bearer <password>` header value, if it is one.
pub fn bearer(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let scheme_end = header.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = header.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blank_lines_and_surrounding_space_are_ignored() {
        let p = Passwords::parse(b"# rotation in progress\n\n  old-secret  \r\nnew-secret\n#not-a-password\n").unwrap();
        assert_eq!(p.len(), 2);
        assert!(p.accepts(b"old-secret"));
        assert!(p.accepts(b"new-secret"));
        assert!(!p.accepts(b"not-a-password"));
        assert!(!p.accepts(b"#not-a-password"));
        assert!(!p.accepts(b""));
        assert!(!p.accepts(b"old-secre"));
        assert!(!p.accepts(b"old-secret "));
    }

    #[test]
    fn a_file_without_passwords_is_refused() {
        assert_eq!(Passwords::parse(b"\n# nothing\n   \n"), Err(PasswordFileError::Empty));
        assert_eq!(Passwords::parse(b"a\nb\x07c\n"), Err(PasswordFileError::ControlCharacter { line: 2 }));
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let p = Passwords::parse(b"hunter2\n").unwrap();
        let shown = format!("{p:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(shown, "Passwords(1 accepted)");
    }

    #[test]
    fn bearer_headers_are_parsed_case_insensitively() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer   abc  "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer   "), None);
        assert_eq!(bearer(b""), None);
    }

    #[test]
    fn a_changed_file_is_reloaded_and_an_emptied_one_keeps_the_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwords");
        std::fs::write(&path, "one\n").unwrap();
        let auth = ClientAuth::load(&path, false).unwrap();
        assert!(auth.verify(b"one", Interface::Resp));
        let aside = dir.path().join("passwords.new");
        std::fs::write(&aside, "one\ntwo\n").unwrap();
        std::fs::rename(&aside, &path).unwrap();
        auth.reload_if_changed();
        assert!(auth.verify(b"two", Interface::Resp));
        assert_eq!(auth.accepted(), 2);
        std::fs::write(&path, "# emptied by mistake\n").unwrap();
        auth.reload_if_changed();
        assert!(auth.verify(b"one", Interface::Resp) && auth.verify(b"two", Interface::Http));
        assert!(!auth.verify(b"three", Interface::Http));
        assert_eq!(auth.failures_http.load(Ordering::Relaxed), 1);
        assert_eq!(auth.reload_errors.load(Ordering::Relaxed), 1);
        std::fs::write(&path, "two\n").unwrap();
        auth.reload_if_changed();
        assert!(!auth.verify(b"one", Interface::Resp));
        assert!(auth.verify(b"two", Interface::Resp));
    }

    #[test]
    fn an_unreadable_or_empty_file_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let e = ClientAuth::load(&dir.path().join("missing"), false).unwrap_err();
        assert!(e.to_string().starts_with("--auth-file"), "{e}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let e = ClientAuth::load(&empty, false).unwrap_err();
        assert!(e.to_string().contains("no password"), "{e}");
    }
}
