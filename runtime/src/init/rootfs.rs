//! Build the container's root filesystem in its private mount namespace and pivot into it.
//! Nothing mounted here is visible on the host: `/` is made private first.

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::cgroup::{Cgroup, CgroupMode};
use crate::protocol::{InitConfig, RootPlan};
use crate::spec::{Mount, Network};

/// Host directories a `host: true` container sees read-only (when present).
const HOST_DIRS: [&str; 7] = ["usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"];
/// /proc entries that must not be written from a container.
const PROC_READONLY: [&str; 5] = [
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];
/// /proc and /sys entries that leak host information or reach its hardware: Docker's
/// masked paths, hidden behind /dev/null (files) or an empty read-only tmpfs (directories).
const MASKED: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

fn m(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(source, target, fstype, flags, data).map_err(|e| {
        format!(
            "mount {} on {}: {e}",
            source.or(fstype).unwrap_or("(none)"),
            target.display()
        )
    })
}

fn mkdir(p: &Path) -> Result<(), String> {
    fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))
}

/// `target` (absolute inside the container) under `root`, its symlinks resolved as if `root`
/// were `/`, as runc does: this runs before pivot_root, where an image's `/var/run -> /run`
/// would otherwise lead to the host's /run, and the mount (with the directory or file made
/// for it) would land there instead of in the container.
fn inside(root: &Path, target: &Path) -> Result<PathBuf, String> {
    safe_path::scoped_join(root, target)
        .map_err(|e| format!("{} in the container's root: {e}", target.display()))
}

/// As runc does, a working directory the root lacks is made, and before a read-only root
/// turns read-only, as mount targets are. A failure is left for the workload's chdir to
/// report.
fn make_workdir(root: &Path, cwd: &str) {
    if let Ok(dir) = inside(root, Path::new(cwd)) {
        let _ = fs::create_dir_all(dir);
    }
}

fn remount_ro(target: &Path) -> Result<(), String> {
    remount(target, MsFlags::MS_RDONLY)
}

/// Makes the bind at `target` read-only, and every mount beneath it too, as Docker's
/// `readonly` does since Docker 25: a read-only bind of a directory holding mounts must not
/// leave them writable. Each keeps its source's nosuid, nodev and noexec (a bind remount
/// sets every flag at once). Only the bind's own tree is touched: mounts the bind now
/// hides (the container's own `/etc/hosts` under a bind over `/etc`) are not reachable by
/// their paths any more.
fn remount_ro_recursive(target: &Path) -> Result<(), String> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    // (mount id, parent id, mount point), in the order the mounts were made.
    let mounts: Vec<(&str, &str, PathBuf)> = mountinfo
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let id = fields.next()?;
            let parent = fields.next()?;
            Some((id, parent, mount_point(fields.nth(2)?)))
        })
        .collect();
    // The bind is the last mount made at `target`; its tree, every mount whose chain of
    // parents leads to it.
    let Some(bind) = mounts.iter().rposition(|(_, _, point)| point == target) else {
        return remount(target, locked_flags(target)? | MsFlags::MS_RDONLY);
    };
    let mut tree = vec![mounts[bind].0];
    let mut points = vec![mounts[bind].2.clone()];
    for (id, parent, point) in &mounts[bind + 1..] {
        if tree.contains(parent) {
            tree.push(id);
            points.push(point.clone());
        }
    }
    points.dedup();
    for point in points {
        remount(&point, locked_flags(&point)? | MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

/// A mount point as mountinfo writes it: space, tab, newline and backslash as octal
/// escapes (`\040`).
fn mount_point(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|_| bytes[i] == b'\\')
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The flags of the mount at `path` that a remount must keep: read-only, nosuid, nodev,
/// noexec.
fn locked_flags(path: &Path) -> Result<MsFlags, String> {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let flags = statvfs(path)
        .map_err(|e| format!("statvfs {}: {e}", path.display()))?
        .flags();
    let mut kept = MsFlags::empty();
    for (have, keep) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if flags.contains(have) {
            kept |= keep;
        }
    }
    Ok(kept)
}

/// Sets a mount's flags to `flags` (a bind remount replaces them all).
fn remount(target: &Path, flags: MsFlags) -> Result<(), String> {
    m(
        None,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None,
    )
}

pub(super) fn setup(cfg: &InitConfig, address: Option<Ipv4Addr>) -> Result<(), String> {
    m(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let root = cfg.root_mount.as_path();
    // Device nodes in the root do not open (an image's own, or a rootfs directory's): the
    // workload's devices are the usual ones its /dev gets below (see `DEFAULT_CAPS` for why
    // this stands in for Docker's device cgroup). setuid binaries still work, as in Docker.
    let mut root_flags = match &cfg.root {
        RootPlan::Host => MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        _ => MsFlags::MS_NODEV,
    };
    match &cfg.root {
        RootPlan::Dir(dir) => {
            m(
                Some(&dir.to_string_lossy()),
                root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            // A bind remount sets every flag at once: the directory's own mount's
            // read-only, nosuid, nodev and noexec are kept, as runc keeps them.
            root_flags |= locked_flags(root)?;
            remount(root, root_flags)?;
        }
        RootPlan::Overlay {
            lowers,
            upper,
            work,
        } => {
            let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
            let data = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.join(":"),
                upper.display(),
                work.display()
            );
            m(
                Some("overlay"),
                root,
                Some("overlay"),
                root_flags,
                Some(&data),
            )?;
        }
        RootPlan::Host => host_root(root, cfg)?,
    }

    mount_proc(root)?;
    mount_dev(root)?;
    mount_sys(root)?;
    mount_cgroups(root, &cfg.cgroup)?;
    // Before the user's mounts, which win: one at /etc/hosts (or over /etc) is used as it is,
    // as Docker leaves a user's file alone, and nothing is written through it.
    write_etc_files(root, cfg, address);
    for mnt in &cfg.mounts {
        user_mount(root, mnt)?;
    }
    make_workdir(root, &cfg.cwd);
    if cfg.read_only {
        remount(root, root_flags | MsFlags::MS_RDONLY)?;
    }

    nix::unistd::chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only
    // the container's tree (the trick runc uses; needs no spare directory in the rootfs).
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;

    protect_kernel_files()
}

/// A tmpfs root holding read-only binds of the host's system directories.
fn host_root(root: &Path, cfg: &InitConfig) -> Result<(), String> {
    m(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=755,size=16m"),
    )?;
    for d in HOST_DIRS {
        let host = Path::new("/").join(d);
        let target = root.join(d);
        let Ok(meta) = fs::symlink_metadata(&host) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            // usrmerge: /bin -> usr/bin stays a symlink.
            let link = fs::read_link(&host).map_err(|e| format!("{}: {e}", host.display()))?;
            symlink(&link, &target).map_err(|e| format!("{}: {e}", target.display()))?;
        } else if meta.is_dir() {
            mkdir(&target)?;
            m(
                Some(&host.to_string_lossy()),
                &target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            remount_ro(&target)?;
        }
    }
    let etc = root.join("etc");
    mkdir(&etc)?;
    let files = [
        ("passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n".to_string()),
        ("group", "root:x:0:\nnogroup:x:65534:\n".to_string()),
        ("hostname", format!("{}\n", cfg.hostname)),
        ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n".to_string()),
    ];
    for (name, content) in files {
        fs::write(etc.join(name), content).map_err(|e| format!("writing /etc/{name}: {e}"))?;
    }
    // Dynamic binaries from the host need the loader cache; commands reached through
    // Debian's alternatives need /etc/alternatives.
    let _ = fs::copy("/etc/ld.so.cache", etc.join("ld.so.cache"));
    if Path::new("/etc/alternatives").is_dir() {
        let alt = etc.join("alternatives");
        mkdir(&alt)?;
        m(
            Some("/etc/alternatives"),
            &alt,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
        remount_ro(&alt)?;
    }
    for d in ["root", "tmp"] {
        mkdir(&root.join(d))?;
    }
    m(
        Some("tmpfs"),
        &root.join("tmp"),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )
}

fn mount_proc(root: &Path) -> Result<(), String> {
    let p = inside(root, Path::new("/proc"))?;
    mkdir(&p)?;
    m(
        Some("proc"),
        &p,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
}

/// A minimal /dev: the usual character devices, a private devpts, /dev/mqueue, /dev/shm.
fn mount_dev(root: &Path) -> Result<(), String> {
    let dev = inside(root, Path::new("/dev"))?;
    mkdir(&dev)?;
    m(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    let nodes: [(&str, u64, u64); 6] = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    for (name, major, minor) in nodes {
        let p = dev.join(name);
        mknod(
            &p,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| format!("mknod /dev/{name}: {e}"))?;
        // mknod honours the umask; the nodes must be usable by any user.
        let _ = nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            &p,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        );
    }
    let pts = dev.join("pts");
    mkdir(&pts)?;
    m(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        // gid 5 is `tty` in every distribution's /etc/group, as Docker mounts it.
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    // POSIX message queues of the container's own IPC namespace. Best effort: a kernel
    // without them (or a sandbox that refuses the mount) still runs containers, which
    // then have no /dev/mqueue.
    let mqueue = dev.join("mqueue");
    mkdir(&mqueue)?;
    if m(
        Some("mqueue"),
        &mqueue,
        Some("mqueue"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )
    .is_err()
    {
        let _ = fs::remove_dir(&mqueue);
    }
    let shm = dev.join("shm");
    mkdir(&shm)?;
    m(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )?;
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        symlink(target, dev.join(name)).map_err(|e| format!("/dev/{name}: {e}"))?;
    }
    Ok(())
}

/// /sys read-only: a fresh sysfs (showing the network devices of the container's network
/// namespace, the host's with host networking), as Docker mounts it. If the kernel refuses
/// a new instance the host's is bound instead, without what is mounted below it (tracefs,
/// debugfs, securityfs, …), which a bind of the whole tree would leave writable.
fn mount_sys(root: &Path) -> Result<(), String> {
    let sys = inside(root, Path::new("/sys"))?;
    mkdir(&sys)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY;
    if m(Some("sysfs"), &sys, Some("sysfs"), flags, None).is_ok() {
        return Ok(());
    }
    m(Some("/sys"), &sys, None, MsFlags::MS_BIND, None)?;
    remount(&sys, flags)
}

/// The container's own cgroups, read-only at /sys/fs/cgroup, as Docker shows them: the JVM,
/// Go and Node size their heaps and threads from the limits they find there, and without
/// them take the host's memory and cores for theirs. On v2 the container's cgroup is the
/// tree; on v1 a tmpfs holds one directory per hierarchy (`memory`, `cpu,cpuacct`, …) with
/// the container's cgroup of it, and a link for each controller named apart from its
/// hierarchy (`cpu -> cpu,cpuacct`).
fn mount_cgroups(root: &Path, cgroup: &Cgroup) -> Result<(), String> {
    let target = inside(root, Path::new("/sys/fs/cgroup"))?;
    if !target.is_dir() {
        return Ok(());
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let bind_ro = |source: &Path, target: &Path| -> Result<(), String> {
        m(
            Some(&source.to_string_lossy()),
            target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
        remount(target, flags | MsFlags::MS_RDONLY)
    };
    if cgroup.mode == CgroupMode::V2 {
        return match cgroup.dirs.first() {
            Some((_, dir)) => bind_ro(dir, &target),
            None => Ok(()),
        };
    }
    m(
        Some("tmpfs"),
        &target,
        Some("tmpfs"),
        flags,
        Some("mode=755,size=64k"),
    )?;
    for (controller, dir) in &cgroup.dirs {
        // The hierarchy's directory under /sys/fs/cgroup; one mounted elsewhere is left out.
        let Some(hierarchy) = dir
            .strip_prefix("/sys/fs/cgroup")
            .ok()
            .and_then(|rel| rel.components().next())
            .map(|c| c.as_os_str().to_owned())
        else {
            continue;
        };
        let own = target.join(&hierarchy);
        if !own.exists() {
            mkdir(&own)?;
            bind_ro(dir, &own)?;
        }
        if hierarchy != controller.as_str() {
            let _ = symlink(&hierarchy, target.join(controller));
        }
    }
    remount(&target, flags | MsFlags::MS_RDONLY)
}

fn user_mount(root: &Path, mnt: &Mount) -> Result<(), String> {
    match mnt {
        Mount::Bind {
            source,
            target,
            readonly,
        } => {
            let t = inside(root, target)?;
            let is_dir = fs::metadata(source)
                .map_err(|e| format!("bind mount source {}: {e}", source.display()))?
                .is_dir();
            if is_dir {
                mkdir(&t)?;
            } else {
                if let Some(parent) = t.parent() {
                    mkdir(parent)?;
                }
                if !t.exists() {
                    fs::write(&t, b"").map_err(|e| format!("creating {}: {e}", t.display()))?;
                }
            }
            m(
                Some(&source.to_string_lossy()),
                &t,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
            )?;
            if *readonly {
                remount_ro_recursive(&t)?;
            }
        }
        Mount::Tmpfs {
            target,
            size,
            mode,
            readonly,
            noexec,
        } => {
            let t = inside(root, target)?;
            mkdir(&t)?;
            let mut data = format!("mode={:o}", mode.unwrap_or(0o1777));
            if let Some(s) = size {
                data += &format!(",size={s}");
            }
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            flags.set(MsFlags::MS_RDONLY, *readonly);
            flags.set(MsFlags::MS_NOEXEC, *noexec);
            m(Some("tmpfs"), &t, Some("tmpfs"), flags, Some(&data))?;
        }
    }
    Ok(())
}

/// The container's own `/etc/hosts` (naming itself; with host networking a copy of the
/// host's) and `/etc/hostname`, and, with host networking, the host's `/etc/resolv.conf`,
/// as Docker provides them whatever the image ships. For a root that
/// is a directory of the user's (`rootfs:`, `--rootfs`), shared by every container started
/// from it, each is mounted from the container's state directory over the directory's own
/// file, which stays as it was (a directory without the file gets none). An isolated
/// network has no route out, so its resolver settings are left as the root has them.
fn write_etc_files(root: &Path, cfg: &InitConfig, address: Option<Ipv4Addr>) {
    let own = address.map_or_else(|| "127.0.1.1".to_string(), |a| a.to_string());
    let named = || {
        format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n{own}\t{}\n",
            cfg.hostname
        )
        .into_bytes()
    };
    // With the host's network the host's names apply, as Docker copies its hosts file.
    let hosts = match cfg.network {
        Network::Host => fs::read("/etc/hosts").unwrap_or_else(|_| named()),
        _ => named(),
    };
    own_etc_file(root, cfg, "hosts", &hosts);
    own_etc_file(
        root,
        cfg,
        "hostname",
        format!("{}\n", cfg.hostname).as_bytes(),
    );
    if cfg.network == Network::Host {
        if let Ok(resolv) = fs::read("/etc/resolv.conf") {
            own_etc_file(root, cfg, "resolv.conf", &resolv);
        }
    }
}

/// Puts `content` at the root's `/etc/<name>` (see [`write_etc_files`]). Best effort: a
/// container still starts without it. The root's own entry is never followed when it is a
/// symlink: before pivot_root an absolute one would lead to the host's file.
fn own_etc_file(root: &Path, cfg: &InitConfig, name: &str, content: &[u8]) {
    let Ok(etc) = inside(root, Path::new("/etc")) else {
        return;
    };
    match cfg.root {
        // The directory's file, its links followed inside the root (Ubuntu's
        // `resolv.conf -> ../run/systemd/resolve/stub-resolv.conf`); a link to nothing gets
        // nothing, since nothing is made in the caller's directory.
        RootPlan::Dir(_) => {
            let (file, Ok(target)) = (
                cfg.dir.join(name),
                inside(root, &Path::new("/etc").join(name)),
            ) else {
                return;
            };
            if fs::symlink_metadata(&target).is_ok_and(|m| m.is_file())
                && fs::write(&file, content).is_ok()
            {
                let _ = m(
                    Some(&file.to_string_lossy()),
                    &target,
                    None,
                    MsFlags::MS_BIND,
                    None,
                );
            }
        }
        // The root is the container's own (an image's private upper layer, or host mode's
        // tmpfs): the image's entry, a link included, is replaced.
        RootPlan::Overlay { .. } | RootPlan::Host => {
            let path = etc.join(name);
            if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_dir()) {
                let _ = fs::remove_file(&path);
            }
            let _ = fs::create_dir_all(&etc);
            let _ = fs::write(&path, content);
        }
    }
}

fn protect_kernel_files() -> Result<(), String> {
    for p in PROC_READONLY {
        let path = Path::new(p);
        if !path.exists() {
            continue;
        }
        m(
            Some(p),
            path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        )?;
        remount_ro(path)?;
    }
    for p in MASKED {
        let path = Path::new(p);
        if !path.exists() {
            continue;
        }
        if path.is_dir() {
            m(Some("tmpfs"), path, Some("tmpfs"), MsFlags::MS_RDONLY, None)?;
        } else {
            m(Some("/dev/null"), path, None, MsFlags::MS_BIND, None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(mount_point("/a/b"), PathBuf::from("/a/b"));
        assert_eq!(mount_point("/with\\040space"), PathBuf::from("/with space"));
        assert_eq!(
            mount_point("/back\\134slash"),
            PathBuf::from("/back\\slash")
        );
        assert_eq!(mount_point("/not\\9"), PathBuf::from("/not\\9"));
    }
}
