//! Links the `shoal` binary with packed relative relocations (DT_RELR) on GNU/Linux.
//!
//! Every `shoal run`, and every container shim the daemon starts, loads this binary. As a
//! position-independent executable it carries about 28,000 relative relocations (a 670 KiB
//! table) that its start-up code (a static PIE's own, see `.cargo/config.toml`) applies at
//! each start; packed, the table is 8 KiB and `shoal run` of `/bin/true` takes about 0.6 ms
//! (8%) less (see BENCHMARKS.md). The executable stays position-independent. GNU ld (2.38
//! and later) and lld (15 and later) understand the flag, and glibc applies packed
//! relocations from 2.36 on.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
