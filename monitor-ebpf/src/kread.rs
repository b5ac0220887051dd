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

/// The value of field `f` of the struct at `base`, zero-extended; 0 when the
/// field does not exist on this kernel or the read fails.
#[inline(always)]
pub fn field(base: u64, f: Field) -> u64 {
    if f.width == 0 || base == 0 {
        return 0;
    }
    let addr = base + f.off as u64;
    let bits = f.shift as u32 + f.width as u32;
    // SAFETY: bpf_probe_read_kernel checks the address; a fault gives Err.
    let raw: u64 = unsafe {
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
    .unwrap_or(0);
    let v = raw >> f.shift;
    if f.width >= 64 {
        v
    } else {
        v & ((1u64 << f.width) - 1)
    }
}

/// A pointer-sized field (a kernel pointer).
#[inline(always)]
pub fn ptr(base: u64, f: Field) -> u64 {
    field(base, f)
}

/// 16 bytes at field `f` (an IPv6 address).
#[inline(always)]
pub fn bytes16(base: u64, f: Field) -> [u8; 16] {
    if f.width == 0 || base == 0 {
        return [0; 16];
    }
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((base + f.off as u64) as *const [u8; 16]) }.unwrap_or([0; 16])
}

/// 4 bytes at field `f` (an IPv4 address, network order), as the first four
/// bytes of a 16-byte buffer.
#[inline(always)]
pub fn bytes4(base: u64, f: Field) -> [u8; 16] {
    let mut out = [0u8; 16];
    if f.width == 0 || base == 0 {
        return out;
    }
    // SAFETY: as above.
    if let Ok(v) = unsafe { bpf_probe_read_kernel((base + f.off as u64) as *const [u8; 4]) } {
        out[0] = v[0];
        out[1] = v[1];
        out[2] = v[2];
        out[3] = v[3];
    }
    out
}
