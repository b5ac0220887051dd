//! Reading kernel memory through the field offsets userspace found in the
//! running kernel's BTF. Rust emits no CO-RE relocations, so every struct
//! access goes through an `Offsets` entry instead of a compiled-in layout.

use aya_ebpf::helpers::bpf_probe_read_kernel;
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

/// How a program reads a struct: the two ways below differ in what the
/// verifier accepts and in cost, not in result (both give 0 for an absent
/// field, a null base or an unreadable address).
pub trait Read {
    /// The raw bytes of a field, zero-extended: `bits` (1..=64) decides
    /// the load width.
    fn raw(addr: u64, bits: u32) -> u64;
    /// Sixteen bytes (an IPv6 address).
    fn sixteen(addr: u64) -> [u8; 16];
}

/// `bpf_probe_read_kernel`: any address, but a helper call each time
/// (measured here with kernel.bpf_stats_enabled: up to 200 ns for a cold
/// line). For computed addresses (container_of, kernel-internal wrappers)
/// and fields past the end of the pointer's BTF type.
pub struct Probe;

/// Plain loads, which the verifier accepts (turned into fault-tolerant
/// loads: a bad address reads 0) only on a pointer whose BTF type it knows
/// and for a field inside that type: a tp_btf argument (`struct sock *`,
/// `struct timer_list *`) or a pointer loaded directly from one. A plain
/// load costs what a load costs. Using it on anything else fails at load
/// time, never silently.
pub struct Direct;

impl Read for Probe {
    #[inline(always)]
    fn raw(addr: u64, bits: u32) -> u64 {
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
    fn sixteen(addr: u64) -> [u8; 16] {
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel(addr as *const [u8; 16]) }.unwrap_or([0; 16])
    }
}

impl Read for Direct {
    #[inline(always)]
    fn raw(addr: u64, bits: u32) -> u64 {
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
    fn sixteen(addr: u64) -> [u8; 16] {
        // SAFETY: as above; two 8-byte loads inside one 16-byte member.
        let (a, b) = unsafe {
            (
                core::ptr::read_volatile(addr as *const u64),
                core::ptr::read_volatile((addr + 8) as *const u64),
            )
        };
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&a.to_ne_bytes());
        out[8..].copy_from_slice(&b.to_ne_bytes());
        out
    }
}

/// The value of field `f` of the struct at `base`, zero-extended; 0 when the
/// field does not exist on this kernel or the read fails.
#[inline(always)]
pub fn read<R: Read>(base: u64, f: Field) -> u64 {
    if f.width == 0 || base == 0 {
        return 0;
    }
    let raw = R::raw(base + f.off as u64, f.shift as u32 + f.width as u32);
    // A whole 8-byte field is returned untouched: a directly loaded pointer
    // keeps its BTF type only if no arithmetic (not even >> 0) touches it.
    if f.width >= 64 && f.shift == 0 {
        return raw;
    }
    (raw >> f.shift) & ((1u64 << f.width) - 1)
}

/// [`read`] through `bpf_probe_read_kernel`.
#[inline(always)]
pub fn field(base: u64, f: Field) -> u64 {
    read::<Probe>(base, f)
}

/// A pointer-sized field (a kernel pointer).
#[inline(always)]
pub fn ptr(base: u64, f: Field) -> u64 {
    field(base, f)
}

/// 16 bytes at field `f` (an IPv6 address).
#[inline(always)]
pub fn bytes16<R: Read>(base: u64, f: Field) -> [u8; 16] {
    if f.width == 0 || base == 0 {
        return [0; 16];
    }
    R::sixteen(base + f.off as u64)
}

/// 4 bytes at field `f` (an IPv4 address, network order), as the first four
/// bytes of a 16-byte buffer.
#[inline(always)]
pub fn bytes4<R: Read>(base: u64, f: Field) -> [u8; 16] {
    let mut out = [0u8; 16];
    if f.width == 0 || base == 0 {
        return out;
    }
    let v = (R::raw(base + f.off as u64, 32) as u32).to_ne_bytes();
    out[..4].copy_from_slice(&v);
    out
}
