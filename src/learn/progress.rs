//! Progress of training and evaluation runs that take minutes: bars on a terminal for the
//! command line, and a [`ProgressWatch`] a running station reads to show a training job's
//! phase and time left in the browser. Tests run with neither.

use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// A bar over `steps` steps with elapsed time and an estimate of the time left; hidden unless
/// `visible`.
pub fn bar(visible: bool, steps: u64) -> ProgressBar {
    if !visible {
        // Hidden, but counting: a watcher reads its length and position.
        return ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::hidden());
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

/// Where a run's progress goes: a terminal, a watcher, both or neither.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    terminal: bool,
    watch: Option<ProgressWatch>,
}

impl Progress {
    /// Nowhere (tests, library callers).
    pub fn hidden() -> Progress {
        Progress::default()
    }

    /// Bars on the terminal.
    pub fn terminal() -> Progress {
        Progress {
            terminal: true,
            watch: None,
        }
    }

    /// Each phase reported to `watch`, nothing drawn.
    pub fn watched(watch: ProgressWatch) -> Progress {
        Progress {
            terminal: false,
            watch: Some(watch),
        }
    }

    /// A phase of the run over `n` items (0 when its length is set later), labelled `what`:
    /// the bar it advances. A watcher follows the newest phase.
    pub fn phase(&self, n: usize, what: &str) -> ProgressBar {
        let bar = labelled(self.terminal, n, what);
        if let Some(watch) = &self.watch {
            watch.follow(&bar);
        }
        bar
    }
}

/// The phase a run is in, shared between the run's thread and whoever shows it. Cheap to
/// clone; reading it never blocks the run for longer than a copy of four numbers.
#[derive(Debug, Clone, Default)]
pub struct ProgressWatch(Arc<Mutex<Option<ProgressBar>>>);

/// How far a run's current phase is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseProgress {
    /// What the phase does ("features of good images", "coreset of the first fit", …).
    pub phase: String,
    pub done: u64,
    /// `None` while the phase does not know its length yet.
    pub total: Option<u64>,
    pub elapsed_s: f64,
    /// The phase's time left at its rate so far; `None` until it has a rate.
    pub remaining_s: Option<f64>,
}

impl ProgressWatch {
    fn follow(&self, bar: &ProgressBar) {
        let mut current = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *current = Some(bar.clone());
    }

    /// The current phase, once the run has started one.
    pub fn now(&self) -> Option<PhaseProgress> {
        let bar = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()?;
        let done = bar.position();
        let total = bar.length().filter(|&n| n > 0);
        let remaining_s = match total {
            Some(total) if done > 0 && done < total => Some(bar.eta().as_secs_f64()),
            Some(total) if done >= total => Some(0.0),
            _ => None,
        };
        Some(PhaseProgress {
            phase: bar.message(),
            done,
            total,
            elapsed_s: bar.elapsed().as_secs_f64(),
            remaining_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_follows_the_newest_phase_of_a_hidden_run() {
        let watch = ProgressWatch::default();
        let progress = Progress::watched(watch.clone());
        assert_eq!(watch.now(), None);
        let first = progress.phase(10, "features of good images");
        first.inc(4);
        let now = watch.now().expect("a phase");
        assert_eq!(now.phase, "features of good images");
        assert_eq!((now.done, now.total), (4, Some(10)));
        assert!(now.remaining_s.is_some(), "a rate after 4 of 10: {now:?}");
        let second = progress.phase(0, "patch head steps");
        let now = watch.now().expect("a phase");
        assert_eq!(now.phase, "patch head steps");
        assert_eq!((now.done, now.total, now.remaining_s), (0, None, None));
        second.set_length(3);
        second.inc(3);
        assert_eq!(watch.now().expect("a phase").remaining_s, Some(0.0));
    }
}
