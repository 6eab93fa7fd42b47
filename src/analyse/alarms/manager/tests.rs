use super::*;
use crate::record::{DISK_LOW_ALARM, RECORDS_FAILING_ALARM};

fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("valid time")
}

/// A high limit of 230 with a 2 deadband and a 5 s on-delay (the monitor's tests use it too).
pub(crate) fn oven() -> AlarmDefinition {
    AlarmDefinition {
        name: "oven_hot".into(),
        message: "Oven temperature high".into(),
        priority: AlarmSeverity::High,
        source: "tag:oven".into(),
        high: Some(230.0),
        low: None,
        deadband: 2.0,
        on_delay_s: 5.0,
        off_delay_s: 0.0,
        on: None,
        max_shelve_s: 3600,
    }
}

fn chart() -> AlarmDefinition {
    AlarmDefinition {
        name: "scratch_rule".into(),
        message: "Scratch rate out of control".into(),
        priority: AlarmSeverity::Medium,
        source: "chart:scratch".into(),
        high: None,
        low: None,
        deadband: 0.0,
        on_delay_s: 0.0,
        off_delay_s: 0.0,
        on: Some(DiscreteOn::Violation),
        max_shelve_s: 3600,
    }
}

fn fault() -> AlarmDefinition {
    AlarmDefinition {
        name: "station_fault".into(),
        message: "Station faulted".into(),
        priority: AlarmSeverity::Critical,
        source: "station".into(),
        on: Some(DiscreteOn::Fault),
        ..chart()
    }
}

fn operator() -> Actor {
    Actor {
        name: "op-1".into(),
        role: "operator".into(),
    }
}

fn alarm_of(record: &Record) -> &AlarmRecord {
    match &record.body {
        RecordBody::Alarm(alarm) => alarm,
        other => panic!("not an alarm: {other:?}"),
    }
}

async fn open(dir: &std::path::Path) -> (Store, AlarmManager) {
    let store = Store::open(dir, "station").expect("store");
    let manager = AlarmManager::open(store.clone(), &[oven(), chart(), fault()])
        .await
        .expect("alarms");
    (store, manager)
}

#[tokio::test]
async fn a_limit_alarm_waits_its_on_delay_and_returns_below_the_deadband() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, alarms) = open(dir.path()).await;
    // Above the limit at t=0, dips back at t=3: the on-delay starts again at t=4.
    assert!(
        alarms
            .observe("tag:oven", 231.0, t(0))
            .await
            .expect("ok")
            .is_empty()
    );
    assert!(
        alarms
            .observe("tag:oven", 229.0, t(3))
            .await
            .expect("ok")
            .is_empty()
    );
    assert!(
        alarms
            .observe("tag:oven", 232.0, t(4))
            .await
            .expect("ok")
            .is_empty()
    );
    assert!(alarms.tick(t(8)).await.expect("tick").is_empty());
    let activated = alarms.tick(t(9)).await.expect("tick");
    assert_eq!(activated.len(), 1);
    let record = alarm_of(&activated[0]);
    assert_eq!(record.event, Some(AlarmEvent::Activated));
    assert_eq!(record.state, AlarmState::ActiveUnacknowledged);
    assert_eq!(record.value, Some(232.0));
    assert_eq!(record.message, "value 232 above high limit 230");
    assert_eq!(record.by.as_deref(), Some(STATION_ACTOR));
    assert_eq!(record.source.as_deref(), Some("tag:oven"));
    // Durable before it is seen: the journal has it.
    assert_eq!(store.last_seq(), activated[0].seq);
    // Inside the deadband (228 ≤ v ≤ 230): still active. Below 228: returns.
    assert!(
        alarms
            .observe("tag:oven", 229.0, t(10))
            .await
            .expect("ok")
            .is_empty()
    );
    assert!(
        alarms
            .observe("tag:oven", 228.0, t(11))
            .await
            .expect("ok")
            .is_empty()
    );
    let returned = alarms.observe("tag:oven", 227.9, t(12)).await.expect("ok");
    assert_eq!(
        alarm_of(&returned[0]).state,
        AlarmState::ReturnedUnacknowledged
    );
    let view = alarms.alarm("oven_hot").await.expect("defined");
    assert_eq!(view.state, AlarmState::ReturnedUnacknowledged);
    assert_eq!(view.last_seq, Some(returned[0].seq));
    assert_eq!(view.value, Some(227.9));
    // Values of other sources, and non-numbers, change nothing.
    assert!(
        alarms
            .observe("tag:other", 1e9, t(13))
            .await
            .expect("ok")
            .is_empty()
    );
    assert!(matches!(
        alarms.observe("tag:oven", f64::NAN, t(13)).await,
        Err(AlarmError::NotFinite { .. })
    ));
}

#[tokio::test]
async fn operator_actions_are_recorded_with_their_audit_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, alarms) = open(dir.path()).await;
    let mut transitions = alarms.subscribe();
    alarms
        .set_condition("chart:scratch", true, t(0), "rule 1: a point beyond 3σ")
        .await
        .expect("set");
    let seen = transitions.try_recv().expect("a transition was sent");
    assert_eq!(alarm_of(&seen).event, Some(AlarmEvent::Activated));

    let view = alarms
        .acknowledge("scratch_rule", &operator(), Some("seen".into()), t(1))
        .await
        .expect("ack");
    assert_eq!(view.state, AlarmState::ActiveAcknowledged);
    let last = store.last_seq();
    let audit = store.record(last).expect("read").expect("present");
    let RecordBody::Audit(audit) = audit.body else {
        panic!("the audit entry follows the transition")
    };
    assert_eq!(
        (
            audit.actor.as_str(),
            audit.role.as_str(),
            audit.action.as_str(),
            audit.target.as_str()
        ),
        ("op-1", "operator", "alarm.acknowledge", "scratch_rule")
    );
    let transition = store.record(last - 1).expect("read").expect("present");
    let record = alarm_of(&transition);
    assert_eq!(record.by.as_deref(), Some("op-1"));
    assert_eq!(record.comment.as_deref(), Some("seen"));

    // Illegal operations say why, and write nothing.
    let error = alarms
        .acknowledge("scratch_rule", &operator(), None, t(2))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "alarm scratch_rule: nothing to acknowledge: the alarm is active_acknowledged"
    );
    let error = alarms
        .shelve(
            "scratch_rule",
            ShelveRequest::For(std::time::Duration::from_secs(7200)),
            &operator(),
            None,
            t(2),
        )
        .await
        .unwrap_err();
    assert!(error.to_string().contains("maximum of 3600 s"), "{error}");
    assert!(matches!(
        alarms.acknowledge("nope", &operator(), None, t(2)).await,
        Err(AlarmError::UnknownAlarm(_))
    ));
    assert!(matches!(
        alarms
            .acknowledge("scratch_rule", &operator(), Some("bad\u{7}".into()), t(2))
            .await,
        Err(AlarmError::BadComment)
    ));
    assert_eq!(store.last_seq(), last);

    // Suppress, unsuppress, out of service and back.
    for (action, state) in [
        (Action::Suppress, AlarmState::Suppressed),
        (Action::Unsuppress, AlarmState::ActiveAcknowledged),
        (Action::RemoveFromService, AlarmState::OutOfService),
        (Action::ReturnToService, AlarmState::ActiveAcknowledged),
    ] {
        let view = alarms
            .act("scratch_rule", action, &operator(), None, t(3))
            .await
            .expect("legal");
        assert_eq!(view.state, state, "{action:?}");
    }
    // A condition set by source or by name; unknown targets are refused.
    alarms
        .set_condition("scratch_rule", false, t(4), "back in control")
        .await
        .expect("set");
    assert_eq!(
        alarms.alarm("scratch_rule").await.expect("defined").state,
        AlarmState::Normal
    );
    assert!(matches!(
        alarms.set_condition("chart:none", true, t(5), "x").await,
        Err(AlarmError::UnknownSource(_))
    ));
    // The station's FAULT.
    alarms
        .set_station(true, false, t(6), "PLC link lost")
        .await
        .expect("set");
    assert_eq!(
        alarms.alarm("station_fault").await.expect("defined").state,
        AlarmState::ActiveUnacknowledged
    );
    // History: transitions of one alarm, newest first.
    let history = alarms.history("scratch_rule", None, 100).expect("history");
    let events: Vec<_> = history.iter().map(|r| alarm_of(r).event).collect();
    assert_eq!(
        events,
        [
            Some(AlarmEvent::Returned),
            Some(AlarmEvent::InService),
            Some(AlarmEvent::OutOfService),
            Some(AlarmEvent::Unsuppressed),
            Some(AlarmEvent::Suppressed),
            Some(AlarmEvent::Acknowledged),
            Some(AlarmEvent::Activated),
        ]
    );
    assert_eq!(
        alarms
            .history("scratch_rule", Some(history[5].seq), 1)
            .expect("page")[0]
            .seq,
        history[6].seq
    );
}

#[tokio::test]
async fn a_timed_shelve_runs_out_on_a_tick_and_a_one_shot_ends_at_return() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, alarms) = open(dir.path()).await;
    alarms
        .set_condition("scratch_rule", true, t(0), "violation")
        .await
        .expect("set");
    let view = alarms
        .shelve(
            "scratch_rule",
            ShelveRequest::For(std::time::Duration::from_secs(600)),
            &operator(),
            Some("maintenance".into()),
            t(10),
        )
        .await
        .expect("shelve");
    assert_eq!(view.state, AlarmState::Shelved);
    assert_eq!(view.shelved_until, Some(t(610)));
    assert!(alarms.tick(t(609)).await.expect("tick").is_empty());
    let expired = alarms.tick(t(610)).await.expect("tick");
    let record = alarm_of(&expired[0]);
    assert_eq!(record.event, Some(AlarmEvent::ShelveExpired));
    assert_eq!(record.state, AlarmState::ActiveUnacknowledged);

    alarms
        .shelve(
            "scratch_rule",
            ShelveRequest::OneShot,
            &operator(),
            None,
            t(620),
        )
        .await
        .expect("one-shot");
    let returned = alarms
        .set_condition("scratch_rule", false, t(630), "back")
        .await
        .expect("set");
    assert_eq!(alarm_of(&returned[0]).state, AlarmState::Normal);
    assert_eq!(alarm_of(&returned[0]).shelving, None);
}

#[tokio::test]
async fn states_are_rebuilt_after_a_reopen_and_recorder_reports_fold_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (_store, alarms) = open(dir.path()).await;
        alarms
            .set_condition("scratch_rule", true, t(0), "violation")
            .await
            .expect("set");
        alarms
            .shelve(
                "scratch_rule",
                ShelveRequest::For(std::time::Duration::from_secs(600)),
                &operator(),
                None,
                t(10),
            )
            .await
            .expect("shelve");
        alarms
            .set_station(true, false, t(20), "fault")
            .await
            .expect("fault");
        alarms
            .acknowledge("station_fault", &operator(), None, t(21))
            .await
            .expect("ack");
        for _ in 0..3 {
            alarms
                .observe("tag:oven", 240.0, t(30))
                .await
                .expect("observe");
        }
    }
    // While no manager runs, the recorder raises and clears `records_failing` and raises
    // `disk_low`, as condition reports.
    {
        let store = Store::open(dir.path(), "station").expect("store");
        let report = |name: &str, state| {
            RecordBody::Alarm(AlarmRecord::condition(
                name,
                state,
                AlarmSeverity::Critical,
                "from the recorder".into(),
            ))
        };
        store
            .append_all(vec![
                report(RECORDS_FAILING_ALARM, AlarmState::Raised),
                report(RECORDS_FAILING_ALARM, AlarmState::Cleared),
                report(DISK_LOW_ALARM, AlarmState::Raised),
            ])
            .await
            .expect("reports");
    }
    let (store, alarms) = open(dir.path()).await;
    let state = |views: &[AlarmView], name: &str| {
        views
            .iter()
            .find(|v| v.name == name)
            .map(|v| (v.state, v.shelved_until))
            .expect("defined")
    };
    let views = alarms.alarms().await;
    assert_eq!(
        state(&views, "scratch_rule"),
        (AlarmState::Shelved, Some(t(610)))
    );
    assert_eq!(
        state(&views, "station_fault"),
        (AlarmState::ActiveAcknowledged, None)
    );
    // The oven's on-delay had not run (no tick): still normal, waiting is not kept.
    assert_eq!(state(&views, "oven_hot"), (AlarmState::Normal, None));
    assert_eq!(
        state(&views, RECORDS_FAILING_ALARM),
        (AlarmState::ReturnedUnacknowledged, None)
    );
    assert_eq!(
        state(&views, DISK_LOW_ALARM),
        (AlarmState::ActiveUnacknowledged, None)
    );
    // The reports folded at open are not folded again by a tick.
    let seq = store.last_seq();
    assert!(alarms.tick(t(100)).await.expect("tick").is_empty());
    assert_eq!(store.last_seq(), seq);
    // A report written while running is folded by the next tick; the recorder's alarm is
    // acknowledged like any other.
    store
        .append(RecordBody::Alarm(AlarmRecord::condition(
            DISK_LOW_ALARM,
            AlarmState::Cleared,
            AlarmSeverity::High,
            "room again".into(),
        )))
        .await
        .expect("report");
    let folded = alarms.tick(t(101)).await.expect("tick");
    assert_eq!(
        alarm_of(&folded[0]).state,
        AlarmState::ReturnedUnacknowledged
    );
    let view = alarms
        .acknowledge(DISK_LOW_ALARM, &operator(), None, t(102))
        .await
        .expect("ack");
    assert_eq!(view.state, AlarmState::Normal);
    // A reopen after all that agrees with the running manager.
    let running = alarms.alarms().await;
    drop(alarms);
    drop(store);
    let (_store, reopened) = open(dir.path()).await;
    let mut rebuilt = reopened.alarms().await;
    let mut running = running;
    for view in running.iter_mut().chain(rebuilt.iter_mut()) {
        // The last value of a limit alarm without a transition is not in the journal.
        if view.last_seq.is_none() {
            view.value = None;
        }
    }
    assert_eq!(rebuilt, running);
}

#[tokio::test]
async fn performance_reads_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, alarms) = open(dir.path()).await;
    for i in 0..3 {
        alarms
            .set_condition("scratch_rule", true, t(i * 10), "on")
            .await
            .expect("on");
        alarms
            .set_condition("scratch_rule", false, t(i * 10 + 5), "off")
            .await
            .expect("off");
    }
    // Transitions carry the time they took effect: activations at 0, 10 and 20 s.
    let p = alarms.performance(t(0), t(600)).expect("figures");
    assert_eq!(p.alarms, 3);
    assert_eq!(p.chattering.len(), 1);
    assert_eq!(p.top[0].alarm, "scratch_rule");
}
