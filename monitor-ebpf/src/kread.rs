//! Reading kernel memory through the field offsets userspace found in the
//! running kernel's BTF. Rust emits no CO-RE relocations, so every struct
//! access goes through an `Offsets` entry instead of a compiled-in layout.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;

use monitor_common::{Field, Offsets};

/// Filled in by userspace before load (`EbpfLoader::set_global`).
#[no_mangle]
pub static OFFSETS: Offsets = unsafe { core::mem::zeroed() };

/// Read one offset entry. Volatile so that the compiler does not fold the
/// zero-initialised value into the code: the loader rewrites it.
macro_rules! off {
    ($f:ident) => {{
        #[allow(unused_unsafe)]
        // SAFETY: reading a field of an initialised static.
        let v = unsafe { core::ptr::read_volatile(&$crate::kread::OFFSETS.$f) };
        v
    }};
}
pub(crate) use off;

/// A struct in kernel memory and how to read it. The three ways differ in
/// what the verifier accepts and in cost, not in result: all give 0 for an
/// absent field, a null struct or an unreadable address.
pub trait Read {
    /// The raw bytes at byte `off` of the struct, `bits` (1..=64) wide,
    /// zero-extended.
    fn raw(&self, off: u64, bits: u32) -> u64;
    /// Sixteen bytes at `off` (an IPv6 address).
    fn sixteen(&self, off: u64) -> [u8; 16];
    /// Whether the struct's address is null.
    fn is_null(&self) -> bool;

    /// How to read a struct whose pointer this one just read.
    type Then: Read;
    fn then(&self, ptr: u64) -> Self::Then;

    /// The value of field `f`, zero-extended; 0 when the field does not
    /// exist on this kernel or the read fails.
    #[inline(always)]
    fn get(&self, f: Field) -> u64 {
        if f.width == 0 || self.is_null() {
            return 0;
        }
        let raw = self.raw(f.off as u64, f.shift as u32 + f.width as u32);
        // A whole 8-byte field is returned untouched: a directly loaded
        // pointer keeps its BTF type only if no arithmetic (not even >> 0)
        // touches it.
        if f.width >= 64 && f.shift == 0 {
            return raw;
        }
        (raw >> f.shift) & ((1u64 << f.width) - 1)
    }

    /// Field `f`, which is a whole `bits`-bit integer on the kernels this
    /// code was written for: then one load of that size, with no shift or
    /// mask; otherwise (a bitfield elsewhere, an absent field) [`Read::get`].
    ///
    /// `f` lives in read-only data, so the verifier knows it and drops the
    /// branches it never takes, but every other instruction runs: the
    /// generic read's shift, mask and width arithmetic ran for every field.
    /// With it a transition's program was four times the size of one with
    /// this kernel's offsets compiled in, and 45-65 ns slower per run
    /// (kernel.bpf_stats_enabled); through here it is as fast as that one.
    /// The test below is two compares, which the verifier removes.
    #[inline(always)]
    fn whole(&self, f: Field, bits: u8) -> u64 {
        if f.shift == 0 && f.width == bits {
            if self.is_null() {
                return 0;
            }
            return self.raw(f.off as u64, bits as u32);
        }
        self.get(f)
    }

    /// A whole `u8` field (see [`Read::whole`]).
    #[inline(always)]
    fn u8(&self, f: Field) -> u8 {
        self.whole(f, 8) as u8
    }

    /// A whole 16-bit field, in the byte order it is stored in.
    #[inline(always)]
    fn u16(&self, f: Field) -> u16 {
        self.whole(f, 16) as u16
    }

    /// A whole 32-bit field, in the byte order it is stored in.
    #[inline(always)]
    fn u32(&self, f: Field) -> u32 {
        self.whole(f, 32) as u32
    }

    /// A whole 64-bit field or a pointer, returned as loaded (a pointer
    /// keeps its BTF type only if no arithmetic touches it).
    #[inline(always)]
    fn u64(&self, f: Field) -> u64 {
        self.whole(f, 64)
    }

    /// 16 bytes at field `f` (an IPv6 address).
    #[inline(always)]
    fn bytes16(&self, f: Field) -> [u8; 16] {
        if f.width == 0 || self.is_null() {
            return words16(0, 0);
        }
        self.sixteen(f.off as u64)
    }

    /// 4 bytes at field `f` (an IPv4 address, network order), as the first
    /// four bytes of a 16-byte buffer.
    #[inline(always)]
    fn bytes4(&self, f: Field) -> [u8; 16] {
        if f.width == 0 || self.is_null() {
            return words16(0, 0);
        }
        let v = self.raw(f.off as u64, 32) as u32;
        // The four bytes in memory order, then zeros.
        let lo = if cfg!(target_endian = "little") {
            v as u64
        } else {
            (v as u64) << 32
        };
        words16(lo, 0)
    }
}

/// `bpf_probe_read_kernel`: any address, but a helper call per field
/// (measured here with kernel.bpf_stats_enabled: up to 200 ns for a cold
/// line). For computed addresses (container_of, kernel-internal wrappers)
/// and fields past the end of the pointer's BTF type.
#[derive(Clone, Copy)]
pub struct Probe(pub u64);

/// Plain loads, which the verifier accepts (turned into fault-tolerant
/// loads: a bad address reads 0) only on a pointer whose BTF type it knows
/// and for a field inside that type: a tp_btf argument (`struct sock *`,
/// `struct timer_list *`) or a pointer loaded directly from one. A plain
/// load costs what a load costs. Using it on anything else fails at load
/// time, never silently.
#[derive(Clone, Copy)]
pub struct Direct(pub u64);

/// The first [`HEAD_BYTES`] of a struct, copied by one helper call: for
/// the many fields of a sock reached through a computed address (the
/// timewait sock behind a timer), where [`Probe`] would make a helper call
/// per field (about 15 for a timewait record). A field past the copy is
/// read with [`Probe`].
pub struct Head {
    base: u64,
    words: [u64; HEAD_WORDS],
}

/// Enough for `struct sock_common` (136 bytes on 6.x) and the timewait
/// sock's substate right after it.
pub const HEAD_BYTES: usize = 160;
const HEAD_WORDS: usize = HEAD_BYTES / 8;

impl Read for Probe {
    #[inline(always)]
    fn raw(&self, off: u64, bits: u32) -> u64 {
        let addr = self.0 + off;
        // SAFETY: bpf_probe_read_kernel checks the address; a fault gives Err.
        unsafe {
            if bits <= 8 {
                bpf_probe_read_kernel(addr as *const u8).map(|v| v as u64)
            } else if bits <= 16 {
                bpf_probe_read_kernel(addr as *const u16).map(|v| v as u64)
            } else if bits <= 32 {
                bpf_probe_read_kernel(addr as *const u32).map(|v| v as u64)
            } else {
                bpf_probe_read_kernel(addr as *const u64)
            }
        }
        .unwrap_or(0)
    }

    #[inline(always)]
    fn sixteen(&self, off: u64) -> [u8; 16] {
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel((self.0 + off) as *const [u8; 16]) }.unwrap_or([0; 16])
    }

    #[inline(always)]
    fn is_null(&self) -> bool {
        self.0 == 0
    }

    type Then = Probe;
    #[inline(always)]
    fn then(&self, ptr: u64) -> Probe {
        Probe(ptr)
    }
}

impl Read for Direct {
    #[inline(always)]
    fn raw(&self, off: u64, bits: u32) -> u64 {
        let addr = self.0 + off;
        // SAFETY: the verifier checks every such load against the BTF type
        // of the base pointer and makes it fault-tolerant. Volatile, so that
        // the compiler neither merges neighbouring loads into one that spans
        // two members (which the verifier refuses) nor drops them. The
        // width is a load-time constant: the verifier walks only its branch.
        unsafe {
            if bits <= 8 {
                core::ptr::read_volatile(addr as *const u8) as u64
            } else if bits <= 16 {
                core::ptr::read_volatile(addr as *const u16) as u64
            } else if bits <= 32 {
                core::ptr::read_volatile(addr as *const u32) as u64
            } else {
                core::ptr::read_volatile(addr as *const u64)
            }
        }
    }

    #[inline(always)]
    fn sixteen(&self, off: u64) -> [u8; 16] {
        let addr = self.0 + off;
        // SAFETY: as above; two 8-byte loads inside one 16-byte member.
        let (a, b) = unsafe {
            (
                core::ptr::read_volatile(addr as *const u64),
                core::ptr::read_volatile((addr + 8) as *const u64),
            )
        };
        words16(a, b)
    }

    #[inline(always)]
    fn is_null(&self) -> bool {
        self.0 == 0
    }

    type Then = Direct;
    #[inline(always)]
    fn then(&self, ptr: u64) -> Direct {
        Direct(ptr)
    }
}

impl Head {
    /// Copy the head of the struct at `base` (all zeros when it cannot be
    /// read: every field then reads 0, as with the other readers).
    ///
    /// The words are not zeroed first: LLVM made that a call of a byte-wise
    /// memset subprogram, 160 iterations, at every timewait record. The
    /// helper writes all of them anyway.
    #[inline(always)]
    pub fn copy(base: u64) -> Head {
        let mut h = MaybeUninit::<Head>::uninit();
        let p = h.as_mut_ptr();
        // SAFETY: `base` is written here, and the helper fills every byte
        // of `words` (HEAD_BYTES): with the struct's bytes, or with zeros
        // when it cannot read them, as for a null `base`. The verifier lets
        // it take uninitialised stack.
        unsafe {
            addr_of_mut!((*p).base).write(base);
            generated::bpf_probe_read_kernel(
                addr_of_mut!((*p).words) as *mut core::ffi::c_void,
                HEAD_BYTES as u32,
                base as *const core::ffi::c_void,
            );
            h.assume_init()
        }
    }

    /// The little-endian 64 bits starting at byte `off` of the copy, from
    /// aligned word loads (the verifier refuses misaligned stack loads).
    /// `off + 16 <= HEAD_BYTES` is the caller's to check.
    #[inline(always)]
    fn word_at(&self, off: u64) -> u64 {
        let w = (off / 8) as usize;
        let sh = (off % 8) * 8;
        let lo = self.words[w] >> sh;
        if sh == 0 {
            lo
        } else {
            lo | (self.words[w + 1] << (64 - sh))
        }
    }
}

impl Read for Head {
    /// From the copy when the field lies inside it with a word to spare
    /// (for [`Head::word_at`]); past it through [`Probe`]. `off` is a
    /// load-time constant, so the verifier keeps only one branch.
    #[inline(always)]
    fn raw(&self, off: u64, bits: u32) -> u64 {
        if off as usize + 16 > HEAD_BYTES {
            return Probe(self.base).raw(off, bits);
        }
        let v = self.word_at(off);
        if bits >= 64 {
            v
        } else {
            v & ((1u64 << bits) - 1)
        }
    }

    #[inline(always)]
    fn sixteen(&self, off: u64) -> [u8; 16] {
        if off as usize + 24 > HEAD_BYTES {
            return Probe(self.base).sixteen(off);
        }
        words16(self.word_at(off), self.word_at(off + 8))
    }

    #[inline(always)]
    fn is_null(&self) -> bool {
        self.base == 0
    }

    type Then = Probe;
    #[inline(always)]
    fn then(&self, ptr: u64) -> Probe {
        Probe(ptr)
    }
}

/// 16 bytes made of two words, in memory order. A byte array zeroed or
/// filled piecewise compiled to calls of a byte-wise memset subprogram.
#[inline(always)]
pub fn words16(a: u64, b: u64) -> [u8; 16] {
    // SAFETY: two u64 are 16 plain bytes.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([a, b]) }
}

/// Zero a record of whole 8-byte words, word by word: `write_bytes`
/// compiled to a byte-wise memset subprogram (112 iterations for a
/// timewait record).
///
/// # Safety
/// `p` must be valid for writes of a `T`, 8-byte aligned.
#[inline(always)]
pub unsafe fn zero_words<T>(p: *mut T) {
    const { assert!(core::mem::size_of::<T>() % 8 == 0) };
    let w = p as *mut u64;
    for i in 0..core::mem::size_of::<T>() / 8 {
        // Volatile, so that LLVM does not fold the stores back into a memset.
        core::ptr::write_volatile(w.add(i), 0);
    }
}

/// Field `f` of the struct at `base`, through [`Probe`].
#[inline(always)]
pub fn field(base: u64, f: Field) -> u64 {
    Probe(base).get(f)
}

/// A pointer-sized field (a kernel pointer), through [`Probe`].
#[inline(always)]
pub fn ptr(base: u64, f: Field) -> u64 {
    field(base, f)
}
