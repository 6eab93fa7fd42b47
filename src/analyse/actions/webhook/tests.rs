use super::*;
use crate::analyse::alarms::{Actor, AlarmManager, DiscreteOn};

fn t(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("valid time")
}

fn section(toml_text: &str) -> WebhookSection {
    toml::from_str(toml_text).expect("webhook table parses")
}

fn roller() -> AlarmDefinition {
    AlarmDefinition {
        name: "roller_2_bearing".into(),
        message: "Roller 2 bearing: vibration trend towards failure".into(),
        priority: AlarmSeverity::High,
        source: "tag:roller_vibration".into(),
        high: None,
        low: None,
        deadband: 0.0,
        on_delay_s: 0.0,
        off_delay_s: 0.0,
        on: Some(DiscreteOn::Violation),
        max_shelve_s: 3600,
    }
}

fn alert(alarm: &str, category: &str, priority: AlarmSeverity, event: AlertEvent) -> Alert {
    Alert {
        alert_id: format!("s/{alarm}/1"),
        idempotency_key: "i/1".into(),
        event,
        alarm: alarm.into(),
        equipment_id: "e/s/a/l/s".into(),
        category: category.into(),
        priority,
        message_text: "m".into(),
        condition: "c".into(),
        state: AlarmState::ActiveUnacknowledged,
        source: None,
        value: None,
        horizon_h: None,
        interval_lo_h: None,
        interval_hi_h: None,
        evidence: Vec::new(),
        model_id: None,
        model_version: None,
        work_order_ref: None,
        created_at: t(0),
        at: t(0),
        seq: 1,
        station: "s".into(),
        by: None,
    }
}

#[test]
fn filters_by_name_category_priority_and_event() {
    let webhook = Webhook::build(
        &section(
            r#"
            name = "cmms"
            url = "http://127.0.0.1:9/orders"
            categories = ["predictive_maintenance"]
            min_priority = "high"
            events = ["activated", "returned"]
            "#,
        ),
        |_| None,
    )
    .expect("builds");
    use AlarmSeverity::*;
    use AlertEvent::*;
    let check = |alarm: &Alert, expected: bool| {
        assert_eq!(webhook.wants(alarm), expected, "{alarm:?}");
    };
    check(&alert("a", "predictive_maintenance", High, Activated), true);
    check(
        &alert("a", "predictive_maintenance", Critical, Returned),
        true,
    );
    check(
        &alert("a", "predictive_maintenance", Medium, Activated),
        false,
    );
    check(&alert("a", "process", Critical, Activated), false);
    check(
        &alert("a", "predictive_maintenance", High, Acknowledged),
        false,
    );

    let by_name = Webhook::build(
        &section("name = \"n\"\nurl = \"http://h/\"\nalarms = [\"b\"]\n"),
        |_| None,
    )
    .expect("builds");
    assert!(by_name.wants(&alert("b", "station", Low, Activated)));
    assert!(!by_name.wants(&alert("a", "station", Low, Activated)));
    // Activations only by default.
    assert!(!by_name.wants(&alert("b", "station", Low, Returned)));
}

#[test]
fn every_problem_is_named_with_its_field() {
    let webhooks = [
        section(
            r#"
            name = "Bad Name"
            url = "https://cmms.example/api"
            alarms = ["nope"]
            events = []
            headers = { "Content-Type" = "text/plain", "X-Ok" = "1" }
            secret_headers = { "X-Ok" = "" }
            timeout_ms = 0
            first_retry_ms = 10
            max_retry_ms = 5
            "#,
        ),
        section("name = \"a\"\nurl = \"ftp://h/\"\n"),
        section("name = \"a\"\nurl = \"not a url\"\ncategories = [\"\"]\n"),
    ];
    let fields: Vec<String> = check_webhooks(&webhooks, &["disk_low"])
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(
        fields,
        [
            "webhooks[0].name",
            "webhooks[0].url",
            "webhooks[0].alarms[0]",
            "webhooks[0].events",
            "webhooks[0].headers.Content-Type",
            "webhooks[0].secret_headers.X-Ok",
            "webhooks[0].secret_headers.X-Ok",
            "webhooks[0].timeout_ms",
            "webhooks[0].max_retry_ms",
            "webhooks[1].url",
            "webhooks[2].name",
            "webhooks[2].url",
            "webhooks[2].categories[0]",
        ]
    );
    let good = section("name = \"cmms\"\nurl = \"http://cmms:8080/wo\"\nalarms = [\"disk_low\"]\n");
    assert_eq!(check_webhooks(&[good], &["disk_low"]), vec![]);
    assert!(
        toml::from_str::<WebhookSection>("name = \"a\"\nurl = \"http://h/\"\nretries = 3\n")
            .is_err()
    );
}

#[test]
fn secret_headers_come_from_the_environment_and_never_print() {
    let table = section(
        "name = \"cmms\"\nurl = \"http://h/\"\nsecret_headers = { Authorization = \"CMMS_AUTH\" }\n",
    );
    let webhook = Webhook::build(&table, |name| {
        (name == "CMMS_AUTH").then(|| "Bearer s3cret".to_owned())
    })
    .expect("builds");
    assert_eq!(
        webhook.headers.get("authorization").map(|v| v.as_bytes()),
        Some(&b"Bearer s3cret"[..])
    );
    assert!(!format!("{webhook:?}").contains("s3cret"));
    let missing = Webhook::build(&table, |_| None).expect_err("variable unset");
    assert!(missing.to_string().contains("CMMS_AUTH"), "{missing}");
}

#[test]
fn backoff_doubles_and_stays_within_the_cap() {
    let webhook = Webhook::build(
        &section("name = \"a\"\nurl = \"http://h/\"\nfirst_retry_ms = 1000\nmax_retry_ms = 5000\n"),
        |_| None,
    )
    .expect("builds");
    let ms = |attempts, asked| webhook.backoff(attempts, asked).as_millis() as u64;
    assert!((800..=1200).contains(&ms(1, None)));
    assert!((1600..=2400).contains(&ms(2, None)));
    assert_eq!(ms(20, None), 5000);
    // A receiver's Retry-After is honoured, up to the cap.
    assert!(ms(1, Some(Duration::from_secs(3))) >= 3000);
    assert_eq!(ms(1, Some(Duration::from_secs(60))), 5000);
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    db: ActionsDb,
    outbox: Outbox,
    alarms: AlarmManager,
    webhooks: Vec<Webhook>,
    definitions: BTreeMap<String, AlarmDefinition>,
}

impl Fixture {
    async fn new(tables: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path(), "station-1").expect("store");
        let db = ActionsDb::open(dir.path()).expect("actions db");
        let outbox = Outbox::open(&db).expect("outbox");
        outbox.start_at(store.last_seq() + 1).expect("cursor");
        let alarms = AlarmManager::open(store.clone(), &[roller()])
            .await
            .expect("alarms");
        let webhooks = tables
            .iter()
            .map(|t| Webhook::build(&section(t), |_| None).expect("builds"))
            .collect();
        Fixture {
            _dir: dir,
            store,
            db,
            outbox,
            alarms,
            webhooks,
            definitions: [(roller().name.clone(), roller())].into(),
        }
    }

    fn catch_up(&self) -> usize {
        self.outbox
            .catch_up(&Follow {
                store: &self.store,
                db: &self.db,
                webhooks: &self.webhooks,
                definitions: &self.definitions,
                equipment_id: "acme/plant-1/area/line-1/station-1",
            })
            .expect("catch up")
    }
}

#[tokio::test]
async fn transitions_are_queued_once_with_the_alert_record() {
    let fixture = Fixture::new(&[
        "name = \"cmms\"\nurl = \"http://h/\"\nevents = [\"activated\", \"acknowledged\"]\n",
        "name = \"pager\"\nurl = \"http://p/\"\nmin_priority = \"critical\"\n",
    ])
    .await;
    fixture
        .db
        .put_alert_details(
            "roller_2_bearing",
            &AlertDetails {
                category: Some("predictive_maintenance".into()),
                equipment_id: Some("acme/plant-1/area/line-1/roller-2".into()),
                horizon_h: Some(75.0),
                interval_lo_h: Some(60.0),
                interval_hi_h: Some(90.0),
                evidence: vec![Evidence {
                    feature: "roller_vibration".into(),
                    value: Some(0.12),
                    detail: Some("slope 0.12 mm/s per h".into()),
                    ..Evidence::default()
                }],
                ..AlertDetails::default()
            },
        )
        .expect("details");
    fixture
        .alarms
        .set_condition("roller_2_bearing", true, t(10), "vibration trend")
        .await
        .expect("raise");
    assert_eq!(fixture.catch_up(), 1, "only cmms wants a high alarm");
    // Nothing new: nothing queued twice.
    assert_eq!(fixture.catch_up(), 0);
    let by = Actor {
        name: "op-1".into(),
        role: "operator".into(),
    };
    fixture
        .alarms
        .acknowledge("roller_2_bearing", &by, None, t(20))
        .await
        .expect("ack");
    assert_eq!(fixture.catch_up(), 1);

    let pending = fixture.outbox.pending().expect("pending");
    assert_eq!(pending.len(), 2);
    let (activated, acknowledged) = (&pending[0].alert, &pending[1].alert);
    assert_eq!(activated.event, AlertEvent::Activated);
    assert_eq!(activated.alarm, "roller_2_bearing");
    assert_eq!(activated.category, "predictive_maintenance");
    assert_eq!(activated.equipment_id, "acme/plant-1/area/line-1/roller-2");
    assert_eq!(activated.priority, AlarmSeverity::High);
    assert_eq!(
        activated.message_text,
        "Roller 2 bearing: vibration trend towards failure"
    );
    assert_eq!(activated.condition, "vibration trend");
    assert_eq!(activated.state, AlarmState::ActiveUnacknowledged);
    assert_eq!(
        (
            activated.horizon_h,
            activated.interval_lo_h,
            activated.interval_hi_h
        ),
        (Some(75.0), Some(60.0), Some(90.0))
    );
    assert_eq!(activated.evidence[0].feature, "roller_vibration");
    assert_eq!(activated.created_at, t(10));
    assert_eq!(
        activated.alert_id,
        format!("station-1/roller_2_bearing/{}", activated.seq)
    );
    // The acknowledgement belongs to the same alert, under its own idempotency key.
    assert_eq!(acknowledged.event, AlertEvent::Acknowledged);
    assert_eq!(acknowledged.alert_id, activated.alert_id);
    assert_ne!(acknowledged.idempotency_key, activated.idempotency_key);
    assert_eq!(acknowledged.created_at, t(10));
    assert_eq!(acknowledged.by.as_deref(), Some("op-1"));
    assert!(
        pending
            .iter()
            .all(|e| e.webhook == "cmms" && e.attempts == 0)
    );
}

#[tokio::test]
async fn without_details_the_category_follows_the_source_and_shelved_alarms_send_nothing() {
    let fixture = Fixture::new(&["name = \"all\"\nurl = \"http://h/\"\n"]).await;
    let by = Actor {
        name: "op-1".into(),
        role: "operator".into(),
    };
    fixture
        .alarms
        .shelve(
            "roller_2_bearing",
            crate::analyse::alarms::ShelveRequest::For(Duration::from_secs(600)),
            &by,
            None,
            t(1),
        )
        .await
        .expect("shelve");
    fixture
        .alarms
        .set_condition("roller_2_bearing", true, t(2), "while shelved")
        .await
        .expect("raise");
    assert_eq!(fixture.catch_up(), 0, "a shelved alarm is not annunciated");
    fixture
        .alarms
        .set_condition("disk_low", true, t(3), "disk short")
        .await
        .expect("raise");
    assert_eq!(fixture.catch_up(), 1);
    let pending = fixture.outbox.pending().expect("pending");
    assert_eq!(pending[0].alert.category, "station");
    assert_eq!(
        pending[0].alert.equipment_id,
        "acme/plant-1/area/line-1/station-1"
    );
}

#[tokio::test]
async fn a_station_without_a_cursor_queues_nothing() {
    let fixture = Fixture::new(&["name = \"all\"\nurl = \"http://h/\"\n"]).await;
    fixture.outbox.forget_cursor().expect("forget");
    fixture
        .alarms
        .set_condition("roller_2_bearing", true, t(2), "x")
        .await
        .expect("raise");
    assert_eq!(fixture.catch_up(), 0);
    // Set again, it starts from the end: the history is not sent.
    fixture
        .outbox
        .start_at(fixture.store.last_seq() + 1)
        .expect("cursor");
    assert_eq!(fixture.catch_up(), 0);
}
