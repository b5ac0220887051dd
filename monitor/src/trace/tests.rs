//! Writer and reader together: round trips, the 0600 mode, flushing, rotation,
//! and a table of damaged inputs.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use super::reader::{Damage, TraceError, TraceReader};
use super::writer::{TraceWriter, WriteError, WriterOptions, FLUSH_AFTER};
use super::{synth, Header};
use crate::event::Event;

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "twmon-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn events(n: u64) -> Vec<Event> {
    synth::Synth::new(n, 7, 1_000_000).collect()
}

fn read_all(r: TraceReader) -> (Vec<Event>, Option<TraceError>) {
    let mut evs = Vec::new();
    let mut err = None;
    for e in r {
        match e {
            Ok(e) => evs.push(e),
            Err(e) => {
                assert!(err.is_none(), "a second error after {err:?}: {e:?}");
                err = Some(e);
            }
        }
    }
    (evs, err)
}

fn write_file(path: &std::path::Path, compress: bool, evs: &[Event]) -> super::Written {
    let mut w = TraceWriter::create(
        path,
        synth::header(),
        WriterOptions {
            compress,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    for e in evs {
        w.write(e).unwrap();
    }
    w.finish().unwrap()
}

#[test]
fn plain_and_compressed_round_trip() {
    let dir = TempDir::new("rt");
    let evs = events(3000);
    for compress in [false, true] {
        let p = dir.join(if compress { "t.trace.zst" } else { "t.trace" });
        let w = write_file(&p, compress, &evs);
        assert_eq!(w.events, evs.len() as u64);
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(bytes.starts_with(&super::reader::ZSTD_MAGIC), compress);
        assert_eq!(w.bytes, bytes.len() as u64);
        let r = TraceReader::open(&p).unwrap();
        assert_eq!(r.is_compressed(), compress);
        assert_eq!(r.header(), &synth::header());
        let (back, err) = read_all(r);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(back, evs);
    }
}

#[test]
fn a_trace_is_created_0600_and_never_overwritten_by_accident() {
    let dir = TempDir::new("mode");
    let p = dir.join("t.trace");
    write_file(&p, false, &events(3));
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let again = TraceWriter::create(&p, synth::header(), WriterOptions::default());
    assert!(matches!(again, Err(WriteError::Exists { .. })));
    if let Err(e) = again {
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--force"), "{e}");
    }
    // --force on a 0644 file: overwritten, and 0600 again.
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    write_forced(&p);
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (evs, err) = read_all(TraceReader::open(&p).unwrap());
    assert!(evs.is_empty() && err.is_none());
}

#[test]
fn an_unwritable_path_is_one_sentence() {
    let dir = TempDir::new("nodir");
    let p = dir.join("no/such/dir/t.trace");
    let e = TraceWriter::create(&p, synth::header(), WriterOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.exit_code(), 1);
    let s = e.to_string();
    assert!(
        s.starts_with("cannot create the trace ") && !s.contains('\n'),
        "{s}"
    );
}

#[test]
fn the_header_is_on_disk_at_once_and_events_within_the_flush_delay() {
    let dir = TempDir::new("flush");
    for compress in [false, true] {
        let p = dir.join(if compress { "t.zst" } else { "t" });
        let mut w = TraceWriter::create(
            &p,
            synth::header(),
            WriterOptions {
                compress,
                ..WriterOptions::default()
            },
        )
        .unwrap();
        // The header alone: already a valid, empty trace.
        let (evs, err) = read_all(TraceReader::open(&p).unwrap());
        assert!(evs.is_empty() && err.is_none(), "{err:?}");
        let evs = events(10);
        for e in &evs {
            w.write(e).unwrap();
        }
        w.tick().unwrap(); // too early: nothing yet
        std::thread::sleep(FLUSH_AFTER + Duration::from_millis(20));
        w.tick().unwrap();
        // The writer is still open (as when killed now): all there.
        let (back, err) = read_all(TraceReader::open(&p).unwrap());
        assert!(err.is_none(), "{err:?}");
        assert_eq!(back, evs);
        // A leaked writer (std::mem::forget, like SIGKILL) loses only what
        // was not flushed.
        w.write(&evs[0]).unwrap();
        std::mem::forget(w);
        let (back, _) = read_all(TraceReader::open(&p).unwrap());
        assert_eq!(back.len(), 10);
    }
}

#[test]
fn rotation_starts_each_part_with_a_header_and_the_known_sockets() {
    let dir = TempDir::new("rot");
    let p = dir.join("r.trace");
    let evs = events(2000);
    for compress in [false, true] {
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir_all(&dir.0).unwrap();
        let opts = super::RecordOptions {
            path: p.clone(),
            writer: WriterOptions {
                compress,
                max_size: Some(if compress { 4096 } else { 32 << 10 }),
                ..WriterOptions::default()
            },
            filters: Default::default(),
            snapshot: super::SnapshotScope::None,
        };
        let mut model = crate::model::Model::new();
        let mut rec = super::Recording::start(&opts, None, Some(&mut model)).unwrap();
        for (i, e) in evs.iter().enumerate() {
            model.apply(e);
            rec.record(e, &model).unwrap();
            if compress && i % 50 == 0 {
                rec.flush().unwrap(); // compressed parts grow per flush
            }
        }
        let w = rec.finish().unwrap();
        assert!(w.parts.len() >= 3, "{compress}: {:?}", w.parts);
        assert_eq!(super::part_paths(&p), w.parts);
        let mut all = Vec::new();
        let mut recording = None;
        for (i, part) in w.parts.iter().enumerate() {
            let r = TraceReader::open(part).unwrap();
            let h = r.header().clone();
            assert_eq!(h.part as usize, i);
            assert_eq!(*recording.get_or_insert(h.recording.clone()), h.recording);
            let carried = h.snapshot.as_ref().map_or(0, |s| s.sockets) as usize;
            if i > 0 {
                assert_eq!(h.snapshot.as_ref().unwrap().source, "carried_over");
                assert!(h.previous.is_some());
            }
            let mode = std::fs::metadata(part).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let (back, err) = read_all(r);
            assert!(err.is_none(), "{err:?}");
            assert!(back[..carried]
                .iter()
                .all(|e| matches!(e.kind, crate::event::Kind::Socket(_))));
            all.extend(back.into_iter().skip(carried));
        }
        assert_eq!(all, evs, "compress={compress}");
        // The report reads the parts as one trace, and says so when asked
        // for the first part only.
        let rep = crate::report::build(&p, true).unwrap();
        assert_eq!(rep.events.total, evs.len() as u64);
        assert_eq!(rep.trace.parts as usize, w.parts.len());
        let first = crate::report::build(&p, false).unwrap();
        assert_eq!(first.trace.parts, 1);
        assert!(
            first.notes.iter().any(|n| n.contains("--all-parts")),
            "{:?}",
            first.notes
        );
    }
}

fn plain(evs: &[Event]) -> Vec<u8> {
    let mut out = synth::header().to_line().into_bytes();
    out.push(b'\n');
    for e in evs {
        out.extend_from_slice(crate::output::json_line(e).as_bytes());
        out.push(b'\n');
    }
    out
}

/// Bytes of a compressed trace written the way the recorder writes it: a
/// frame per flush (here one per `per` events).
fn compressed(evs: &[Event], per: usize) -> (Vec<u8>, Vec<usize>) {
    let dir = TempDir::new("z");
    let p = dir.join("t.zst");
    let mut w = TraceWriter::create(
        &p,
        synth::header(),
        WriterOptions {
            compress: true,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    let mut ends = vec![std::fs::metadata(&p).unwrap().len() as usize];
    for chunk in evs.chunks(per) {
        for e in chunk {
            w.write(e).unwrap();
        }
        w.flush().unwrap();
        ends.push(std::fs::metadata(&p).unwrap().len() as usize);
    }
    w.finish().unwrap();
    (std::fs::read(&p).unwrap(), ends)
}

enum Want {
    Refused(&'static str),
    /// Events read, then (damage, line) or a clean end.
    Read(usize, Option<(Damage, u64)>),
}

#[test]
fn damaged_inputs_are_read_up_to_the_damage_or_refused() {
    let evs = events(20);
    let good = plain(&evs);
    let header_len = synth::header().to_line().len() + 1;
    let line_start = |n: usize| {
        // Byte offset of event line n (0-based).
        header_len
            + evs[..n]
                .iter()
                .map(|e| crate::output::json_line(e).len() + 1)
                .sum::<usize>()
    };
    let mut garbled_mid = good.clone();
    let at = line_start(7);
    garbled_mid[at..at + 5].copy_from_slice(b"#####");
    let mut cut = good.clone();
    cut.truncate(line_start(12) + 17);
    let mut no_final_newline = good.clone();
    no_final_newline.pop();
    let mut unknown_type = plain(&evs[..3]);
    unknown_type.extend_from_slice(b"{\"type\":\"from_the_future\",\"x\":1}\n");
    unknown_type.extend_from_slice(&plain(&evs[3..])[header_len..]);
    let mut bad_fields = plain(&evs[..3]);
    bad_fields.extend_from_slice(b"{\"type\":\"lost\",\"count\":\"many\"}\n");
    let mut nul_tail = good.clone();
    nul_tail.extend_from_slice(&[0u8; 4096]);
    let mut cat = good.clone();
    cat.extend_from_slice(&good);
    let mut blank = plain(&evs[..2]);
    blank.extend_from_slice(b"\n\r\n");
    blank.extend_from_slice(&plain(&evs[2..])[header_len..]);
    let newer = format!("{{\"twmon_trace\":{}}}\n", super::TRACE_VERSION + 1).into_bytes();
    let (z, ends) = compressed(&evs, 5);
    let z_cut = z[..ends[2] + (ends[3] - ends[2]) / 2].to_vec();
    let mut z_corrupt = z.clone();
    let mid = ends[2] + (ends[3] - ends[2]) / 2;
    z_corrupt[mid] ^= 0xff;
    z_corrupt[mid + 1] ^= 0x55;
    let watch_output = plain(&evs)[header_len..].to_vec();

    let cases: Vec<(&str, Vec<u8>, Want)> = vec![
        ("empty", vec![], Want::Refused("is empty")),
        (
            "random bytes",
            (0..=255u8)
                .cycle()
                .take(5000)
                .map(|b| b.wrapping_mul(37))
                .collect(),
            Want::Refused("is not a twmon trace"),
        ),
        ("gzip", vec![0x1f, 0x8b, 8, 0, 0, 0], Want::Refused("gzip")),
        (
            "text",
            b"hello world\n".to_vec(),
            Want::Refused("first line is not a trace header"),
        ),
        (
            "json array",
            b"[1,2]\n".to_vec(),
            Want::Refused("not a trace header"),
        ),
        (
            "watch --json output",
            watch_output,
            Want::Refused("twmon watch --json"),
        ),
        (
            "version 0",
            b"{\"twmon_trace\":0}\n".to_vec(),
            Want::Refused("not a positive whole number"),
        ),
        (
            "version as string",
            b"{\"twmon_trace\":\"1\"}\n".to_vec(),
            Want::Refused("not a positive whole number"),
        ),
        ("newer version", newer, Want::Refused("a version 2 trace")),
        (
            "header cut",
            good[..header_len / 2].to_vec(),
            Want::Refused("ends inside its first line"),
        ),
        ("header only", plain(&[]), Want::Read(0, None)),
        (
            "header only, no newline",
            plain(&[])[..header_len - 1].to_vec(),
            Want::Read(0, None),
        ),
        ("good", good.clone(), Want::Read(20, None)),
        ("no final newline", no_final_newline, Want::Read(20, None)),
        (
            "cut mid-line",
            cut,
            Want::Read(12, Some((Damage::CutLine, 14))),
        ),
        (
            "garbled middle line",
            garbled_mid,
            Want::Read(7, Some((Damage::Garbled, 9))),
        ),
        (
            "bad fields",
            bad_fields,
            Want::Read(3, Some((Damage::Garbled, 5))),
        ),
        ("unknown type skipped", unknown_type, Want::Read(20, None)),
        ("blank lines skipped", blank, Want::Read(20, None)),
        (
            "zeros after a crash",
            nul_tail,
            Want::Read(20, Some((Damage::CutLine, 22))),
        ),
        ("two traces concatenated", cat, Want::Read(40, None)),
        ("zstd whole", z.clone(), Want::Read(20, None)),
        (
            "zstd cut mid-frame",
            z_cut,
            Want::Read(10, Some((Damage::CompressedCut, 12))),
        ),
        (
            "zstd cut at a frame end",
            z[..ends[2]].to_vec(),
            Want::Read(10, None),
        ),
        (
            "zstd header frame only",
            z[..ends[0]].to_vec(),
            Want::Read(0, None),
        ),
        // Without its checksum the header frame's block is whole: the
        // header is read, then the cut is reported.
        (
            "zstd header frame without checksum",
            z[..ends[0] - 3].to_vec(),
            Want::Read(0, Some((Damage::CompressedCut, 2))),
        ),
        (
            "zstd cut inside the header block",
            z[..ends[0] / 2].to_vec(),
            Want::Refused("zstd data cannot be decompressed"),
        ),
        (
            "zstd magic only",
            z[..4].to_vec(),
            Want::Refused("zstd data cannot be decompressed"),
        ),
    ];
    for (name, bytes, want) in cases {
        let r = TraceReader::from_bytes(name, bytes.clone());
        match (want, r) {
            (Want::Refused(what), Err(e)) => {
                assert_eq!(e.exit_code(), 2);
                let s = e.to_string();
                assert!(s.contains(what), "{name}: {s}");
                assert!(!e.is_damage() && !s.contains('\n'), "{name}: {s}");
            }
            (Want::Refused(what), Ok(r)) => {
                panic!("{name}: read ({:?}), want refused: {what}", r.header())
            }
            (Want::Read(_, _), Err(e)) => panic!("{name}: refused: {e}"),
            (Want::Read(n, damage), Ok(r)) => {
                let (back, err) = read_all(r);
                assert_eq!(back.len(), n, "{name}: {err:?}");
                assert_eq!(back[..], cat_events(&evs, n)[..], "{name}");
                match (damage, err) {
                    (None, None) => {}
                    (
                        Some((kind, line)),
                        Some(TraceError::Damaged {
                            damage,
                            line: l,
                            offset,
                            why,
                            ..
                        }),
                    ) => {
                        assert_eq!((damage, l), (kind, line), "{name}: {why}");
                        if kind == Damage::Garbled || kind == Damage::CutLine {
                            // The offset is where the damaged line starts.
                            let plain_bytes = &bytes;
                            assert!(offset as usize <= plain_bytes.len(), "{name}");
                            assert!(
                                offset == 0 || plain_bytes[offset as usize - 1] == b'\n',
                                "{name}: offset {offset}"
                            );
                        }
                        let s = TraceReader::from_bytes(name, bytes.clone())
                            .unwrap()
                            .last()
                            .unwrap()
                            .unwrap_err()
                            .to_string();
                        assert!(
                            s.contains(&format!("line {line}")) && s.contains("byte"),
                            "{name}: {s}"
                        );
                    }
                    (want, got) => panic!("{name}: damage {got:?}, want {want:?}"),
                }
            }
        }
    }
}

/// The first `n` events of `evs` repeated (for concatenated traces).
fn cat_events(evs: &[Event], n: usize) -> Vec<Event> {
    evs.iter().cycle().take(n).cloned().collect()
}

#[test]
fn a_failed_write_leaves_the_file_readable_up_to_the_last_flush() {
    // Simulated: the writer's own error path is exercised by the tmpfs test
    // (tests/trace_cli.rs); here, what a reader sees after a partial write.
    let evs = events(30);
    let good = plain(&evs);
    let (z, ends) = compressed(&evs, 10);
    // A plain file cut inside its last line; a compressed one cut inside
    // its last frame (the decoder hands over the complete blocks of a frame
    // before it finds the frame cut short: at least the 20 events of the
    // complete frames come back).
    for (bytes, n) in [
        (good[..good.len() - 7].to_vec(), 29..=29),
        (z[..ends[3] - 1].to_vec(), 20..=30),
    ] {
        let (back, err) = read_all(TraceReader::from_bytes("partial", bytes).unwrap());
        assert!(n.contains(&back.len()), "{}", back.len());
        assert_eq!(back[..], evs[..back.len()]);
        assert!(err.unwrap().is_damage());
    }
}

#[test]
fn header_now_is_a_valid_first_line() {
    let h = Header::now(None);
    let mut bytes = h.to_line().into_bytes();
    bytes.push(b'\n');
    let r = TraceReader::from_bytes("now", bytes).unwrap();
    assert_eq!(r.header(), &h);
}

#[test]
fn sizes_parse() {
    use super::parse_size;
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("64K"), Ok(64 << 10));
    assert_eq!(parse_size("10m"), Ok(10 << 20));
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert!(parse_size("ten").is_err());
    assert!(parse_size("5X").is_err());
    assert!(parse_size("99999999999999G").is_err());
}

#[test]
fn a_large_compressed_flush_is_several_frames() {
    let evs = events(3000); // ~1 MB of lines: several 128 KiB frames
    let (z, ends) = compressed(&evs, 3000);
    let frames = {
        // Count frames by decoding one at a time.
        let mut n = 0;
        let mut rest = &z[ends[0]..];
        while !rest.is_empty() {
            let size = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
            rest = &rest[size..];
            n += 1;
        }
        n
    };
    assert!(frames >= 4, "{frames} frames");
    // Cut inside the last frame: the complete frames read.
    let (back, err) =
        read_all(TraceReader::from_bytes("cut", z[..z.len() - 100].to_vec()).unwrap());
    assert!(back.len() > 2000 && back.len() < 3000, "{}", back.len());
    assert_eq!(back[..], evs[..back.len()]);
    assert!(
        matches!(
            err,
            Some(TraceError::Damaged {
                damage: Damage::CompressedCut,
                ..
            })
        ),
        "{err:?}"
    );
}

#[test]
fn chunks_end_at_line_ends() {
    use super::writer::chunk_end;
    let d = b"aa\nbbbb\ncc\n";
    assert_eq!(chunk_end(d, 0, 5), 3);
    assert_eq!(chunk_end(d, 3, 5), 8);
    assert_eq!(chunk_end(d, 3, 100), d.len());
    // A line longer than the chunk is one chunk.
    assert_eq!(chunk_end(d, 3, 2), 8);
    assert_eq!(chunk_end(b"xxxxxx", 0, 2), 6);
}

#[test]
fn a_carry_over_larger_than_the_limit_is_at_most_as_large_as_the_new_events() {
    use crate::event::{Common, Kind, Proto, SocketSeen, TcpState};
    let dir = TempDir::new("bigcarry");
    let p = dir.join("c.trace");
    let opts = super::RecordOptions {
        path: p.clone(),
        writer: WriterOptions {
            max_size: Some(4096),
            ..WriterOptions::default()
        },
        filters: Default::default(),
        snapshot: super::SnapshotScope::None,
    };
    // 500 sockets the model knows before anything is recorded: ~100 KB of
    // carry-over, far over the 4 KiB limit.
    let mut model = crate::model::Model::new();
    for i in 0..500u16 {
        model.apply(&Event {
            common: Common {
                ts: String::new(),
                ts_ns: synth::BOOT_NS,
                netns: 1,
                proto: Proto::Tcp,
                pid: None,
                comm: None,
                container: None,
            },
            kind: Kind::Socket(SocketSeen {
                local: format!("10.0.0.1:{}", 1000 + i).parse().unwrap(),
                remote: None,
                state: TcpState::Listen,
                timewait: false,
                uid: 0,
                inode: 10 + i as u64,
                cookie: 10 + i as u64,
                reuseaddr: Some(false),
                reuseport: Some(false),
                v6only: false,
                bound_dev_if: 0,
                expires_in_ms: None,
                owner: None,
                gone: false,
                shared_with: Vec::new(),
            }),
        });
    }
    let mut rec = super::Recording::start(&opts, None, Some(&mut model)).unwrap();
    let evs = events(3000);
    let fresh: usize = evs
        .iter()
        .map(|e| crate::output::json_line(e).len() + 1)
        .sum();
    for e in &evs {
        rec.record(e, &model).unwrap();
    }
    let w = rec.finish().unwrap();
    assert!(w.parts.len() >= 2, "{:?}", w.parts);
    let mut carried = 0usize;
    for part in &w.parts[1..] {
        let (back, _) = read_all(TraceReader::open(part).unwrap());
        carried += back
            .iter()
            .take_while(|e| matches!(e.kind, Kind::Socket(_)))
            .map(|e| crate::output::json_line(e).len() + 1)
            .sum::<usize>();
    }
    // Each closed part holds at least as many new bytes as it carried in;
    // only the last part's carry-over is not yet matched.
    let one = carried / (w.parts.len() - 1);
    assert!(
        carried <= fresh + one,
        "carried {carried} bytes for {fresh} of events"
    );
}

/// `--force`: a trace of only its header over whatever is at `p`.
fn write_forced(p: &std::path::Path) {
    let w = TraceWriter::create(
        p,
        synth::header(),
        WriterOptions {
            overwrite: true,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    w.finish().unwrap();
}

/// `-o /dev/null --force` (or a pipe) writes there but leaves its mode
/// alone: once, this turned the machine's /dev/null into 0600. A FIFO
/// stands in for the device.
#[test]
fn forcing_a_trace_onto_a_non_regular_file_keeps_its_mode() {
    let dir = TempDir::new("fifo");
    let p = dir.join("pipe");
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let rp = p.clone();
    let reader = std::thread::spawn(move || std::fs::read(rp).unwrap().len());
    write_forced(&p);
    assert!(reader.join().unwrap() > 0, "the header reached the pipe");
    let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
}
