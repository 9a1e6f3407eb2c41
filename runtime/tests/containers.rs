//! End-to-end container tests (root). Run: `cargo test -p shoal-runtime --test containers`.

mod support;

use std::time::Duration;

use shoal_runtime::{ContainerSpec, RootFs};
use support::{busybox_rootfs, Env, TestFn};

fn sh(rootfs: &std::path::Path, script: &str) -> ContainerSpec {
    ContainerSpec::new(
        RootFs::Dir(rootfs.to_path_buf()),
        vec!["/bin/sh".into(), "-c".into(), script.into()],
    )
}

fn rootfs(env: &Env) -> std::path::PathBuf {
    let dir = env.scratch.path().join("rootfs");
    if !dir.exists() {
        busybox_rootfs(&dir);
    }
    dir
}

fn exit_status(env: &Env) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
    Box::pin(async move {
        let root = rootfs(env);
        let (st, _) = env.run(sh(&root, "exit 7")).await;
        assert_eq!((st.code, st.signal, st.oom), (Some(7), None, false));
        let (st, _) = env.run(sh(&root, "kill -TERM $$")).await;
        assert_eq!(st.signal, Some(libc::SIGTERM));
        assert_eq!(st.code(), 128 + libc::SIGTERM);
        let (st, _) = env.run(sh(&root, "true")).await;
        assert_eq!(st.code(), 0);
    })
}

fn main() {
    let tests: &[(&str, TestFn)] = &[("exit_status", exit_status)];
    support::main(tests);
}
