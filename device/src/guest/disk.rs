//! The guest's disks, made from the device's trees with Debian's own tools:
//! `mkfs.ext4 -d` (e2fsprogs) fills a file system from a directory without
//! mounting anything, `objcopy` (binutils) joins systemd's EFI stub, the
//! kernel, the initrd and the command line into one unified kernel image,
//! `mkfs.fat` and `mcopy` (dosfstools, mtools) put it on the EFI system
//! partition, `qemu-img` encrypts with LUKS (no kernel dm-crypt),
//! and `debugfs rdump` reads the user disk back.
//!
//! The disk key reaches `qemu-img` and `qemu` as a path to an in-memory
//! file of this process (`/proc/PID/fd/N`), never on a command line or a
//! disk.

use std::fs;
use std::io::Write as _;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::GuestError;

/// The label the guest's initramfs finds its root by.
pub const ROOT_LABEL: &str = "satchel-root";
/// The label of the user disk, which the guest mounts at /home.
pub const USER_LABEL: &str = "satchel-user";

/// The disk key in an in-memory file; `path()` names it for a child.
pub struct KeyFile {
    fd: OwnedFd,
}

impl KeyFile {
    /// The key, held in a memfd sealed against change. LUKS in qemu takes
    /// its secret as UTF-8 text, so the passphrase is the key in hex.
    pub fn new(key: &[u8]) -> Result<KeyFile, GuestError> {
        let key = hex::encode(key);
        let key = key.as_bytes();
        use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
        let fd = memfd_create(
            "satchel-guest-key",
            MemfdFlags::ALLOW_SEALING | MemfdFlags::CLOEXEC,
        )
        .map_err(|e| GuestError::io("memfd_create for the disk key", e.into()))?;
        let mut file = fs::File::from(fd);
        file.write_all(key)
            .map_err(|e| GuestError::io("writing the disk key to memory", e))?;
        let fd = OwnedFd::from(file);
        fcntl_add_seals(
            &fd,
            SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
        )
        .map_err(|e| GuestError::io("sealing the disk key's memfd", e.into()))?;
        Ok(KeyFile { fd })
    }

    /// A path a child of this process can open while this lives.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.fd.as_raw_fd())
    }

    /// The `--object` that names the key `id` for qemu and qemu-img.
    pub fn object(&self, id: &str) -> String {
        format!("secret,id={id},file={},format=raw", self.path())
    }
}

/// Run a tool; its stderr becomes the error.
pub(super) fn run(what: &'static str, cmd: &mut Command) -> Result<(), GuestError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| GuestError::Tool {
            what,
            program: program.clone(),
            detail: if e.kind() == std::io::ErrorKind::NotFound {
                "not installed (scripts/setup.sh installs it)".to_owned()
            } else {
                e.to_string()
            },
        })?;
    if out.status.success() {
        return Ok(());
    }
    let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if detail.is_empty() {
        detail = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    }
    detail.truncate(2000);
    Err(GuestError::Tool {
        what,
        program,
        detail: format!("{} ({})", detail, out.status),
    })
}

/// The kernel and initrd the image boots: the targets of its `/vmlinuz`
/// and `/initrd.img` links, which must lie in its `/boot`.
pub fn boot_files(root: &Path) -> Result<(PathBuf, PathBuf), GuestError> {
    // /boot itself a link (to a host directory) would hand host files on.
    let boot = fs::symlink_metadata(root.join("boot")).map_err(|e| GuestError::Image {
        detail: format!("{}/boot: {e}", root.display()),
    })?;
    if !boot.file_type().is_dir() {
        return Err(GuestError::Image {
            detail: format!("{}/boot is not a directory", root.display()),
        });
    }
    let pick = |link: &str| -> Result<PathBuf, GuestError> {
        let target = fs::read_link(root.join(link)).map_err(|e| GuestError::Image {
            detail: format!(
                "{}/{link}: {e}; the image needs a kernel (for example linux-image-cloud-amd64) with its /{link} link",
                root.display()
            ),
        })?;
        let name = target
            .strip_prefix("boot")
            .or_else(|_| target.strip_prefix("/boot"))
            .ok()
            .filter(|n| n.components().count() == 1)
            .ok_or_else(|| GuestError::Image {
                detail: format!(
                    "/{link} points to {}, not to a file in /boot",
                    target.display()
                ),
            })?;
        let path = root.join("boot").join(name);
        let meta = fs::symlink_metadata(&path).map_err(|e| GuestError::Image {
            detail: format!("{}: {e}", path.display()),
        })?;
        if !meta.file_type().is_file() {
            return Err(GuestError::Image {
                detail: format!("{} is not a regular file", path.display()),
            });
        }
        Ok(path)
    };
    Ok((pick("vmlinuz")?, pick("initrd.img")?))
}

/// The kernel command line: the root by label, the serial console, and
/// what the image asks for in `/etc/satchel/guest-cmdline` (one line).
pub fn command_line(root: &Path) -> Result<String, GuestError> {
    let mut line = "root=/dev/disk/by-id/virtio-satchel-root ro console=ttyS0".to_owned();
    let extra = root.join("etc/satchel/guest-cmdline");
    match fs::read(&extra) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| s.len() <= 1024 && s.chars().all(cmdline_char))
                .ok_or_else(|| GuestError::Image {
                    detail: format!(
                        "{}: one line of at most 1024 characters from A-Z a-z 0-9 and \" =._,:/+-@\" expected (plain kernel parameters only)",
                        extra.display()
                    ),
                })?;
            if !text.is_empty() {
                line.push(' ');
                line.push_str(&text);
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(GuestError::io("reading the image's guest-cmdline", e)),
    }
    Ok(line)
}

/// What a kernel parameter may hold here: plain words, nothing quoted or
/// escaped (no quotes, `%`, `>`, `^`, `#`), so what the image asks for
/// reads the same to everyone who reads the command line.
fn cmdline_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || " =._,:/+-@".contains(c)
}

/// Where an image keeps systemd's EFI stub (Debian's `systemd-boot-efi`).
pub const STUB: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// Where the unified kernel image lies on the ESP: the removable-media
/// path the firmware boots by itself (no shell, no boot variable).
const UKI_ON_ESP: &str = "::/EFI/BOOT/BOOTX64.EFI";

/// systemd's EFI stub in the image at `root`: a regular file reached
/// through real directories only (a link anywhere on the way could hand a
/// host file on).
pub fn stub(root: &Path) -> Result<PathBuf, GuestError> {
    let mut path = root.to_path_buf();
    let parts: Vec<&str> = STUB.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let last = i + 1 == parts.len();
        let ok = match fs::symlink_metadata(&path) {
            Ok(m) if last => m.file_type().is_file(),
            Ok(m) => m.file_type().is_dir(),
            Err(_) => false,
        };
        if !ok {
            return Err(GuestError::Image {
                detail: format!(
                    "{}/{STUB} is missing or not a regular file under real directories; the image needs systemd's EFI stub (Debian's systemd-boot-efi): it binds the kernel, the initrd and the command line into the one image the guest's firmware measures",
                    root.display()
                ),
            });
        }
    }
    Ok(path)
}

/// Sections of a unified kernel image start here, past any systemd stub
/// (systemd 252's ends below 128 KiB).
const UKI_FIRST_SECTION: u64 = 0x10_0000;
/// A stub larger than this would overlap the sections.
const STUB_MAX: u64 = 0x8_0000;

fn align_mib(v: u64) -> u64 {
    v.div_ceil(0x10_0000) * 0x10_0000
}

/// A unified kernel image at `out`: `stub` with the command line, the
/// kernel and the initrd as its `.cmdline`, `.linux` and `.initrd`
/// sections (`objcopy`, as systemd-stub(7) describes). The firmware
/// measures the whole image into PCR 4, so the initrd and the command
/// line are measured with the kernel; the stub measures each section into
/// PCR 11 and hands the initrd to the kernel, which measures it into PCR 9.
pub fn make_uki(
    out: &Path,
    root: &Path,
    stub: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
) -> Result<(), GuestError> {
    // objcopy gets copies in the state directory, each opened beneath the
    // root without following any link: a name swapped for a link after the
    // checks, or one objcopy would read differently (not UTF-8), never
    // hands it a host file.
    let stub = copy_part(root, stub, &out.with_extension("stub"))?;
    let kernel = copy_part(root, kernel, &out.with_extension("linux"))?;
    let initrd = copy_part(root, initrd, &out.with_extension("initrd"))?;
    let cmdline_file = out.with_extension("cmdline");
    let made = (|| {
        if stub.1 > STUB_MAX {
            return Err(GuestError::Image {
                detail: format!(
                    "the image's EFI stub is larger than {STUB_MAX} bytes: not systemd's"
                ),
            });
        }
        fs::write(&cmdline_file, cmdline.as_bytes())
            .map_err(|e| GuestError::io("writing the kernel command line", e))?;
        let linux_at = UKI_FIRST_SECTION * 2;
        let initrd_at = align_mib(linux_at + kernel.1);
        let _ = fs::remove_file(out);
        let section = |name: &str, file: &Path, at: u64| -> [std::ffi::OsString; 4] {
            let mut add = std::ffi::OsString::from(format!("{name}="));
            add.push(file.as_os_str());
            [
                "--add-section".into(),
                add,
                "--change-section-vma".into(),
                format!("{name}={at:#x}").into(),
            ]
        };
        run(
            "making the unified kernel image",
            Command::new("objcopy")
                .args(section(".cmdline", &cmdline_file, UKI_FIRST_SECTION))
                .args(section(".linux", &kernel.0, linux_at))
                .args(section(".initrd", &initrd.0, initrd_at))
                .arg(&stub.0)
                .arg(out),
        )?;
        clear_pe_timestamp(out)
    })();
    for p in [&stub.0, &kernel.0, &initrd.0, &cmdline_file] {
        let _ = fs::remove_file(p);
    }
    made
}

/// Copy the file at `path` (inside `root`) to `dest`, opened beneath
/// `root` with no link followed on the way; it must be a regular file.
/// The copy's path and size.
fn copy_part(root: &Path, path: &Path, dest: &Path) -> Result<(PathBuf, u64), GuestError> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let bad = |detail: String| GuestError::Image { detail };
    let rel = path.strip_prefix(root).map_err(|_| {
        bad(format!(
            "{} is not inside {}",
            path.display(),
            root.display()
        ))
    })?;
    let dir = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| bad(format!("{}: {e}", root.display())))?;
    let fd = rustix::fs::openat2(
        &dir,
        rel,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| {
        bad(format!(
            "{}: {e} (opened beneath the image, no links followed)",
            path.display()
        ))
    })?;
    let mut file = fs::File::from(fd);
    let meta = file
        .metadata()
        .map_err(|e| GuestError::io("reading the kernel image's parts", e))?;
    if !meta.file_type().is_file() {
        return Err(bad(format!("{} is not a regular file", path.display())));
    }
    let _ = fs::remove_file(dest);
    let mut out = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| GuestError::io("copying the kernel image's parts", e))?;
    let n = std::io::copy(&mut file, &mut out)
        .map_err(|e| GuestError::io("copying the kernel image's parts", e))?;
    Ok((dest.to_path_buf(), n))
}

/// objcopy stamps the PE file header with the time it ran (whatever
/// SOURCE_DATE_EPOCH says); the firmware's measurement covers that field,
/// so the same parts would measure differently at every start. Set it to 0.
fn clear_pe_timestamp(path: &Path) -> Result<(), GuestError> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let bad = || GuestError::Image {
        detail: format!("{}: objcopy made no PE image", path.display()),
    };
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| GuestError::io("opening the unified kernel image", e))?;
    let mut head = [0u8; 0x40];
    f.read_exact(&mut head).map_err(|_| bad())?;
    let pe = u64::from(u32::from_le_bytes([
        head[0x3c], head[0x3d], head[0x3e], head[0x3f],
    ]));
    let mut sig = [0u8; 4];
    f.seek(SeekFrom::Start(pe)).map_err(|_| bad())?;
    f.read_exact(&mut sig).map_err(|_| bad())?;
    if &head[..2] != b"MZ" || &sig != b"PE\0\0" {
        return Err(bad());
    }
    // Signature (4), Machine (2), NumberOfSections (2), TimeDateStamp (4).
    f.seek(SeekFrom::Start(pe + 8)).map_err(|_| bad())?;
    f.write_all(&[0; 4])
        .and_then(|()| f.sync_all())
        .map_err(|e| GuestError::io("writing the unified kernel image", e))
}

/// The EFI system partition: the unified kernel image at the path the
/// firmware boots from removable media.
pub fn make_esp(out: &Path, uki: &Path) -> Result<(), GuestError> {
    let size = fs::metadata(uki).map(|m| m.len()).unwrap_or(0);
    let kib = size / 1024 + 8 * 1024;
    let _ = fs::remove_file(out);
    run(
        "making the EFI system partition",
        Command::new("mkfs.fat")
            .arg("-C")
            .arg(out)
            .arg(kib.to_string()),
    )?;
    let mtools = |cmd: &str| {
        let mut c = Command::new(cmd);
        c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(out);
        c
    };
    run(
        "making the EFI system partition's directories",
        mtools("mmd").args(["::/EFI", "::/EFI/BOOT"]),
    )?;
    run(
        "copying onto the EFI system partition",
        mtools("mcopy").arg("-o").arg(uki).arg(UKI_ON_ESP),
    )
}

/// Bytes a tree takes on disk (allocated blocks), symlinks not followed.
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(m) = fs::symlink_metadata(e.path()) {
                total = total.saturating_add(m.blocks().saturating_mul(512).max(4096));
                if m.is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }
    total
}

/// What identifies a tree's content for rebuilding: every entry's path,
/// type, mode, owner, size and nanosecond mtime (content changes move the
/// mtime; a tree the sync writes sets it from the manifest).
pub fn fingerprint(dir: &Path) -> String {
    let mut paths = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if let Ok(m) = fs::symlink_metadata(&p) {
                if m.is_dir() {
                    stack.push(p.clone());
                }
                paths.push((p, m));
            }
        }
    }
    paths.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (p, m) in paths {
        let rel = p.strip_prefix(dir).unwrap_or(&p);
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update([0]);
        for v in [
            u64::from(m.mode()),
            u64::from(m.uid()),
            u64::from(m.gid()),
            m.size(),
            m.mtime() as u64,
            m.mtime_nsec() as u64,
            m.rdev(),
        ] {
            h.update(v.to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// An ext4 file system labelled `label` holding `dir`, in `raw`, with
/// room to spare (`min_mib` at least).
pub fn make_ext4(raw: &Path, dir: &Path, label: &str, min_mib: u64) -> Result<(), GuestError> {
    let need = tree_bytes(dir);
    let mib = (need / (1 << 20) * 13 / 10 + 64).max(min_mib);
    let _ = fs::remove_file(raw);
    run(
        "making the guest's file system (mkfs.ext4 -d)",
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-t", "ext4", "-L", label, "-d"])
            .arg(dir)
            .arg(raw)
            .arg(format!("{mib}M")),
    )
}

/// Encrypt `raw` into `out` with LUKS under `key` (or copy it as it is
/// when there is no key), then remove `raw`. The key is 32 random bytes
/// unsealed by the TPM, not a passphrase, so the key-stretching time is set
/// low (`iter-time=100` ms): it slows no attacker of a 256-bit key and saves
/// two seconds on every open.
pub fn seal_disk(raw: &Path, out: &Path, key: Option<&KeyFile>) -> Result<(), GuestError> {
    let tmp = out.with_extension("part");
    let _ = fs::remove_file(&tmp);
    match key {
        Some(k) => {
            // qemu's key-stretching benchmark sometimes fails to time itself
            // ("Unable to get accurate CPU usage": its thread was charged no
            // CPU time for the first round, which happens on a machine busy
            // with other work); it is tried again after a pause that grows,
            // about 12 s in all, for the load to pass.
            let mut tries = 0;
            loop {
                let made = run(
                    "encrypting the guest's disk (qemu-img convert -O luks)",
                    Command::new("qemu-img")
                        .arg("convert")
                        .arg("--object")
                        .arg(k.object("key"))
                        .args([
                            "-f",
                            "raw",
                            "-O",
                            "luks",
                            "-o",
                            "key-secret=key,iter-time=100",
                        ])
                        .arg(raw)
                        .arg(&tmp),
                );
                match made {
                    Err(GuestError::Tool { detail, .. })
                        if detail.contains("accurate CPU usage") && tries < 8 =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(
                            (100u64 << tries).min(3000),
                        ));
                        tries += 1;
                    }
                    other => break other?,
                }
            }
        }
        None => fs::rename(raw, &tmp).map_err(|e| GuestError::io("moving the guest's disk", e))?,
    }
    fs::rename(&tmp, out).map_err(|e| GuestError::io("putting the guest's disk in place", e))?;
    let _ = fs::remove_file(raw);
    Ok(())
}

/// `-blockdev` options for a disk made by [`seal_disk`].
pub fn blockdev(path: &Path, node: &str, key: Option<&str>) -> String {
    // A comma in a qemu option value is written twice.
    let file = path.display().to_string().replace(',', ",,");
    match key {
        Some(id) => format!(
            "driver=luks,key-secret={id},node-name={node},file.driver=file,file.filename={file}"
        ),
        None => format!("driver=raw,node-name={node},file.driver=file,file.filename={file}"),
    }
}

/// Whether `path` is a LUKS disk (its header's magic).
pub fn is_luks(path: &Path) -> bool {
    let mut magic = [0u8; 6];
    fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == *b"LUKS\xba\xbe"
}

/// Check that `key` opens the LUKS disk `path` before anything boots.
pub fn check_key(path: &Path, key: &KeyFile) -> Result<(), GuestError> {
    run(
        "opening the guest's disk with the disk key",
        // `info` opens without unlocking a keyslot; `measure` unlocks one.
        Command::new("qemu-img")
            .args(["measure", "-O", "raw"])
            .arg("--object")
            .arg(key.object("key"))
            .arg("--image-opts")
            .arg(blockdev(path, "disk", Some("key"))),
    )
    .map_err(|e| match e {
        GuestError::Tool { detail, .. } if detail.contains("Invalid password") => {
            GuestError::WrongKey {
                disk: path.to_path_buf(),
            }
        }
        other => other,
    })
}

/// Make a tree read back from a guest plain, whatever the dumping tool
/// kept: only directories, regular files and symlinks, no setuid or setgid
/// bit, no extended attribute (file capabilities, ACLs, labels). The guest
/// may be root inside itself; what it wrote must not become a privilege on
/// the device. Everything is given to `uid`:`gid` (the user tree's owner).
/// Symlinks are never followed.
fn plain(dir: &Path, uid: u32, gid: u32) -> Result<(), GuestError> {
    use std::os::unix::fs::PermissionsExt as _;
    let fail = |e: std::io::Error| GuestError::io("making the read-back tree plain", e);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(fail)? {
            let path = entry.map_err(fail)?.path();
            let meta = fs::symlink_metadata(&path).map_err(fail)?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(fail)?;
                continue;
            }
            if !kind.is_dir() && !kind.is_file() {
                fs::remove_file(&path).map_err(fail)?;
                continue;
            }
            let mut names = vec![0u8; 64 * 1024];
            if let Ok(n) = rustix::fs::llistxattr(&path, &mut names[..]) {
                for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
                    rustix::fs::lremovexattr(&path, name).map_err(|e| fail(e.into()))?;
                }
            }
            let mode = meta.permissions().mode();
            if mode & 0o6000 != 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o1777))
                    .map_err(fail)?;
            }
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid)).map_err(fail)?;
            if kind.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(())
}

/// The uid and gid the user disk is read as: one no account and no other
/// process has (not `nobody`, which daemons and sandboxes share: any of
/// them could reach the dump while it is made), never root.
const NOBODY: u32 = 0x7ffe_5a7c;
/// How long a read-back may take.
const READ_BACK_TIME: Duration = Duration::from_secs(300);

/// The read-back's unprivileged user must pass through every directory
/// down to the work directory; one closed to others (a `mktemp -d`, a data
/// directory made 0700) would fail its tools with "Permission denied",
/// which reads like a broken disk. Say what to change instead.
fn passable_by_nobody(parent: &Path) -> Result<(), GuestError> {
    use std::os::unix::fs::PermissionsExt as _;
    let full = fs::canonicalize(parent)
        .map_err(|e| GuestError::io("reading the user tree's parent", e))?;
    for d in full.ancestors() {
        let mode = fs::metadata(d)
            .map_err(|e| GuestError::io("reading the user tree's parent", e))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(GuestError::Refused(format!(
                "the user disk is not read back: {} is closed to other users (mode {:o}), and the read-back's checks run as an unprivileged user of their own that must pass through it; give it o+x (for example chmod {:o} {})",
                d.display(),
                mode & 0o7777,
                (mode & 0o7777) | 0o001,
                d.display()
            )));
        }
    }
    Ok(())
}

/// Read the user disk back into `dir`.
///
/// The disk is the guest's, and the guest may be root inside itself: its
/// file system is hostile input. So: decrypted into a work directory next
/// to `dir`; checked with `e2fsck -fn` (names holding `/`, duplicate
/// entries, loops and broken metadata are errors; any error refuses);
/// dumped by `debugfs rdump` running as `nobody` into a directory only
/// `nobody` may write, each file capped at the disk's size and the whole
/// dump stopped once it grows past the disk's size or takes more than
/// five minutes (holes and hard links come back as real bytes); any
/// complaint of `debugfs` refuses. Then the dump is made plain ([`plain`]),
/// owned by the owner of `dir`, and exchanged with `dir` in one
/// `renameat2(RENAME_EXCHANGE)`: a crash leaves the old tree or the new
/// one. On any refusal `dir` is untouched and the work directory removed.
pub fn read_back(disk: &Path, key: Option<&KeyFile>, dir: &Path) -> Result<(), GuestError> {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = dir.parent().unwrap_or(Path::new("."));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "user".to_owned());
    // The work directory sits next to the user tree (the exchange needs one
    // file system); a parent others may write would let them swap it.
    let parent_mode = fs::metadata(parent)
        .map_err(|e| GuestError::io("reading the user tree's parent", e))?
        .mode();
    let parent_uid = fs::metadata(parent)
        .map_err(|e| GuestError::io("reading the user tree's parent", e))?
        .uid();
    if parent_mode & 0o022 != 0 || parent_uid != 0 {
        return Err(GuestError::Refused(format!(
            "the user disk is not read back: {} may be written by others (mode {:o}, owner {parent_uid}); the user tree must sit in a directory only root writes",
            parent.display(),
            parent_mode & 0o7777
        )));
    }
    passable_by_nobody(parent)?;
    let work = parent.join(format!(".{name}.from-guest"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir(&work).map_err(|e| GuestError::io("making the read-back directory", e))?;
    let result = (|| {
        // root's, entered by nobody only to reach its two entries.
        fs::set_permissions(&work, fs::Permissions::from_mode(0o711))
            .map_err(|e| GuestError::io("making the read-back directory", e))?;
        let raw = work.join("disk.raw");
        match key {
            Some(k) => run(
                "decrypting the user disk",
                Command::new("qemu-img")
                    .arg("convert")
                    .arg("--object")
                    .arg(k.object("key"))
                    .arg("--image-opts")
                    .arg(blockdev(disk, "disk", Some("key")))
                    .args(["-O", "raw"])
                    .arg(&raw),
            )?,
            None => {
                fs::copy(disk, &raw).map_err(|e| GuestError::io("copying the user disk", e))?;
            }
        }
        let size = fs::metadata(&raw)
            .map_err(|e| GuestError::io("reading the user disk", e))?
            .len();
        std::os::unix::fs::chown(&raw, Some(NOBODY), Some(NOBODY))
            .map_err(|e| GuestError::io("handing the user disk to nobody", e))?;
        fs::set_permissions(&raw, fs::Permissions::from_mode(0o400))
            .map_err(|e| GuestError::io("handing the user disk to nobody", e))?;
        let check = run(
            "checking the user disk (e2fsck -fn)",
            as_nobody(Command::new("e2fsck").args(["-f", "-n"]).arg(&raw)),
        );
        if let Err(GuestError::Tool { detail, .. }) = check {
            return Err(GuestError::Refused(format!(
                "the user disk's file system is not sound; it is kept, not read back: {detail}"
            )));
        }
        check?;
        let tree = work.join("tree");
        fs::create_dir(&tree).map_err(|e| GuestError::io("making the read-back directory", e))?;
        std::os::unix::fs::chown(&tree, Some(NOBODY), Some(NOBODY))
            .map_err(|e| GuestError::io("handing the read-back directory to nobody", e))?;
        fs::set_permissions(&tree, fs::Permissions::from_mode(0o700))
            .map_err(|e| GuestError::io("making the read-back directory", e))?;
        dump(&raw, &tree, size)?;
        // Closed to everyone but root before it is walked.
        std::os::unix::fs::chown(&tree, Some(0), Some(0))
            .map_err(|e| GuestError::io("taking the read-back tree back", e))?;
        let _ = fs::remove_dir_all(tree.join("lost+found"));
        let meta = fs::metadata(dir).map_err(|e| GuestError::io("reading the user tree", e))?;
        plain(&tree, meta.uid(), meta.gid())?;
        fs::set_permissions(&tree, meta.permissions())
            .map_err(|e| GuestError::io("setting the read-back tree's mode", e))?;
        std::os::unix::fs::chown(&tree, Some(meta.uid()), Some(meta.gid()))
            .map_err(|e| GuestError::io("setting the read-back tree's owner", e))?;
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tree,
            rustix::fs::CWD,
            dir,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| GuestError::io("putting the read-back tree in place", e.into()))
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

/// `cmd`, run as nobody (no supplementary groups: std drops them when
/// root sets a uid).
fn as_nobody(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // Its own process group, so whatever it forks is stopped with it.
    cmd.uid(NOBODY)
        .gid(NOBODY)
        .current_dir("/")
        .process_group(0)
}

/// Stop a child made by [`as_nobody`] and everything in its group.
fn stop_group(child: &mut std::process::Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `debugfs rdump` of `raw` into `tree` (as nobody, from inside `tree`, so
/// no path of ours is parsed by debugfs), stopped past `limit` bytes
/// written or [`READ_BACK_TIME`].
fn dump(raw: &Path, tree: &Path, limit: u64) -> Result<(), GuestError> {
    let mut child = as_nobody(
        Command::new("prlimit")
            .arg(format!("--fsize={limit}"))
            .arg("debugfs")
            .arg("-R")
            .arg("rdump / .")
            .arg(raw),
    )
    .current_dir(tree)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .map_err(|e| GuestError::Tool {
        what: "reading the user disk back",
        program: "debugfs".to_owned(),
        detail: e.to_string(),
    })?;
    let stderr = child.stderr.take();
    let said = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = std::io::Read::read_to_string(
                &mut std::io::Read::take(&mut e, 64 * 1024),
                &mut text,
            );
        }
        text
    });
    let start = Instant::now();
    let stopped = loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt as _;
                break match (status.success(), status.signal()) {
                    (true, _) => Ok(()),
                    // SIGXFSZ: one file grew past the disk's size.
                    (false, Some(25)) => Err(format!(
                        "it unpacks larger than the disk itself ({limit} bytes): a file with holes written out"
                    )),
                    (false, _) => Err(format!("debugfs exited with {status}")),
                };
            }
            Ok(None) => {}
            Err(e) => break Err(e.to_string()),
        }
        if tree_bytes(tree) > limit {
            break Err(format!(
                "it unpacks larger than the disk itself ({limit} bytes): holes or hard links written out"
            ));
        }
        if start.elapsed() > READ_BACK_TIME {
            break Err(format!("it took more than {} s", READ_BACK_TIME.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    stop_group(&mut child);
    let said = said.join().unwrap_or_default();
    stopped.map_err(|why| GuestError::Refused(format!("the user disk is not read back: {why}")))?;
    // debugfs says its version on the first line; anything else is a
    // complaint (a name it could not write, a file system it could not open).
    let complaints: Vec<&str> = said
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        // As nobody it cannot give files their owners; they get the user
        // tree's owner afterwards anyway.
        .filter(|l| {
            !(["rdump: ", "dump_file: "].iter().any(|p| l.starts_with(p))
                && l.contains(": Operation not permitted while changing ownership of ./"))
        })
        .collect();
    if !complaints.is_empty() {
        return Err(GuestError::Refused(format!(
            "the user disk is not read back: debugfs said: {}",
            complaints.join("; ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_takes_only_plain_parameters_from_the_image() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            command_line(root.path()).unwrap(),
            "root=/dev/disk/by-id/virtio-satchel-root ro console=ttyS0"
        );
        fs::create_dir_all(root.path().join("etc/satchel")).unwrap();
        let extra = root.path().join("etc/satchel/guest-cmdline");
        fs::write(&extra, "init=/usr/local/sbin/satchel-guest-init quiet\n").unwrap();
        assert!(command_line(root.path())
            .unwrap()
            .ends_with("console=ttyS0 init=/usr/local/sbin/satchel-guest-init quiet"));
        // Quotes, escapes, redirections, a second line: refused.
        for bad in [
            "a > fs0:\\x",
            "a %path%",
            "a ^b",
            "a # b",
            "a\r\nfs0:\\evil.efi",
            "a \"b\"",
        ] {
            fs::write(&extra, bad).unwrap();
            assert!(
                matches!(command_line(root.path()), Err(GuestError::Image { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_stub_must_be_a_file_under_real_directories_of_the_image() {
        let r = tempfile::tempdir().unwrap();
        let root = r.path().join("root");
        let dir = root.join("usr/lib/systemd/boot/efi");
        fs::create_dir_all(&dir).unwrap();
        assert!(stub(&root).is_err(), "no stub");
        fs::write(dir.join("linuxx64.efi.stub"), b"MZ").unwrap();
        assert_eq!(stub(&root).unwrap(), dir.join("linuxx64.efi.stub"));
        // The stub a link to a host file: refused.
        fs::remove_file(dir.join("linuxx64.efi.stub")).unwrap();
        fs::write(r.path().join("host-file"), b"MZ").unwrap();
        std::os::unix::fs::symlink(r.path().join("host-file"), dir.join("linuxx64.efi.stub"))
            .unwrap();
        assert!(stub(&root).is_err(), "a linked stub");
        // A directory on the way a link to a host directory: refused.
        let host = r.path().join("host/boot/efi");
        fs::create_dir_all(&host).unwrap();
        fs::write(host.join("linuxx64.efi.stub"), b"MZ").unwrap();
        fs::remove_dir_all(root.join("usr/lib/systemd")).unwrap();
        std::os::unix::fs::symlink(r.path().join("host"), root.join("usr/lib/systemd")).unwrap();
        assert!(root.join(STUB).exists());
        let e = stub(&root).unwrap_err().to_string();
        assert!(e.contains("systemd-boot-efi"), "{e}");
    }

    /// The attacker's review: objcopy was handed `path.display()`, which
    /// turns a name that is not UTF-8 into another name (U+FFFD), where the
    /// image can keep a link to a host file; and it opened by name after
    /// the checks. The parts are now copied from beneath the root, no link
    /// followed, and objcopy reads the copies.
    #[test]
    fn the_kernel_images_parts_come_from_beneath_the_root_never_through_a_link() {
        use std::os::unix::ffi::OsStrExt as _;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::write(d.path().join("host-secret"), b"HOST SECRET").unwrap();
        let odd = root
            .join("boot")
            .join(std::ffi::OsStr::from_bytes(b"vmlinuz-x\xff"));
        fs::write(&odd, b"the image's kernel").unwrap();
        let lossy = root
            .join("boot")
            .join(odd.file_name().unwrap().to_string_lossy().as_ref());
        std::os::unix::fs::symlink(d.path().join("host-secret"), &lossy).unwrap();
        let (copy, n) = copy_part(&root, &odd, &d.path().join("k.copy")).unwrap();
        assert_eq!(fs::read(&copy).unwrap(), b"the image's kernel");
        assert_eq!(n, 18);
        // The link itself, and a directory on the way that is a link: refused.
        assert!(copy_part(&root, &lossy, &d.path().join("l.copy")).is_err());
        std::os::unix::fs::symlink(d.path(), root.join("up")).unwrap();
        let e = copy_part(
            &root,
            &root.join("up/host-secret"),
            &d.path().join("u.copy"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no links followed"), "{e}");
        assert!(!d.path().join("l.copy").exists() && !d.path().join("u.copy").exists());
        // Outside the root: refused.
        assert!(copy_part(
            &root,
            &d.path().join("host-secret"),
            &d.path().join("o.copy")
        )
        .is_err());
    }

    #[test]
    fn the_unified_image_carries_no_build_time() {
        let d = tempfile::tempdir().unwrap();
        let pe = d.path().join("x.efi");
        let mut bytes = vec![0u8; 0x200];
        bytes[..2].copy_from_slice(b"MZ");
        bytes[0x3c] = 0x80;
        bytes[0x80..0x84].copy_from_slice(b"PE\0\0");
        bytes[0x88..0x8c].copy_from_slice(&[1, 2, 3, 4]);
        fs::write(&pe, &bytes).unwrap();
        clear_pe_timestamp(&pe).unwrap();
        let after = fs::read(&pe).unwrap();
        assert_eq!(&after[0x88..0x8c], &[0, 0, 0, 0]);
        assert_eq!(after.len(), bytes.len());
        assert_eq!(after[..0x88], bytes[..0x88]);
        // Not a PE image: an error, nothing written.
        fs::write(&pe, b"not a PE image at all, just text").unwrap();
        assert!(clear_pe_timestamp(&pe).is_err());
        assert_eq!(fs::read(&pe).unwrap(), b"not a PE image at all, just text");
    }

    #[test]
    fn the_kernel_must_be_a_file_in_boot() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert!(matches!(boot_files(r), Err(GuestError::Image { .. })));
        fs::create_dir_all(r.join("boot")).unwrap();
        fs::write(r.join("boot/vmlinuz-1"), b"k").unwrap();
        fs::write(r.join("boot/initrd.img-1"), b"i").unwrap();
        std::os::unix::fs::symlink("boot/vmlinuz-1", r.join("vmlinuz")).unwrap();
        std::os::unix::fs::symlink("boot/initrd.img-1", r.join("initrd.img")).unwrap();
        let (k, i) = boot_files(r).unwrap();
        assert_eq!(
            (k, i),
            (r.join("boot/vmlinuz-1"), r.join("boot/initrd.img-1"))
        );
        // A link out of /boot (to a host file) is refused.
        fs::remove_file(r.join("vmlinuz")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", r.join("vmlinuz")).unwrap();
        assert!(matches!(boot_files(r), Err(GuestError::Image { .. })));
        fs::remove_file(r.join("vmlinuz")).unwrap();
        std::os::unix::fs::symlink("boot/../../etc/shadow", r.join("vmlinuz")).unwrap();
        assert!(matches!(boot_files(r), Err(GuestError::Image { .. })));
        // /boot/NAME itself a link: refused.
        fs::remove_file(r.join("vmlinuz")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", r.join("boot/vmlinuz-2")).unwrap();
        std::os::unix::fs::symlink("boot/vmlinuz-2", r.join("vmlinuz")).unwrap();
        assert!(matches!(boot_files(r), Err(GuestError::Image { .. })));
        // /boot itself a link: refused.
        let other = tempfile::tempdir().unwrap();
        fs::rename(r.join("boot"), other.path().join("boot")).unwrap();
        std::os::unix::fs::symlink(other.path().join("boot"), r.join("boot")).unwrap();
        fs::remove_file(r.join("vmlinuz")).unwrap();
        std::os::unix::fs::symlink("boot/vmlinuz-1", r.join("vmlinuz")).unwrap();
        assert!(matches!(boot_files(r), Err(GuestError::Image { .. })));
    }

    /// What a guest writes to its user disk comes back to the device as
    /// root. A guest with root inside itself can put anything there: a
    /// setuid root shell, a device node for the host's disk, a file
    /// capability, a FIFO. None of it may land in the device's user tree.
    #[test]
    fn a_hostile_user_disk_reads_back_as_plain_files_only() {
        if !rustix::process::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs this as root");
            eprintln!("SKIPPED: needs root (mknod, setuid root files)");
            return;
        }
        use std::os::unix::fs::PermissionsExt as _;
        let w = tempfile::tempdir().unwrap();
        let guest = w.path().join("guest-home");
        fs::create_dir_all(guest.join("pupil")).unwrap();
        let shell = guest.join("pupil/rootshell");
        fs::write(&shell, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&shell, fs::Permissions::from_mode(0o4755)).unwrap();
        let capped = guest.join("pupil/capped");
        fs::write(&capped, b"x").unwrap();
        // VFS_CAP_REVISION_2, effective, cap_setuid (7) permitted.
        let cap: Vec<u8> = [0x0200_0001u32, 1 << 7, 0, 0, 0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        rustix::fs::setxattr(
            &capped,
            "security.capability",
            &cap,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let group_dir = guest.join("pupil/shared");
        fs::create_dir(&group_dir).unwrap();
        fs::set_permissions(&group_dir, fs::Permissions::from_mode(0o2777)).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            guest.join("pupil/host-disk"),
            rustix::fs::FileType::BlockDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(8, 0),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            guest.join("pupil/pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
        std::os::unix::fs::symlink("/etc/shadow", guest.join("pupil/shadow")).unwrap();
        fs::write(guest.join("pupil/notes.txt"), b"mine").unwrap();

        let raw = w.path().join("user.raw");
        make_ext4(&raw, &guest, USER_LABEL, 16).unwrap();
        let disk = w.path().join("user.disk");
        seal_disk(&raw, &disk, None).unwrap();
        let tree = w.path().join("user");
        fs::create_dir(&tree).unwrap();
        read_back(&disk, None, &tree).unwrap();

        let p = tree.join("pupil");
        assert_eq!(fs::read(p.join("notes.txt")).unwrap(), b"mine");
        // Everything belongs to the user tree's owner.
        let owner = fs::metadata(&tree).unwrap().uid();
        assert_eq!(
            fs::symlink_metadata(p.join("rootshell")).unwrap().uid(),
            owner
        );
        assert_eq!(fs::symlink_metadata(p.join("shadow")).unwrap().uid(), owner);
        let mode = |f: &str| fs::symlink_metadata(p.join(f)).unwrap().mode() & 0o7777;
        assert_eq!(mode("rootshell") & 0o6000, 0, "setuid kept");
        assert_eq!(mode("shared") & 0o6000, 0, "setgid kept");
        assert!(
            rustix::fs::getxattr(p.join("capped"), "security.capability", &mut [0u8; 64]).is_err(),
            "the file capability came back"
        );
        assert!(!p.join("host-disk").exists(), "a device node came back");
        assert!(
            fs::symlink_metadata(p.join("pipe")).is_err(),
            "a FIFO came back"
        );
        // A symlink is kept as a link (the sync reads links as links).
        assert_eq!(
            fs::read_link(p.join("shadow")).unwrap(),
            Path::new("/etc/shadow")
        );
    }

    /// The clean-up itself, whatever the dumping tool kept.
    #[test]
    fn plain_removes_special_files_bits_and_attributes() {
        use std::os::unix::fs::PermissionsExt as _;
        let w = tempfile::tempdir().unwrap();
        let d = w.path();
        fs::create_dir(d.join("sub")).unwrap();
        fs::write(d.join("sub/suid"), b"x").unwrap();
        fs::set_permissions(d.join("sub/suid"), fs::Permissions::from_mode(0o6755)).unwrap();
        rustix::fs::setxattr(
            d.join("sub/suid"),
            "user.mark",
            b"1",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            d.join("sub/pipe"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
        std::os::unix::fs::symlink("suid", d.join("sub/link")).unwrap();
        plain(d, 0, 0).unwrap();
        let meta = fs::metadata(d.join("sub/suid")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        assert!(rustix::fs::getxattr(d.join("sub/suid"), "user.mark", &mut [0u8; 8]).is_err());
        assert!(fs::symlink_metadata(d.join("sub/pipe")).is_err());
        assert!(fs::symlink_metadata(d.join("sub/link"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    fn root_or_skip() -> bool {
        if rustix::process::geteuid().is_root() {
            return true;
        }
        assert!(std::env::var_os("CI").is_none(), "CI runs this as root");
        eprintln!("SKIPPED: needs root");
        false
    }

    /// A guest with root edits its user disk's directory blocks so that a
    /// name holds `/` and `..`: dumped as root, the file would land
    /// anywhere on the device (reproduced with debugfs 1.47: `rdump` joins
    /// names to paths unchecked). Refused, nothing written, the tree kept.
    #[test]
    fn a_name_that_climbs_out_of_the_user_disk_writes_nothing_outside() {
        if !root_or_skip() {
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let target = format!(
            "{}tmp/satchel-climbed-{}",
            "../".repeat(24),
            std::process::id()
        );
        let outside = PathBuf::from(format!("/tmp/satchel-climbed-{}", std::process::id()));
        let _ = fs::remove_file(&outside);
        let guest = w.path().join("guest-home");
        fs::create_dir(&guest).unwrap();
        let decoy = "X".repeat(target.len());
        fs::write(guest.join(&decoy), b"owned").unwrap();
        let raw = w.path().join("user.raw");
        run(
            "test image",
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-O", "^metadata_csum,^dir_index", "-d"])
                .arg(&guest)
                .arg(&raw)
                .arg("16M"),
        )
        .unwrap();
        let mut bytes = fs::read(&raw).unwrap();
        let at = bytes
            .windows(decoy.len())
            .position(|x| x == decoy.as_bytes())
            .unwrap();
        bytes[at..at + target.len()].copy_from_slice(target.as_bytes());
        fs::write(&raw, &bytes).unwrap();
        let disk = w.path().join("user.disk");
        seal_disk(&raw, &disk, None).unwrap();
        let tree = w.path().join("user");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("kept"), b"before").unwrap();
        assert!(read_back(&disk, None, &tree).is_err());
        assert!(!outside.exists(), "the guest wrote {}", outside.display());
        assert_eq!(fs::read(tree.join("kept")).unwrap(), b"before");
    }

    /// An ordinary guest user makes a huge sparse file (or many links to
    /// one big file): dumped, its holes become real bytes on the device.
    /// The read-back stops at the disk's own size, and the tree is kept.
    #[test]
    fn a_user_disk_that_would_unpack_larger_than_itself_is_refused() {
        if !root_or_skip() {
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let guest = w.path().join("guest-home");
        fs::create_dir(&guest).unwrap();
        let f = fs::File::create(guest.join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        let raw = w.path().join("user.raw");
        make_ext4(&raw, &guest, USER_LABEL, 64).unwrap();
        let disk = w.path().join("user.disk");
        seal_disk(&raw, &disk, None).unwrap();
        let disk_size = fs::metadata(&disk).unwrap().len();
        assert!(disk_size < 1 << 30);
        let tree = w.path().join("user");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("kept"), b"before").unwrap();
        let err = read_back(&disk, None, &tree).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        assert_eq!(fs::read(tree.join("kept")).unwrap(), b"before");
        assert!(!tree.join("sparse").exists());
        // Nothing of the dump is left behind.
        assert!(!w.path().join(".user.from-guest").exists());
    }

    /// A disk that is no file system (or a broken one): refused, not read
    /// back as an empty tree that would delete the user's files.
    #[test]
    fn a_broken_user_disk_never_empties_the_user_tree() {
        if !root_or_skip() {
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let disk = w.path().join("user.disk");
        fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        let tree = w.path().join("user");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("kept"), b"before").unwrap();
        assert!(read_back(&disk, None, &tree).is_err());
        assert_eq!(fs::read(tree.join("kept")).unwrap(), b"before");
    }

    /// Others could swap the work directory in a parent they may write.
    #[test]
    fn the_user_tree_must_sit_where_only_its_owner_writes() {
        use std::os::unix::fs::PermissionsExt as _;
        let w = tempfile::tempdir().unwrap();
        let shared = w.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let tree = shared.join("user");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("kept"), b"before").unwrap();
        let disk = w.path().join("user.disk");
        fs::write(&disk, b"not read").unwrap();
        let err = read_back(&disk, None, &tree).unwrap_err();
        assert!(err.to_string().contains("written by others"), "{err}");
        assert_eq!(fs::read(tree.join("kept")).unwrap(), b"before");
    }

    #[test]
    fn a_user_tree_closed_to_the_read_backs_user_is_named_not_blamed_on_the_disk() {
        use std::os::unix::fs::PermissionsExt as _;
        if !root_or_skip() {
            return;
        }
        let w = tempfile::tempdir().unwrap();
        let closed = w.path().join("closed");
        let data = closed.join("data");
        fs::create_dir_all(&data).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        let tree = data.join("user");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("kept"), b"before").unwrap();
        let disk = w.path().join("user.disk");
        fs::write(&disk, b"not read").unwrap();
        let err = read_back(&disk, None, &tree).unwrap_err().to_string();
        assert!(
            err.contains("closed to other users (mode 700)") && err.contains("chmod 701"),
            "{err}"
        );
        assert!(!err.contains("not sound"), "{err}");
        assert_eq!(fs::read(tree.join("kept")).unwrap(), b"before");
        assert!(!data.join(".user.from-guest").exists());
    }
}
