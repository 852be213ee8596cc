//! Progress for the steps that take more than a few seconds (loading a model, extracting and
//! checking each golden set, the benchmarks), with indicatif. On a terminal, one bar per command
//! that redraws in place; off a terminal (CI logs, pipes) indicatif draws nothing and each step is
//! one plain line on stderr instead.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
    what: String,
}

impl Progress {
    /// A bar of `len` steps, named `what` ("extracting", "checking").
    pub fn new(what: &str, len: usize) -> Progress {
        let bar = if std::io::stderr().is_terminal() { ProgressBar::new(len as u64) } else { ProgressBar::hidden() };
        let style = ProgressStyle::with_template("{prefix:>10} [{bar:25}] {pos}/{len} {wide_msg} {elapsed}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar, what: what.to_string() }
    }

    /// What is being done now.
    pub fn step(&self, message: impl Into<String>) {
        let message = message.into();
        if self.bar.is_hidden() {
            eprintln!("{}: {message}", self.what);
        }
        self.bar.set_message(message);
    }

    /// One step done.
    pub fn inc(&self) {
        self.bar.inc(1);
    }

    /// A line above the bar (or on its own off a terminal).
    pub fn println(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            eprintln!("{}", line.as_ref());
        } else {
            self.bar.println(line.as_ref());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
