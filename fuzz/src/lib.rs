//! Shared pieces of the fuzz targets: an allocator that turns any oversized
//! allocation into a crash, a tiny executor for the shim's async commands,
//! and helpers to cut fuzz input into pieces.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// The largest single allocation any target may make. Inputs are a few
/// KiB: an allocation this large can only come from trusting a length
/// field (or a decompression ratio), which is the bug class this catches.
pub const MAX_ALLOCATION: usize = 16 << 20;

/// Forwards to the system allocator, aborting on a request above
/// [`MAX_ALLOCATION`]. libFuzzer reports the abort as a crash and saves the
/// input, whatever sanitizer (if any) the build uses.
pub struct CappedAlloc;

fn refuse(size: usize) -> ! {
    // No formatting machinery: it could allocate inside the allocator.
    let mut text = *b"fuzz: allocation of 0x0000000000000000 bytes exceeds the cap\n";
    let digits = b"0123456789abcdef";
    for (i, slot) in text[22..38].iter_mut().enumerate() {
        *slot = digits[(size >> (60 - 4 * i)) & 0xf];
    }
    use std::io::Write;
    let _ = std::io::stderr().write_all(&text);
    std::process::abort();
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// GlobalAlloc contract; refusing only aborts the process.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            refuse(layout.size());
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            refuse(layout.size());
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            refuse(new_size);
        }
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: CappedAlloc = CappedAlloc;

/// Drives a future that never waits on I/O (the shim's commands against an
/// in-memory daemon) to completion.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("future still pending after 1000 polls without any I/O to wait for");
}

/// Cuts `data` into the pieces between `separator` bytes.
pub fn pieces(data: &[u8], separator: u8) -> impl Iterator<Item = &[u8]> {
    data.split(move |&b| b == separator)
}

/// Feeds `bytes` in chunks whose sizes cycle through `cuts` (each at least
/// one byte), so stream parsers see every way a message can be split.
pub fn chunks<'a>(bytes: &'a [u8], cuts: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = bytes;
    let mut i = 0;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = match cuts.get(i % cuts.len().max(1)) {
            Some(&cut) => usize::from(cut).max(1),
            None => rest.len(),
        };
        i += 1;
        let (head, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        Some(head)
    })
}

/// Reads fields off the front of fuzz input; past the end, numbers are zero
/// and byte strings empty, so every input means something.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn u8(&mut self) -> u8 {
        let (&first, rest) = self.data.split_first().unwrap_or((&0, &[]));
        self.data = rest;
        first
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (head, tail) = self.data.split_at(len.min(self.data.len()));
        self.data = tail;
        head
    }

    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let head = self.bytes(N);
        out[..head.len()].copy_from_slice(head);
        out
    }

    /// A byte string with a u16 length prefix.
    pub fn counted(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16());
        self.bytes(len)
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Writes what [`Reader`] reads, for building seed inputs.
#[derive(Default)]
pub struct Writer {
    pub out: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.out.extend_from_slice(v);
        self
    }

    pub fn counted(&mut self, v: &[u8]) -> &mut Self {
        let len = u16::try_from(v.len()).expect("seed pieces are under 64 KiB");
        self.u16(len).bytes(v)
    }
}
