//! Images: OCI image layouts (directory or tar) and `docker save` tars.
//!
//! Every blob is checked against its sha256 digest. Layers are unpacked once into
//! `state_dir/layers/<algorithm>_<hex>/` (content-addressed, shared by every container and
//! image) with whiteouts turned into overlayfs whiteouts, and become overlay lower dirs; a
//! container only gets its own upper dir, so starting the Nth container copies nothing.
//! An image tar is itself unpacked once into `state_dir/images/<sha256 of the tar>/`.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{
    Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os, Platform,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::state;

/// What an image contributes to a container.
#[derive(Debug, Clone, Default)]
pub(crate) struct Image {
    /// Unpacked layer directories, top-most first (overlayfs lowerdir order).
    pub lowers: Vec<PathBuf>,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

/// Count of layers unpacked by this process (lets tests prove the cache is used).
pub(crate) static LAYERS_UNPACKED: AtomicU64 = AtomicU64::new(0);

fn err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of everything `r` yields, as lowercase hex.
fn sha256_hex(mut r: impl Read) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// Split `sha256:<hex>`; only sha256 is supported (what every builder writes).
fn parse_digest(image: &Path, digest: &str) -> Result<String, Error> {
    match digest.split_once(':') {
        Some(("sha256", h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(h.to_ascii_lowercase())
        }
        _ => Err(err(
            image,
            format!("unsupported digest {digest:?} (only sha256 is supported)"),
        )),
    }
}

/// Reject paths inside an image manifest that would escape the image directory.
fn safe_join(root: &Path, rel: &str) -> Result<PathBuf, Error> {
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(err(root, format!("path {rel:?} escapes the image")));
    }
    Ok(root.join(p))
}

/// Load an image, unpacking whatever is not cached yet. `path` may end in `:TAG` to pick
/// one image of a layout or archive that holds several (see [`split_tag`]).
pub(crate) fn load(state_dir: &Path, path: &Path) -> Result<Image, Error> {
    let (path, tag) = split_tag(path);
    let path = path.as_path();
    let tag = tag.as_deref();
    let meta = fs::metadata(path).map_err(|e| {
        err(
            path,
            format!("{e} (give an OCI image layout directory or tar, or a `docker save` tar)"),
        )
    })?;
    let root = if meta.is_dir() {
        path.to_path_buf()
    } else {
        unpack_image_tar(state_dir, path)?
    };
    if root.join("index.json").is_file() {
        load_oci(state_dir, path, &root, tag)
    } else if root.join("manifest.json").is_file() {
        load_docker(state_dir, path, &root, tag)
    } else {
        Err(err(
            path,
            "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        ))
    }
}

/// Whether `path` (which may end in `:TAG`) looks like an image [`load`] can use, without
/// unpacking it: a directory or tar (maybe gzipped) holding an OCI layout's `index.json`
/// or a `docker save` archive's `manifest.json`, in which the tag, or its absence, names one
/// image that runs here. For `shoal validate`, so that a reload naming something else is
/// refused rather than rolled out to replicas that cannot start. The error says what was
/// found.
pub fn check_image(path: &Path) -> Result<(), String> {
    let (path, tag) = split_tag(path);
    let tag = tag.as_deref();
    let meta = fs::metadata(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let named = |file: &str, text: &[u8]| {
        pick_from(&path, file, text, tag)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    if meta.is_dir() {
        for file in ["index.json", "manifest.json"] {
            if let Ok(text) = fs::read(path.join(file)) {
                return named(file, &text);
            }
        }
        return Err(format!(
            "{} is a directory but neither an OCI image layout (index.json) nor an unpacked \
             `docker save` archive (manifest.json)",
            path.display()
        ));
    }
    let not_a_tar = |e: String| {
        format!(
            "{} is not a tar archive ({e}): give an OCI image layout (directory or tar) or a \
             `docker save` tar, either maybe gzipped",
            path.display()
        )
    };
    // The archive's index or manifest, read as it streams by: nothing is unpacked. An index
    // is what `load` goes by when there are both (`docker save` since Docker 25 writes both).
    let reader = decompressed(&path).map_err(|e| not_a_tar(e.to_string()))?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive.entries().map_err(|e| not_a_tar(e.to_string()))?;
    let mut any = false;
    let mut manifest = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| not_a_tar(e.to_string()))?;
        any = true;
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = name.trim_start_matches("./");
        if name == "index.json" || name == "manifest.json" {
            let mut text = Vec::new();
            entry
                .read_to_end(&mut text)
                .map_err(|e| not_a_tar(e.to_string()))?;
            if name == "index.json" {
                return named(name, &text);
            }
            manifest = Some(text);
        }
    }
    if let Some(text) = manifest {
        return named("manifest.json", &text);
    }
    if !any {
        return Err(not_a_tar("it is empty".to_string()));
    }
    Err(format!(
        "{}: neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        path.display()
    ))
}

/// The image `tag` picks, from the text of a layout's `index.json` or an archive's
/// `manifest.json` (`file`): what [`load`] would choose, checked without reading a blob.
fn pick_from(image: &Path, file: &str, text: &[u8], tag: Option<&str>) -> Result<(), Error> {
    if file == "index.json" {
        let index =
            ImageIndex::from_reader(text).map_err(|e| err(image, format!("index.json: {e}")))?;
        pick_manifest(image, &oci_candidates(image, &index, tag)?).map(|_| ())
    } else {
        let entries: Vec<DockerManifest> =
            serde_json::from_slice(text).map_err(|e| err(image, format!("manifest.json: {e}")))?;
        docker_entry(image, &entries, tag).map(|_| ())
    }
}

/// `PATH:TAG` as umoci and skopeo's `oci:` transport name an image of a layout: when
/// `path` itself does not exist, the first `:` after which the part before it does; the
/// rest, which may hold more `:` and `/` (`app:latest`, `docker.io/library/app:1.2`), is
/// the tag. Otherwise `path` as it is, so an error names what was given.
fn split_tag(path: &Path) -> (PathBuf, Option<String>) {
    use std::os::unix::ffi::OsStrExt;
    if path.exists() {
        return (path.to_path_buf(), None);
    }
    let bytes = path.as_os_str().as_bytes();
    for (i, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b':') {
        let before = Path::new(std::ffi::OsStr::from_bytes(&bytes[..i]));
        let Ok(tag) = std::str::from_utf8(&bytes[i + 1..]) else {
            continue;
        };
        if i > 0 && !tag.is_empty() && before.exists() {
            return (before.to_path_buf(), Some(tag.to_string()));
        }
    }
    (path.to_path_buf(), None)
}

/// Whether an image's name (`latest`, `busybox:latest`, `docker.io/library/busybox:1.36`)
/// ends in `tag`, after a `:` or `/` (`1.36`, `busybox:1.36`).
fn names_tag(name: &str, tag: &str) -> bool {
    name.strip_suffix(tag)
        .is_some_and(|rest| rest.ends_with(':') || rest.ends_with('/'))
}

/// Of the entries of a layout or archive, the image `tag` names: those named exactly so,
/// else those whose name ends in it. With no tag, all of them, unless more than one image
/// (told apart by `identity`: a digest, a config) has a name. Where that leaves more than
/// one image, the error lists the names to choose from instead of running the first.
fn pick_named<'a, T>(
    image: &Path,
    entries: &'a [T],
    names: impl Fn(&T) -> Vec<String>,
    identity: impl Fn(&T) -> String,
    tag: Option<&str>,
) -> Result<Vec<&'a T>, Error> {
    let listed = |of: &[&T]| {
        let mut all: Vec<String> = of.iter().flat_map(|e| names(e)).collect();
        all.sort();
        all.dedup();
        all.join(", ")
    };
    let everything: Vec<&T> = entries.iter().collect();
    let Some(tag) = tag else {
        let named: Vec<&T> = entries.iter().filter(|e| !names(e).is_empty()).collect();
        if distinct(&named, &identity) > 1 {
            return Err(err(
                image,
                format!(
                    "holds several images ({}): name one as {}:NAME",
                    listed(&named),
                    image.display()
                ),
            ));
        }
        return Ok(everything);
    };
    let exact: Vec<&T> = entries
        .iter()
        .filter(|e| names(e).iter().any(|n| n == tag))
        .collect();
    let picked = if exact.is_empty() {
        entries
            .iter()
            .filter(|e| names(e).iter().any(|n| names_tag(n, tag)))
            .collect()
    } else {
        exact
    };
    match distinct(&picked, &identity) {
        0 => Err(err(
            image,
            format!("no image named `{tag}`; it holds {}", listed(&everything)),
        )),
        1 => Ok(picked),
        _ => Err(err(
            image,
            format!(
                "`{tag}` names several images ({}); give one of those names",
                listed(&picked)
            ),
        )),
    }
}

/// How many different images (by `identity`) `entries` are.
fn distinct<T>(entries: &[&T], identity: impl Fn(&T) -> String) -> usize {
    let mut ids: Vec<String> = entries.iter().map(|e| identity(e)).collect();
    ids.sort();
    ids.dedup();
    ids.len()
}

fn unpack_image_tar(state_dir: &Path, path: &Path) -> Result<PathBuf, Error> {
    let file = File::open(path).map_err(|e| err(path, e))?;
    let digest = sha256_hex(BufReader::new(file)).map_err(|e| err(path, e))?;
    let dest = state_dir.join("images").join(&digest);
    if dest.is_dir() {
        return Ok(dest);
    }
    let tmp = tmp_dir(&state_dir.join("images"))?;
    // `docker save | gzip` is how images are often kept; `docker load` takes it as it is.
    let mut archive = tar::Archive::new(decompressed(path).map_err(|e| err(path, e))?);
    if let Err(e) = archive.unpack(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(err(path, format!("not a readable tar archive: {e}")));
    }
    commit_dir(&tmp, &dest)?;
    Ok(dest)
}

/// A fresh directory to unpack into, named for this process (`.tmp-<pid>-<start>-<random>`)
/// so that [`remove_abandoned`] can tell one whose unpacker died.
fn tmp_dir(parent: &Path) -> Result<PathBuf, Error> {
    fs::create_dir_all(parent).map_err(|e| err(parent, e))?;
    remove_abandoned(parent);
    let pid = std::process::id() as i32;
    let start = state::process_start_time(pid).unwrap_or(0);
    let tmp = parent.join(format!(".tmp-{pid}-{start}-{:016x}", rand::random::<u64>()));
    fs::create_dir(&tmp).map_err(|e| err(&tmp, e))?;
    Ok(tmp)
}

/// Removes the unpack directories in `parent` (the image or layer cache) whose process died
/// before it finished, as a killed `shoal run` or daemon leaves them. One of a live process
/// is left alone, and so is one of another name.
pub(crate) fn remove_abandoned(parent: &Path) {
    for entry in fs::read_dir(parent).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(owner) = name.to_str().and_then(|n| n.strip_prefix(".tmp-")) else {
            continue;
        };
        let mut parts = owner.splitn(3, '-');
        let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(pid), Ok(start)) = (pid.parse(), start.parse()) else {
            continue;
        };
        if !state::still_running(pid, start) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Move a finished unpack into place; if another process won the race, keep theirs.
fn commit_dir(tmp: &Path, dest: &Path) -> Result<(), Error> {
    match fs::rename(tmp, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.is_dir() => {
            let _ = fs::remove_dir_all(tmp);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(tmp);
            Err(err(dest, e))
        }
    }
}

/// Open a blob of an OCI layout after checking its digest.
fn verified_blob(image: &Path, root: &Path, digest: &str) -> Result<PathBuf, Error> {
    let hex = parse_digest(image, digest)?;
    let path = root.join("blobs/sha256").join(&hex);
    let f = File::open(&path).map_err(|e| err(image, format!("blob {digest}: {e}")))?;
    let actual = sha256_hex(BufReader::new(f)).map_err(|e| err(image, e))?;
    if actual != hex {
        return Err(err(
            image,
            format!("blob {digest} is corrupt: its content hashes to sha256:{actual}"),
        ));
    }
    Ok(path)
}

fn read_json<T: for<'de> Deserialize<'de>>(
    image: &Path,
    path: &Path,
    what: &str,
) -> Result<T, Error> {
    let f = File::open(path).map_err(|e| err(image, format!("{what}: {e}")))?;
    serde_json::from_reader(BufReader::new(f)).map_err(|e| err(image, format!("{what}: {e}")))
}

fn load_oci(
    state_dir: &Path,
    image: &Path,
    root: &Path,
    tag: Option<&str>,
) -> Result<Image, Error> {
    let index = ImageIndex::from_file(root.join("index.json"))
        .map_err(|e| err(image, format!("index.json: {e}")))?;
    let named = oci_candidates(image, &index, tag)?;
    let mut desc = pick_manifest(image, &named)?;
    // A nested index (an OCI index or Docker manifest list of a multi-platform image).
    for _ in 0..4 {
        let media_type = desc.media_type().to_string();
        if !media_type.contains("index") && !media_type.contains("manifest.list") {
            break;
        }
        let path = verified_blob(image, root, desc.digest().as_ref())?;
        let nested = ImageIndex::from_file(&path).map_err(|e| err(image, e))?;
        desc = pick_manifest(image, nested.manifests())?;
    }
    let manifest_path = verified_blob(image, root, desc.digest().as_ref())?;
    let manifest = ImageManifest::from_file(&manifest_path)
        .map_err(|e| err(image, format!("manifest: {e}")))?;
    let config_path = verified_blob(image, root, manifest.config().digest().as_ref())?;
    let config = ImageConfiguration::from_file(&config_path)
        .map_err(|e| err(image, format!("image config: {e}")))?;
    let mut lowers = Vec::new();
    for layer in manifest.layers() {
        let digest = layer.digest().to_string();
        let hex = parse_digest(image, &digest)?;
        let dest = state_dir.join("layers").join(format!("sha256_{hex}"));
        if !dest.is_dir() {
            let blob = verified_blob(image, root, &digest)?;
            unpack_layer(state_dir, image, &blob, &dest)?;
        }
        lowers.push(dest);
    }
    lowers.reverse();
    Ok(with_config(lowers, &config))
}

/// The entries of a layout's index that `tag` names (see [`pick_named`]).
fn oci_candidates(
    image: &Path,
    index: &ImageIndex,
    tag: Option<&str>,
) -> Result<Vec<Descriptor>, Error> {
    // An image's names: its tag (`ref.name`, as umoci, skopeo and `docker save` write it)
    // and the full reference containerd and `docker save` add beside it.
    let names = |d: &Descriptor| -> Vec<String> {
        let annotations = d.annotations().as_ref();
        [
            "org.opencontainers.image.ref.name",
            "io.containerd.image.name",
        ]
        .iter()
        .filter_map(|key| annotations.and_then(|a| a.get(*key)).cloned())
        .collect()
    };
    let digest = |d: &Descriptor| d.digest().to_string();
    // Only the entries that could run here count when telling images apart: the entries
    // of one multi-platform image, one per platform, are one image.
    let runnable: Vec<Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| d.platform().as_ref().is_none_or(runs_here))
        .cloned()
        .collect();
    let candidates = if runnable.is_empty() {
        index.manifests()
    } else {
        &runnable
    };
    Ok(pick_named(image, candidates, names, digest, tag)?
        .into_iter()
        .cloned()
        .collect())
}

/// The entry of an index to run here: the one for this host's platform (its OS and
/// architecture, as `docker pull` picks), else the first without a platform (a
/// single-platform layout). Other platforms' entries, and buildx's attestations (platform
/// `unknown/unknown`), are never run: their binaries would fail with "exec format error".
fn pick_manifest(image: &Path, manifests: &[Descriptor]) -> Result<Descriptor, Error> {
    let (arch, os) = (Arch::default(), Os::default());
    manifests
        .iter()
        .find(|d| d.platform().as_ref().is_some_and(runs_here))
        .or_else(|| manifests.iter().find(|d| d.platform().is_none()))
        .cloned()
        .ok_or_else(|| {
            let offered: Vec<String> = manifests
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(|p| format!("{}/{}", p.os(), p.architecture()))
                .collect();
            if offered.is_empty() {
                err(image, "the image index lists no manifest")
            } else {
                err(
                    image,
                    format!(
                        "no manifest for {os}/{arch}; the image has {}",
                        offered.join(", ")
                    ),
                )
            }
        })
}

/// Whether a manifest of `platform` runs on this host (its OS and architecture).
fn runs_here(platform: &Platform) -> bool {
    *platform.architecture() == Arch::default() && *platform.os() == Os::default()
}

fn with_config(lowers: Vec<PathBuf>, config: &ImageConfiguration) -> Image {
    let mut img = Image {
        lowers,
        ..Image::default()
    };
    if let Some(c) = config.config() {
        img.env = c.env().clone().unwrap_or_default();
        img.entrypoint = c.entrypoint().clone().unwrap_or_default();
        img.cmd = c.cmd().clone().unwrap_or_default();
        img.workdir = c.working_dir().clone().filter(|w| !w.is_empty());
        img.user = c.user().clone().filter(|u| !u.is_empty());
    }
    img
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The entry of an archive's `manifest.json` that `tag` names (see [`pick_named`]).
fn docker_entry<'a>(
    image: &Path,
    entries: &'a [DockerManifest],
    tag: Option<&str>,
) -> Result<&'a DockerManifest, Error> {
    let repo_tags = |e: &DockerManifest| e.repo_tags.clone().unwrap_or_default();
    let config = |e: &DockerManifest| e.config.clone();
    pick_named(image, entries, repo_tags, config, tag)?
        .first()
        .copied()
        .ok_or_else(|| err(image, "manifest.json lists no image"))
}

fn load_docker(
    state_dir: &Path,
    image: &Path,
    root: &Path,
    tag: Option<&str>,
) -> Result<Image, Error> {
    let entries: Vec<DockerManifest> =
        read_json(image, &root.join("manifest.json"), "manifest.json")?;
    let entry = docker_entry(image, &entries, tag)?;
    let config_path = safe_join(root, &entry.config)?;
    // The config's file name is its digest (`<hex>.json` or `blobs/sha256/<hex>`).
    let stem = config_path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".json").to_string())
        .unwrap_or_default();
    let f = File::open(&config_path).map_err(|e| err(image, format!("config: {e}")))?;
    let actual = sha256_hex(BufReader::new(f)).map_err(|e| err(image, e))?;
    if stem.len() == 64 && stem != actual {
        return Err(err(image, format!("config {} is corrupt", entry.config)));
    }
    let config = ImageConfiguration::from_file(&config_path)
        .map_err(|e| err(image, format!("image config: {e}")))?;
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != entry.layers.len() {
        return Err(err(
            image,
            format!(
                "config lists {} layers but manifest.json {}",
                diff_ids.len(),
                entry.layers.len()
            ),
        ));
    }
    let mut lowers = Vec::new();
    for (layer, diff_id) in entry.layers.iter().zip(diff_ids) {
        let hex = parse_digest(image, diff_id)?;
        let dest = state_dir.join("layers").join(format!("sha256_{hex}"));
        if !dest.is_dir() {
            let path = safe_join(root, layer)?;
            let actual = sha256_hex(decompressed(&path).map_err(|e| err(image, e))?)
                .map_err(|e| err(image, e))?;
            if actual != hex {
                return Err(err(
                    image,
                    format!("layer {layer} is corrupt: expected {diff_id}, got sha256:{actual}"),
                ));
            }
            unpack_layer(state_dir, image, &path, &dest)?;
        }
        lowers.push(dest);
    }
    lowers.reverse();
    Ok(with_config(lowers, &config))
}

/// A tar stream (a layer, or an image archive), gunzipped when the file starts with the gzip
/// magic.
fn decompressed(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = File::open(path)?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic)?;
    f.rewind()?;
    let r = BufReader::new(f);
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(r)))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Err(io::Error::other("zstd compression is not supported; use gzip or none (for layers, re-export the image so)"))
    } else {
        Ok(Box::new(r))
    }
}

/// Unpack one layer into `dest` (atomically, via a temporary directory), turning OCI
/// whiteouts into overlayfs ones.
fn unpack_layer(state_dir: &Path, image: &Path, blob: &Path, dest: &Path) -> Result<(), Error> {
    let tmp = tmp_dir(&state_dir.join("layers"))?;
    let result = decompressed(blob).map_err(|e| err(image, e)).and_then(|r| {
        unpack_tar(r, &tmp).map_err(|e| err(image, format!("layer {}: {e}", blob.display())))
    });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    LAYERS_UNPACKED.fetch_add(1, Ordering::Relaxed);
    commit_dir(&tmp, dest)
}

fn unpack_tar(r: impl Read, dest: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(r);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        match name.as_deref() {
            Some(".wh..wh..opq") => {
                let dir = dest.join(path.parent().unwrap_or(Path::new("")));
                check_inside(dest, &dir)?;
                fs::create_dir_all(&dir)?;
                set_opaque(&dir)?;
            }
            Some(n) if n.starts_with(".wh.") => {
                let parent = dest.join(path.parent().unwrap_or(Path::new("")));
                check_inside(dest, &parent)?;
                fs::create_dir_all(&parent)?;
                let target = parent.join(&n[4..]);
                if fs::symlink_metadata(&target).is_ok() {
                    if target.is_dir() && !target.is_symlink() {
                        fs::remove_dir_all(&target)?;
                    } else {
                        fs::remove_file(&target)?;
                    }
                }
                nix::sys::stat::mknod(
                    &target,
                    nix::sys::stat::SFlag::S_IFCHR,
                    nix::sys::stat::Mode::empty(),
                    nix::sys::stat::makedev(0, 0),
                )?;
            }
            _ => {
                // tar's error names the path; its source says why.
                entry
                    .unpack_in(dest)
                    .map_err(|e| match std::error::Error::source(&e) {
                        Some(src) => io::Error::new(e.kind(), format!("{e}: {src}")),
                        None => e,
                    })?;
            }
        }
    }
    Ok(())
}

/// Whiteout names come from the archive; never let them point outside the layer. Unlike the
/// other entries, which tar unpacks only inside the layer, a whiteout is applied here by
/// path, so neither `..` nor a symlink an earlier entry made may lead it out (`a -> /etc`
/// then `a/.wh.passwd` would otherwise delete the host's file).
fn check_inside(root: &Path, p: &Path) -> io::Result<()> {
    let rel = p.strip_prefix(root).map_err(io::Error::other)?;
    let mut walked = root.to_path_buf();
    for component in rel.components() {
        if !matches!(component, Component::Normal(_) | Component::CurDir) {
            return Err(io::Error::other(format!(
                "whiteout path {} escapes the layer",
                p.display()
            )));
        }
        walked.push(component);
        if fs::symlink_metadata(&walked).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(io::Error::other(format!(
                "whiteout path {} goes through the symlink {}",
                p.display(),
                walked.display()
            )));
        }
    }
    Ok(())
}

fn set_opaque(dir: &Path) -> io::Result<()> {
    let path =
        std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated strings and a 1-byte value buffer.
    let r = unsafe {
        libc::setxattr(
            path.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            b"y".as_ptr().cast(),
            1,
            0,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpacks_whose_process_died_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let pid = std::process::id();
        let start = state::process_start_time(pid as i32).unwrap();
        // This process with another start time: one that had this pid before, and died.
        let abandoned = dir.path().join(format!(".tmp-{pid}-{}-0a", start + 1));
        let live = dir.path().join(format!(".tmp-{pid}-{start}-0b"));
        let other = dir.path().join("sha256-of-an-image");
        for path in [&abandoned, &live, &other] {
            fs::create_dir(path).unwrap();
        }
        remove_abandoned(dir.path());
        assert!(!abandoned.exists());
        assert!(live.exists() && other.exists());
        // Each new unpack sweeps its cache first.
        fs::create_dir(&abandoned).unwrap();
        let tmp = tmp_dir(dir.path()).unwrap();
        assert!(!abandoned.exists());
        assert!(tmp
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(&format!(".tmp-{pid}-{start}-")));
    }

    #[test]
    fn a_tag_is_split_off_where_the_path_before_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let layout = dir.path().join("img");
        fs::create_dir(&layout).unwrap();
        // A path that exists is never split, a colon in its name or not.
        let colon = dir.path().join("a:b");
        fs::create_dir(&colon).unwrap();
        assert_eq!(split_tag(&colon), (colon.clone(), None));
        let with = |rest: &str| PathBuf::from(format!("{}{rest}", layout.display()));
        assert_eq!(
            split_tag(&with(":latest")),
            (layout.clone(), Some("latest".into()))
        );
        assert_eq!(
            split_tag(&with(":docker.io/library/app:1.2")),
            (layout.clone(), Some("docker.io/library/app:1.2".into()))
        );
        // Nothing before a colon exists: the path as given, for the error to name.
        let typo = dir.path().join("imgx:v2.tar");
        assert_eq!(split_tag(&typo), (typo.clone(), None));
        assert!(names_tag("docker.io/library/busybox:1.36", "1.36"));
        assert!(names_tag("docker.io/library/busybox:1.36", "busybox:1.36"));
        assert!(!names_tag("app:1.36", "36"));
        assert!(!names_tag("latest", "latest"));
    }

    type Entry = (&'static [&'static str], &'static str);

    fn pick_by_name(entries: &[Entry], tag: Option<&str>) -> Result<Vec<&'static str>, String> {
        let names = |e: &Entry| e.0.iter().map(|n| n.to_string()).collect();
        let identity = |e: &Entry| e.1.to_string();
        pick_named(Path::new("img"), entries, names, identity, tag)
            .map(|picked| picked.iter().map(|e| e.1).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_tag_picks_one_image_or_the_error_lists_them() {
        // One image under several names, and unnamed entries: no tag needed.
        let one: [Entry; 3] = [(&["app:1.0"], "a"), (&["app:latest"], "a"), (&[], "b")];
        assert_eq!(pick_by_name(&one, None).unwrap(), ["a", "a", "b"]);
        let two: [Entry; 2] = [(&["app:1.0"], "a"), (&["app:2.0"], "b")];
        let error = pick_by_name(&two, None).unwrap_err();
        assert!(error.contains("(app:1.0, app:2.0): name one as"), "{error}");
        assert_eq!(pick_by_name(&two, Some("2.0")).unwrap(), ["b"]);
        assert!(pick_by_name(&two, Some("3.0"))
            .unwrap_err()
            .contains("no image named `3.0`"));
        // `docker save app db` since Docker 25: both tagged `latest`, told apart by the
        // full names beside it.
        let saved: [Entry; 2] = [
            (&["latest", "docker.io/library/app:latest"], "a"),
            (&["latest", "docker.io/library/db:latest"], "b"),
        ];
        let error = pick_by_name(&saved, Some("latest")).unwrap_err();
        assert!(error.contains("`latest` names several images"), "{error}");
        assert_eq!(pick_by_name(&saved, Some("db:latest")).unwrap(), ["b"]);
        assert_eq!(
            pick_by_name(&saved, Some("docker.io/library/app:latest")).unwrap(),
            ["a"]
        );
    }

    /// A layer whose entries are `(path, symlink target)`, or a plain empty file without one.
    fn layer(entries: &[(&str, Option<&Path>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match link {
                Some(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    builder.append_link(&mut header, path, target).unwrap();
                }
                None => {
                    header.set_entry_type(tar::EntryType::Regular);
                    builder.append_data(&mut header, path, io::empty()).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn entry(digit: char, platform: Option<(&str, &str)>) -> String {
        let platform = platform.map_or(String::new(), |(os, arch)| {
            format!(r#","platform":{{"os":"{os}","architecture":"{arch}"}}"#)
        });
        format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":1{platform}}}"#,
            digit.to_string().repeat(64)
        )
    }

    fn pick(entries: &[String]) -> Result<char, String> {
        let manifests: Vec<Descriptor> =
            serde_json::from_str(&format!("[{}]", entries.join(","))).unwrap();
        pick_manifest(Path::new("img"), &manifests)
            .map(|d| d.digest().to_string().chars().last().unwrap())
            .map_err(|e| e.to_string())
    }

    /// `shoal validate`'s check finds an image with several names, in a layout directory,
    /// its tar and the tar gzipped, and in a `docker save` archive, without any blob.
    #[test]
    fn validate_tells_which_image_a_name_picks() {
        let dir = tempfile::tempdir().unwrap();
        let named = |digit: char, name: &str| {
            entry(digit, None).replacen(
                '{',
                &format!(r#"{{"annotations":{{"org.opencontainers.image.ref.name":"{name}"}},"#),
                1,
            )
        };
        let layout = dir.path().join("layout");
        fs::create_dir(&layout).unwrap();
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{},{}]}}"#,
            named('1', "one"),
            named('2', "two")
        );
        fs::write(layout.join("index.json"), &index).unwrap();
        let tar_of = |files: &[(&str, &str)]| {
            let mut tar = tar::Builder::new(Vec::new());
            for (name, text) in files {
                let mut header = tar::Header::new_gnu();
                header.set_size(text.len() as u64);
                header.set_mode(0o644);
                tar.append_data(&mut header, name, text.as_bytes()).unwrap();
            }
            tar.into_inner().unwrap()
        };
        let tar = tar_of(&[("./index.json", &index)]);
        fs::write(dir.path().join("layout.tar"), &tar).unwrap();
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gzip, &tar).unwrap();
        fs::write(dir.path().join("layout.tar.gz"), gzip.finish().unwrap()).unwrap();
        // Both, the manifest first (`docker save` since Docker 25): the index decides, as
        // it does when the image is loaded.
        let manifest = r#"[{"Config":"a.json","RepoTags":["app:1"],"Layers":[]}]"#;
        let both = tar_of(&[("manifest.json", manifest), ("index.json", &index)]);
        fs::write(dir.path().join("both.tar"), both).unwrap();
        let saved = dir.path().join("saved");
        fs::create_dir(&saved).unwrap();
        fs::write(
            saved.join("manifest.json"),
            r#"[{"Config":"a.json","RepoTags":["app:1"],"Layers":[]},{"Config":"b.json","RepoTags":["app:2"],"Layers":[]}]"#,
        )
        .unwrap();
        for (image, tags) in [
            ("layout", ["one", "two"]),
            ("layout.tar", ["one", "two"]),
            ("layout.tar.gz", ["one", "two"]),
            ("both.tar", ["one", "two"]),
            ("saved", ["app:1", "app:2"]),
        ] {
            let path = dir.path().join(image);
            let error = check_image(&path).unwrap_err();
            assert!(error.contains("holds several images"), "{image}: {error}");
            for tag in tags {
                let tagged = PathBuf::from(format!("{}:{tag}", path.display()));
                assert_eq!(check_image(&tagged), Ok(()), "{image}:{tag}");
            }
            let three = PathBuf::from(format!("{}:three", path.display()));
            let error = check_image(&three).unwrap_err();
            assert!(error.contains("no image named `three`"), "{image}: {error}");
        }
    }

    #[test]
    fn the_manifest_for_this_platform_is_run() {
        let (os, arch) = (Os::default().to_string(), Arch::default().to_string());
        let foreign = if arch == "s390x" { "riscv64" } else { "s390x" };
        let multi = [
            entry('1', Some(("linux", foreign))),
            entry('2', Some(("unknown", "unknown"))),
            entry('3', Some((&os, &arch))),
        ];
        assert_eq!(pick(&multi), Ok('3'));
        assert_eq!(pick(&[entry('4', None), entry('5', None)]), Ok('4'));
        let error = pick(&multi[..2]).unwrap_err();
        assert!(
            error.contains(&format!("no manifest for {os}/{arch}"))
                && error.contains(&format!("linux/{foreign}")),
            "{error}"
        );
    }

    #[test]
    fn whiteouts_do_not_follow_symlinks_out_of_the_layer() {
        let victim = tempfile::tempdir().unwrap();
        let secret = victim.path().join("secret");
        fs::write(&secret, "kept").unwrap();
        for whiteout in ["x/.wh.secret", "x/.wh..wh..opq", "x/sub/.wh.secret"] {
            let dest = tempfile::tempdir().unwrap();
            let tar = layer(&[("x", Some(victim.path())), (whiteout, None)]);
            let error = unpack_tar(&tar[..], dest.path()).unwrap_err();
            assert!(error.to_string().contains("symlink"), "{whiteout}: {error}");
            assert_eq!(fs::read_to_string(&secret).unwrap(), "kept", "{whiteout}");
            assert!(!victim.path().join("sub").exists(), "{whiteout}");
        }
    }
}
