//! The chart routes through the whole router, and the OpenAPI schemas held to what the charts
//! serialise.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use chrono::DateTime;
use serde_json::Value;
use tower::ServiceExt;

use crate::analyse::spc::{
    self, ChartOptions, Count, CusumOptions, EwmaOptions, Limits, Observation, SpecLimits, Subgroup,
};
use crate::analyse::{
    ChartDefinition, Counts, MinuteBucket, Production, ProductionCounts, ProductionPlan,
};
use crate::inspect::registry::{ActiveModels, Registry, RunningModel};
use crate::metrics::Metrics;
use crate::model_control::ModelControl;
use crate::models::card::CardHead;
use crate::models::{Detector, ModelError};
use crate::part::{GrayImage, HeatMap};
use crate::record::Store;
use crate::sense::{Incoming, Sensors, SensorsSection, TagConfig};
use crate::serve::{ApiState, Role, StationInfo, StationState, Tokens, router};

/// 2025-12-01T08:00:00Z.
const T0: i64 = 1_764_576_000_000;

fn iso(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A model that is never asked to judge: the chart routes need a station, not a model.
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

struct App {
    router: axum::Router,
    operator: String,
}

impl App {
    async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::builder().method("GET").uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .expect("body");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// A station with one tag (an hour of samples from T0, the last minute 8 above the rest),
/// 24 hours of production counts from T0, and two configured charts.
async fn app(dir: &std::path::Path) -> App {
    let store = Store::open(dir, "station").expect("store");
    let alarms = crate::analyse::alarms::AlarmManager::open(store.clone(), &[])
        .await
        .expect("alarms");
    let tokens = Tokens::open(dir, None).expect("tokens");
    let operator = tokens
        .create("op-1", Role::Operator, "test")
        .expect("token")
        .token;
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
    let tag: TagConfig = toml::from_str(
        "name = \"oven\"\nperiod_ms = 10000\nspec_limits = [150.0, 210.0]\nstuck_after = 0\nspike_sigma = 0.0\n",
    )
    .expect("tag");
    let sensors = Sensors::open(dir, SensorsSection::default(), vec![tag]).expect("sensors");
    let mut samples = Vec::new();
    for m in 0..60i64 {
        for s in 0..6i64 {
            let shift = if m == 59 { 8.0 } else { 0.0 };
            samples.push(Incoming {
                tag: "oven".into(),
                at: DateTime::from_timestamp_millis(T0 + m * 60_000 + s * 10_000).expect("time"),
                value: Some(180.0 + ((m * 7919) % 13) as f64 / 6.0 + (s % 3) as f64 * 0.2 + shift),
            });
        }
    }
    sensors
        .store
        .ingest_at(
            &samples,
            DateTime::from_timestamp_millis(T0 + 86_400_000).expect("time"),
        )
        .expect("ingest");
    let counts = ProductionCounts::open(dir).expect("counts");
    let buckets: Vec<MinuteBucket> = (0..24i64)
        .map(|hour| {
            let rejected = 20 + (hour * 5) % 9;
            MinuteBucket {
                minute: T0 / 60_000 + hour * 60,
                work_order: None,
                counts: Counts {
                    inspected: 1000,
                    passed: 1000 - rejected as u64,
                    rejected_failed: rejected as u64,
                    defects: vec![("dent".into(), rejected as u64)],
                    ..Counts::default()
                },
            }
        })
        .collect();
    counts.write_buckets(&buckets).expect("buckets");
    let charts: Vec<ChartDefinition> = toml::from_str::<toml::Table>(
        r#"
        [[charts]]
        name = "rejects"
        of = "reject_rate"
        rules = ["nelson"]

        [[charts]]
        name = "oven"
        of = "tag:oven"
        window_hours = 1
        baseline = 50
        "#,
    )
    .expect("toml")["charts"]
        .clone()
        .try_into()
        .expect("charts");
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
        alarms,
        health: Default::default(),
        production: Production {
            counts,
            plan: Arc::new(ProductionPlan::default()),
        },
        sensors: Some(sensors),
        charts: Arc::new(charts),
        root_cause: crate::serve::RootCauseApi::new(Default::default()),
        maintenance: Default::default(),
        drift: Default::default(),
        twin: crate::serve::twin::TwinApi::new(None),
        halt_line: None,
    };
    App {
        router: router(api),
        operator,
    }
}

#[tokio::test]
async fn charts_are_listed_computed_and_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = app(dir.path()).await;
    let token = Some(app.operator.as_str());

    let (status, list) = app.get("/api/v1/charts", token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list[0]["name"], "rejects");
    assert_eq!(list[0]["kind"], "laney_p");
    assert_eq!(list[0]["period"], "hour");
    assert_eq!(list[0]["window_hours"], 24.0);
    assert_eq!(list[0]["rules"].as_array().map(Vec::len), Some(8));
    assert_eq!(list[1]["of"], "tag:oven");
    assert_eq!(list[1]["period"], Value::Null);
    assert_eq!(list[1]["baseline"], 50);

    // The configured tag chart, its window ending after the shifted minute.
    let (status, chart) = app
        .get(
            &format!("/api/v1/charts/oven?to={}", iso(T0 + 3_600_000)),
            token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{chart}");
    assert_eq!(chart["kind"], "individuals");
    assert_eq!(chart["points"].as_array().map(Vec::len), Some(60));
    assert_eq!(chart["points"][59]["rules"][0], "nelson_1");
    assert!(chart["capability"]["cpk"].is_number());

    // Ad hoc: a p chart of the reject rate per hour, and u per day.
    let range = format!("from={}&to={}", iso(T0), iso(T0 + 86_400_000));
    let (status, chart) = app
        .get(
            &format!("/api/v1/charts/reject-rate?kind=p&rules=nelson_1,we_2&{range}"),
            token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{chart}");
    assert_eq!(chart["kind"], "p");
    assert_eq!(chart["points"].as_array().map(Vec::len), Some(24));
    assert_eq!(chart["rules"], serde_json::json!(["we_2", "nelson_1"]));
    let (status, chart) = app
        .get(
            &format!("/api/v1/charts/defects-per-part?period=day&{range}"),
            token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{chart}");
    assert_eq!(chart["kind"], "laney_u");
    assert_eq!(chart["points"].as_array().map(Vec::len), Some(2));

    // A tag chart ad hoc: X̄-R in subgroups of 6, EWMA with its own λ.
    let tag_range = format!("from={}&to={}", iso(T0), iso(T0 + 3_600_000));
    let (status, chart) = app
        .get(
            &format!("/api/v1/tags/oven/chart?kind=xbar_r&subgroup_size=6&{tag_range}"),
            token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{chart}");
    assert_eq!(chart["points"].as_array().map(Vec::len), Some(60));
    assert_eq!(chart["details"]["subgroups"]["constants"]["n"], 6);
    let (status, chart) = app
        .get(
            &format!("/api/v1/tags/oven/chart?kind=ewma&lambda=0.1&{tag_range}"),
            token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{chart}");
    assert_eq!(chart["details"]["ewma"]["lambda"], 0.1);

    // Refusals: each says why.
    let cases = [
        (
            "/api/v1/charts/nope".to_owned(),
            StatusCode::NOT_FOUND,
            "nope",
        ),
        (
            "/api/v1/tags/press/chart".to_owned(),
            StatusCode::NOT_FOUND,
            "press",
        ),
        (
            format!("/api/v1/tags/oven/chart?kind=individuals&lambda=0.1&{tag_range}"),
            StatusCode::BAD_REQUEST,
            "lambda",
        ),
        (
            format!("/api/v1/charts/reject-rate?kind=u&{range}"),
            StatusCode::BAD_REQUEST,
            "laney_p",
        ),
        (
            format!("/api/v1/charts/reject-rate?rules=nelson_9&{range}"),
            StatusCode::BAD_REQUEST,
            "nelson_9",
        ),
        (
            format!("/api/v1/charts/reject-rate?colour=red&{range}"),
            StatusCode::BAD_REQUEST,
            "colour",
        ),
        (
            format!(
                "/api/v1/charts/reject-rate?from={}&to={}",
                iso(T0),
                iso(T0 - 1000)
            ),
            StatusCode::BAD_REQUEST,
            "before",
        ),
        // Two hours of counts: too few for Laney's σ_z … and none at all.
        (
            format!(
                "/api/v1/charts/reject-rate?from={}&to={}",
                iso(T0),
                iso(T0 + 60_000)
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "at least",
        ),
        (
            format!(
                "/api/v1/charts/reject-rate?from={}&to={}",
                iso(T0 - 86_400_000),
                iso(T0)
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no hour",
        ),
        (
            format!("/api/v1/charts/rejects?baseline=3&{range}"),
            StatusCode::BAD_REQUEST,
            "baseline",
        ),
        (
            format!("/api/v1/charts/reject-rate?baseline=30&{range}"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "baseline",
        ),
    ];
    for (path, expected, says) in cases {
        let (status, body) = app.get(&path, token).await;
        assert_eq!(status, expected, "{path}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{path}: {message}");
    }
    let (status, _) = app.get("/api/v1/charts", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// The OpenAPI description names exactly the fields the charts serialise (schemathesis checks
/// the values against a running station; this catches a renamed field here).
#[test]
fn the_openapi_schemas_match_what_is_served() {
    let spec: Value = serde_json::from_str(crate::serve::OPENAPI).expect("json");
    let schemas = &spec["components"]["schemas"];
    let keys = crate::serve::openapi_check::schema_fields;
    let fields = crate::serve::openapi_check::served_fields;
    let enum_of = |schema: &str| -> Vec<Value> {
        schemas[schema]["enum"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };

    let values = [10.0, 10.4, 9.7, 10.2, 9.9, 10.8, 9.5, 10.1, 10.3, 9.6, 30.0];
    let observations: Vec<Observation> = values
        .iter()
        .map(|&value| Observation {
            at: DateTime::from_timestamp_millis(T0),
            value,
            excluded: false,
        })
        .collect();
    let subgroups: Vec<Subgroup> = values
        .windows(3)
        .map(|w| Subgroup {
            at: None,
            values: w.to_vec(),
            excluded: false,
        })
        .collect();
    let counts: Vec<Count> = [12, 15, 9, 14, 11, 40]
        .iter()
        .map(|&count| Count {
            at: None,
            count,
            n: 500,
            excluded: false,
        })
        .collect();
    let with_spec = ChartOptions {
        spec: Some(SpecLimits {
            lower: Some(5.0),
            upper: Some(15.0),
        }),
        ..ChartOptions::default()
    };
    // Limits from the ten ordinary points, so the last one stands out on every chart.
    let baseline = ChartOptions {
        limits: Limits::Estimated { baseline: Some(10) },
        ..with_spec.clone()
    };
    let fixed = ChartOptions {
        limits: Limits::Fixed {
            center: 0.025,
            sigma: 1.0,
        },
        ..ChartOptions::default()
    };
    let charts = [
        spc::individuals_chart(&observations, &baseline).expect("I-MR"),
        spc::xbar_r_chart(&subgroups, &with_spec).expect("X̄-R"),
        spc::xbar_s_chart(&subgroups, &ChartOptions::default()).expect("X̄-S"),
        spc::ewma_chart(&observations, &EwmaOptions::default(), &baseline).expect("EWMA"),
        spc::cusum_chart(&observations, &CusumOptions::default(), &baseline).expect("CUSUM"),
        spc::laney_p_chart(
            &counts,
            &ChartOptions {
                limits: Limits::Estimated { baseline: Some(5) },
                ..ChartOptions::default()
            },
        )
        .expect("p′"),
        spc::p_chart(&counts, &fixed).expect("p"),
        spc::u_chart(&counts, &ChartOptions::default()).expect("u"),
    ];
    let details = [
        ("attribute", "AttributeDetails"),
        ("individuals", "IndividualsDetails"),
        ("subgroups", "SubgroupDetails"),
        ("ewma", "EwmaDetails"),
        ("cusum", "CusumDetails"),
    ];
    let mut seen_details = std::collections::BTreeSet::new();
    let mut seen_limits = std::collections::BTreeSet::new();
    for chart in &charts {
        let value = serde_json::to_value(chart).expect("json");
        assert_eq!(fields(&value), keys("Chart"), "{}", chart.kind);
        assert!(enum_of("ChartKind").contains(&value["kind"]));
        for point in value["points"].as_array().expect("points") {
            assert_eq!(fields(point), keys("ChartPoint"));
        }
        for violation in value["violations"].as_array().expect("violations") {
            assert_eq!(fields(violation), keys("Violation"));
            assert!(enum_of("RuleId").contains(&violation["rule"]));
        }
        assert!(
            !value["violations"]
                .as_array()
                .expect("violations")
                .is_empty(),
            "{}: the last point is far out, so the test sees a violation",
            chart.kind
        );
        if !value["secondary"].is_null() {
            assert_eq!(fields(&value["secondary"]), keys("SecondaryChart"));
            for point in value["secondary"]["points"].as_array().expect("points") {
                assert_eq!(fields(point), keys("ChartPoint"));
            }
        }
        if !value["capability"].is_null() {
            assert_eq!(fields(&value["capability"]), keys("Capability"));
        }
        let source = value["limits"]["source"]
            .as_str()
            .expect("source")
            .to_owned();
        let limits_schema = if source == "fixed" {
            "FixedLimits"
        } else {
            "EstimatedLimits"
        };
        assert_eq!(fields(&value["limits"]), keys(limits_schema));
        seen_limits.insert(source);
        let (variant, body) = value["details"]
            .as_object()
            .and_then(|o| o.iter().next())
            .expect("details has one variant");
        let (_, schema) = details
            .iter()
            .find(|(name, _)| name == variant)
            .unwrap_or_else(|| panic!("details variant {variant} is documented"));
        assert_eq!(fields(body), keys(schema), "{variant}");
        if variant == "subgroups" {
            assert_eq!(fields(&body["constants"]), keys("SubgroupConstants"));
        }
        seen_details.insert(variant.clone());
    }
    assert_eq!(
        seen_details.len(),
        details.len(),
        "every variant is checked"
    );
    assert_eq!(
        seen_limits.len(),
        2,
        "estimated and fixed limits are checked"
    );

    let view = super::chart_view(
        &toml::from_str::<ChartDefinition>(
            "name = \"x\"\nof = \"tag:oven\"\nkind = \"xbar_s\"\ncenter = 1.0\nsigma = 0.5\n",
        )
        .expect("definition"),
    )
    .expect("view");
    assert_eq!(
        fields(&serde_json::to_value(view).expect("json")),
        keys("ChartView")
    );
    for path in [
        "/api/v1/charts",
        "/api/v1/charts/{name}",
        "/api/v1/charts/reject-rate",
        "/api/v1/charts/defects-per-part",
        "/api/v1/tags/{name}/chart",
    ] {
        assert!(
            spec["paths"][path]["get"].is_object(),
            "{path} is documented"
        );
    }
}
