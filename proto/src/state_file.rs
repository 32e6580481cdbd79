//! Small files replaced atomically, for the sensor's state (the seq
//! counter, the buffer's ack cursor, the budget's use, a repaired segment,
//! set-aside batches) and the collector's PKI (keys, certificates, the
//! index, the CRL): written to a new `NAME.tmp` (created exclusively, so
//! never through a planted symlink) with the file's permissions, then
//! renamed over `NAME`, so a reader sees the old content or the new, never
//! a mix or a truncated file. A symlink at `NAME` is refused, not followed.
//! How far the new content survives a power loss is the caller's choice,
//! named by [`Durability`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// What survives a power loss right after [`replace`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The content and the rename are fsynced (file, then directory): the
    /// new content survives. For state whose loss would break a promise
    /// (a batch seq must never be reused).
    Synced,
    /// Nothing is fsynced: a crash of the process keeps the new content,
    /// a power loss may bring the old content back. For state that may
    /// lag safely (an ack cursor behind only causes resends the shore
    /// drops; budget use behind by a second).
    Atomic,
}

/// Whether `e` means the filesystem is full (or the user's quota is).
pub fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull
        || e.kind() == io::ErrorKind::QuotaExceeded
        || matches!(e.raw_os_error(), Some(28 /* ENOSPC */ | 122 /* EDQUOT */))
}

/// Who may read a file written by [`replace_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// 0644.
    Shared,
    /// 0600, whatever the umask: private keys.
    Private,
}

/// Replaces `path`'s content by `content`, atomically, with `durability`
/// (readable by all, see [`Access::Shared`]).
pub fn replace(path: &Path, content: &[u8], durability: Durability) -> io::Result<()> {
    replace_with(path, content, durability, Access::Shared)
}

/// Replaces `path`'s content by `content`, atomically, with `durability`
/// and `access`.
pub fn replace_with(
    path: &Path,
    content: &[u8],
    durability: Durability,
    access: Access,
) -> io::Result<()> {
    if fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is a symbolic link; refusing to replace it",
                path.display()
            ),
        ));
    }
    let mode = match access {
        Access::Shared => 0o644,
        Access::Private => 0o600,
    };
    let tmp = path.with_extension("tmp");
    // Left by a crash (or planted): removing a symlink removes the link.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    // Whatever the umask.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(content)?;
    if durability == Durability::Synced {
        f.sync_all()?;
    }
    drop(f);
    fs::rename(&tmp, path)?;
    if durability == Durability::Synced {
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_content_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state");
        replace(&p, b"a long first value\n", Durability::Synced).unwrap();
        replace(&p, b"2\n", Durability::Atomic).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"2\n");
        assert!(!d.path().join("state.tmp").exists());
    }

    #[test]
    fn private_files_are_0600_and_symlinks_are_neither_followed_nor_replaced() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("key.pem");
        replace_with(&key, b"secret", Durability::Synced, Access::Private).unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A link planted at the name, or at the temporary name.
        let target = d.path().join("elsewhere");
        fs::write(&target, b"untouched").unwrap();
        let link = d.path().join("crl.pem");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = replace(&link, b"new", Durability::Synced).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        std::os::unix::fs::symlink(&target, d.path().join("index.tmp")).unwrap();
        replace(&d.path().join("index.tsv"), b"rows", Durability::Synced).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"untouched");
        assert_eq!(fs::read(d.path().join("index.tsv")).unwrap(), b"rows");
    }
}
