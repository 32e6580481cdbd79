//! Mapping in fresh memory in bulk.
//!
//! A growing flow table touches tens of megabytes of new memory, and each
//! first touch of a page is a page fault: several microseconds apiece on a
//! virtual machine, a tenth of metering's time at 100k new flows. The
//! table's storage grows in large fixed chunks that are filled right away,
//! so their pages are mapped in with one system call per chunk instead.

/// Maps in the pages of `v`'s allocation (its capacity) as if written; the
/// contents do not change. A hint only: where the kernel lacks
/// `MADV_POPULATE_WRITE` (Linux before 5.14) or on other systems, nothing
/// happens and pages fault in as they are touched.
#[allow(unsafe_code)] // see the SAFETY comments
pub fn prefault<T>(v: &mut Vec<T>) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: sysconf has no preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            p if p > 0 => p as usize,
            _ => return,
        };
        let start = v.as_mut_ptr() as usize;
        let end = start + v.capacity() * std::mem::size_of::<T>();
        let (first, last) = (start.next_multiple_of(page), end / page * page);
        if last > first {
            // SAFETY: the range lies inside `v`'s own allocation, and
            // MADV_POPULATE_WRITE only maps pages in (it never changes what
            // they hold); an error just means it did not happen.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_POPULATE_WRITE,
                );
            }
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = v;
}
