//! The container runtime: a pod's container runs as a local process in its own mount, UTS
//! and network namespaces, chrooted into a root filesystem made of bind mounts — the
//! mapped binary at the image's entrypoint, the host's shared libraries, `/dev`, `/proc`,
//! a few generated files in `/etc`, and the pod's volumes at their mount paths — like a
//! distroless image. The mounts are made in the child's private mount namespace, so the
//! host sees nothing of them.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

/// One bind mount into the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// What is mounted (a host path).
    pub source: PathBuf,
    /// Where, as an absolute path inside the container.
    pub target: PathBuf,
    pub read_only: bool,
}

/// Everything needed to start one container.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    /// Path of the program inside the container.
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The root filesystem directory (made by [`prepare_rootfs`]).
    pub rootfs: PathBuf,
    /// The pod's network namespace (`/run/netns/<name>`).
    pub netns: PathBuf,
    pub hostname: String,
    pub binds: Vec<Bind>,
    /// `readOnlyRootFilesystem`: the root filesystem is read-only; only volumes (and
    /// `/dev`) can be written.
    pub read_only_root: bool,
    pub uid: u32,
    pub gid: u32,
    pub supplementary_groups: Vec<u32>,
    /// Where stdout and stderr go (appended).
    pub log: PathBuf,
}

/// Host directories shared read-only with every container (what a dynamically linked
/// binary needs), and the host's top-level symlinks into them (merged `/usr`).
const HOST_DIRS: &[&str] = &["/usr/lib", "/usr/lib64", "/dev", "/proc"];
const HOST_LINKS: &[&str] = &["/lib", "/lib64", "/bin", "/sbin"];

/// Makes the root filesystem of a container under `rootfs`: the mount points of the host
/// directories, of `binds` (files or directories, like their sources), and `/etc` with
/// `files` written into it, and `/tmp`.
pub fn prepare_rootfs(rootfs: &Path, binds: &[Bind], etc_files: &[(&str, String)]) -> anyhow::Result<()> {
    fs::create_dir_all(rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    fs::set_permissions(rootfs, fs::Permissions::from_mode(0o755))?;
    for dir in HOST_DIRS {
        if Path::new(dir).is_dir() {
            fs::create_dir_all(inside(rootfs, Path::new(dir)))?;
        }
    }
    for link in HOST_LINKS {
        let path = inside(rootfs, Path::new(link));
        if let Ok(target) = fs::read_link(link)
            && fs::symlink_metadata(&path).is_err()
        {
            symlink(&target, &path).with_context(|| format!("linking {}", path.display()))?;
        }
    }
    for bind in binds {
        let target = inside(rootfs, &bind.target);
        if bind.source.is_dir() {
            fs::create_dir_all(&target).with_context(|| format!("creating mount point {}", target.display()))?;
        } else {
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            OpenOptions::new().create(true).truncate(false).write(true).open(&target)?;
        }
    }
    let etc = rootfs.join("etc");
    fs::create_dir_all(&etc)?;
    for (name, content) in etc_files {
        fs::write(etc.join(name), content).with_context(|| format!("writing /etc/{name}"))?;
    }
    let tmp = rootfs.join("tmp");
    fs::create_dir_all(&tmp)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// `path` (absolute, inside the container) as a path under `rootfs`.
pub fn inside(rootfs: &Path, path: &Path) -> PathBuf {
    rootfs.join(path.strip_prefix("/").unwrap_or(path))
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// A mount to make in the child: source, target (host path under the rootfs), flags.
struct Mount {
    source: CString,
    target: CString,
    read_only: bool,
}

/// Starts the container. The child enters the pod's network namespace and new mount and
/// UTS namespaces, mounts, chroots, drops to the pod's user, asks to be killed when its
/// parent thread dies, and runs the program with exactly `env`.
pub fn spawn(spec: &ContainerSpec) -> anyhow::Result<Child> {
    let netns = File::open(&spec.netns).with_context(|| format!("opening {}", spec.netns.display()))?;
    let mut mounts: Vec<Mount> = Vec::new();
    for dir in HOST_DIRS {
        if Path::new(dir).is_dir() {
            mounts.push(Mount {
                source: cstring(dir.as_bytes())?,
                target: cstring(inside(&spec.rootfs, Path::new(dir)).as_os_str().as_bytes())?,
                read_only: *dir != "/dev" && *dir != "/proc",
            });
        }
    }
    for bind in &spec.binds {
        mounts.push(Mount {
            source: cstring(bind.source.as_os_str().as_bytes())?,
            target: cstring(inside(&spec.rootfs, &bind.target).as_os_str().as_bytes())?,
            read_only: bind.read_only,
        });
    }
    let rootfs = cstring(spec.rootfs.as_os_str().as_bytes())?;
    let root = cstring(b"/")?;
    let hostname = spec.hostname.clone().into_bytes();
    let groups: Vec<libc::gid_t> = spec.supplementary_groups.clone();
    let (uid, gid) = (spec.uid, spec.gid);
    let netns_fd = netns.as_raw_fd();
    let read_only_root = spec.read_only_root;

    let log = OpenOptions::new().create(true).append(true).open(&spec.log)?;
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: between fork and exec the closure only makes system calls on data prepared
    // before the fork (no allocation, no locks).
    unsafe {
        command.pre_exec(move || {
            let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
            check(libc::setns(netns_fd, libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            if read_only_root {
                // The root filesystem as a mount of its own, made read-only once every
                // other mount is on top of it (those keep their own flags).
                check(libc::mount(
                    rootfs.as_ptr(),
                    rootfs.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
            }
            for m in &mounts {
                check(libc::mount(
                    m.source.as_ptr(),
                    m.target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                if m.read_only {
                    check(libc::mount(
                        std::ptr::null(),
                        m.target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                        std::ptr::null(),
                    ))?;
                }
            }
            if read_only_root {
                check(libc::mount(
                    std::ptr::null(),
                    rootfs.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ))?;
            }
            check(libc::sethostname(hostname.as_ptr().cast(), hostname.len()))?;
            check(libc::chroot(rootfs.as_ptr()))?;
            check(libc::chdir(root.as_ptr()))?;
            check(libc::setsid().min(0))?;
            check(libc::setgroups(groups.len(), groups.as_ptr()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            Ok(())
        });
    }
    let child = command.spawn().with_context(|| format!("starting {} in {}", spec.program, spec.rootfs.display()))?;
    drop(netns);
    Ok(child)
}

/// Whether any mount of this mount namespace lies under `dir` (then it must not be removed).
pub fn has_mounts_under(dir: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return true };
    let dir = dir.to_string_lossy();
    info.lines().filter_map(|l| l.split(' ').nth(4)).any(|mount_point| mount_point.starts_with(dir.as_ref()))
}
