//! Progress of training and evaluation runs that take minutes: bars on a terminal for the
//! command line, and a [`ProgressWatch`] a running station reads to show a training job's
//! phase and time left in the browser. Tests run with neither.
//!
//! A watched run can also be cancelled: [`ProgressWatch::cancel`] raises a flag that every
//! step of a long phase looks at ([`Phase::check`]), so a run stops within one step (an image,
//! an optimiser step, a coreset entry) and returns [`Cancelled`] up its error chain.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
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
    pub fn phase(&self, n: usize, what: &str) -> Phase {
        let bar = labelled(self.terminal, n, what);
        if let Some(watch) = &self.watch {
            watch.follow(&bar);
        }
        Phase {
            bar,
            cancelled: self.watch.as_ref().map(|w| w.cancelled.clone()),
        }
    }

    /// Whether whoever watches the run has cancelled it.
    pub fn check(&self) -> Result<(), Cancelled> {
        match &self.watch {
            Some(watch) if watch.is_cancelled() => Err(Cancelled),
            _ => Ok(()),
        }
    }
}

/// The run was cancelled by whoever watched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// One phase of a run: the bar its steps advance (it derefs to it), and whether the run has
/// been cancelled.
#[derive(Debug, Clone)]
pub struct Phase {
    bar: ProgressBar,
    cancelled: Option<Arc<AtomicBool>>,
}

impl Phase {
    /// A phase nobody sees or cancels (tests, library callers).
    pub fn hidden() -> Phase {
        Phase {
            bar: ProgressBar::hidden(),
            cancelled: None,
        }
    }

    /// `Err(Cancelled)` once the run's watcher has cancelled it: a long loop asks before each
    /// step.
    pub fn check(&self) -> Result<(), Cancelled> {
        match &self.cancelled {
            Some(flag) if flag.load(Ordering::Relaxed) => Err(Cancelled),
            _ => Ok(()),
        }
    }

    /// [`Phase::check`] as a candle error, for the kernels that speak candle's.
    pub fn check_candle(&self) -> candle_core::Result<()> {
        self.check().map_err(candle_core::Error::wrap)
    }
}

impl Deref for Phase {
    type Target = ProgressBar;

    fn deref(&self) -> &ProgressBar {
        &self.bar
    }
}

/// The phase a run is in, shared between the run's thread and whoever shows it (and may cancel
/// it). Cheap to clone; reading it never blocks the run for longer than a copy of four numbers.
#[derive(Debug, Clone, Default)]
pub struct ProgressWatch {
    current: Arc<Mutex<Option<ProgressBar>>>,
    /// The phases the run has left, oldest first, each as it stood when the next began (a
    /// page polling once a second misses phases shorter than that; their record stays).
    earlier: Arc<Mutex<Vec<PhaseProgress>>>,
    cancelled: Arc<AtomicBool>,
}

/// The most phases a watch keeps the record of; past it, the oldest go.
const KEPT_PHASES: usize = 64;

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
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(previous) = current.replace(bar.clone()) {
            let mut earlier = self.earlier.lock().unwrap_or_else(|p| p.into_inner());
            if earlier.len() == KEPT_PHASES {
                earlier.remove(0);
            }
            earlier.push(progress_of(&previous));
        }
    }

    /// Every phase the run has been in, oldest first: those it has left as they stood when
    /// the next began, and the current one (or the last, once the run has ended) as it
    /// stands now.
    pub fn phases(&self) -> Vec<PhaseProgress> {
        // `current`, then `earlier`, held together as `follow` takes them: a phase that ends
        // meanwhile is either still current or already on the record, never neither.
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let earlier = self.earlier.lock().unwrap_or_else(|p| p.into_inner());
        let mut phases = earlier.clone();
        phases.extend(current.as_ref().map(progress_of));
        phases
    }

    /// Asks the run to stop: it does at its next step, with [`Cancelled`].
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The current phase, once the run has started one.
    pub fn now(&self) -> Option<PhaseProgress> {
        let bar = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        Some(progress_of(&bar))
    }
}

/// How far `bar`'s phase is.
fn progress_of(bar: &ProgressBar) -> PhaseProgress {
    let done = bar.position();
    let total = bar.length().filter(|&n| n > 0);
    let remaining_s = match total {
        Some(total) if done > 0 && done < total => Some(bar.eta().as_secs_f64()),
        Some(total) if done >= total => Some(0.0),
        _ => None,
    };
    PhaseProgress {
        phase: bar.message(),
        done,
        total,
        elapsed_s: bar.elapsed().as_secs_f64(),
        remaining_s,
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
        // The record keeps the phase left as it stood, and the last as it stands.
        let phases = watch.phases();
        let seen: Vec<_> = (phases.iter())
            .map(|p| (p.phase.as_str(), p.done, p.total))
            .collect();
        assert_eq!(
            seen,
            [
                ("features of good images", 4, Some(10)),
                ("patch head steps", 3, Some(3))
            ]
        );
    }

    #[test]
    fn a_watch_keeps_the_newest_phases_only() {
        let watch = ProgressWatch::default();
        let progress = Progress::watched(watch.clone());
        for step in 0..KEPT_PHASES + 5 {
            drop(progress.phase(1, &format!("step {step}")));
        }
        let phases = watch.phases();
        // The kept ones, and the current (last) one.
        assert_eq!(phases.len(), KEPT_PHASES + 1);
        assert_eq!(phases[0].phase, "step 4");
        assert_eq!(
            phases[KEPT_PHASES].phase,
            format!("step {}", KEPT_PHASES + 4)
        );
    }

    #[test]
    fn a_cancelled_watch_stops_every_phase_and_a_hidden_run_never_stops() {
        let watch = ProgressWatch::default();
        let progress = Progress::watched(watch.clone());
        let phase = progress.phase(10, "training steps");
        assert_eq!((phase.check(), progress.check()), (Ok(()), Ok(())));
        watch.cancel();
        assert!(watch.is_cancelled());
        assert_eq!(
            (phase.check(), progress.check()),
            (Err(Cancelled), Err(Cancelled))
        );
        assert_eq!(progress.phase(3, "later").check(), Err(Cancelled));
        assert!(phase.check_candle().is_err());
        assert_eq!(Progress::hidden().phase(1, "x").check(), Ok(()));
        assert_eq!(Phase::hidden().check(), Ok(()));
    }
}
