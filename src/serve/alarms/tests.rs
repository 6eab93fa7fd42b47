//! The alarm routes through the whole router: roles, bodies, status codes, the audit entry
//! and the event stream.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::analyse::alarms::{AlarmDefinition, AlarmManager, DiscreteOn};
use crate::inspect::registry::{ActiveModels, Registry, RunningModel};
use crate::metrics::Metrics;
use crate::model_control::ModelControl;
use crate::models::card::CardHead;
use crate::models::{Detector, ModelError};
use crate::part::{GrayImage, HeatMap};
use crate::record::{AlarmSeverity, RecordBody, Store};
use crate::serve::{ApiState, Role, StationInfo, StationState, Tokens, router};

/// A model that is never asked to judge: the alarm routes need a station, not a model.
#[derive(Debug)]
struct Idle(CardHead);

impl Detector for Idle {
    fn head(&self) -> &CardHead {
        &self.0
    }
    fn score(&self, image: &GrayImage) -> Result<(f32, HeatMap), ModelError> {
        Ok((
            0.0,
            HeatMap {
                width: image.width,
                height: image.height,
                values: vec![0.0; image.pixels.len()],
            },
        ))
    }
}

fn chart_alarm() -> AlarmDefinition {
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

struct App {
    router: axum::Router,
    store: Store,
    alarms: AlarmManager,
    operator: String,
    engineer: String,
    mes: String,
}

async fn app(dir: &std::path::Path) -> App {
    let store = Store::open(dir, "station").expect("store");
    let alarms = AlarmManager::open(store.clone(), &[chart_alarm()])
        .await
        .expect("alarms");
    let tokens = Tokens::open(dir, None).expect("tokens");
    let token = |name: &str, role| tokens.create(name, role, "test").expect("token").token;
    let (operator, engineer, mes) = (
        token("op-1", Role::Operator),
        token("eng-1", Role::Engineer),
        token("mes-1", Role::MesClient),
    );
    let head = CardHead {
        name: "idle".into(),
        version: "idle@0".into(),
        kind: "idle".into(),
        architecture: "none".into(),
        threshold: 0.5,
        threshold_rule: "none".into(),
        threshold_guarantee: None,
        drift: None,
    };
    let models = Arc::new(ActiveModels::new(RunningModel::new(
        Box::new(Idle(head)),
        0.5,
    )));
    let registry = Registry::new(dir.join("models"), None, candle_core::Device::Cpu);
    let api = ApiState {
        info: Arc::new(StationInfo {
            name: "station".into(),
            started_at: "2025-01-01T00:00:00Z".into(),
            model_version: "idle@0".into(),
            threshold: 0.5,
            travel_ms: 1000,
            gate_window_ms: 50,
            verdict_margin_ms: 100,
            plc: "127.0.0.1:502".into(),
            camera_pipeline: "none".into(),
            simulated: true,
            hierarchy: "e/s/a/l/station".into(),
        }),
        state: Arc::new(std::sync::RwLock::new(StationState::Running)),
        store: store.clone(),
        metrics: Metrics::new(),
        models: Arc::new(ModelControl::new(
            registry,
            models,
            store.clone(),
            (64, 64),
            None,
        )),
        tokens,
        hierarchy: Arc::new(["e", "s", "a", "l", "station"].map(str::to_owned)),
        alarms: alarms.clone(),
        health: Default::default(),
        production: crate::analyse::Production {
            counts: crate::analyse::ProductionCounts::open(dir).expect("counts"),
            plan: Arc::new(crate::analyse::ProductionPlan::default()),
        },
        sensors: None,
        charts: Arc::new(Vec::new()),
        root_cause: crate::serve::RootCauseApi::new(Default::default()),
        maintenance: Default::default(),
        drift: Default::default(),
        twin: crate::serve::twin::TwinApi::new(None),
        halt_line: None,
    };
    App {
        router: router(api),
        store,
        alarms,
        operator,
        engineer,
        mes,
    }
}

impl App {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .expect("request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("response");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

#[tokio::test]
async fn operators_acknowledge_and_shelve_engineers_suppress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path()).await;
    app.alarms
        .set_condition("chart:scratch", true, chrono::Utc::now(), "rule 1")
        .await
        .expect("active");

    let (status, list) = app.call("GET", "/api/v1/alarms", &app.operator, None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|a| a["name"].clone())
        .collect();
    assert_eq!(
        names,
        [
            json!("disk_low"),
            json!("model_drift"),
            json!("plc_heartbeat_lost"),
            json!("records_failing"),
            json!("scratch_rule")
        ]
    );
    let (_, active) = app
        .call(
            "GET",
            "/api/v1/alarms?state=active_unacknowledged",
            &app.operator,
            None,
        )
        .await;
    assert_eq!(active.as_array().expect("list").len(), 1);
    let (status, _) = app
        .call("GET", "/api/v1/alarms?state=raised", &app.operator, None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .call("GET", "/api/v1/alarms/nope", &app.operator, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The MES does not respond to alarms; an operator does.
    let ack = "/api/v1/alarms/scratch_rule/acknowledge";
    let (status, _) = app.call("POST", ack, &app.mes, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app
        .call(
            "POST",
            ack,
            &app.operator,
            Some(json!({"comment": "on it"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "active_acknowledged");
    let audit = app
        .store
        .record(app.store.last_seq())
        .expect("read")
        .expect("present");
    assert!(
        matches!(audit.body, RecordBody::Audit(ref a) if a.action == "alarm.acknowledge" && a.actor == "op-1")
    );
    let (status, body) = app.call("POST", ack, &app.operator, None).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"]
            .as_str()
            .expect("error")
            .contains("nothing to acknowledge"),
        "{body}"
    );
    let (status, _) = app
        .call(
            "POST",
            ack,
            &app.operator,
            Some(json!({"comment": "x", "extra": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Shelving: a duration or one shot, never both, never beyond the maximum.
    let shelve = "/api/v1/alarms/scratch_rule/shelve";
    for bad in [
        json!({}),
        json!({"duration_s": 60, "one_shot": true}),
        json!({"one_shot": false}),
        json!({"duration_s": 0}),
        json!({"duration_s": 7200}),
    ] {
        let (status, body) = app
            .call("POST", shelve, &app.operator, Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
    }
    let (status, body) = app
        .call(
            "POST",
            shelve,
            &app.operator,
            Some(json!({"duration_s": 600, "comment": "cleaning"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "shelved");
    assert_eq!(body["shelving"], "timed");
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/alarms/scratch_rule/unshelve",
            &app.operator,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // Suppression and service are an engineer's.
    let suppress = "/api/v1/alarms/scratch_rule/suppress";
    let (status, _) = app.call("POST", suppress, &app.operator, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app.call("POST", suppress, &app.engineer, None).await;
    assert_eq!(
        (status, body["state"].clone()),
        (StatusCode::OK, json!("suppressed"))
    );
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/alarms/scratch_rule/unsuppress",
            &app.engineer,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/alarms/scratch_rule/out-of-service",
            &app.engineer,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/alarms/scratch_rule/in-service",
            &app.engineer,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .call(
            "POST",
            "/api/v1/alarms/scratch_rule/in-service",
            &app.engineer,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // History, newest first, paged.
    let (status, page) = app
        .call(
            "GET",
            "/api/v1/alarms/scratch_rule/history?limit=2",
            &app.operator,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let events: Vec<_> = page["transitions"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| r["event"].clone())
        .collect();
    assert_eq!(events, [json!("in_service"), json!("out_of_service")]);
    let before = page["next_before"].as_u64().expect("more");
    let (_, page) = app
        .call(
            "GET",
            &format!("/api/v1/alarms/scratch_rule/history?before={before}&limit=1000"),
            &app.operator,
            None,
        )
        .await;
    assert_eq!(page["transitions"].as_array().expect("list").len(), 6);
    assert_eq!(page["next_before"], Value::Null);

    // Performance: the last day by default; a reversed range is refused.
    let (status, figures) = app
        .call("GET", "/api/v1/alarms/performance", &app.operator, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{figures}");
    assert_eq!(figures["alarms"], 1);
    assert_eq!(figures["targets"]["flood_alarms_per_10_min"], 10);
    let (status, _) = app
        .call(
            "GET",
            "/api/v1/alarms/performance?from=2025-01-02T00:00:00Z&to=2025-01-01T00:00:00Z",
            &app.operator,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_event_stream_sends_transitions_only_and_resumes_by_sequence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path()).await;
    // A condition report (not a transition) and the transition it causes.
    app.store
        .append(RecordBody::Alarm(crate::record::AlarmRecord::condition(
            "disk_low",
            crate::record::AlarmState::Raised,
            AlarmSeverity::High,
            "short of space".into(),
        )))
        .await
        .expect("report");
    let transitions = app.alarms.tick(chrono::Utc::now()).await.expect("tick");
    assert_eq!(transitions.len(), 1);
    let request = Request::builder()
        .uri("/api/v1/alarms/events?from=1")
        .header("authorization", format!("Bearer {}", app.operator))
        .body(Body::empty())
        .expect("request");
    let response = app.router.clone().oneshot(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body().into_data_stream();
    use futures::StreamExt;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("an event within the deadline")
            .expect("open")
            .expect("chunk");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        text.contains(&format!("id: {}\n", transitions[0].seq)),
        "{text}"
    );
    assert!(text.contains("event: alarm\n"), "{text}");
    assert!(text.contains("\"event\":\"activated\""), "{text}");
    assert!(
        !text.contains("\"state\":\"raised\""),
        "condition reports are not sent: {text}"
    );
}
