//! Who releases what a dead owner left. Several processes may share one state directory
//! (the daemon, `shoal ps`, a `shoal run` whose name is taken), and each cleans up the
//! containers whose owner died. Without a claim, two could load the same dead `x`; one
//! releases it, a new `x` is created under that name, and the other's release then kills
//! the new one (same name and state directory, so the same cgroup).
//!
//! So the names in `containers/` change only under one lock (an `flock` of that
//! directory): a create holds it while it makes its directory under a staged name (a
//! leading `.`, which no container id has), saves its first state there, naming a live
//! owner, and renames it to the container's name, so that a create that dies on the way
//! leaves no directory of that name without a state (see [`stage`]); a cleaner holds it
//! while it reads a state and, when the owner is
//! dead, moves the directory into `removing/` under a name of its own (a tombstone). The
//! release happens after, without the lock, from the tombstone. A tombstone whose cleaner
//! died is claimed again by renaming it, which only one process can do.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::state::{self, ContainerInfo};

/// Where tombstones go, beside `containers/` (the same filesystem, so a rename moves them).
pub(crate) const REMOVING: &str = "removing";
/// How long a create or a cleanup waits for the names lock before it goes on without it:
/// holders keep it for a `mkdir`, a state read or write and a rename, so a wait this long
/// means a holder that is stopped, and one stopped process must not stop the others.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How often a waiter tries the lock again.
const LOCK_RETRY: Duration = Duration::from_millis(1);

/// The staged directory of a create of `id` (see [`stage`]).
fn staged_dir(containers: &Path, id: &str) -> PathBuf {
    containers.join(format!("{STAGED}{id}"))
}

/// The start of a staged directory's name: ids never start with a `.`.
const STAGED: &str = ".new.";

/// Whether an entry of `containers/` is a create's staged directory, not a container's.
pub(crate) fn is_staged(entry: &fs::DirEntry) -> bool {
    entry.file_name().to_string_lossy().starts_with(STAGED)
}

/// Makes `id`'s directory under its staged name and returns it. With the names lock held,
/// a staged directory found there is a create's that died (a create holds the lock until it
/// renames its own), and is replaced; without it, it may be a create's on its way, and the
/// name counts as taken (`AlreadyExists`).
pub(crate) fn stage(containers: &Path, id: &str, locked: bool) -> std::io::Result<PathBuf> {
    let staged = staged_dir(containers, id);
    if locked {
        match fs::remove_dir_all(&staged) {
            Err(error) if error.kind() != ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    fs::create_dir(&staged)?;
    Ok(staged)
}

/// Under the names lock: gives the staged directory its container's name, unless that is
/// taken (`false`). A filesystem without `RENAME_NOREPLACE` (NFS) gets a check and a plain
/// rename, which the lock makes as good.
pub(crate) fn publish(staged: &Path, dir: &Path) -> std::io::Result<bool> {
    match nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        staged,
        nix::fcntl::AT_FDCWD,
        dir,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST | Errno::ENOTEMPTY) => Ok(false),
        Err(Errno::EINVAL) if dir.symlink_metadata().is_ok() => Ok(false),
        Err(Errno::EINVAL) => fs::rename(staged, dir).map(|()| true),
        Err(errno) => Err(errno.into()),
    }
}

/// The names lock, released on drop.
pub(crate) struct NamesLock {
    /// `None` when the lock could not be taken.
    held: Option<Flock<File>>,
}

impl NamesLock {
    /// Whether the lock is held (a holder stopped for seconds, or a `containers/` that
    /// cannot be opened, leaves the caller going on without it).
    pub(crate) fn held(&self) -> bool {
        self.held.is_some()
    }
}

/// Takes the names lock of `containers`, waiting with the async clock so that a waiting
/// daemon's other tasks go on. The directory is made if it is missing: a tidy
/// ([`crate::Runtime::tidy`]) removes it, under this lock, once it is empty.
pub(crate) async fn lock_names(containers: &Path) -> NamesLock {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        let dir = match File::open(containers) {
            Ok(dir) => dir,
            // Made again once a tidy removed it.
            Err(error)
                if error.kind() == ErrorKind::NotFound
                    && Instant::now() < deadline
                    && fs::create_dir_all(containers).is_ok() =>
            {
                continue;
            }
            Err(error) => {
                tracing::warn!(dir = %containers.display(), %error, "container names not locked");
                return NamesLock { held: None };
            }
        };
        match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            // A tidy that held the lock may have removed the directory since the open: a
            // lock of that one would exclude no one, so the path's is taken anew.
            Ok(lock) if !is_at(&lock, containers) && Instant::now() < deadline => {
                drop(lock);
                tokio::time::sleep(LOCK_RETRY).await;
            }
            Ok(lock) => return NamesLock { held: Some(lock) },
            Err((_, Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                tokio::time::sleep(LOCK_RETRY).await;
            }
            Err((_, error)) => {
                tracing::warn!(dir = %containers.display(), %error, "container names not locked");
                return NamesLock { held: None };
            }
        }
    }
}

/// Whether `file` is what `path` names now.
fn is_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// A dead owner's container, now this process's to release.
#[derive(Debug)]
pub(crate) struct Claimed {
    /// Its tombstone in `removing/`, to be removed once it is released.
    pub(crate) dir: PathBuf,
    pub(crate) info: ContainerInfo,
}

/// What [`claim_if_dead`] found in a container directory.
#[derive(Debug)]
pub(crate) enum Found {
    /// Its owner runs: not ours to touch.
    Live,
    /// No readable state (a create of an older shoal that crashed before its first save,
    /// or garbage: this one's creates name a directory only once it has its state).
    Unreadable,
    Claimed(Box<Claimed>),
}

/// With the names lock held: moves `dir` into `removing` when its owner is dead.
pub(crate) fn claim_if_dead(dir: &Path, removing: &Path) -> Found {
    let Some(info) = state::load(dir) else {
        return Found::Unreadable;
    };
    if !info.owner_dead() {
        return Found::Live;
    }
    match move_to_tomb(dir, removing, &info.id) {
        Some(tomb) => Found::Claimed(Box::new(Claimed { dir: tomb, info })),
        None => Found::Live,
    }
}

/// Tombstones whose cleaner died before it finished, each claimed again for this process.
pub(crate) fn orphaned(removing: &Path) -> Vec<Claimed> {
    let mut claimed = Vec::new();
    for entry in fs::read_dir(removing).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(tomb) = name.to_str().and_then(Tomb::parse) else {
            continue;
        };
        if state::still_running(tomb.pid, tomb.start) {
            continue;
        }
        // The rename is the claim: of two cleaners that found it, one moves it, and the
        // other's rename finds nothing there.
        let Some(dir) = move_to_tomb(&entry.path(), removing, tomb.id) else {
            continue;
        };
        match state::load(&dir) {
            Some(info) => claimed.push(Claimed { dir, info }),
            // Nothing to release: its state went first.
            None => {
                let _ = fs::remove_dir_all(&dir);
            }
        }
    }
    claimed
}

/// Whether a tombstone of container `id` is in `removing` (its release is under way).
pub(crate) fn being_removed(removing: &Path, id: &str) -> bool {
    fs::read_dir(removing)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            let name = entry.file_name();
            name.to_str()
                .and_then(Tomb::parse)
                .is_some_and(|tomb| tomb.id == id)
        })
}

/// Renames `from` to a tombstone of `id` that names this process; `None` when `from` is
/// gone (another process claimed it) or cannot be moved.
fn move_to_tomb(from: &Path, removing: &Path, id: &str) -> Option<PathBuf> {
    if let Err(error) = fs::create_dir(removing) {
        if error.kind() != ErrorKind::AlreadyExists {
            tracing::warn!(dir = %removing.display(), %error, "cannot make the removal directory");
            return None;
        }
    }
    let to = removing.join(Tomb::mine(id));
    match fs::rename(from, &to) {
        Ok(()) => Some(to),
        Err(error) if error.kind() == ErrorKind::NotFound => None,
        Err(error) => {
            tracing::warn!(dir = %from.display(), %error, "cannot claim a dead owner's container");
            None
        }
    }
}

/// A tombstone's name: `<id>.<cleaner pid>.<cleaner start time>.<sequence>`. Ids may hold
/// dots, so it is read from the right.
struct Tomb<'a> {
    id: &'a str,
    pid: i32,
    start: u64,
}

impl<'a> Tomb<'a> {
    fn parse(name: &'a str) -> Option<Tomb<'a>> {
        let mut parts = name.rsplitn(4, '.');
        let _sequence: u64 = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let id = parts.next().filter(|id| !id.is_empty())?;
        Some(Tomb { id, pid, start })
    }

    fn mine(id: &str) -> String {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        let start = state::process_start_time(pid as i32).unwrap_or(0);
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        format!("{id}.{pid}.{start}.{sequence}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ContainerState;

    fn info(id: &str, owner_pid: i32, owner_start: u64) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            service: None,
            owner_pid,
            owner_start,
            shim_pid: None,
            pid: None,
            state: ContainerState::Running,
            created_at: 0,
            started_at: None,
            address: None,
            cgroup: None,
            net: None,
        }
    }

    /// A process that has exited and been reaped: its pid and start time name nobody.
    fn dead_owner() -> (i32, u64) {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let start = state::process_start_time(pid).unwrap_or(1);
        child.wait().unwrap();
        (pid, start)
    }

    fn me() -> (i32, u64) {
        let pid = std::process::id() as i32;
        (pid, state::process_start_time(pid).unwrap())
    }

    fn container(state_dir: &Path, info: &ContainerInfo) -> PathBuf {
        let dir = state_dir.join("containers").join(&info.id);
        fs::create_dir_all(&dir).unwrap();
        state::save(&dir, info).unwrap();
        dir
    }

    #[test]
    fn a_dead_owners_container_moves_to_a_tombstone_naming_the_cleaner() {
        let state_dir = tempfile::tempdir().unwrap();
        let removing = state_dir.path().join(REMOVING);
        let (pid, start) = dead_owner();
        let dir = container(state_dir.path(), &info("web.1", pid, start));
        let Found::Claimed(claimed) = claim_if_dead(&dir, &removing) else {
            panic!("a dead owner's container was not claimed");
        };
        assert!(!dir.exists());
        assert_eq!(claimed.info.id, "web.1");
        let name = claimed
            .dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let tomb = Tomb::parse(&name).unwrap();
        assert_eq!((tomb.id, tomb.pid, tomb.start), ("web.1", me().0, me().1));
        assert!(being_removed(&removing, "web.1"));
        assert!(!being_removed(&removing, "web"));
        // Its cleaner (this process) runs: nobody claims it again.
        assert!(orphaned(&removing).is_empty());
        assert!(claimed.dir.exists());
    }

    #[test]
    fn a_live_owners_container_stays() {
        let state_dir = tempfile::tempdir().unwrap();
        let removing = state_dir.path().join(REMOVING);
        let (pid, start) = me();
        let dir = container(state_dir.path(), &info("x", pid, start));
        assert!(matches!(claim_if_dead(&dir, &removing), Found::Live));
        assert_eq!(state::load(&dir).unwrap().owner_pid, pid);
    }

    /// The race this module closes: a cleaner that read `x` while its owner was dead must
    /// not release the `x` made since. The claim reads the state again and moves only what
    /// it read; a second claim of the same directory finds the new, live owner.
    #[test]
    fn a_claim_after_the_name_was_taken_again_leaves_the_new_container() {
        let state_dir = tempfile::tempdir().unwrap();
        let removing = state_dir.path().join(REMOVING);
        let (pid, start) = dead_owner();
        let dir = container(state_dir.path(), &info("x", pid, start));
        assert!(matches!(claim_if_dead(&dir, &removing), Found::Claimed(_)));
        let (me, my_start) = me();
        container(state_dir.path(), &info("x", me, my_start));
        assert!(matches!(claim_if_dead(&dir, &removing), Found::Live));
        assert_eq!(state::load(&dir).unwrap().owner_pid, me);
    }

    #[test]
    fn a_dead_cleaners_tombstone_is_claimed_once() {
        let state_dir = tempfile::tempdir().unwrap();
        let removing = state_dir.path().join(REMOVING);
        fs::create_dir(&removing).unwrap();
        let (dead, dead_start) = dead_owner();
        let abandoned = removing.join(format!("x.y.{dead}.{dead_start}.0"));
        fs::create_dir(&abandoned).unwrap();
        state::save(&abandoned, &info("x.y", dead, dead_start)).unwrap();
        // Garbage with no state, and names that are no tombstones, are left alone.
        fs::create_dir(removing.join(format!("z.{dead}.{dead_start}.1"))).unwrap();
        fs::create_dir(removing.join("not-a-tomb")).unwrap();

        let claimed = orphaned(&removing);
        assert_eq!(claimed.len(), 1, "{claimed:?}");
        assert_eq!(claimed[0].info.id, "x.y");
        assert!(!abandoned.exists());
        let name = claimed[0].dir.file_name().unwrap().to_str().unwrap();
        assert_eq!(Tomb::parse(name).unwrap().pid, me().0);
        assert!(!removing.join(format!("z.{dead}.{dead_start}.1")).exists());
        assert!(removing.join("not-a-tomb").exists());
        // Now this live process's: a second look claims nothing.
        assert!(orphaned(&removing).is_empty());
    }

    #[test]
    fn tombstone_names_read_from_the_right() {
        let tomb = Tomb::parse("web.v2.1.42.7").unwrap();
        assert_eq!((tomb.id, tomb.pid, tomb.start), ("web.v2", 1, 42));
        assert!(Tomb::parse(".1.42.7").is_none());
        assert!(Tomb::parse("web.1.42").is_none());
        assert!(Tomb::parse("web.x.42.7").is_none());
    }

    #[tokio::test]
    async fn the_names_lock_excludes_a_second_holder_until_dropped() {
        let state_dir = tempfile::tempdir().unwrap();
        let held = lock_names(state_dir.path()).await;
        assert!(held.held());
        let again = File::open(state_dir.path()).unwrap();
        assert!(Flock::lock(again, FlockArg::LockExclusiveNonblock).is_err());
        let waiter = tokio::spawn({
            let dir = state_dir.path().to_path_buf();
            async move { lock_names(&dir).await.held() }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert!(
            waiter.await.unwrap(),
            "the waiter did not get the lock once it was free"
        );
    }
}
