//! Progress bars for training and evaluation runs that take minutes (hidden in tests).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar over `steps` steps with elapsed time and an estimate of the time left; hidden unless
/// `visible`.
pub fn bar(visible: bool, steps: u64) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(steps);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg} (eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// A bar over `n` items, labelled `what`.
pub fn labelled(visible: bool, n: usize, what: &str) -> ProgressBar {
    let bar = bar(visible, n as u64);
    bar.set_message(what.to_owned());
    bar
}
