//! The progress display of an epoch: a bar on a terminal (batches done, running loss, elapsed
//! and remaining time) with the `progress` feature, nothing without it or when stderr is not a
//! terminal. Either way the trainer prints one plain line per epoch, so logs read the same.

/// The progress of one epoch's batches.
pub struct EpochProgress {
    #[cfg(feature = "progress")]
    bar: indicatif::ProgressBar,
}

/// The running loss is redrawn every this many batches.
const MESSAGE_EVERY: usize = 10;

impl EpochProgress {
    /// A display of `len` batches titled `prefix`, starting at batch `position` (a resumed
    /// epoch).
    pub fn start(len: usize, prefix: String, position: usize) -> Self {
        #[cfg(feature = "progress")]
        {
            let bar = progress_bar(len, prefix);
            bar.set_position(position as u64);
            EpochProgress { bar }
        }
        #[cfg(not(feature = "progress"))]
        {
            let _ = (len, prefix, position);
            EpochProgress {}
        }
    }

    /// Batch `batch` (0-based within the epoch) is done; `mean_loss` computes the running mean
    /// loss when it is shown.
    pub fn batch_done(&self, batch: usize, mean_loss: impl FnOnce() -> f64) {
        #[cfg(feature = "progress")]
        {
            self.bar.inc(1);
            if batch.is_multiple_of(MESSAGE_EVERY) {
                self.bar.set_message(format!("loss {:.4}", mean_loss()));
            }
        }
        #[cfg(not(feature = "progress"))]
        let _ = (batch, mean_loss, MESSAGE_EVERY);
    }

    /// The epoch stopped early (a signal, a non-finite loss): leave the bar where it is.
    pub fn abandon(&self) {
        #[cfg(feature = "progress")]
        self.bar.abandon();
    }

    /// The epoch is done: clear the bar (the epoch's line follows).
    pub fn finish(&self) {
        #[cfg(feature = "progress")]
        self.bar.finish_and_clear();
    }
}

#[cfg(feature = "progress")]
fn progress_bar(len: usize, prefix: String) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressStyle};
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    let style =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}<{eta})")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(prefix);
    pb
}
