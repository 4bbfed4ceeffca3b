//! Progress bars for a person watching: rank 0 draws one (training epochs, recommend's users,
//! tune's trials) when its log goes to a terminal, and the log lines are printed above it.
//! Without a terminal (a file, a pipe, Slurm, Kubernetes) nothing is drawn and the log is
//! exactly as without bars.
//!
//! Under `mpirun` every rank's stderr is a pipe to the launcher, even when the launcher writes
//! to a terminal; so when the launcher's own stderr is a terminal, rank 0 draws on the
//! terminal it shares with it (`/dev/tty`), and writes its log lines there too while a bar is
//! shown (through the launcher they could land in the middle of the bar).

use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use console::Term;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar being shown and the terminal it is on (one at a time).
static SHOWN: Mutex<Option<(ProgressBar, Term)>> = Mutex::new(None);

/// Set to `0` to never draw bars.
const SWITCH: &str = "FUNKSVD_PROGRESS";

/// The terminal a person reads this process's log on, if any.
fn watched_terminal() -> Option<Term> {
    if std::env::var(SWITCH).is_ok_and(|v| v == "0") {
        return None;
    }
    if std::io::stderr().is_terminal() {
        return Some(Term::stderr());
    }
    let parent = std::os::unix::process::parent_id();
    let launcher_err = std::fs::read_link(format!("/proc/{parent}/fd/2")).ok()?;
    let on_terminal = launcher_err
        .to_str()
        .is_some_and(|t| t.starts_with("/dev/pts/") || t.starts_with("/dev/tty"));
    if !on_terminal {
        return None;
    }
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    let term = Term::read_write_pair(tty.try_clone().ok()?, tty);
    term.is_term().then_some(term)
}

/// A progress bar, or nothing (not rank 0, or nobody watching).
pub struct Bar(Option<ProgressBar>);

impl Bar {
    /// A bar of `len` steps of `what` (e.g. "epochs"), drawn by rank `rank` if it is 0 and a
    /// person watches.
    pub fn new(rank: usize, len: u64, what: &str) -> Bar {
        let Some(term) = (rank == 0).then(watched_terminal).flatten() else {
            return Bar(None);
        };
        let target = ProgressDrawTarget::term(term.clone(), 10);
        let bar = ProgressBar::with_draw_target(Some(len), target);
        let style = ProgressStyle::with_template(&format!(
            "{{bar:30.cyan/blue}} {{pos}}/{{len}} {what}  {{msg}}  [{{elapsed_precise}}, {{eta}} left]"
        ))
        .expect("the template is valid")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(250));
        *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = Some((bar.clone(), term));
        Bar(Some(bar))
    }

    pub fn set(&self, position: u64, message: impl FnOnce() -> String) {
        if let Some(bar) = &self.0 {
            bar.set_position(position);
            bar.set_message(message());
        }
    }

    pub fn is_shown(&self) -> bool {
        self.0.is_some()
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
            *SHOWN.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// Where the log writes: above the bar on its terminal while one is shown, else stderr.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_all(buf).map(|_| buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let shown = SHOWN.lock().unwrap_or_else(|e| e.into_inner());
        match &*shown {
            Some((bar, term)) => bar.suspend(|| (&*term).write_all(buf)),
            None => std::io::stderr().lock().write_all(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_terminal_nothing_is_drawn_and_the_log_goes_to_stderr() {
        // `cargo test` captures stderr (not a terminal) and its parent's may be one: the
        // switch decides here.
        std::env::set_var(SWITCH, "0");
        let bar = Bar::new(0, 10, "epochs");
        assert!(!bar.is_shown());
        bar.set(3, || unreachable!("no message is made without a bar"));
        assert!(SHOWN.lock().unwrap().is_none());
        assert!(!Bar::new(1, 10, "epochs").is_shown());
        LogWriter.write_all(b"").unwrap();
    }
}
