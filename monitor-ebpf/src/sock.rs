//! What every program reads from a `struct sock` (or the `sock_common` at the
//! start of a timewait sock).

use monitor_common::{
    F_BIND_NO_PORT, F_FREEBIND, F_REUSEADDR, F_REUSEPORT, F_TRANSPARENT, F_V6ONLY,
};

use crate::kread::{bytes16, bytes4, off, read, Read};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[inline(always)]
pub fn family<R: Read>(sk: u64) -> u16 {
    read::<R>(sk, off!(skc_family)) as u16
}

/// The network namespace inode of a socket.
#[inline(always)]
pub fn netns<R: Read>(sk: u64) -> u32 {
    let net = read::<R>(sk, off!(skc_net));
    read::<R>(net, off!(net_inum)) as u32
}

/// SO_REUSEADDR / SO_REUSEPORT / IPV6_V6ONLY of any sock_common.
#[inline(always)]
pub fn common_flags<R: Read>(sk: u64) -> u32 {
    let mut f = 0;
    if read::<R>(sk, off!(skc_reuse)) != 0 {
        f |= F_REUSEADDR;
    }
    if read::<R>(sk, off!(skc_reuseport)) != 0 {
        f |= F_REUSEPORT;
    }
    if read::<R>(sk, off!(skc_ipv6only)) != 0 {
        f |= F_V6ONLY;
    }
    f
}

/// The inet_sock option bits (only valid on a full inet socket).
#[inline(always)]
pub fn inet_flags<R: Read>(sk: u64) -> u32 {
    let mut f = 0;
    if read::<R>(sk, off!(inet_freebind)) != 0 {
        f |= F_FREEBIND;
    }
    if read::<R>(sk, off!(inet_transparent)) != 0 {
        f |= F_TRANSPARENT;
    }
    if read::<R>(sk, off!(inet_bind_no_port)) != 0 {
        f |= F_BIND_NO_PORT;
    }
    f
}

/// Local address (rcv_saddr) in a 16-byte buffer, by family.
#[inline(always)]
pub fn local_addr<R: Read>(sk: u64, family: u16) -> [u8; 16] {
    if family == AF_INET6 {
        bytes16::<R>(sk, off!(skc_v6_rcv_saddr))
    } else {
        bytes4::<R>(sk, off!(skc_rcv_saddr))
    }
}

#[inline(always)]
pub fn remote_addr<R: Read>(sk: u64, family: u16) -> [u8; 16] {
    if family == AF_INET6 {
        bytes16::<R>(sk, off!(skc_v6_daddr))
    } else {
        bytes4::<R>(sk, off!(skc_daddr))
    }
}

/// Local port in host order (skc_num). Reads 0 once the port was released.
#[inline(always)]
pub fn local_port<R: Read>(sk: u64) -> u16 {
    read::<R>(sk, off!(skc_num)) as u16
}

/// Remote port in host order.
#[inline(always)]
pub fn remote_port<R: Read>(sk: u64) -> u16 {
    u16::from_be(read::<R>(sk, off!(skc_dport)) as u16)
}

/// The socket cookie as stored (0 if nobody asked for it yet).
#[inline(always)]
pub fn cookie<R: Read>(sk: u64) -> u64 {
    read::<R>(sk, off!(skc_cookie))
}

/// Inode number of the file of a `struct socket` (0 if none, e.g. a
/// kernel socket). Through `socket->file->f_inode`, every step inside its
/// struct, so that a typed `struct socket *` can take it with plain loads.
#[inline(always)]
pub fn socket_inode<R: Read>(socket: u64) -> u64 {
    let file = read::<R>(socket, off!(socket_file));
    let inode = read::<R>(file, off!(file_inode));
    read::<R>(inode, off!(inode_ino))
}
