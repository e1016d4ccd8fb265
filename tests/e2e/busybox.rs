//! The busybox image layer every container test and the OCI benchmark run, built offline from Debian's
//! busybox-static. Shared by path (`#[path]`) with `shims/oci/tests` and `benches/oci.rs`.

const APPLETS: [&str; 11] = ["sh", "echo", "sleep", "cat", "env", "head", "tail", "touch", "ls", "dd", "true"];

/// A gzipped layer of `/bin/busybox` with links for its applets, the usual top-level directories (`/tmp`
/// sticky and world-writable), an absolute `/var/run -> /run` link, merged-/usr `/lib -> usr/lib` and
/// `/lib64 -> usr/lib64` links (dangling until a test mounts the host's `/usr`, whose dynamically linked
/// programs then run), and extra `files` (path, contents) such as `etc/passwd`, executable when they start
/// with `#!`.
pub fn busybox_layer(files: &[(&str, &str)]) -> Vec<u8> {
    let mut layer = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(size);
        header
    };
    for dir in ["bin", "tmp", "proc", "dev", "sys", "etc", "run", "var"] {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        layer.append_data(&mut header(tar::EntryType::Directory, mode, 0), dir, &[][..]).unwrap();
    }
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    let mut file = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    layer.append_data(&mut file, "bin/busybox", &busybox[..]).unwrap();
    let links = APPLETS.iter().map(|applet| (format!("bin/{applet}"), "busybox")).chain([
        ("var/run".into(), "/run"),
        ("lib".into(), "usr/lib"),
        ("lib64".into(), "usr/lib64"),
    ]);
    for (link, target) in links {
        layer.append_link(&mut header(tar::EntryType::Symlink, 0o777, 0), link, target).unwrap();
    }
    for (path, contents) in files {
        // Scripts are executable (CGI programs, entry points).
        let mode = if contents.starts_with("#!") { 0o755 } else { 0o644 };
        let mut file = header(tar::EntryType::Regular, mode, contents.len() as u64);
        layer.append_data(&mut file, path, contents.as_bytes()).unwrap();
    }
    layer.into_inner().unwrap().finish().unwrap()
}
