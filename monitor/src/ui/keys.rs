//! The dashboard's keys, as the help screen lists them. [`App::on_key`]
//! (app.rs) does what they say; keys it does not use go to the source.
//!
//! [`App::on_key`]: super::App::on_key

/// (keys, what they do), in the order the help lists them.
pub const KEYS: &[(&str, &str)] = &[
    (
        "↑ ↓  j k",
        "move in the focused pane (the log: back in time)",
    ),
    ("PgUp PgDn g G", "a page up / down, first, last"),
    ("Tab  Shift-Tab", "next / previous pane"),
    ("1 2 3 4", "failures, ports, CLOSE_WAIT, log"),
    (
        "Enter",
        "failure detail / zoom the pane (Enter or Esc: back)",
    ),
    ("J K", "scroll the failure detail"),
    (
        "/",
        "filter by port, pid, process, address, netns (Enter/Esc)",
    ),
    ("Esc", "leave the zoom, clear the filter"),
    (
        "s",
        "sort the ports (TIME_WAIT, CLOSE_WAIT, ESTAB, LISTEN, ...)",
    ),
    (
        "p  space",
        "pause / resume the view (new events wait meanwhile)",
    ),
    ("r", "start / stop recording to a trace file"),
    ("?", "this help"),
    ("q  Ctrl-C", "quit"),
];
