//! Ring buffer bytes -> the kernel's records, checked, never transmuted.

use monitor_common::{
    ConflictsEvent, SockCallEvent, StateEvent, TwEvent, KIND_CONFLICTS, KIND_SOCK_CALL, KIND_STATE,
    KIND_TW,
};

#[derive(Debug, Clone, Copy)]
pub enum Raw {
    SockCall(SockCallEvent),
    State(StateEvent),
    Tw(TwEvent),
    /// Precise mode: blocking sockets of the call whose record follows.
    Conflicts(ConflictsEvent),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short to hold a kind")]
    TooShort(usize),
    #[error("record of kind {kind} has {len} bytes, expected {want}")]
    SizeMismatch { kind: u32, len: usize, want: usize },
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
}

/// Copy a `T` out of `bytes` when the length is exactly right.
fn read<T: aya::Pod>(kind: u32, bytes: &[u8]) -> Result<T, DecodeError> {
    let want = std::mem::size_of::<T>();
    if bytes.len() != want {
        return Err(DecodeError::SizeMismatch {
            kind,
            len: bytes.len(),
            want,
        });
    }
    // SAFETY: the length matches and `T: Pod` accepts every bit pattern; the
    // read is unaligned-safe.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) })
}

pub fn decode(bytes: &[u8]) -> Result<Raw, DecodeError> {
    let kind = bytes
        .get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(DecodeError::TooShort(bytes.len()))?;
    match kind {
        KIND_SOCK_CALL => read(kind, bytes).map(Raw::SockCall),
        KIND_STATE => read(kind, bytes).map(Raw::State),
        KIND_TW => read(kind, bytes).map(Raw::Tw),
        KIND_CONFLICTS => read(kind, bytes).map(Raw::Conflicts),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

/// A NUL-padded kernel string (comm) as text.
pub fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T>(v: &T) -> &[u8] {
        // SAFETY: test-only view of a plain repr(C) value.
        unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
    }

    #[test]
    fn records_decode_by_kind_and_exact_size() {
        // SAFETY: all-zero is a valid value of these plain structs.
        let mut st: StateEvent = unsafe { std::mem::zeroed() };
        st.kind = KIND_STATE;
        st.sport = 8080;
        match decode(as_bytes(&st)) {
            Ok(Raw::State(s)) => assert_eq!(s.sport, 8080),
            other => panic!("{other:?}"),
        }
        let bytes = as_bytes(&st);
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]).map(|_| ()),
            Err(DecodeError::SizeMismatch {
                kind: KIND_STATE,
                len: bytes.len() - 1,
                want: bytes.len()
            })
        );
        assert_eq!(decode(&[1, 0]).map(|_| ()), Err(DecodeError::TooShort(2)));
        assert_eq!(
            decode(&[9, 0, 0, 0, 0, 0]).map(|_| ()),
            Err(DecodeError::UnknownKind(9))
        );
        let mut tw: TwEvent = unsafe { std::mem::zeroed() };
        tw.kind = KIND_TW;
        assert!(matches!(decode(as_bytes(&tw)), Ok(Raw::Tw(_))));
        let mut sc: SockCallEvent = unsafe { std::mem::zeroed() };
        sc.kind = KIND_SOCK_CALL;
        assert!(matches!(decode(as_bytes(&sc)), Ok(Raw::SockCall(_))));
        let mut c: ConflictsEvent = unsafe { std::mem::zeroed() };
        c.kind = KIND_CONFLICTS;
        c.n = 1;
        c.socks[0].sport = 80;
        match decode(as_bytes(&c)) {
            Ok(Raw::Conflicts(c)) => assert_eq!((c.n, c.socks[0].sport), (1, 80)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn comm_stops_at_the_first_nul() {
        assert_eq!(cstr(b"nginx\0\0\0garbage\0"), "nginx");
        assert_eq!(cstr(b"sixteen-chars-xx"), "sixteen-chars-xx");
        assert_eq!(cstr(b"\0"), "");
    }
}
