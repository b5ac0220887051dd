//! Field offsets of the running kernel, read from its BTF at load time.
//!
//! Rust emits no CO-RE relocations, so the programs read every struct field
//! through an [`Offsets`] table filled in here. One binary therefore runs on
//! any BTF kernel: nothing is frozen to the kernel twmon was built on.

use std::path::Path;

use btf_rs::{Btf, BtfType, Type};
use fallible_iterator::FallibleIterator;
use monitor_common::{Field, Offsets};

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("the kernel's BTF has no field {field} in struct {strukt}")]
    NoField { strukt: String, field: String },
    #[error("unexpected BTF for {0}")]
    Unexpected(String),
}

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Parse a BTF file, read whole first: btf-rs's file reader seeks before
/// every string and type (126,000 lseek calls for 6.18's vmlinux), which
/// costs little natively but about ten seconds in a QEMU guest under TCG.
pub fn read_btf(path: &Path) -> Result<Btf, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    Btf::from_bytes(&bytes).map_err(|e| e.to_string())
}

/// The offsets from a BTF already parsed, handed back for the caller's
/// other questions rather than parsed again for them (bench/NOTES.md,
/// section (8)).
pub fn from_btf(btf: Btf) -> Result<(Offsets, Btf), OffsetError> {
    let k = Kbtf { btf };
    let offsets = compute(&k)?;
    Ok((offsets, k.btf))
}

struct Kbtf {
    btf: Btf,
}

/// A member found in a struct: where it starts (bits) and how wide it is.
#[derive(Debug, Clone, Copy)]
struct Found {
    bit_off: u32,
    bits: u32,
    type_id: u32,
}

impl Kbtf {
    fn strukt(&self, name: &str) -> Result<btf_rs::Struct, OffsetError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| OffsetError::NoStruct(name.into()))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| OffsetError::NoStruct(name.into()))
    }

    /// Strip typedefs, const, volatile, type tags.
    fn resolve(&self, mut id: u32) -> Result<Type, OffsetError> {
        loop {
            let t = self
                .btf
                .resolve_type_by_id(id)
                .map_err(|e| OffsetError::Unexpected(format!("type id {id}: {e}")))?;
            match &t {
                Type::Typedef(_)
                | Type::Const(_)
                | Type::Volatile(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => {
                    id = t
                        .as_btf_type()
                        .and_then(|b| b.get_type_id())
                        .ok_or_else(|| OffsetError::Unexpected(format!("type id {id}")))?;
                }
                _ => return Ok(t),
            }
        }
    }

    fn size_of(&self, id: u32) -> Result<u32, OffsetError> {
        Ok(match self.resolve(id)? {
            Type::Int(i) => i.size() as u32,
            Type::Ptr(_) => 8,
            Type::Enum(e) => e.size() as u32,
            Type::Enum64(e) => e.size() as u32,
            Type::Struct(s) | Type::Union(s) => s.size() as u32,
            Type::Array(a) => {
                let elem = a
                    .get_type_id()
                    .ok_or_else(|| OffsetError::Unexpected("array".into()))?;
                a.len() as u32 * self.size_of(elem)?
            }
            other => return Err(OffsetError::Unexpected(format!("size of {}", other.name()))),
        })
    }

    /// Find `name` among the members of `s`, looking through anonymous
    /// structs and unions (sock_common is full of them).
    fn member(&self, s: &btf_rs::Struct, name: &str) -> Result<Option<Found>, OffsetError> {
        for m in &s.members {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            let tid = m
                .get_type_id()
                .ok_or_else(|| OffsetError::Unexpected(format!("member {mname}")))?;
            if mname == name {
                let bits = match m.bitfield_size() {
                    Some(b) if b > 0 => b,
                    _ => self.size_of(tid)? * 8,
                };
                return Ok(Some(Found {
                    bit_off: m.bit_offset(),
                    bits,
                    type_id: tid,
                }));
            }
            if mname.is_empty() {
                if let Type::Struct(inner) | Type::Union(inner) = self.resolve(tid)? {
                    if let Some(mut f) = self.member(&inner, name)? {
                        f.bit_off += m.bit_offset();
                        return Ok(Some(f));
                    }
                }
            }
        }
        Ok(None)
    }

    /// `path` is "a.b.c": members of nested structs.
    fn find(&self, strukt: &str, path: &str) -> Result<Option<Found>, OffsetError> {
        let mut s = self.strukt(strukt)?;
        let mut base = 0u32;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let Some(f) = self.member(&s, part)? else {
                return Ok(None);
            };
            if i + 1 == parts.len() {
                return Ok(Some(Found {
                    bit_off: base + f.bit_off,
                    ..f
                }));
            }
            base += f.bit_off;
            s = match self.resolve(f.type_id)? {
                Type::Struct(n) | Type::Union(n) => n,
                _ => return Err(OffsetError::Unexpected(format!("{strukt}.{path}"))),
            };
        }
        Ok(None)
    }

    fn field(&self, strukt: &str, path: &str) -> Result<Field, OffsetError> {
        self.find(strukt, path)?
            .map(to_field)
            .ok_or_else(|| OffsetError::NoField {
                strukt: strukt.into(),
                field: path.into(),
            })
    }

    fn opt_field(&self, strukt: &str, path: &str) -> Result<Field, OffsetError> {
        Ok(self.find(strukt, path)?.map(to_field).unwrap_or_default())
    }

    /// The value of an enumerator. Enumerators are not indexed by name, so
    /// walk the enums (once per name; only three are asked for).
    fn enum_value(&self, name: &str) -> Option<u32> {
        let mut it = self.btf.type_iter();
        while let Ok(Some(t)) = it.next() {
            if let Type::Enum(e) = t {
                for m in &e.members {
                    if self.btf.resolve_name(m).ok()? == name {
                        return Some(m.val());
                    }
                }
            }
        }
        None
    }

    /// IP_FREEBIND & co.: bits of `inet_sock.inet_flags` since 6.6,
    /// bitfields of inet_sock before.
    fn inet_bit(&self, enum_name: &str, old_field: &str) -> Result<Field, OffsetError> {
        if let Some(flags) = self.find("inet_sock", "inet_flags")? {
            if let Some(bit) = self.enum_value(enum_name) {
                let abs = flags.bit_off + bit;
                return Ok(Field {
                    off: (abs / 8) as u16,
                    shift: (abs % 8) as u8,
                    width: 1,
                });
            }
            return Ok(Field::default());
        }
        self.opt_field("inet_sock", old_field)
    }
}

fn to_field(f: Found) -> Field {
    Field {
        off: (f.bit_off / 8) as u16,
        shift: (f.bit_off % 8) as u8,
        width: f.bits.min(255) as u8,
    }
}

fn compute(k: &Kbtf) -> Result<Offsets, OffsetError> {
    // The programs treat a struct sock and a timewait sock alike through the
    // sock_common at their start; make sure it really is at offset 0.
    for (s, m) in [
        ("sock", "__sk_common"),
        ("inet_timewait_sock", "__tw_common"),
    ] {
        if k.field(s, m)?.off != 0 {
            return Err(OffsetError::Unexpected(format!(
                "{s}.{m} is not at offset 0"
            )));
        }
    }
    let tw_timer = k.field("inet_timewait_sock", "tw_timer")?;
    Ok(Offsets {
        task_files: k.field("task_struct", "files")?,
        task_pid: k.field("task_struct", "pid")?,
        task_tgid: k.field("task_struct", "tgid")?,
        task_comm: k.field("task_struct", "comm")?,
        files_fdt: k.field("files_struct", "fdt")?,
        fdt_max_fds: k.field("fdtable", "max_fds")?,
        fdt_fd: k.field("fdtable", "fd")?,
        file_private_data: k.field("file", "private_data")?,
        socket_sk: k.field("socket", "sk")?,
        socket_file: k.field("socket", "file")?,
        file_inode: k.field("file", "f_inode")?,
        inode_ino: k.field("inode", "i_ino")?,
        skc_family: k.field("sock_common", "skc_family")?,
        skc_state: k.field("sock_common", "skc_state")?,
        skc_reuse: k.field("sock_common", "skc_reuse")?,
        skc_reuseport: k.field("sock_common", "skc_reuseport")?,
        skc_ipv6only: k.field("sock_common", "skc_ipv6only")?,
        skc_bound_dev_if: k.field("sock_common", "skc_bound_dev_if")?,
        skc_net: k.field("sock_common", "skc_net")?,
        skc_rcv_saddr: k.field("sock_common", "skc_rcv_saddr")?,
        skc_daddr: k.field("sock_common", "skc_daddr")?,
        skc_num: k.field("sock_common", "skc_num")?,
        skc_dport: k.field("sock_common", "skc_dport")?,
        skc_v6_rcv_saddr: k.opt_field("sock_common", "skc_v6_rcv_saddr")?,
        skc_v6_daddr: k.opt_field("sock_common", "skc_v6_daddr")?,
        skc_cookie: k.field("sock_common", "skc_cookie")?,
        skc_nulls_pprev: k.opt_field("sock_common", "skc_nulls_node.pprev")?,
        sk_protocol: k.field("sock", "sk_protocol")?,
        sk_type: k.field("sock", "sk_type")?,
        sk_uid: k.field("sock", "sk_uid")?,
        sk_lock_owned: k.field("sock", "sk_lock.owned")?,
        sk_socket: k.field("sock", "sk_socket")?,
        inet_sport: k.field("inet_sock", "inet_sport")?,
        inet_freebind: k.inet_bit("INET_FLAGS_FREEBIND", "freebind")?,
        inet_transparent: k.inet_bit("INET_FLAGS_TRANSPARENT", "transparent")?,
        inet_bind_no_port: k.inet_bit("INET_FLAGS_BIND_ADDRESS_NO_PORT", "bind_address_no_port")?,
        net_inum: k.field("net", "ns.inum")?,
        net_ns_ref: match k.opt_field("net", "ns.__ns_ref")? {
            f if f.present() => f,
            _ => k.opt_field("net", "ns.count")?,
        },
        tw_substate: k.field("inet_timewait_sock", "tw_substate")?,
        tw_timer,
        timer_function: k.field("timer_list", "function")?,
        timer_expires: k.field("timer_list", "expires")?,
        timer_pprev: k.field("timer_list", "entry.pprev")?,
        net_tw_hashinfo: k.opt_field("net", "ipv4.tcp_death_row.hashinfo")?,
        hashinfo_ehash: k.opt_field("inet_hashinfo", "ehash")?,
        hashinfo_ehash_mask: k.opt_field("inet_hashinfo", "ehash_mask")?,
        skc_hash: k.opt_field("sock_common", "skc_hash")?,
        skc_nulls_next: k.opt_field("sock_common", "skc_nulls_node.next")?,
        tw_timer_handler: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads this machine's BTF when it has one; the values below were
    /// checked against `bpftool btf dump` on 6.18 but we only assert
    /// relations that hold on every kernel, so this runs anywhere with BTF.
    #[test]
    fn offsets_from_the_running_kernel_are_consistent() {
        if !Path::new(VMLINUX_BTF).exists() {
            eprintln!("SKIPPED: no {VMLINUX_BTF} on this machine");
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must have BTF"
            );
            return;
        }
        let btf = read_btf(Path::new(VMLINUX_BTF)).expect("the kernel's BTF");
        let (o, _) = from_btf(btf).expect("offsets");
        // sock_common bitfields share a byte.
        assert_eq!(o.skc_reuse.width, 4);
        assert_eq!(o.skc_reuseport.width, 1);
        assert_eq!(o.skc_ipv6only.width, 1);
        assert_eq!(o.skc_reuseport.off, o.skc_reuse.off);
        assert_eq!(o.skc_reuseport.shift, o.skc_reuse.shift + 4);
        assert_eq!(o.skc_family.width, 16);
        assert_eq!(o.skc_num.width, 16);
        assert_eq!(o.skc_v6_rcv_saddr.width, 128);
        assert_eq!(o.skc_cookie.width, 64);
        assert_eq!(o.inet_freebind.width, 1);
        assert_eq!(o.inet_transparent.width, 1);
        assert!(o.sk_lock_owned.off > o.skc_cookie.off);
        assert!(o.tw_timer.off > 0);
        assert_eq!(o.timer_function.width, 64);
        assert_eq!(o.socket_file.width, 64);
        assert_eq!(o.file_inode.width, 64);
        assert!(o.net_inum.off > 0);
        // What tells a connect()'s takeover and a netns exit at the cancel itself.
        assert_eq!(o.skc_nulls_pprev.width, 64);
        assert!(
            o.skc_nulls_pprev.off > o.skc_cookie.off && o.skc_nulls_pprev.off < o.tw_substate.off
        );
        assert_eq!(o.net_ns_ref.width, 32);
        assert!(o.net_ns_ref.off > 0);
        // A re-armed timer is pending again; a new timewait sock is found
        // in its namespace's connection hash.
        assert_eq!(o.timer_pprev.width, 64);
        assert_eq!(o.net_tw_hashinfo.width, 64);
        assert_eq!(o.hashinfo_ehash.width, 64);
        assert_eq!(o.hashinfo_ehash_mask.width, 32);
        assert_eq!(o.skc_hash.width, 32);
        assert_eq!(o.skc_nulls_next.off + 8, o.skc_nulls_pprev.off);
    }
}
