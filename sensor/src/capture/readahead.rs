//! Reads a capture file on a helper thread, a chunk ahead of the parser.
//!
//! Copying file data out of the page cache is a tenth of metering's time on
//! a fast capture; done here, it overlaps parsing and metering on another
//! core. Each chunk keeps [`HEADROOM`] free bytes in front of its data, so
//! the reader can put the unparsed end of the previous chunk (part of a
//! record) right before the new data and parse on without moving the chunk.
//! A few chunks circulate (full ones one way, emptied ones back), so memory
//! stays at a few chunks of 576 KiB whatever the file size (fewer, larger
//! chunks mean fewer thread wake-ups).

use std::fs::File;
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

/// Free bytes in front of each chunk's data.
pub const HEADROOM: usize = 64 * 1024;
/// File bytes per chunk.
const CHUNK: usize = 512 * 1024;

/// A chunk: `buf[HEADROOM..HEADROOM + len]` holds file data.
pub struct Chunk {
    pub buf: Vec<u8>,
    pub len: usize,
}

pub struct ReadAhead {
    full: Receiver<io::Result<Chunk>>,
    empty: SyncSender<Vec<u8>>,
}

impl ReadAhead {
    pub fn spawn(mut file: File) -> io::Result<ReadAhead> {
        let (full_tx, full) = sync_channel::<io::Result<Chunk>>(1);
        let (empty, empty_rx) = sync_channel::<Vec<u8>>(2);
        std::thread::Builder::new()
            .name("capture-read".into())
            .spawn(move || loop {
                let mut buf = empty_rx
                    .try_recv()
                    .unwrap_or_else(|_| vec![0; HEADROOM + CHUNK]);
                let mut len = 0;
                while len < CHUNK {
                    match file.read(&mut buf[HEADROOM + len..]) {
                        Ok(0) => break,
                        Ok(k) => len += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = full_tx.send(Err(e));
                            return;
                        }
                    }
                }
                // A short chunk is the last; the parser stopping early
                // (receiver gone) ends the thread too.
                if full_tx.send(Ok(Chunk { buf, len })).is_err() || len < CHUNK {
                    return;
                }
            })?;
        Ok(ReadAhead { full, empty })
    }

    /// The next chunk, or `None` at the end of the file.
    pub fn next(&mut self) -> io::Result<Option<Chunk>> {
        match self.full.recv() {
            Ok(Ok(c)) => Ok(Some(c)),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// Hands a chunk's buffer back for reuse.
    pub fn recycle(&self, buf: Vec<u8>) {
        if buf.len() == HEADROOM + CHUNK {
            let _ = self.empty.try_send(buf);
        }
    }
}
