//! Build OCI image layouts and `docker save` archives in test code.

use std::path::Path;

use sha2::{Digest, Sha256};

/// An entry of a test layer.
pub enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Dir(&'a str),
}

fn header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// A tar layer from entries.
pub fn layer(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = header();
        match e {
            Entry::File(path, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(*mode);
                b.append_data(&mut h, path, *data).unwrap();
            }
            Entry::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, path, target).unwrap();
            }
            Entry::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, path, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config_json(diff_ids: &[String], config: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| format!("sha256:{d}")).collect::<Vec<_>>()},
    }))
    .unwrap()
}

/// Write an OCI image layout; `layers` are (uncompressed tar, gzip it?) bottom first.
pub fn oci_layout(dir: &Path, layers: &[(Vec<u8>, bool)], config: serde_json::Value) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha256(data);
        std::fs::write(blobs.join(&d), data).unwrap();
        (d, data.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, gz) in layers {
        diff_ids.push(sha256(tar));
        let (blob, media) = if *gz {
            (gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (tar.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let (d, size) = put(&blob);
        descs.push(
            serde_json::json!({"mediaType": media, "digest": format!("sha256:{d}"), "size": size}),
        );
    }
    let (cd, csize) = put(&config_json(&diff_ids, config));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{cd}"), "size": csize},
        "layers": descs,
    }))
    .unwrap();
    let (md, msize) = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{md}"), "size": msize}],
        }))
        .unwrap(),
    )
    .unwrap();
}

/// Write a classic `docker save` archive (uncompressed layers) to `tar_path`.
pub fn docker_save(tar_path: &Path, layers: &[Vec<u8>], config: serde_json::Value) {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let cfg = config_json(&diff_ids, config);
    let cfg_name = format!("{}.json", sha256(&cfg));
    let mut b = tar::Builder::new(std::fs::File::create(tar_path).unwrap());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = header();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, data).unwrap();
    };
    let mut names = Vec::new();
    for (l, d) in layers.iter().zip(&diff_ids) {
        let name = format!("{d}/layer.tar");
        add(&name, l);
        names.push(name);
    }
    add(&cfg_name, &cfg);
    let manifest =
        serde_json::json!([{"Config": cfg_name, "RepoTags": ["test:latest"], "Layers": names}]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.finish().unwrap();
}

/// Tar a directory (an OCI layout as a single file).
pub fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}
