//! Retention: old records move to archive files, on a schedule.
//!
//! Records are never evicted for space (images are, see `Store::save_image`); a record leaves
//! the journal only by being archived, after the age the station's config allows, into a
//! JSON-lines file that is synced before anything is deleted. A pull from before the oldest
//! kept record then answers 410 with where the records start. A part's shadow verdict goes
//! with its inspection record. Archiving to the data disk, like images, yields to the records
//! when the disk is short of space (`[records] min_free_mb`): it waits for a later run. An
//! archive on a disk of its own goes on down to the records' own floor (half the whole), as
//! moving records off the data disk is then what keeps room for new ones.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Store;

/// How often the archiver looks for old records.
const EVERY: Duration = Duration::from_secs(600);

/// Archives records older than `after` into `dir` now and every ten minutes, until `stop`.
pub async fn run_archiver(store: Store, after: Duration, dir: PathBuf, stop: CancellationToken) {
    loop {
        // Checked: with no time that far back (the config allows a century, but the archiver
        // must not panic on any `after`), nothing is that old yet.
        if let Some(cutoff) = cutoff_for(Utc::now(), after) {
            // Archive in chunks until nothing that old is left.
            loop {
                match store.archive_before(cutoff, &dir).await {
                    Ok(Some(report)) => tracing::info!(
                        file = %report.file.display(),
                        first_seq = report.first_seq,
                        last_seq = report.last_seq,
                        "records archived and pruned"
                    ),
                    Ok(None) => break,
                    Err(error) => {
                        tracing::error!(%error, "archiving failed; records stay in the journal");
                        break;
                    }
                }
                if stop.is_cancelled() {
                    return;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// `now` less `after`, or `None` when that is before the earliest time chrono can write (or
/// `after` is past what a `chrono::TimeDelta` holds): checked, since chrono's `-` panics on
/// overflow and a panic here would end archiving for the station's life.
fn cutoff_for(now: DateTime<Utc>, after: Duration) -> Option<DateTime<Utc>> {
    let after = chrono::TimeDelta::from_std(after).ok()?;
    now.checked_sub_signed(after)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;

    use crate::record::journal::{AlarmRecord, AlarmSeverity, AlarmState, RecordBody};
    use crate::record::{Filter, RecordError, Store};

    fn alarm(n: usize) -> RecordBody {
        RecordBody::Alarm(AlarmRecord::condition(
            &format!("a{n}"),
            AlarmState::Raised,
            AlarmSeverity::Low,
            "m".into(),
        ))
    }

    #[tokio::test]
    async fn old_records_go_to_a_file_and_pulls_before_them_are_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("open");
        store
            .append_all((0..5).map(alarm).collect())
            .await
            .expect("old");
        let cutoff = Utc::now() + chrono::Duration::milliseconds(1);
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        store
            .append_all((5..8).map(alarm).collect())
            .await
            .expect("new");
        let archive = dir.path().join("archive");
        let report = store
            .archive_before(cutoff, &archive)
            .await
            .expect("archive")
            .expect("something archived");
        assert_eq!(
            (report.first_seq, report.last_seq, report.records),
            (1, 5, 5)
        );
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report.file)
            .expect("file")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(
            lines
                .iter()
                .map(|l| l["seq"].as_u64().expect("seq"))
                .collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(store.first_seq(), 6);
        assert!(matches!(
            store.pull(3, 10, &Filter::default()),
            Err(RecordError::Pruned {
                from: 3,
                first_seq: 6
            })
        ));
        assert_eq!(
            store
                .pull(6, 10, &Filter::default())
                .expect("pull")
                .records
                .len(),
            3
        );
        assert!(
            store
                .archive_before(cutoff, &archive)
                .await
                .expect("again")
                .is_none()
        );
        assert!(store.verify().expect("verify").problems.is_empty());
        drop(store);
        let store = Store::open(dir.path(), "s").expect("reopen");
        assert_eq!((store.first_seq(), store.last_seq()), (6, 8));
        assert_eq!(store.append(alarm(9)).await.expect("append").seq, 9);

        // A model change archived with the rest still tells the station what runs.
        let change = RecordBody::ModelChange(crate::record::ModelEvent {
            at: Utc::now(),
            action: crate::record::ModelAction::Promote,
            version: Some("m@2".into()),
            previous: Some("m@1".into()),
        });
        store.append(change).await.expect("model change");
        let everything = Utc::now() + chrono::Duration::seconds(1);
        while store
            .archive_before(everything, &archive)
            .await
            .expect("archive")
            .is_some()
        {}
        assert_eq!(store.first_seq(), 11, "the journal is empty now");
        drop(store);
        // Numbers go on after the archived ones, never from 1 again.
        let store = Store::open(dir.path(), "s").expect("reopen");
        assert_eq!((store.first_seq(), store.last_seq()), (11, 10));
        assert_eq!(store.append(alarm(11)).await.expect("append").seq, 11);
        let events = store.model_events().expect("events");
        assert_eq!(
            events.len(),
            1,
            "the archived model change is kept for the station"
        );
        assert_eq!(events[0].version.as_deref(), Some("m@2"));
        assert!(store.verify().expect("verify").problems.is_empty());
    }

    #[test]
    fn a_cutoff_too_far_back_is_none_not_a_panic() {
        let now = Utc::now();
        let day = Duration::from_secs(86_400);
        assert_eq!(
            super::cutoff_for(now, day),
            Some(now - chrono::TimeDelta::days(1))
        );
        // A century, the most the config allows, is well within chrono's range.
        assert!(super::cutoff_for(now, day * 36_500).is_some());
        // 1e8 days fits a TimeDelta but not now less it; 1e9 days fits neither.
        assert_eq!(super::cutoff_for(now, day * 100_000_000), None);
        assert_eq!(super::cutoff_for(now, day * 1_000_000_000), None);
        assert_eq!(super::cutoff_for(now, Duration::MAX), None);
    }

    /// A part's shadow verdict is archived with its inspection, so the shadow tree (and the
    /// shadow summary's scan) stays as long as the journal. Verdicts no kept inspection can
    /// own (parts never recorded, or archived by a build before this) go too; a verdict of a
    /// part newer than every archived one stays, even one in flight whose record will come
    /// after newer parts' (below the oldest part kept).
    #[tokio::test]
    async fn archived_parts_take_their_shadow_verdicts_along() {
        use crate::record::testing::{judged_inspection, shadow_pass as shadow};

        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("open");
        store.images().set_min_free_bytes(0);
        let now = Utc::now();
        // Part 26 was recorded out of id order (a late lane): the archive's own transaction
        // takes its verdict, and it sets the sweep's bound (26).
        let old = store
            .append_all(
                [10, 11, 12, 13, 26]
                    .into_iter()
                    .map(|p| judged_inspection(p, now, None))
                    .collect(),
            )
            .await
            .expect("old");
        // The records of one write share their time, so this cutoff falls between the writes.
        let cutoff = old[0].recorded_at + chrono::TimeDelta::nanoseconds(1);
        let new = store
            .append_all(
                [5, 32, 33, 34, 35, 36]
                    .into_iter()
                    .map(|p| judged_inspection(p, now, None))
                    .collect(),
            )
            .await
            .expect("new");
        assert!(
            new[0].recorded_at >= cutoff,
            "the clock went on between writes"
        );
        // Parts 3 and 15 never recorded; part 5 recorded late, kept, below the sweep's bound;
        // part 30 still in flight, below the oldest part kept after 5 but above every archived
        // one.
        for part in [3, 5, 10, 11, 12, 13, 15, 26, 30, 32, 33, 34, 35, 36] {
            store.put_shadow(&shadow(part)).expect("shadow");
        }
        let archive = dir.path().join("archive");
        let report = store
            .archive_before(cutoff, &archive)
            .await
            .expect("archive")
            .expect("something archived");
        assert_eq!(report.records, 5);
        let kept = |store: &Store| -> Vec<u64> {
            (0..40)
                .filter(|&p| store.shadow_verdict(p).expect("read").is_some())
                .collect()
        };
        assert_eq!(kept(&store), [5, 30, 32, 33, 34, 35, 36]);
        assert_eq!(store.shadow_summary("b").expect("summary").compared, 7);
        // Nothing older to archive: the next call changes nothing.
        assert!(
            store
                .archive_before(cutoff, &archive)
                .await
                .expect("again")
                .is_none()
        );
        assert_eq!(kept(&store), [5, 30, 32, 33, 34, 35, 36]);
        drop(store);
        let store = Store::open(dir.path(), "s").expect("reopen");
        assert_eq!(kept(&store), [5, 30, 32, 33, 34, 35, 36], "durably so");
    }

    #[test]
    fn images_past_the_budget_are_evicted_oldest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), "s").expect("open");
        // Images keep the free-space floor; this test is about the budget alone.
        store.images().set_min_free_bytes(0);
        let pngs: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 1000]).collect();
        store.set_image_budget(Some(3500));
        let digests: Vec<String> = pngs
            .iter()
            .map(|p| store.save_image(p).expect("save"))
            .collect();
        assert!(store.image_bytes().expect("bytes") <= 3500);
        assert_eq!(store.images_evicted(), 3);
        let kept: Vec<bool> = digests
            .iter()
            .map(|d| store.images().path(d).is_some())
            .collect();
        assert_eq!(kept, [false, false, false, true, true, true]);
        // Saving an image already kept costs nothing.
        store.save_image(&pngs[5]).expect("again");
        assert_eq!(store.images_evicted(), 3);
    }
}
