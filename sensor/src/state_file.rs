//! Small state files (the seq counter, the buffer's ack cursor, the budget's
//! use, a repaired segment) replaced atomically: written to `NAME.tmp`, then
//! renamed over `NAME`, so a reader sees the old content or the new, never
//! a mix. How far the new content survives a power loss is the caller's
//! choice, named by [`Durability`].

use std::fs::{self, File};
use std::io::{self, Write};
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

/// Replaces `path`'s content by `content`, atomically, with `durability`.
pub fn replace(path: &Path, content: &[u8], durability: Durability) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp)?;
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
}
