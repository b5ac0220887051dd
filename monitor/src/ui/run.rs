//! The dashboard's loop: keys first, then events in batches for at most a
//! time budget, then a frame when one is due (at most `fps` a second, and
//! at once after a key). Keys never wait behind a flood of events: a flood
//! only means more batches, each followed by a look at the keyboard.

use std::io;
use std::time::{Duration, Instant};

use crossterm::event::{Event as TermEvent, KeyEvent};
use ratatui::backend::Backend;
use ratatui::Terminal;

use super::app::{Action, Dashboard};
use super::source::{EventSource, Poll};
use super::terminal::terminate_requested;
use super::views;

#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Frames a second at most while events flow.
    pub fps: u32,
    /// Time spent applying events before looking at keys and the clock again.
    pub drain_budget: Duration,
    /// Events per batch.
    pub batch: usize,
    /// Stop after this long (--duration).
    pub duration: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            fps: 10,
            drain_budget: Duration::from_millis(25),
            batch: 512,
            duration: None,
        }
    }
}

/// Where keys come from: the terminal, or a test.
pub trait Input {
    /// The next terminal event, waiting at most `wait`.
    fn next(&mut self, wait: Duration) -> io::Result<Option<TermEvent>>;
}

/// The real keyboard: crossterm, behind a poll(2) of standard input that
/// notices a terminal that hung up (crossterm 0.29 spins on a tty that
/// reads EOF, so it is only asked when the descriptor is readable or
/// nothing is pending).
pub struct CrosstermInput;

impl CrosstermInput {
    /// poll(2) on stdin; Err when the terminal hung up.
    fn readable(wait: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        if pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the terminal hung up",
            ));
        }
        Ok(pfd.revents & libc::POLLIN != 0)
    }
}

impl Input for CrosstermInput {
    fn next(&mut self, wait: Duration) -> io::Result<Option<TermEvent>> {
        // What crossterm already parsed (and resizes) first, without waiting.
        Self::readable(Duration::ZERO)?;
        if crossterm::event::poll(Duration::ZERO)? {
            return Ok(Some(crossterm::event::read()?));
        }
        if !Self::readable(wait)? {
            return Ok(None);
        }
        if crossterm::event::poll(Duration::ZERO)? {
            Ok(Some(crossterm::event::read()?))
        } else {
            Ok(None)
        }
    }
}

/// What a run measured.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    pub frames: u64,
    pub events: u64,
    pub keys: u64,
    /// Longest time one frame took to draw.
    pub max_draw: Duration,
    /// Longest time from reading a key to the frame that shows its effect.
    pub max_key_to_frame: Duration,
    pub total_key_to_frame: Duration,
    pub elapsed: Duration,
    /// Events the kernel could not hand over (set by the caller).
    pub lost: u64,
}

impl RunStats {
    pub fn fps(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn mean_key_to_frame(&self) -> Duration {
        if self.keys == 0 {
            Duration::ZERO
        } else {
            self.total_key_to_frame / self.keys as u32
        }
    }
}

/// Run the dashboard until `q`, Ctrl-C, a terminating signal or the
/// duration. The source's events go through `dash`; it is drawn on
/// `terminal`.
pub fn run<B: Backend, S: EventSource + ?Sized>(
    terminal: &mut Terminal<B>,
    source: &mut S,
    dash: &mut Dashboard,
    input: &mut dyn Input,
    opts: &RunOptions,
) -> io::Result<RunStats>
where
    B::Error: Send + Sync + 'static,
{
    let start = Instant::now();
    let fastest = Duration::from_millis(1000 / opts.fps.max(1) as u64);
    let mut frame = fastest;
    let mut stats = RunStats::default();
    let mut last_draw: Option<Instant> = None;
    let mut key_at: Option<Instant> = None;
    let mut backlog = false;
    let mut buf = Vec::with_capacity(opts.batch);
    dash.app.source_keys = source.help();
    loop {
        if terminate_requested() {
            break;
        }
        if opts.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        // Keys: wait for one until the next frame is due, unless events wait.
        let due = next_frame_in(last_draw, key_at.is_some(), frame);
        let mut wait = if backlog {
            Duration::ZERO
        } else {
            due.min(Duration::from_millis(20))
        };
        let mut quit = false;
        while let Some(ev) = input.next(wait)? {
            wait = Duration::ZERO;
            match ev {
                TermEvent::Key(k) => {
                    stats.keys += 1;
                    key_at.get_or_insert_with(Instant::now);
                    if key(k, source, dash) {
                        quit = true;
                        break;
                    }
                }
                TermEvent::Resize(..) => last_draw = None,
                _ => {}
            }
        }
        if quit {
            break;
        }
        if source.take_reset() {
            dash.reset();
        }
        // Events, for at most the budget.
        let t0 = Instant::now();
        backlog = false;
        loop {
            if dash.pump(opts.batch) > 0 {
                // Resumed after a pause: the queue first.
                if t0.elapsed() >= opts.drain_budget {
                    backlog = true;
                    break;
                }
                continue;
            }
            buf.clear();
            let r = source.poll(&mut buf, opts.batch, Duration::ZERO);
            stats.events += buf.len() as u64;
            for ev in buf.drain(..) {
                dash.feed(ev);
            }
            if r != Poll::Ready {
                break;
            }
            if t0.elapsed() >= opts.drain_budget {
                backlog = true;
                break;
            }
        }
        // A paused view holds still: the census waits (its thread too).
        if !dash.app.paused {
            if let Some(c) = source.census() {
                dash.census(&c);
            }
        }
        let ui_ms = start.elapsed().as_millis() as u64;
        dash.tick(source.clock_ns(), ui_ms);
        dash.app.source = source.status();
        dash.app.banner = source.banner();
        // A frame when due; sooner after a key.
        if next_frame_in(last_draw, key_at.is_some(), frame).is_zero() {
            let t = Instant::now();
            terminal
                .draw(|f| views::draw(f, &dash.app, &dash.model))
                .map_err(io::Error::other)?;
            let now = Instant::now();
            stats.frames += 1;
            stats.max_draw = stats.max_draw.max(now - t);
            frame = frame_gap(fastest, now - t);
            if let Some(k) = key_at.take() {
                stats.max_key_to_frame = stats.max_key_to_frame.max(now - k);
                stats.total_key_to_frame += now - k;
            }
            last_draw = Some(now);
        }
    }
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// Drawing takes at most this share of the time (1/DRAW_SHARE).
const DRAW_SHARE: u32 = 20;
/// Frames come at least this often, however long they take.
const SLOWEST_FRAME: Duration = Duration::from_secs(2);

/// The time between frames after one that took `took`: the views are built
/// from every socket of the model, and beside a churning host's 80,000
/// timewait sockets a frame took some 20 ms; ten of them a second slowed
/// the churn by 7 % more than one a second (the bench, light mode). A key
/// still gets its frame at once.
fn frame_gap(fastest: Duration, took: Duration) -> Duration {
    (took * DRAW_SHARE).clamp(fastest, SLOWEST_FRAME.max(fastest))
}

/// Frames come at most every `frame`, or [`KEY_FRAME_GAP`] after a key.
fn next_frame_in(last: Option<Instant>, key: bool, frame: Duration) -> Duration {
    let gap = if key { KEY_FRAME_GAP.min(frame) } else { frame };
    last.map_or(Duration::ZERO, |t| gap.saturating_sub(t.elapsed()))
}

/// The shortest time between a frame and the next one that shows a key.
pub const KEY_FRAME_GAP: Duration = Duration::from_millis(30);

/// One key; true: quit.
fn key<S: EventSource + ?Sized>(k: KeyEvent, source: &mut S, dash: &mut Dashboard) -> bool {
    match dash.app.on_key(k, &dash.model) {
        Action::Quit => return true,
        Action::Pause(p) => {
            let source_pauses = source.set_paused(p);
            dash.set_paused(p, source_pauses);
        }
        Action::ToggleRecord => match source.toggle_recording() {
            Ok(m) | Err(m) => dash.app.say(m),
        },
        Action::Source(k) => {
            source.on_key(k);
        }
        Action::None => {}
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_frames_come_less_often() {
        let ms = Duration::from_millis;
        for (took, gap) in [
            (0, 100),
            (2, 100),
            (5, 100),
            (10, 200),
            (20, 400),
            (500, 2000),
        ] {
            assert_eq!(
                frame_gap(ms(100), ms(took)),
                ms(gap),
                "a frame of {took} ms"
            );
        }
        assert_eq!(
            frame_gap(ms(5000), ms(1)),
            ms(5000),
            "never faster than asked"
        );
    }
}
