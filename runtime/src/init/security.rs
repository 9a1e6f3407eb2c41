//! Privileges: Docker's default capability set, no_new_privs, and the workload's user.

use std::collections::HashSet;

use caps::{CapSet, Capability};
use nix::unistd::{Gid, Uid};

/// Docker's default capabilities but CAP_MKNOD; everything else leaves the bounding set.
/// Docker keeps CAP_MKNOD because its device cgroup (or eBPF filter on v2) refuses to open
/// any device beyond the usual few; shoal has no such filter, so a root workload that could
/// make the node of a host disk could read it. Its devices are those of its own /dev.
const DEFAULT_CAPS: [Capability; 13] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FSETID,
    Capability::CAP_FOWNER,
    Capability::CAP_NET_RAW,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETPCAP,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_KILL,
    Capability::CAP_AUDIT_WRITE,
];

/// Who the workload runs as.
pub(super) struct User {
    uid: Uid,
    gid: Gid,
    /// The supplementary groups: those of the container's /etc/group that list the user,
    /// when the user is given without a group, as Docker (runc) sets them.
    groups: Vec<Gid>,
    pub(super) home: String,
}

/// Parse `/etc/passwd`-style lines into (name, uid, gid, home).
fn passwd_entries(content: &str) -> impl Iterator<Item = (&str, u32, u32, &str)> {
    content.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() < 6 {
            return None;
        }
        Some((f[0], f[2].parse().ok()?, f[3].parse().ok()?, f[5]))
    })
}

/// Resolve `UID[:GID]` or `NAME[:GROUP]` against the container's /etc/passwd and /etc/group
/// (already pivoted into).
pub(super) fn resolve_user(spec: Option<&str>) -> Result<User, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let group_file = std::fs::read_to_string("/etc/group").unwrap_or_default();
    let Some(spec) = spec else {
        return Ok(User {
            uid: Uid::from_raw(0),
            gid: Gid::from_raw(0),
            groups: member_of(&group_file, "root"),
            home: "/root".to_string(),
        });
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = passwd_entries(&passwd)
        .find(|(name, uid, _, _)| *name == user || user.parse::<u32>().is_ok_and(|n| n == *uid));
    let uid = match (user.parse::<u32>(), entry) {
        (Ok(n), _) => n,
        (Err(_), Some((_, uid, _, _))) => uid,
        (Err(_), None) => {
            return Err(format!(
                "user {user:?} not found in the container's /etc/passwd (use a numeric UID)"
            ))
        }
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_file
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 3 && f[0] == g).then(|| f[2].parse().ok())?
                })
                .ok_or_else(|| format!("group {g:?} not found in the container's /etc/group"))?,
        },
        None => entry.map_or(0, |(_, _, gid, _)| gid),
    };
    Ok(User {
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        // Only when the group is left to /etc/passwd, as runc does: `user: app:grp` names
        // the groups the process gets.
        groups: match (entry, group) {
            (Some((name, ..)), None) => member_of(&group_file, name),
            _ => Vec::new(),
        },
        home: entry.map_or("/", |(_, _, _, home)| home).to_string(),
    })
}

/// The groups of an /etc/group text whose member list names `user`.
fn member_of(group_file: &str, user: &str) -> Vec<Gid> {
    group_file
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            let [_, _, gid, members] = fields.as_slice() else {
                return None;
            };
            members
                .split(',')
                .any(|member| member.trim() == user)
                .then(|| gid.parse().ok().map(Gid::from_raw))?
        })
        .collect()
}

/// no_new_privs and the default capability set, for PID 1 and (inherited) the workload.
pub(super) fn restrict() -> Result<(), String> {
    let keep: HashSet<Capability> = DEFAULT_CAPS.into_iter().collect();
    for cap in caps::all() {
        if !keep.contains(&cap) {
            // Capabilities this kernel does not know cannot be dropped; skip them.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clearing ambient caps: {e}"))?;
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &keep).map_err(|e| format!("setting {set:?} caps: {e}"))?;
    }
    // Empty, as runc and Docker leave it since CVE-2022-24769: an inheritable set would
    // hand capabilities to a program with file capabilities run by a non-root user.
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| format!("clearing inheritable caps: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))
}

/// Become the workload's user. A non-root user loses every capability here (no keepcaps),
/// as in Docker.
pub(super) fn switch_user(user: &User) -> Result<(), String> {
    let mut groups = vec![user.gid];
    groups.extend(user.groups.iter().filter(|g| **g != user.gid));
    nix::unistd::setgroups(&groups).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setgid(user.gid).map_err(|e| format!("setgid {}: {e}", user.gid))?;
    nix::unistd::setuid(user.uid).map_err(|e| format!("setuid {}: {e}", user.uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supplementary_groups_are_those_listing_the_user() {
        let groups =
            "root:x:0:\nwheel:x:10:root,app\nbad\nvideo:x:44: app \nextra:x:2000:application\n";
        assert_eq!(
            member_of(groups, "app"),
            [Gid::from_raw(10), Gid::from_raw(44)]
        );
        assert_eq!(member_of(groups, "root"), [Gid::from_raw(10)]);
        assert!(member_of(groups, "nobody").is_empty());
    }

    #[test]
    fn passwd_parsing() {
        let p = "root:x:0:0:root:/root:/bin/sh\nbad line\napp:x:1000:1001::/home/app:/bin/sh\n";
        let e: Vec<_> = passwd_entries(p).collect();
        assert_eq!(
            e,
            vec![("root", 0, 0, "/root"), ("app", 1000, 1001, "/home/app")]
        );
    }
}
