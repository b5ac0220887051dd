//! The `/` filter: words that must all match. A number matches a port, a
//! pid or a network namespace (inode); other words match, ignoring case, part of a process name, an
//! address, a state, an error or a diagnosis code.

use crate::event::{Event, Kind};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextFilter {
    text: String,
    words: Vec<Word>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Word {
    Num(u32),
    Text(String),
}

/// What a row offers to the filter.
#[derive(Default)]
pub struct Hay<'a> {
    pub nums: Vec<u32>,
    pub texts: Vec<std::borrow::Cow<'a, str>>,
}

impl<'a> Hay<'a> {
    pub fn num(&mut self, n: u32) -> &mut Self {
        self.nums.push(n);
        self
    }
    pub fn text(&mut self, s: impl Into<std::borrow::Cow<'a, str>>) -> &mut Self {
        self.texts.push(s.into());
        self
    }
}

impl TextFilter {
    pub fn new(text: &str) -> TextFilter {
        let words = text
            .split_whitespace()
            .map(|w| match w.parse::<u32>() {
                Ok(n) => Word::Num(n),
                Err(_) => Word::Text(w.to_lowercase()),
            })
            .collect();
        TextFilter {
            text: text.trim().to_string(),
            words,
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn matches(&self, hay: &Hay<'_>) -> bool {
        self.words.iter().all(|w| match w {
            // A number also matches as text: "127" finds 127.0.0.1.
            Word::Num(n) => {
                hay.nums.contains(n) || {
                    let s = n.to_string();
                    hay.texts.iter().any(|t| t.contains(&s))
                }
            }
            Word::Text(s) => hay
                .texts
                .iter()
                .any(|t| t.to_lowercase().contains(s.as_str())),
        })
    }

    pub fn matches_event(&self, ev: &Event) -> bool {
        self.is_empty() || self.matches(&event_hay(ev))
    }
}

/// Everything of an event the filter looks at.
pub fn event_hay(ev: &Event) -> Hay<'_> {
    let mut h = Hay::default();
    let c = &ev.common;
    h.num(c.netns);
    if let Some(p) = c.pid {
        h.num(p);
    }
    if let Some(comm) = &c.comm {
        h.text(comm.as_str());
    }
    for p in ev.ports().into_iter().flatten() {
        h.num(p as u32);
    }
    h.text(ev.kind.type_name());
    match &ev.kind {
        Kind::BindFailed(b) => {
            h.text(b.requested.to_string())
                .text(b.error.as_str())
                .text(b.syscall.as_str());
            if let Some(l) = b.local {
                h.text(l.to_string());
            }
            if let Some(d) = &b.diagnosis {
                h.text(d.code.as_str());
            }
            for hd in &b.holders {
                h.text(hd.state.as_str()).text(hd.local.to_string());
                if let Some(p) = hd.pid {
                    h.num(p);
                }
                if let Some(c) = &hd.comm {
                    h.text(c.as_str());
                }
                if let Some(l) = &hd.left_by {
                    h.num(l.pid).text(l.comm.as_str());
                }
            }
        }
        Kind::Bound(b) => {
            h.text(b.local.to_string());
        }
        Kind::State(s) => {
            h.text(s.local.to_string())
                .text(s.remote.to_string())
                .text(s.old.as_str())
                .text(s.new.as_str());
        }
        Kind::TimewaitOpen(t) => {
            h.text(t.local.to_string())
                .text(t.remote.to_string())
                .text(t.substate.as_str());
            if let Some(l) = &t.left_by {
                h.num(l.pid).text(l.comm.as_str());
            }
        }
        Kind::TimewaitSubstate(t) => {
            h.text(t.local.to_string())
                .text(t.remote.to_string())
                .text(t.substate.as_str());
        }
        Kind::TimewaitClose(t) => {
            h.text(t.local.to_string()).text(t.remote.to_string());
        }
        Kind::Socket(s) => {
            h.text(s.local.to_string()).text(s.state.as_str());
            if let Some(r) = s.remote {
                h.text(r.to_string());
            }
            if let Some(o) = &s.owner {
                h.num(o.pid).text(o.comm.as_str());
            }
        }
        Kind::Lost(_) => {}
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hay() -> Hay<'static> {
        let mut h = Hay::default();
        h.num(7100)
            .num(4242)
            .text("web-server")
            .text("127.0.0.1:7100");
        h
    }

    #[test]
    fn words_must_all_match_numbers_are_ports_or_pids() {
        let cases = [
            ("", true),
            ("7100", true),
            ("4242", true),
            ("9999", false),
            ("WEB", true),
            ("web 7100", true),
            ("web 9999", false),
            ("127.0.0", true),
            ("127", true), // a number found inside an address
            ("nginx", false),
        ];
        for (f, want) in cases {
            assert_eq!(TextFilter::new(f).matches(&hay()), want, "{f:?}");
        }
    }
}
