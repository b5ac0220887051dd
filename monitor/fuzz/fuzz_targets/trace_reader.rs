//! Any bytes into the trace reader (as given, behind a good header, and
//! zstd-compressed then cut at a point the input chooses), every event into
//! a report, the report rendered three ways: nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use monitor::report::{render_json, render_markdown, render_text, ReportBuilder};
use monitor::trace::TraceReader;

const HEADER: &[u8] = b"{\"twmon_trace\":1,\"host\":\"fuzz\"}\n";

fn read(bytes: Vec<u8>) {
    match TraceReader::from_bytes("fuzz", bytes) {
        Ok(mut r) => {
            let mut b = ReportBuilder::new();
            b.part("fuzz", &r.header().clone(), r.is_compressed());
            for ev in r.by_ref() {
                match ev {
                    Ok(e) => {
                        let _ = monitor::output::json_line(&e);
                        let _ = monitor::output::human_line(&e);
                        b.add(&e);
                    }
                    Err(e) => {
                        let _ = e.position();
                        b.stopped(&e);
                    }
                }
            }
            let report = b.finish();
            let _ = render_text(&report);
            let _ = render_markdown(&report);
            let _ = render_json(&report);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // As given: the header checks.
    read(data.to_vec());
    // Behind a good header: the event lines.
    let mut framed = HEADER.to_vec();
    framed.extend_from_slice(data);
    read(framed.clone());
    // Compressed, then cut where the first two bytes say.
    if data.len() >= 2 {
        if let Ok(z) = zstd::bulk::compress(&framed, 1) {
            let cut = u16::from_le_bytes([data[0], data[1]]) as usize % (z.len() + 1);
            read(z[..cut].to_vec());
        }
    }
});
