//! What every program reads from a `struct sock` (or the `sock_common` at the
//! start of a timewait sock).

use monitor_common::{
    F_BIND_NO_PORT, F_FREEBIND, F_REUSEADDR, F_REUSEPORT, F_TRANSPARENT, F_V6ONLY,
};

use crate::kread::{bytes16, bytes4, field, off, ptr};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[inline(always)]
pub fn family(sk: u64) -> u16 {
    field(sk, off!(skc_family)) as u16
}

/// The network namespace inode of a socket.
#[inline(always)]
pub fn netns(sk: u64) -> u32 {
    let net = ptr(sk, off!(skc_net));
    field(net, off!(net_inum)) as u32
}

/// SO_REUSEADDR / SO_REUSEPORT / IPV6_V6ONLY of any sock_common.
#[inline(always)]
pub fn common_flags(sk: u64) -> u32 {
    let mut f = 0;
    if field(sk, off!(skc_reuse)) != 0 {
        f |= F_REUSEADDR;
    }
    if field(sk, off!(skc_reuseport)) != 0 {
        f |= F_REUSEPORT;
    }
    if field(sk, off!(skc_ipv6only)) != 0 {
        f |= F_V6ONLY;
    }
    f
}

/// The inet_sock option bits (only valid on a full inet socket).
#[inline(always)]
pub fn inet_flags(sk: u64) -> u32 {
    let mut f = 0;
    if field(sk, off!(inet_freebind)) != 0 {
        f |= F_FREEBIND;
    }
    if field(sk, off!(inet_transparent)) != 0 {
        f |= F_TRANSPARENT;
    }
    if field(sk, off!(inet_bind_no_port)) != 0 {
        f |= F_BIND_NO_PORT;
    }
    f
}

/// Local address (rcv_saddr) in a 16-byte buffer, by family.
#[inline(always)]
pub fn local_addr(sk: u64, family: u16) -> [u8; 16] {
    if family == AF_INET6 {
        bytes16(sk, off!(skc_v6_rcv_saddr))
    } else {
        bytes4(sk, off!(skc_rcv_saddr))
    }
}

#[inline(always)]
pub fn remote_addr(sk: u64, family: u16) -> [u8; 16] {
    if family == AF_INET6 {
        bytes16(sk, off!(skc_v6_daddr))
    } else {
        bytes4(sk, off!(skc_daddr))
    }
}

/// Local port in host order (skc_num). Reads 0 once the port was released.
#[inline(always)]
pub fn local_port(sk: u64) -> u16 {
    field(sk, off!(skc_num)) as u16
}

/// Remote port in host order.
#[inline(always)]
pub fn remote_port(sk: u64) -> u16 {
    u16::from_be(field(sk, off!(skc_dport)) as u16)
}

/// The socket cookie as stored (0 if nobody asked for it yet).
#[inline(always)]
pub fn cookie(sk: u64) -> u64 {
    field(sk, off!(skc_cookie))
}

/// Inode number of the file of a `struct socket` (0 if none).
#[inline(always)]
pub fn socket_inode(socket: u64) -> u64 {
    if socket == 0 {
        return 0;
    }
    let inode = socket + off!(socket_to_inode).off as u64;
    field(inode, off!(inode_ino))
}
