//! The output of a replica's previous run, kept while the replica restarts under the same
//! name: a container's own directory, and its `output.log`, go when it is deleted, and the
//! output of a run that crashed is the one a user asks for (`kubectl logs --previous`,
//! `docker logs` across restarts).
//!
//! Kept at `state_dir/logs/<pid>-<start>/<id>.log`, named for the process that keeps it so
//! that a later daemon can drop what a dead one left ([`remove_stale`]), as it removes the
//! dead one's containers.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::state::{process_start_time, still_running};

pub(crate) fn logs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("logs")
}

/// This process's name among the keepers (`<pid>-<start time>`), read once; `None` if its
/// start time cannot be read, and then nothing is kept: a name without it would look stale
/// to every other process.
fn owner() -> Option<&'static str> {
    static OWNER: OnceLock<Option<String>> = OnceLock::new();
    OWNER
        .get_or_init(|| {
            let pid = std::process::id();
            let start = process_start_time(pid as i32)?;
            Some(format!("{pid}-{start}"))
        })
        .as_deref()
}

/// Replaces the kept log of `id` with the output of the run in `container_dir` (its rotated
/// part first), before that directory is deleted. The kept log is put together under
/// another name and renamed into place, so it is whole or the earlier one.
pub(crate) fn keep(state_dir: &Path, id: &str, container_dir: &Path) -> io::Result<()> {
    let current = container_dir.join("output.log");
    let rotated = container_dir.join("output.log.1");
    if !current.exists() && !rotated.exists() {
        return Ok(());
    }
    let Some(owner) = owner() else {
        return Err(io::Error::other("this process's start time is unreadable"));
    };
    let dir = logs_dir(state_dir).join(owner);
    fs::create_dir_all(&dir)?;
    let partial = dir.join(format!("{id}.log.partial"));
    if rotated.exists() {
        fs::rename(&rotated, &partial)?;
        if let Ok(mut part) = File::open(&current) {
            let mut out = OpenOptions::new().append(true).open(&partial)?;
            io::copy(&mut part, &mut out)?;
            // Not shown twice by a `shoal logs` before the container's directory goes.
            fs::remove_file(&current)?;
        }
    } else {
        fs::rename(&current, &partial)?;
    }
    fs::rename(&partial, dir.join(format!("{id}.log")))
}

/// Drops the kept log of `id`, whose replica is gone for good.
pub(crate) fn forget(state_dir: &Path, id: &str) {
    let Some(owner) = owner() else {
        return;
    };
    let dir = logs_dir(state_dir).join(owner);
    let _ = fs::remove_file(dir.join(format!("{id}.log")));
    // Fails while other replicas' logs are kept, as it should.
    let _ = fs::remove_dir(dir);
}

/// The kept log of the replica named `id`, if any daemon keeps one.
pub fn find(state_dir: &Path, id: &str) -> Option<PathBuf> {
    fs::read_dir(logs_dir(state_dir))
        .ok()?
        .flatten()
        .map(|owner| owner.path().join(format!("{id}.log")))
        .find(|path| path.is_file())
}

/// Ids of every replica with a kept log.
pub fn ids(state_dir: &Path) -> Vec<String> {
    let owners = fs::read_dir(logs_dir(state_dir)).into_iter().flatten();
    owners
        .flatten()
        .flat_map(|owner| fs::read_dir(owner.path()).into_iter().flatten().flatten())
        .filter_map(|log| {
            let name = log.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".log").map(str::to_string)
        })
        .collect()
}

/// The directories of kept logs whose daemon is no longer running.
fn stale_owners(state_dir: &Path) -> impl Iterator<Item = PathBuf> {
    let owners = fs::read_dir(logs_dir(state_dir)).into_iter().flatten();
    owners.flatten().filter_map(|owner| {
        let name = owner.file_name().to_string_lossy().into_owned();
        let alive = name
            .split_once('-')
            .and_then(|(pid, start)| Some((pid.parse::<i32>().ok()?, start.parse::<u64>().ok()?)))
            .is_some_and(|(pid, start)| still_running(pid, start));
        (!alive).then(|| owner.path())
    })
}

/// Whether a daemon that is no longer running kept logs here.
pub(crate) fn any_stale(state_dir: &Path) -> bool {
    stale_owners(state_dir).next().is_some()
}

/// Removes the kept logs of daemons that are no longer running.
pub(crate) fn remove_stale(state_dir: &Path) {
    for owner in stale_owners(state_dir) {
        let _ = fs::remove_dir_all(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("shoal-previous-log-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("c")).unwrap();
        dir
    }

    #[test]
    fn keeps_the_last_run_rotated_part_first_until_forgotten() {
        let state = scratch("keep");
        let run = state.join("c");
        fs::write(run.join("output.log"), "first run\n").unwrap();
        keep(&state, "web-1", &run).unwrap();
        fs::write(run.join("output.log.1"), "second, early\n").unwrap();
        fs::write(run.join("output.log"), "second, late\n").unwrap();
        keep(&state, "web-1", &run).unwrap();
        let kept = find(&state, "web-1").expect("kept");
        assert_eq!(
            fs::read_to_string(&kept).unwrap(),
            "second, early\nsecond, late\n"
        );
        assert!(
            !run.join("output.log").exists(),
            "the copied part is not left to show twice"
        );
        assert_eq!(ids(&state), vec!["web-1".to_string()]);
        forget(&state, "web-1");
        assert_eq!(find(&state, "web-1"), None);
        let own = logs_dir(&state).join(owner().expect("this process's start time"));
        assert!(!own.exists(), "an empty owner directory is removed");
        fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn stale_owners_go_and_the_live_one_stays() {
        let state = scratch("stale");
        fs::write(state.join("c/output.log"), "mine\n").unwrap();
        keep(&state, "web-1", &state.join("c")).unwrap();
        assert!(!any_stale(&state), "this live process's log is not stale");
        // No process has pid 0; a live pid with the wrong start time is another process.
        let dead = logs_dir(&state).join("0-1");
        let reused = logs_dir(&state).join(format!("{}-1", std::process::id()));
        for dir in [&dead, &reused] {
            fs::create_dir_all(dir).unwrap();
            fs::write(dir.join("web-2.log"), "theirs\n").unwrap();
        }
        assert!(any_stale(&state));
        remove_stale(&state);
        assert!(!any_stale(&state));
        assert!(!dead.exists() && !reused.exists());
        assert!(find(&state, "web-1").is_some());
        fs::remove_dir_all(&state).unwrap();
    }
}
