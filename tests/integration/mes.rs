//! The MES side of a running station over HTTP: the sequence pull in its three formats,
//! acknowledgements, filters, labels as superseding results, work orders, the live stream,
//! roles and the audit log.

use std::collections::BTreeSet;
use std::time::Duration;

use linesight::serve::{Role, Tokens};
use linesight::station::RunOptions;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{CPU_HEAVY, Client, eventually, serve_api, simulated_station, station_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mes_pulls_every_record_once_in_order_in_json_csv_and_b2mml() {
    let _one = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = station_config(
        dir.path(),
        &[("parts_per_min = 120", "parts_per_min = 300")],
    );
    let tokens = Tokens::open(dir.path(), None).expect("tokens");
    let token = |name: &str, role| tokens.create(name, role, "test").expect("token").token;
    let (mes_token, engineer_token, admin_token, operator_token) = (
        token("mes-1", Role::MesClient),
        token("eng-1", Role::Engineer),
        token("admin-1", Role::Admin),
        token("op-1", Role::Operator),
    );
    // A token made on the box (`linesight token create`) is audited by the station itself.
    tokens
        .create("line-tablet", Role::Operator, "cli")
        .expect("cli token");
    let (_line, station) = simulated_station(config).await.expect("station starts");
    let store = station.store();
    let base = serve_api(&station).await;
    let stop = CancellationToken::new();
    let line = tokio::spawn(station.run(RunOptions { max_parts: None }, stop.clone()));
    let http = reqwest::Client::new();
    let client = |token: &str| Client {
        http: http.clone(),
        base: base.clone(),
        token: token.to_owned(),
    };
    let (mes, engineer, admin, operator) = (
        client(&mes_token),
        client(&engineer_token),
        client(&admin_token),
        client(&operator_token),
    );

    // Work orders: the MES releases and starts one; parts captured from then on carry it.
    let order = json!({"id": "WO-7", "product": "bracket <A&B>", "quantity": 500,
        "due": "2026-12-02T06:00:00Z", "ideal_cycle_time_s": 0.2});
    let (status, _) = operator.post("/api/v1/work-orders", order.clone()).await;
    assert_eq!(status, 403, "operators do not release work orders");
    let (status, body) = mes.post("/api/v1/work-orders", order.clone()).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = mes
        .post(
            "/api/v1/work-orders",
            json!({"id": "bad id!", "product": "x",
        "quantity": 0, "due": "2026-12-02T06:00:00Z", "ideal_cycle_time_s": -1}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // Times RFC 3339 cannot write are refused, not journaled for every pull to carry.
    for due in ["+10000-01-01T00:00:00Z", "1969-12-31T23:59:59Z"] {
        let (status, body) = mes
            .post(
                "/api/v1/work-orders",
                json!({"id": "WO-far", "product": "x", "quantity": 1, "due": due,
                    "ideal_cycle_time_s": 1.0}),
            )
            .await;
        assert_eq!(status, 400, "{due}: {body}");
    }
    let (status, body) = mes
        .get("/api/v1/kpis?from=9999-12-31T00:00:00Z&to=9999-12-31T23:59:30Z")
        .await;
    assert_eq!(status, 400, "a range that widens past 9999: {body}");
    // A body over the limit is 413 whether its length says so up front or it comes chunked
    // (read until it passes the limit), and nothing of it is kept.
    let huge_order = json!({"id": "WO-huge", "product": "x".repeat(20_000), "quantity": 1,
        "due": "2026-12-02T06:00:00Z", "ideal_cycle_time_s": 1.0});
    let huge = huge_order.to_string();
    let (status, _) = mes.post("/api/v1/work-orders", huge_order).await;
    assert_eq!(status, 413, "with a Content-Length");
    let chunked = raw_http(
        &base,
        &format!(
            "POST /api/v1/work-orders HTTP/1.1\r\nHost: station\r\nAuthorization: Bearer \
             {mes_token}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
             Connection: close\r\n\r\n{:x}\r\n{huge}\r\n0\r\n\r\n",
            huge.len()
        ),
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "chunked: {chunked}");
    let (_, orders) = mes.get("/api/v1/work-orders").await;
    assert!(!orders.to_string().contains("WO-huge"), "{orders}");
    let (status, body) = mes.post("/api/v1/work-orders/WO-7/start", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = mes.post("/api/v1/work-orders/WO-7/start", json!({})).await;
    assert_eq!(status, 409, "a running order cannot start again");

    eventually("40 inspection records", || async {
        store.inspection_count() >= 40
    })
    .await;

    // An engineer corrects a part: a new label record supersedes its inspection.
    let part = store.inspection_records(None, 1).expect("read")[0].part_id;
    let (status, label) = engineer
        .post(
            &format!("/api/v1/inspections/{part}/labels"),
            json!({"verdict": "fail", "defect_class": "scratch", "note": "seen by eye"}),
        )
        .await;
    assert_eq!(status, 201, "{label}");
    let inspection_seq = store.inspection(part).expect("read").expect("kept").seq;
    assert_eq!(label["supersedes"], inspection_seq);
    assert_eq!(label["kind"], "label");
    let (status, _) = mes
        .post(
            &format!("/api/v1/inspections/{part}/labels"),
            json!({"verdict": "fail"}),
        )
        .await;
    assert_eq!(status, 403, "the MES does not label");
    let (status, _) = engineer
        .post(
            &format!("/api/v1/inspections/{part}/labels"),
            json!({"verdict": "pass", "defect_class": "x"}),
        )
        .await;
    assert_eq!(status, 400, "a passed part has no defect class");

    // Pull in small pages while the line runs: every sequence number exactly once, in order.
    let (status, first) = mes.get("/api/v1/records?from=1&limit=7").await;
    assert_eq!(status, 200, "{first}");
    let instance = first["instance_id"].as_str().expect("instance").to_owned();
    let mut seqs = Vec::new();
    let mut from = 1;
    let pulling = tokio::time::Instant::now();
    loop {
        assert!(
            pulling.elapsed() < Duration::from_secs(120),
            "the pull did not reach 60 records"
        );
        let (status, page) = mes
            .get(&format!("/api/v1/records?from={from}&limit=7"))
            .await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["instance_id"], instance);
        for item in page["items"].as_array().expect("items") {
            seqs.push(item["seq"].as_u64().expect("seq"));
        }
        from = page["next_seq"].as_u64().expect("next");
        if !page["more"].as_bool().expect("more") && seqs.len() >= 60 {
            break;
        }
        if !page["more"].as_bool().expect("more") {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap or repeat in the pull"
    );

    // Filters: failed inspections of the work order only.
    let (status, page) = mes
        .get("/api/v1/records?from=1&limit=5000&kind=inspection&verdict=fail&work_order=WO-7")
        .await;
    assert_eq!(status, 200);
    let failed = page["items"].as_array().expect("items");
    assert!(!failed.is_empty(), "a 30 % defect rate gives failed parts");
    for item in failed {
        assert_eq!(
            (item["kind"].as_str(), item["verdict"].as_str()),
            (Some("inspection"), Some("fail"))
        );
        assert_eq!(item["work_order"], "WO-7");
        assert_eq!(item["product"], "bracket <A&B>");
    }
    let (status, page) = mes
        .get("/api/v1/records?from=1&kind=label&defect_class=scratch")
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().expect("items").len(), 1);
    for bad in [
        "from=1&kind=nope",
        "from=1&limit=0",
        "from=1&after=3",
        "from=1&verdict=maybe",
        "from=1&since=yesterday",
        "from=x",
    ] {
        let (status, body) = mes.get(&format!("/api/v1/records?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string());
    }
    // A cursor before the oldest record kept is 410 with where the records start.
    let (status, body) = mes.get("/api/v1/records?from=0").await;
    assert_eq!(
        (status, body["first_seq"].as_u64()),
        (410, Some(1)),
        "{body}"
    );

    // A cursor past the next record is another history's: 409, not an empty page to wait on.
    let (status, page) = mes.get("/api/v1/records?from=1&limit=1").await;
    assert_eq!(status, 200, "{page}");
    let beyond = page["last_seq"].as_u64().expect("last_seq") + 1_000_000;
    let (status, body) = mes.get(&format!("/api/v1/records?from={beyond}")).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = mes.get(&format!("/api/v1/records?after={beyond}")).await;
    assert_eq!(status, 409, "{body}");

    // Acknowledged: a pull without a cursor goes on after the last acknowledgement.
    let (status, body) = mes
        .post(
            "/api/v1/records/ack",
            json!({"seq": 10, "instance_id": instance}),
        )
        .await;
    assert_eq!(
        (status, body["acknowledged"].as_u64()),
        (200, Some(10)),
        "{body}"
    );
    let (status, _) = mes
        .post(
            "/api/v1/records/ack",
            json!({"seq": 10, "instance_id": "0000"}),
        )
        .await;
    assert_eq!(
        status, 409,
        "an acknowledgement for another history is refused"
    );
    let (status, _) = mes
        .post("/api/v1/records/ack", json!({"seq": u64::MAX}))
        .await;
    assert_eq!(status, 409, "past the newest record");
    let (status, page) = mes.get("/api/v1/records?limit=3").await;
    assert_eq!(status, 200);
    assert_eq!(page["items"][0]["seq"], 11);
    // An acknowledgement is the client's cursor, not a record: were it audited in the journal,
    // a client acknowledging each page would pull its own acknowledgement next, and so on.
    let (status, audit) = mes
        .get("/api/v1/records?from=1&limit=5000&kind=audit")
        .await;
    assert_eq!(status, 200, "{audit}");
    let acks: Vec<&Value> = (audit["items"].as_array().expect("items").iter())
        .filter(|e| e["action"] == "records.ack")
        .collect();
    assert!(acks.is_empty(), "acknowledgements journaled: {acks:?}");

    // CSV and B2MML by content negotiation, with the paging headers.
    let (status, headers, csv) = mes
        .send(
            http.get(format!("{base}/api/v1/records?from=1&limit=20"))
                .header("accept", "text/csv"),
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/csv")
    );
    assert_eq!(headers["x-next-seq"], "21");
    assert_eq!(headers["x-instance-id"].to_str().expect("ascii"), instance);
    let mut rows = csv::Reader::from_reader(csv.as_bytes());
    let header = rows.headers().expect("header").clone();
    assert_eq!(header.get(0), Some("seq"));
    let column = |name: &str| header.iter().position(|h| h == name).expect(name);
    let rows: Vec<csv::StringRecord> = rows
        .records()
        .map(|row| row.expect("every row as wide as the header"))
        .collect();
    assert_eq!(rows.len(), 20);
    // A rejected part's defect size, in millimetres on the part (the simulated camera's
    // calibration has a scale); a passed part has none.
    for row in &rows {
        let width_mm = &row[column("defect_width_mm")];
        match (&row[column("kind")], &row[column("verdict")]) {
            ("inspection", "fail") => {
                assert!(width_mm.parse::<f32>().is_ok_and(|mm| mm > 0.0), "{row:?}")
            }
            ("inspection", "pass") => assert!(width_mm.is_empty(), "{row:?}"),
            _ => {}
        }
    }
    let (status, _, _) = mes
        .send(
            http.get(format!("{base}/api/v1/records"))
                .header("accept", "image/png"),
        )
        .await;
    assert_eq!(status, 406);
    let (status, headers, xml) = mes
        .send(
            http.get(format!("{base}/api/v1/records?from=1&limit=5000"))
                .header("accept", "application/xml"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/xml");
    assert!(
        xml.contains("<MaterialInformation"),
        "{}",
        &xml[..xml.len().min(400)]
    );
    assert!(
        xml.contains(&format!(
            "seq-{}-supersedes-seq-{inspection_seq}",
            label["seq"]
        )),
        "the label is a superseding test result"
    );
    crate::b2mml::assert_valid_b2mml(&xml);

    // The live stream: verdicts as Server-Sent Events with the sequence number as id; a
    // reconnection with Last-Event-ID goes on without loss or repeat.
    let first_ids = sse_ids(&http, &base, "", &operator_token, None, 5).await;
    let resumed = sse_ids(&http, &base, "", &operator_token, Some(first_ids[4]), 5).await;
    // A stream of labels only, from the start: the one label written above comes first.
    let labels_only = sse_ids(
        &http,
        &base,
        "?from=1&kinds=label",
        &operator_token,
        None,
        1,
    )
    .await;
    assert_eq!(labels_only, [label["seq"].as_u64().expect("label seq")]);
    let (status, body) = operator.get("/api/v1/events?kinds=audit").await;
    assert_eq!(status, 400, "audit entries are not streamed: {body}");
    // A stream from past the next record would wait for numbers this store gives to others.
    let beyond = store.last_seq() + 1_000_000;
    let (status, body) = operator.get(&format!("/api/v1/events?from={beyond}")).await;
    assert_eq!(status, 409, "{body}");
    let mut all = first_ids.clone();
    all.extend(&resumed);
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "events out of order or repeated: {all:?}"
    );
    // Exactly the next event after the one named: nothing skipped, nothing repeated.
    let (status, next) = mes
        .get(&format!(
            "/api/v1/records?after={}&kind=inspection,alarm,label&limit=1",
            first_ids[4]
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        next["items"][0]["seq"].as_u64(),
        Some(resumed[0]),
        "resumed at the wrong event"
    );

    // Tokens and the audit log are the admin's; a revoked token stops at once.
    let (status, _) = engineer
        .post("/api/v1/tokens", json!({"name": "x", "role": "admin"}))
        .await;
    assert_eq!(status, 403);
    let (status, made) = admin
        .post(
            "/api/v1/tokens",
            json!({"name": "mes-2", "role": "mes-client"}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let new = client(made["token"].as_str().expect("token"));
    assert_eq!(new.get("/api/v1/records?limit=1").await.0, 200);
    let (status, _, _) = admin
        .send(http.delete(format!(
            "{base}/api/v1/tokens/{}",
            made["id"].as_str().expect("id")
        )))
        .await;
    assert_eq!(status, 200);
    assert_eq!(new.get("/api/v1/records?limit=1").await.0, 401);
    let audited = |audit: &Value| {
        audit["items"].as_array().is_some_and(|items| {
            items
                .iter()
                .any(|e| e["actor"] == "cli" && e["action"] == "token.create")
        })
    };
    eventually("the CLI's token in the audit log", || async {
        audited(&admin.get("/api/v1/audit?limit=500").await.1)
    })
    .await;
    let (status, audit) = admin.get("/api/v1/audit?limit=500").await;
    assert_eq!(status, 200);
    let actions: BTreeSet<(String, String)> = audit["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or("").to_owned(),
                e["action"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for expected in [
        ("mes-1", "work_order.release"),
        ("mes-1", "work_order.start"),
        ("eng-1", "label.create"),
        ("admin-1", "token.create"),
        ("admin-1", "token.revoke"),
    ] {
        assert!(
            actions.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} not in {actions:?}"
        );
    }
    let (status, _) = mes.get("/api/v1/audit").await;
    assert_eq!(status, 403);

    stop.cancel();
    line.await.expect("joins").expect("line stops cleanly");
    let report = store.verify().expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

/// Sends `request` as written to the server of `base` (`http://host:port`) and reads the answer
/// until the server closes: what reqwest will not send, a chunked body.
async fn raw_http(base: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    // The server may answer and close before it has read the whole request: what it said
    // is read either way.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The ids of the first `n` events of the live stream (`query` e.g. `?kinds=label`).
async fn sse_ids(
    http: &reqwest::Client,
    base: &str,
    query: &str,
    token: &str,
    last: Option<u64>,
    n: usize,
) -> Vec<u64> {
    let mut request = http
        .get(format!("{base}/api/v1/events{query}"))
        .bearer_auth(token);
    if let Some(last) = last {
        request = request.header("last-event-id", last.to_string());
    }
    let mut response = request.send().await.expect("GET");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let mut ids = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while ids.len() < n {
            let chunk = response.chunk().await.expect("chunk").expect("stream open");
            text.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if let Some(id) = event.lines().find_map(|l| l.strip_prefix("id:")) {
                    ids.push(id.trim().parse().expect("numeric id"));
                }
            }
        }
    })
    .await
    .expect("events arrive");
    ids.truncate(n);
    ids
}
