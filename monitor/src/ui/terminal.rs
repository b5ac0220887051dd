//! The terminal while the dashboard owns it: raw mode, the alternate
//! screen, no cursor, and stderr sent to /dev/null (a stray log line would
//! tear the screen). [`TerminalGuard`] puts everything back when dropped;
//! a panic hook does the same before the panic message is printed, and
//! SIGTERM, SIGINT and SIGHUP only raise a flag that the loop checks
//! ([`terminate_requested`]), so that the guard restores the terminal on
//! the way out.

use std::io::{self, Stdout};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Once;

use crossterm::cursor::{Hide, Show};
use crossterm::execute;
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static TERMINATE: AtomicBool = AtomicBool::new(false);
/// The real stderr, saved while the dashboard is up (-1: not redirected).
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);
static HOOKS: Once = Once::new();

/// Restores the terminal when dropped.
pub struct TerminalGuard {
    _private: (),
}

pub type Term = Terminal<CrosstermBackend<Stdout>>;

impl TerminalGuard {
    /// Take over the terminal.
    pub fn enter() -> io::Result<(TerminalGuard, Term)> {
        install_hooks();
        TERMINATE.store(false, Ordering::SeqCst);
        enable_raw_mode()?;
        let guard = TerminalGuard { _private: () };
        ACTIVE.store(true, Ordering::SeqCst);
        execute!(io::stdout(), EnterAlternateScreen, Hide)?;
        redirect_stderr();
        let term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
        Ok((guard, term))
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Put the terminal back (idempotent; safe from a panic hook).
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(io::stdout(), LeaveAlternateScreen, Show);
        let _ = disable_raw_mode();
    }
    restore_stderr();
}

/// SIGTERM, SIGINT or SIGHUP arrived.
pub fn terminate_requested() -> bool {
    TERMINATE.load(Ordering::SeqCst)
}

extern "C" fn on_signal(_: libc::c_int) {
    TERMINATE.store(true, Ordering::SeqCst);
}

/// SIGTERM, SIGINT and SIGHUP raise the flag of [`terminate_requested`]
/// (without a terminal to restore: the off-screen dashboard).
pub fn catch_signals() {
    install_hooks();
}

fn install_hooks() {
    HOOKS.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            // SAFETY: the handler only stores to an atomic, which is
            // async-signal-safe; the sigaction struct is fully initialised.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
        }
    });
}

fn redirect_stderr() {
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return;
    };
    // SAFETY: dup/dup2 on descriptors this process owns; the saved copy is
    // closed again in restore_stderr.
    unsafe {
        let saved = libc::dup(2);
        if saved < 0 {
            return;
        }
        if libc::dup2(null.as_raw_fd(), 2) < 0 {
            libc::close(saved);
            return;
        }
        SAVED_STDERR.store(saved, Ordering::SeqCst);
    }
}

fn restore_stderr() {
    let saved = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if saved >= 0 {
        // SAFETY: `saved` is the descriptor redirect_stderr kept.
        unsafe {
            libc::dup2(saved, 2);
            libc::close(saved);
        }
    }
}
