//! Weight buffers on 2 MiB pages where Linux allows it. Decode streams every weight once a
//! token: on 4 KiB pages a 7B model is a million TLB misses a token, and in a virtual machine
//! each miss walks two page tables. Transparent huge pages in "madvise" mode (the default of
//! most distributions) cover only memory that asks for them, and only whole 2 MiB frames that
//! are aligned: the heap gives neither, so a large buffer is mapped here, aligned, and asks
//! before its first page is touched.

use std::ops::{Deref, DerefMut};

/// Element types whose all-zero bytes are a value (what a fresh anonymous mapping holds).
///
/// # Safety
/// Every all-zero bit pattern of the type must be a valid value of it.
pub unsafe trait Zeroable: Copy + Default {}
// SAFETY: zero is a valid integer.
unsafe impl Zeroable for u8 {}
// SAFETY: as above.
unsafe impl Zeroable for u16 {}

/// A zeroed, fixed-length buffer: on huge pages when it is big enough to hold one, on the
/// heap otherwise.
pub struct HugeBuf<T: Zeroable> {
    storage: Storage<T>,
}

enum Storage<T> {
    Heap(Vec<T>),
    #[cfg(target_os = "linux")]
    Mapped(mapped::Mapping<T>),
}

impl<T: Zeroable> HugeBuf<T> {
    pub fn zeroed(len: usize) -> Self {
        #[cfg(target_os = "linux")]
        if let Some(mapping) = mapped::Mapping::zeroed(len) {
            return Self {
                storage: Storage::Mapped(mapping),
            };
        }
        Self {
            storage: Storage::Heap(vec![T::default(); len]),
        }
    }
}

impl<T: Zeroable> Deref for HugeBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.storage {
            Storage::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Storage::Mapped(m) => m.as_slice(),
        }
    }
}

impl<T: Zeroable> DerefMut for HugeBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.storage {
            Storage::Heap(v) => v,
            #[cfg(target_os = "linux")]
            Storage::Mapped(m) => m.as_mut_slice(),
        }
    }
}

#[cfg(target_os = "linux")]
mod mapped {
    use super::Zeroable;
    use std::ptr::NonNull;

    const HUGE_PAGE: usize = 2 << 20;
    const PAGE: usize = 4096;

    /// An anonymous private mapping that starts on a 2 MiB boundary and advises huge pages.
    pub struct Mapping<T> {
        ptr: NonNull<T>,
        len: usize,
        /// The mapped bytes from `ptr`: `len` elements rounded up to whole small pages. The
        /// tail past the last whole huge page stays on small pages, so nothing is wasted.
        bytes: usize,
    }

    // SAFETY: the mapping is owned memory like a Vec's; access follows Rust's borrows.
    unsafe impl<T: Send> Send for Mapping<T> {}
    unsafe impl<T: Sync> Sync for Mapping<T> {}

    impl<T: Zeroable> Mapping<T> {
        /// `None` below one huge page (the heap serves those as well), or if the kernel
        /// refuses the mapping.
        pub fn zeroed(len: usize) -> Option<Self> {
            let bytes = (len * std::mem::size_of::<T>()).next_multiple_of(PAGE);
            if bytes < HUGE_PAGE {
                return None;
            }
            // Map one huge page more than needed, then unmap what lies before the first
            // boundary and after the end.
            let span = bytes + HUGE_PAGE;
            // SAFETY: a fresh anonymous mapping; the kernel picks the address.
            let raw = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    span,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if raw == libc::MAP_FAILED {
                return None;
            }
            let start = raw as usize;
            let aligned = start.next_multiple_of(HUGE_PAGE);
            // SAFETY: both ranges lie inside the mapping just made and nothing points into
            // them. The advice only picks the page size: a kernel without transparent huge
            // pages refuses it and the buffer works on small pages.
            unsafe {
                if aligned > start {
                    libc::munmap(raw, aligned - start);
                }
                let tail = start + span - (aligned + bytes);
                if tail > 0 {
                    libc::munmap((aligned + bytes) as *mut libc::c_void, tail);
                }
                libc::madvise(aligned as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
            }
            Some(Self {
                ptr: NonNull::new(aligned as *mut T)?,
                len,
                bytes,
            })
        }

        pub fn as_slice(&self) -> &[T] {
            // SAFETY: `len` zero-initialised (anonymous memory) elements of a Zeroable type.
            unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
        }

        pub fn as_mut_slice(&mut self) -> &mut [T] {
            // SAFETY: as `as_slice`, and `&mut self` makes the borrow unique.
            unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
        }
    }

    impl<T> Drop for Mapping<T> {
        fn drop(&mut self) {
            // SAFETY: the range is exactly what `zeroed` kept mapped, and no borrow outlives self.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), self.bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds_what_is_written(len: usize) {
        let mut buf: HugeBuf<u16> = HugeBuf::zeroed(len);
        assert_eq!(buf.len(), len);
        assert!(buf.iter().all(|&x| x == 0));
        for (i, x) in buf.iter_mut().enumerate() {
            *x = i as u16;
        }
        assert!(buf.iter().enumerate().all(|(i, &x)| x == i as u16));
    }

    #[test]
    fn small_and_large_buffers_start_zeroed_and_keep_what_is_written() {
        holds_what_is_written(0);
        holds_what_is_written(1000);
        // Past one huge page, and not a whole number of them.
        holds_what_is_written((3 << 20) + 17);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn large_buffers_start_on_a_huge_page_boundary() {
        let buf: HugeBuf<u8> = HugeBuf::zeroed(5 << 20);
        assert_eq!(buf.as_ptr() as usize % (2 << 20), 0);
    }

    /// Where the kernel offers transparent huge pages at all, a written buffer sits on them.
    #[cfg(target_os = "linux")]
    #[test]
    fn written_buffers_sit_on_huge_pages_where_the_kernel_has_them() {
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default();
        if !thp.contains("[always]") && !thp.contains("[madvise]") {
            eprintln!("transparent huge pages are off here ({thp:?}): nothing to check");
            return;
        }
        let mut buf: HugeBuf<u8> = HugeBuf::zeroed(5 << 20);
        buf.fill(1);
        // The mapping holding the buffer (it may have merged with a neighbour's).
        let at = buf.as_ptr() as usize;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        let huge_kb: usize = loop {
            let line = lines.next().expect("the buffer's mapping in smaps");
            let range = line.split_whitespace().next().unwrap_or_default();
            let Some((lo, hi)) = range.split_once('-') else {
                continue;
            };
            let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
            else {
                continue;
            };
            if (lo..hi).contains(&at) {
                let field = lines.find(|l| l.starts_with("AnonHugePages:")).unwrap();
                break field.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        };
        // Two whole huge pages fit in the first 5 MiB; the last MiB stays on small pages.
        assert!(
            huge_kb >= 4096,
            "AnonHugePages of the mapping: {huge_kb} kB"
        );
    }
}
