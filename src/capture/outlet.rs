//! Where capture hands each frame.
//!
//! The station's camera hands its frames to the inspect stage's queue, which keeps what it has
//! and drops a new frame when full: every frame is a part, and a dropped part is rejected by
//! policy and counted. A further view (`[[views]]`) hands them to a [`FrameRing`], which keeps
//! the newest: its frames matter only near a part's trigger, and a free-running camera makes
//! many between two parts, so when the ring is full the oldest goes.

use std::collections::VecDeque;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;

use crate::part::Frame;

/// Where a capture's frames go.
#[derive(Clone)]
pub enum FrameOutlet {
    /// The inspect stage's queue: a full queue refuses the new frame.
    Queue(SyncSender<Frame>),
    /// A further view's ring: a full ring lets its oldest frame go.
    Ring(Arc<FrameRing>),
}

impl From<SyncSender<Frame>> for FrameOutlet {
    fn from(queue: SyncSender<Frame>) -> FrameOutlet {
        FrameOutlet::Queue(queue)
    }
}

impl From<Arc<FrameRing>> for FrameOutlet {
    fn from(ring: Arc<FrameRing>) -> FrameOutlet {
        FrameOutlet::Ring(ring)
    }
}

/// What became of a frame handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Taken,
    /// The queue was full: this frame is lost.
    Refused,
    /// Nobody takes frames any more: the stage stopped.
    Closed,
}

impl FrameOutlet {
    pub(crate) fn deliver(&self, frame: Frame) -> Delivered {
        match self {
            FrameOutlet::Queue(queue) => match queue.try_send(frame) {
                Ok(()) => Delivered::Taken,
                Err(TrySendError::Full(_)) => Delivered::Refused,
                Err(TrySendError::Disconnected(_)) => Delivered::Closed,
            },
            FrameOutlet::Ring(ring) => ring.push(frame),
        }
    }
}

/// What [`FrameRing::pop`] found.
#[derive(Debug)]
pub enum Popped {
    Frame(Frame),
    /// None came by the deadline.
    Empty,
    /// None is left and none will come: the capture ended.
    Closed,
}

/// A bounded ring of a further view's newest frames, oldest first.
pub struct FrameRing {
    state: Mutex<RingState>,
    arrived: Condvar,
    capacity: usize,
    /// Frames let go to make room.
    dropped: Counter,
}

struct RingState {
    frames: VecDeque<Frame>,
    closed: bool,
}

impl FrameRing {
    /// A ring of at most `capacity` frames (at least 1), counting the frames it lets go in
    /// `dropped`.
    pub fn new(capacity: usize, dropped: Counter) -> Arc<FrameRing> {
        Arc::new(FrameRing {
            state: Mutex::new(RingState {
                frames: VecDeque::with_capacity(capacity.max(1)),
                closed: false,
            }),
            arrived: Condvar::new(),
            capacity: capacity.max(1),
            dropped,
        })
    }

    fn state(&self) -> MutexGuard<'_, RingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `frame`, letting the oldest go when the ring is full.
    pub fn push(&self, frame: Frame) -> Delivered {
        let mut state = self.state();
        if state.closed {
            return Delivered::Closed;
        }
        if state.frames.len() == self.capacity {
            state.frames.pop_front();
            self.dropped.inc();
        }
        state.frames.push_back(frame);
        drop(state);
        self.arrived.notify_one();
        Delivered::Taken
    }

    /// No frame will come any more; those in the ring can still be taken.
    pub fn close(&self) {
        self.state().closed = true;
        self.arrived.notify_all();
    }

    /// The oldest frame, waiting for one until `until` (`None`: not at all).
    pub fn pop(&self, until: Option<Instant>) -> Popped {
        let mut state = self.state();
        loop {
            if let Some(frame) = state.frames.pop_front() {
                return Popped::Frame(frame);
            }
            if state.closed {
                return Popped::Closed;
            }
            let Some(wait) = until.and_then(|at| at.checked_duration_since(Instant::now())) else {
                return Popped::Empty;
            };
            state = self
                .arrived
                .wait_timeout(state, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}
