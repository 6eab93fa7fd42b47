//! Schedule impact on a running station: the queue's projection over HTTP, and the impact
//! event a change of the queue stores.

use linesight::serve::{Role, Tokens, router};
use linesight::station::RunOptions;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{CPU_HEAVY, eventually, simulated_station, station_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_projects_the_queue_and_stores_what_changed_it() {
    let _one = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = station_config(dir.path(), &[]);
    let tokens = Tokens::open(dir.path(), None).expect("tokens");
    let mes = tokens
        .create("mes-1", Role::MesClient, "test")
        .expect("token")
        .token;
    let (_line, station) = simulated_station(config).await.expect("station starts");
    let store = station.store();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(axum::serve(listener, router(station.api())).into_future());
    let http = reqwest::Client::new();
    let send = |request: reqwest::RequestBuilder| {
        let token = mes.clone();
        async move {
            let response = request.bearer_auth(token).send().await.expect("HTTP");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        }
    };
    let now = chrono::Utc::now();
    // A long order running, a short one behind it.
    for (id, quantity, due_h) in [("WO-LONG", 100_000, 1), ("WO-NEXT", 50, 30)] {
        let order = json!({"id": id, "product": "disc", "quantity": quantity,
            "due": (now + chrono::TimeDelta::hours(due_h)).to_rfc3339(), "ideal_cycle_time_s": 0.5});
        let (status, body) =
            send(http.post(format!("{base}/api/v1/work-orders")).json(&order)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = send(http.post(format!("{base}/api/v1/work-orders/WO-LONG/start"))).await;
    assert_eq!(status, 200, "{body}");

    let stop = CancellationToken::new();
    let line = tokio::spawn(station.run(RunOptions { max_parts: None }, stop.clone()));
    eventually("good parts counted for the running order", || async {
        let (_, schedule) = send(http.get(format!("{base}/api/v1/schedule"))).await;
        schedule["orders"][0]["good_so_far"].as_u64().unwrap_or(0) > 0
    })
    .await;
    let (status, schedule) = send(http.get(format!("{base}/api/v1/schedule"))).await;
    assert_eq!(status, 200, "{schedule}");
    let orders = schedule["orders"].as_array().expect("orders");
    assert_eq!(orders.len(), 2, "{schedule}");
    assert_eq!(orders[0]["id"], "WO-LONG");
    assert_eq!(orders[0]["running"], true);
    assert_eq!(orders[1]["id"], "WO-NEXT");
    // List scheduling: the next order starts when the running one ends.
    assert_eq!(orders[1]["start"], orders[0]["eta"], "{schedule}");
    // 100,000 parts at 2 a second at best cannot be done within the hour.
    assert_eq!(orders[0]["status"], "late", "{schedule}");
    assert!(orders[0]["lateness_s"].as_f64().expect("lateness") > 0.0);
    assert!(["recent", "plan"].contains(&schedule["line"]["source"].as_str().unwrap_or("")));
    let next_lateness = orders[1]["lateness_s"].as_f64().expect("lateness");

    // The long order is done: the one behind it moves up by hours, and the runner (every 30 s)
    // stores why.
    let (status, body) =
        send(http.post(format!("{base}/api/v1/work-orders/WO-LONG/complete"))).await;
    assert_eq!(status, 200, "{body}");
    let impacts = format!("{base}/api/v1/schedule/impacts");
    eventually("an impact event for WO-NEXT", || async {
        let (_, list) = send(http.get(&impacts)).await;
        list["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["work_order"] == "WO-NEXT"))
    })
    .await;
    let (status, list) = send(http.get(&impacts)).await;
    assert_eq!(status, 200, "{list}");
    let event = list["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["work_order"] == "WO-NEXT"))
        .expect("event");
    assert_eq!(event["cause"], "queue_changed", "{event}");
    assert!(event["lateness_after_s"].as_f64().expect("after") < next_lateness - 3600.0);
    let message = event["message"].as_str().expect("message");
    assert!(
        message.starts_with("WO-NEXT now ")
            && message.ends_with("because the orders ahead of it changed"),
        "{message}"
    );
    // Bad ranges and limits are refused; no credential, no answer.
    let (status, _) = send(http.get(format!("{impacts}?limit=0"))).await;
    assert_eq!(status, 400);
    let (status, _) = send(http.get(format!(
        "{impacts}?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"
    )))
    .await;
    assert_eq!(status, 400);
    let unauthorised = http.get(&impacts).send().await.expect("HTTP").status();
    assert_eq!(unauthorised.as_u16(), 401);
    assert!(store.inspection_count() > 0);
    stop.cancel();
    line.await
        .expect("line task")
        .expect("station stops cleanly");
}
