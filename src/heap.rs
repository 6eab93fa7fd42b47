//! The process heap over months of running: handing the allocator's free pages back.
//!
//! Measured in `make soak` with heaptrack (`scripts/soak.py`, 640 s, release build): the
//! station's live heap levels off within five minutes (sled's cache filled; 55–56 MiB from
//! then on), yet its resident memory climbed in steps. Each step was a transient peak — a root
//! cause round reading its whole window of records every 5 minutes (+8 MiB, growing with the
//! window), the records held while the disk was full — whose pages glibc kept after they were
//! freed, scattered among live chunks where trimming the heap's top cannot reach them.
//! `malloc_trim(0)` also returns free pages in the middle of each arena (`madvise`), so a
//! trim after such a peak, and once a minute besides, lets resident memory follow the live
//! heap back down.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often the station trims the heap besides after its known peaks.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Returns the allocator's free pages to the system. True when memory was released. A no-op
/// off glibc. Walks the free chunks of each arena, holding its lock for a few milliseconds
/// at most: call it from a blocking thread, not an async one.
pub fn release_free_pages() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only reads and returns free memory of the allocator's arenas;
        // it takes each arena's lock, so it is safe while other threads allocate.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Trims the heap every [`TRIM_EVERY`] until `cancel`.
pub async fn run_heap_trim(cancel: CancellationToken) {
    let mut every = tokio::time::interval(TRIM_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(error) = tokio::task::spawn_blocking(release_free_pages).await {
            tracing::warn!(%error, "heap trim task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Freed memory of a large transient comes back: resident memory after the trim is below
    /// what it was with the transient's pages still held (glibc on Linux only).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_freed_transient_is_handed_back() {
        // Many small chunks (below the mmap threshold, so they live in the arena), one in
        // eight kept: the freed 140 MB lie among live chunks, out of reach of the automatic
        // trim of the heap's top.
        let chunks: Vec<Vec<u8>> = (0..40_000).map(|i| vec![i as u8; 4000]).collect();
        let mut kept = Vec::with_capacity(chunks.len() / 8);
        for (i, chunk) in chunks.into_iter().enumerate() {
            if i % 8 == 0 {
                kept.push(chunk);
            }
        }
        let before = resident_kib();
        release_free_pages();
        let after = resident_kib();
        assert!(
            after + 40_000 < before,
            "resident {before} KiB before the trim, {after} KiB after"
        );
        assert_eq!(kept.len(), 5_000);
        assert!(kept.iter().all(|c| c.len() == 4000));
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}
