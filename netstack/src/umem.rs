//! The UMEM: one memory area that the kernel and the rings share frames of.
//!
//! Backed by 2 MiB hugepages when the host has them reserved (fewer TLB
//! misses on the frame copies), plain pages otherwise.

use std::ptr::NonNull;
use tracing::{info, warn};

const HUGEPAGE: usize = 2 << 20;

/// What backs the area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// 2 MiB hugepages.
    HugePages,
    /// Ordinary 4 KiB pages.
    Pages,
}

/// Whether to try hugepages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HugePagePolicy {
    /// Hugepages if the host has them reserved, plain pages otherwise.
    #[default]
    Auto,
    /// Plain pages only.
    Never,
}

/// An anonymous, page-aligned mapping that holds UMEM frames.
#[derive(Debug)]
pub struct UmemArea {
    base: NonNull<u8>,
    len: usize,
    frame_size: u32,
    backing: Backing,
}

// SAFETY: the area is plain memory owned by this value; who may touch which
// frame is decided by frame ownership (the pool and the rings), not by the
// thread, so moving the owner between threads is sound.
unsafe impl Send for UmemArea {}
// SAFETY: shared references only read `base`/`len`; frame contents are
// reached through `FrameRegion`'s unsafe accessors, whose callers guarantee
// exclusive ownership of the frames they touch.
unsafe impl Sync for UmemArea {}

impl UmemArea {
    /// Map `frames` frames of `frame_size` bytes.
    pub fn new(frames: u32, frame_size: u32, policy: HugePagePolicy) -> std::io::Result<Self> {
        let len = frames as usize * frame_size as usize;
        if policy == HugePagePolicy::Auto {
            let huge_len = len.div_ceil(HUGEPAGE) * HUGEPAGE;
            match map(huge_len, libc::MAP_HUGETLB) {
                Ok(base) => {
                    info!(bytes = huge_len, "UMEM on 2 MiB hugepages");
                    return Ok(Self {
                        base,
                        len: huge_len,
                        frame_size,
                        backing: Backing::HugePages,
                    });
                }
                Err(e) => warn!(
                    error = %e,
                    "no 2 MiB hugepages for the UMEM (reserve some in /proc/sys/vm/nr_hugepages); using plain pages"
                ),
            }
        }
        let base = map(len, 0)?;
        info!(bytes = len, "UMEM on plain pages");
        Ok(Self {
            base,
            len,
            frame_size,
            backing: Backing::Pages,
        })
    }

    /// What backs the area.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Size of one frame.
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// The area as the raw slice xdpilone registers with the kernel.
    pub fn as_raw_slice(&self) -> NonNull<[u8]> {
        NonNull::slice_from_raw_parts(self.base, self.len)
    }

    /// A copyable handle for reaching frames.
    pub fn region(&self) -> FrameRegion {
        FrameRegion {
            base: self.base,
            len: self.len,
        }
    }
}

fn map(len: usize, extra_flags: libc::c_int) -> std::io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping at an address the kernel picks;
    // no existing memory is affected. The result is checked below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | extra_flags,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(ptr.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly what mmap returned; every socket
        // registered on the area is dropped before it (the owners hold it in
        // an Arc that outlives their rings).
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// Raw access to frames in a [`UmemArea`].
///
/// Frames are disjoint; the pool and rings make sure each is owned by one
/// party at a time, which is what makes the accessors sound to call.
#[derive(Clone, Copy, Debug)]
pub struct FrameRegion {
    base: NonNull<u8>,
    len: usize,
}

impl FrameRegion {
    /// Bytes `addr .. addr + len` of the area.
    ///
    /// # Safety
    /// The caller owns the frame holding that range (the kernel does not
    /// write it meanwhile) for the lifetime `'a`, and nothing writes it then.
    pub unsafe fn slice<'a>(self, addr: u64, len: usize) -> &'a [u8] {
        let start = self.checked(addr, len);
        // SAFETY: in bounds (checked); ownership as the caller guarantees.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), len) }
    }

    /// Bytes `addr .. addr + len` of the area, writable.
    ///
    /// # Safety
    /// The caller owns the frame exclusively for `'a`: no ring, no other
    /// reference and no kernel access touches it meanwhile.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut<'a>(self, addr: u64, len: usize) -> &'a mut [u8] {
        let start = self.checked(addr, len);
        // SAFETY: in bounds (checked); exclusivity as the caller guarantees.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), len) }
    }

    fn checked(self, addr: u64, len: usize) -> usize {
        let start = usize::try_from(addr).unwrap_or(usize::MAX);
        assert!(
            start <= self.len && len <= self.len - start,
            "frame range {addr:#x}+{len} outside the UMEM"
        );
        start
    }
}

// SAFETY: see `UmemArea`: a region is an address range; access is governed by
// frame ownership, not by the thread.
unsafe impl Send for FrameRegion {}
