//! Scenarios run against a live server, one per subcommand.

pub mod broadcast;
pub mod conns;
pub mod push;
pub mod storm;
pub mod target;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar shared by the phases of a run (hidden when not a terminal).
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("static progress template")
                .progress_chars("=> "),
        );
        Self { bar }
    }

    pub fn phase(&self, name: &str, len: u64) {
        self.bar.set_message(name.to_string());
        self.bar.set_length(len);
        self.bar.set_position(0);
    }

    pub fn set(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
