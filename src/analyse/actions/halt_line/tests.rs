use super::*;
use crate::record::RecordKind;

fn inspection(part_id: u64, class: Option<&str>) -> RecordBody {
    let at = DateTime::from_timestamp(1_700_000_000 + part_id as i64, 0).expect("valid time");
    crate::record::testing::judged_inspection(part_id, at, class)
}

struct Fixture {
    dir: tempfile::TempDir,
    store: Store,
    alarms: AlarmManager,
    halt_line: HaltLine,
}

fn rule() -> HaltLineSection {
    HaltLineSection {
        classes: vec!["crack".into()],
        burst_defects: 2,
        within_parts: 4,
        reassert_ms: 1000,
    }
}

/// Polls `condition` every 5 ms for up to 10 s (the simulated PLC scans every millisecond).
async fn eventually(condition: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the PLC"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn open(dir: tempfile::TempDir, store: Option<Store>) -> Fixture {
    let store = store.unwrap_or_else(|| Store::open(dir.path(), "station-1").expect("store"));
    let alarms = AlarmManager::open(store.clone(), &[alarm_definition()])
        .await
        .expect("alarms");
    let halt_line = HaltLine::open(HaltLineContext {
        db: ActionsDb::open(dir.path()).expect("actions db"),
        store: store.clone(),
        alarms: alarms.clone(),
        section: rule(),
        coil: 0,
        metrics: Metrics::new(),
    })
    .expect("halt line");
    Fixture {
        dir,
        store,
        alarms,
        halt_line,
    }
}

fn operator() -> Actor {
    Actor {
        name: "op-1".into(),
        role: "operator".into(),
    }
}

async fn record(fixture: &Fixture, parts: &[(u64, Option<&str>)]) {
    for (part_id, class) in parts {
        fixture
            .store
            .append(inspection(*part_id, *class))
            .await
            .expect("append");
    }
    fixture.halt_line.step().await.expect("step");
}

#[tokio::test]
async fn a_burst_latches_raises_the_alarm_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = open(dir, None).await;
    // Scratches do not count; one crack is not a burst.
    record(
        &fixture,
        &[(1, Some("scratch")), (2, Some("crack")), (3, None)],
    )
    .await;
    let view = fixture.halt_line.view();
    assert!(!view.latched);
    assert_eq!(view.defects_in_window, 1);
    record(&fixture, &[(4, Some("crack")), (5, None)]).await;
    let view = fixture.halt_line.view();
    assert!(view.latched, "{view:?}");
    assert_eq!(
        view.reason.as_deref(),
        Some("2 crack defects in the last 4 parts (parts 1–4)")
    );
    assert_eq!(
        view.burst.as_ref().map(|b| b.defect_part_ids.clone()),
        Some(vec![2, 4])
    );
    assert_eq!(view.trips, 1);
    assert_eq!(view.coil, 0);
    let alarm = fixture
        .alarms
        .alarm(HALT_LINE_ALARM)
        .await
        .expect("alarm defined");
    assert!(alarm.active);
    assert_eq!(alarm.priority, AlarmSeverity::Critical);
    // More cracks while latched trip nothing new.
    record(&fixture, &[(6, Some("crack")), (7, Some("crack"))]).await;
    assert_eq!(fixture.halt_line.view().trips, 1);

    // A restart: the latch and its reason are back.
    let Fixture {
        dir,
        store,
        alarms,
        halt_line,
    } = fixture;
    drop((store, alarms, halt_line));
    let fixture = open(dir, None).await;
    let view = fixture.halt_line.view();
    assert!(view.latched);
    assert_eq!(view.trips, 1);
    assert!(view.reason.is_some_and(|r| r.contains("crack")));
    // Parts seen before the restart are not read again.
    record(&fixture, &[]).await;
    // Parts 4–7: cracks at 4, 6 and 7.
    assert_eq!(fixture.halt_line.view().defects_in_window, 3);
}

#[tokio::test]
async fn only_a_reset_unlatches_and_it_is_audited() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = open(dir, None).await;
    let refused = fixture
        .halt_line
        .reset(&operator(), None, Utc::now())
        .await
        .expect_err("nothing latched");
    assert!(matches!(refused, HaltLineError::NotLatched));
    record(&fixture, &[(1, Some("crack")), (2, Some("crack"))]).await;
    assert!(fixture.halt_line.view().latched);
    // Good parts do not unlatch it.
    record(&fixture, &[(3, None), (4, None), (5, None), (6, None)]).await;
    assert!(fixture.halt_line.view().latched);
    let bad = fixture
        .halt_line
        .reset(&operator(), Some("\u{7}".into()), Utc::now())
        .await
        .expect_err("control character");
    assert!(matches!(bad, HaltLineError::BadComment));

    let view = fixture
        .halt_line
        .reset(&operator(), Some("die replaced".into()), Utc::now())
        .await
        .expect("reset");
    assert!(!view.latched);
    assert_eq!(view.reset_by.as_deref(), Some("op-1"));
    assert_eq!(view.defects_in_window, 0, "the window starts over");
    let alarm = fixture.alarms.alarm(HALT_LINE_ALARM).await.expect("alarm");
    assert!(!alarm.active);
    let audit = fixture
        .store
        .records_of_kind(RecordKind::Audit)
        .expect("audit");
    assert!(audit.iter().any(|r| matches!(
        &r.body,
        RecordBody::Audit(a) if a.action == RESET_ACTION && a.actor == "op-1"
            && a.target == "halt_line: die replaced"
    )));
    // Reset stays reset across a restart.
    let Fixture {
        dir,
        store,
        alarms,
        halt_line,
    } = fixture;
    drop((store, alarms, halt_line));
    let fixture = open(dir, None).await;
    assert!(!fixture.halt_line.view().latched);
}

#[tokio::test]
async fn a_new_halt_line_does_not_judge_the_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path(), "station-1").expect("store");
    for part_id in 1..=3 {
        store
            .append(inspection(part_id, Some("crack")))
            .await
            .expect("append");
    }
    let fixture = open(dir, Some(store)).await;
    record(&fixture, &[]).await;
    assert!(!fixture.halt_line.view().latched);
    assert_eq!(fixture.halt_line.view().defects_in_window, 0);
}

#[tokio::test]
async fn the_coil_follows_the_latch_on_the_simulated_plc() {
    use crate::simulate::PlcSimulator;
    let map = crate::actuate::RegisterMap::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-io/register-map.toml"),
    )
    .expect("register map");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (plc, _server) = PlcSimulator::serve(listener, map).expect("plc");
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = open(dir, None).await;
    let coil = 0;
    let mut link = GateLink::new(plc.address(), 1, Duration::from_secs(2), map);
    let mut failing = false;
    fixture
        .halt_line
        .drive_coil(&mut link, false, &mut failing)
        .await;
    assert_eq!(fixture.halt_line.view().coil_on, Some(false));
    record(&fixture, &[(1, Some("crack")), (2, Some("crack"))]).await;
    fixture
        .halt_line
        .drive_coil(&mut link, false, &mut failing)
        .await;
    assert!(plc.coil(coil));
    eventually(|| plc.halted()).await;
    assert_eq!(plc.halts().len(), 1);
    assert_eq!(fixture.halt_line.view().coil_on, Some(true));
    assert!(link.read_coil(coil).await.expect("read coil"));
    fixture
        .halt_line
        .reset(&operator(), None, Utc::now())
        .await
        .expect("reset");
    fixture
        .halt_line
        .drive_coil(&mut link, false, &mut failing)
        .await;
    assert!(!plc.coil(coil));
    // The PLC keeps the line held until its own operator reset (rule R8).
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(plc.halted(), "the latch outlives the coil");
    plc.press_operator_reset();
    eventually(|| !plc.halted()).await;
    assert!(!failing);
}
