//! What every program reads from a `struct sock` (or the `sock_common` at the
//! start of a timewait sock).

use monitor_common::{
    F_BIND_NO_PORT, F_FREEBIND, F_REUSEADDR, F_REUSEPORT, F_TRANSPARENT, F_V6ONLY,
};

use crate::kread::{field, off, Direct, Read};

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

#[inline(always)]
pub fn family(sk: &impl Read) -> u16 {
    sk.u16(off!(skc_family))
}

/// A socket's `struct net`, to read with the reader its pointer allows.
#[inline(always)]
pub fn net<R: Read>(sk: &R) -> R::Then {
    sk.then(sk.u64(off!(skc_net)))
}

/// The network namespace inode of a socket.
#[inline(always)]
pub fn netns<R: Read>(sk: &R) -> u32 {
    net(sk).u32(off!(net_inum))
}

/// SO_REUSEADDR / SO_REUSEPORT / IPV6_V6ONLY of any sock_common.
#[inline(always)]
pub fn common_flags(sk: &impl Read) -> u32 {
    let mut f = 0;
    if sk.get(off!(skc_reuse)) != 0 {
        f |= F_REUSEADDR;
    }
    if sk.get(off!(skc_reuseport)) != 0 {
        f |= F_REUSEPORT;
    }
    if sk.get(off!(skc_ipv6only)) != 0 {
        f |= F_V6ONLY;
    }
    f
}

/// The inet_sock option bits (only valid on a full inet socket).
#[inline(always)]
pub fn inet_flags(sk: &impl Read) -> u32 {
    let mut f = 0;
    if sk.get(off!(inet_freebind)) != 0 {
        f |= F_FREEBIND;
    }
    if sk.get(off!(inet_transparent)) != 0 {
        f |= F_TRANSPARENT;
    }
    if sk.get(off!(inet_bind_no_port)) != 0 {
        f |= F_BIND_NO_PORT;
    }
    f
}

/// Local address (rcv_saddr) in a 16-byte buffer, by family.
#[inline(always)]
pub fn local_addr(sk: &impl Read, family: u16) -> [u8; 16] {
    if family == AF_INET6 {
        sk.bytes16(off!(skc_v6_rcv_saddr))
    } else {
        sk.bytes4(off!(skc_rcv_saddr))
    }
}

#[inline(always)]
pub fn remote_addr(sk: &impl Read, family: u16) -> [u8; 16] {
    if family == AF_INET6 {
        sk.bytes16(off!(skc_v6_daddr))
    } else {
        sk.bytes4(off!(skc_daddr))
    }
}

/// Local port in host order (skc_num). Reads 0 once the port was released.
#[inline(always)]
pub fn local_port(sk: &impl Read) -> u16 {
    sk.u16(off!(skc_num))
}

/// A full socket's local port in host order: skc_num (a plain load), or at
/// ->CLOSE, where the port was already released and skc_num reads 0,
/// inet_sport (which lies past struct sock, so only a helper call reaches
/// it; a timewait sock has no inet_sport).
#[inline(always)]
pub fn socket_local_port(sk: &Direct) -> u16 {
    match local_port(sk) {
        0 => u16::from_be(field(sk.0, off!(inet_sport)) as u16),
        port => port,
    }
}

/// Remote port in host order.
#[inline(always)]
pub fn remote_port(sk: &impl Read) -> u16 {
    u16::from_be(sk.u16(off!(skc_dport)))
}

/// The socket cookie as stored (0 if nobody asked for it yet).
#[inline(always)]
pub fn cookie(sk: &impl Read) -> u64 {
    sk.u64(off!(skc_cookie))
}

/// Inode number of the file of a `struct socket` (0 if none, e.g. a
/// kernel socket). Through `socket->file->f_inode`, every step inside its
/// struct, so that a typed `struct socket *` can take it with plain loads.
#[inline(always)]
pub fn socket_inode<R: Read<Then = R>>(socket: &R) -> u64 {
    let file = socket.then(socket.u64(off!(socket_file)));
    let inode = file.then(file.u64(off!(file_inode)));
    inode.u64(off!(inode_ino))
}
