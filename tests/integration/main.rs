//! Linesight's integration tests: one binary, one module per area.
//!
//! They run real components end to end: GStreamer, OpenCV, candle, Modbus over loopback TCP,
//! sled on disk, and axum on a real port. Data comes from the project's own simulator.

#[path = "../common/mod.rs"]
mod common;

mod actions;
mod anomaly;
mod b2mml;
mod backbone;
mod backtest;
mod calibration;
mod camera;
mod cli;
mod client_mode;
mod crash;
mod drift;
mod failsafe;
mod gate;
mod genicam;
mod golden;
mod interop;
mod labelling;
mod line;
mod mes;
mod models;
mod mqtt;
mod plc_program;
mod presence;
mod rootcause;
mod rootcause_line;
mod schedule;
mod sensors;
mod server_mode;
mod simulated_sensors;
mod spc;
mod station_process;
mod supervised;
mod templates;
mod training;
mod twin;
mod views;

use std::path::Path;

use serde_json::Value;

pub use common::{backbone_weights, repo, write_mvtec_parts, write_png, write_tile_dataset};
use linesight::config::StationConfig;
use linesight::simulate::SimulatedLine;
use linesight::station::{Station, StationError};

/// Tests that load the CPU (a running station, model training) take this one at a time: the
/// station tests hold real deadlines, and on a 2-core machine a training run beside them would
/// measure the machine, not the station.
pub static CPU_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// aravis's fake GigE Vision camera binds the GigE Vision control port on 127.0.0.1 (loopback
/// has no other address): one test at a time runs one.
static FAKE_GIGE_CAMERA: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// aravis's own fake GigE Vision camera (`arv-fake-gv-camera-0.8`, from aravis-tools) on
/// 127.0.0.1, held by this test until both are dropped.
pub async fn fake_gige_camera() -> (tokio::sync::MutexGuard<'static, ()>, KillOnDrop) {
    let lock = FAKE_GIGE_CAMERA.lock().await;
    let fake = std::path::Path::new("/usr/bin/arv-fake-gv-camera-0.8");
    assert!(
        fake.exists(),
        "{} is missing: run scripts/setup.sh (make test does), which installs aravis-tools",
        fake.display()
    );
    let camera = KillOnDrop(
        std::process::Command::new(fake)
            .args(["-i", "127.0.0.1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the fake GigE camera"),
    );
    (lock, camera)
}

/// A station on the simulated line `config` describes, and that line (its PLC stops when the
/// line is dropped).
pub async fn simulated_station(
    config: StationConfig,
) -> Result<(SimulatedLine, Station), StationError> {
    let line = SimulatedLine::start(&config)
        .await
        .expect("the simulated line starts");
    let station = Station::prepare(config, line.attachments()).await?;
    Ok((line, station))
}

/// The shipped simulated-line config with `edits` applied (`(old, new)` text replacements) and
/// its data in `data_dir`. Each `old` must occur, so a renamed key breaks the test loudly.
pub fn station_config(data_dir: &Path, edits: &[(&str, &str)]) -> StationConfig {
    let path = repo().join("config/simulated-line.toml");
    let mut text = std::fs::read_to_string(&path).expect("shipped config");
    let data_line = format!("data_dir = {:?}", data_dir.display().to_string());
    for (old, new) in [("data_dir = \"../var/sim-1\"", data_line.as_str())]
        .iter()
        .chain(edits)
    {
        assert!(text.contains(old), "config has no {old:?}");
        text = text.replace(old, new);
    }
    StationConfig::parse(&text, &path).expect("test config is valid")
}

/// The project's Python (the venv `make setup` makes), which runs the foreign peers.
pub fn python() -> std::path::PathBuf {
    let python = repo().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/setup.sh (make test does)",
        python.display()
    );
    python
}

/// Serves `station`'s HTTP API on a free loopback port; its base URL.
pub async fn serve_api(station: &Station) -> String {
    serve_api_task(station).await.0
}

/// [`serve_api`], with the server's task: abort it to let the store go before a restart.
pub async fn serve_api_task(
    station: &Station,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let server =
        tokio::spawn(axum::serve(listener, linesight::serve::router(station.api())).into_future());
    (base, server)
}

/// A client of a station's HTTP API holding one bearer token.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Client {
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let response = request.bearer_auth(&self.token).send().await.expect("HTTP");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.text().await.expect("body"))
    }
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let (status, _, body) = self
            .send(self.http.get(format!("{}{path}", self.base)))
            .await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, _, body) = self
            .send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, _, body) = self
            .send(self.http.put(format!("{}{path}", self.base)).json(&body))
            .await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

/// Kills a child process when the test ends, pass or fail.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Polls `condition` every 50 ms for up to 60 s; whether it came true.
pub async fn poll<F, Fut>(condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    poll_within(std::time::Duration::from_secs(60), condition).await
}

/// [`poll`] for up to `limit`.
pub async fn poll_within<F, Fut>(limit: std::time::Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Waits for `condition` (see [`poll`]); a station that stalls fails the test.
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(poll(condition).await, "timed out waiting for {what}");
}

/// `GET url` with a bearer token, as JSON.
pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> serde_json::Value {
    http.get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

/// What the station stores of one part's heat map, and what it judged.
pub struct StoredHeatMap {
    pub defective: bool,
    /// The sample's true class (`good` or a defect's).
    pub class: String,
    pub verdict: linesight::part::Verdict,
    /// The class the inspection kept.
    pub defect_class: Option<String>,
    /// The PNG's grey levels: 128 and above is at or past the threshold.
    pub levels: Vec<u8>,
    /// The defects the inspection outlined (what the record keeps).
    pub boxes: Vec<linesight::models::boxes::DefectBox>,
    /// The box around the sample's mask (maxima exclusive), when it has one with a defect.
    pub truth: Option<[u32; 4]>,
    /// The image's width and height.
    pub size: (u32, u32),
}

impl StoredHeatMap {
    /// Whether one of the inspection's boxes marks the true defect: it covers at least half
    /// of the mask's box, and is no larger than a quarter of the image (a box over everything
    /// marks nothing). Not a matter of overlap alone: a heat map's cells are coarse (32 pixels
    /// of a 256-pixel image for the anomaly model), so a box around a 10-pixel spot is a cell
    /// or two.
    pub fn boxes_mark_the_defect(&self) -> bool {
        self.box_over_the_defect().is_some()
    }

    /// The first (hottest) box that marks the true defect ([`Self::boxes_mark_the_defect`]).
    pub fn box_over_the_defect(&self) -> Option<&linesight::models::boxes::DefectBox> {
        use linesight::learn::eval::{box_area, box_intersection};
        let truth = self.truth?;
        let image = f64::from(self.size.0) * f64::from(self.size.1);
        self.boxes.iter().find(|b| {
            box_intersection(&b.bbox, &truth) >= 0.5 * box_area(&truth)
                && box_area(&b.bbox) <= 0.25 * image
        })
    }
}

/// The box around a mask's nonzero pixels (row-major, `width` wide), maxima exclusive; `None`
/// for an empty mask.
pub fn mask_bounds(mask: &[u8], width: u32) -> Option<[u32; 4]> {
    let mut bbox: Option<[u32; 4]> = None;
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m != 0) {
        let (x, y) = (i as u32 % width, i as u32 / width);
        let b = bbox.get_or_insert([x, y, x + 1, y + 1]);
        *b = [b[0].min(x), b[1].min(y), b[2].max(x + 1), b[3].max(y + 1)];
    }
    bbox
}

/// [`mask_bounds`] of a mask image; `None` for an empty or unreadable one.
pub fn mask_bbox(path: &Path) -> Option<[u32; 4]> {
    let mask = image::open(path).ok()?.to_luma8();
    mask_bounds(mask.as_raw(), mask.width())
}

impl StoredHeatMap {
    /// The share of the map's cells at or past the threshold.
    pub fn share_past_threshold(&self) -> f64 {
        self.levels.iter().filter(|&&l| l >= 128).count() as f64 / self.levels.len() as f64
    }
}

/// Runs `detector` as a station does on each readable image of `samples` (`width`×`height`):
/// a calibration of a perfect lens whose ROI is the whole frame (the images as the model
/// learnt them), the inspect stage at the card's threshold, and the heat map PNG the recorder
/// stores.
pub fn stored_heat_maps(
    detector: Box<dyn linesight::models::Detector>,
    samples: &[linesight::learn::dataset::Sample],
    size: (u32, u32),
) -> Vec<StoredHeatMap> {
    stored_inspections(detector, Default::default(), samples, size)
}

/// [`stored_heat_maps`], judged with `taxonomy`'s defect classes.
pub fn stored_inspections(
    detector: Box<dyn linesight::models::Detector>,
    taxonomy: linesight::inspect::taxonomy::Taxonomy,
    samples: &[linesight::learn::dataset::Sample],
    (width, height): (u32, u32),
) -> Vec<StoredHeatMap> {
    use linesight::calibrate::{Calibration, Undistorter};
    use linesight::inspect::Inspector;
    use linesight::inspect::registry::{ActiveModels, RunningModel};
    use linesight::part::{Frame, PartId, StationClock};

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("whole-frame.yaml");
    let (cx, cy) = (f64::from(width) / 2.0, f64::from(height) / 2.0);
    std::fs::write(
        &path,
        format!(
            "%YAML:1.0\n---\nimage_width: {width}\nimage_height: {height}\n\
             camera_matrix: !!opencv-matrix\n   rows: 3\n   cols: 3\n   dt: d\n   \
             data: [ {width}., 0., {cx}, 0., {width}., {cy}, 0., 0., 1. ]\n\
             distortion_coefficients: !!opencv-matrix\n   rows: 1\n   cols: 5\n   dt: d\n   \
             data: [ 0., 0., 0., 0., 0. ]\n\
             roi_x: 0\nroi_y: 0\nroi_width: {width}\nroi_height: {height}\n"
        ),
    )
    .expect("calibration");
    let calibration = Calibration::load(&path).expect("calibration");
    let threshold = detector.head().threshold;
    let inspector = Inspector {
        undistorter: Undistorter::new(&calibration).expect("remap tables"),
        models: std::sync::Arc::new(
            ActiveModels::new(RunningModel::new(detector, threshold)).with_taxonomy(taxonomy),
        ),
    };
    let clock = StationClock::start();
    let frames: Vec<Frame> = (samples.iter().enumerate())
        .filter_map(|(index, sample)| {
            Some(Frame {
                part_id: PartId(index as u64),
                captured_at: clock.now(),
                image: linesight::learn::dataset::load_gray(&sample.image).ok()?,
            })
        })
        .collect();
    // Parts that queued up are judged in one call of the model (one backbone pass for the
    // anomaly family): each exactly as it was alone, in order, whatever shares its batch.
    let batched = inspector.inspect_parts(
        &std::sync::Arc::from("station"),
        &[],
        frames.iter().map(|f| (f.clone(), Vec::new())).collect(),
        &clock,
    );
    assert_eq!(
        batched.len(),
        frames.len(),
        "one inspection per queued part"
    );
    // With a second camera, each part's two looks go in the same call, and come back joined
    // to their own part; a view without an image fails its own part alone.
    let side = [linesight::inspect::ViewCamera {
        name: std::sync::Arc::from("side"),
        undistorter: Undistorter::new(&calibration).expect("remap tables"),
    }];
    let lost = frames.len() / 2;
    let with_views = inspector.inspect_parts(
        &std::sync::Arc::from("top"),
        &side,
        (frames.iter().enumerate())
            .map(|(i, f)| {
                let view = if i == lost {
                    Err("side camera lost".to_string())
                } else {
                    Ok(f.image.clone())
                };
                (f.clone(), vec![view])
            })
            .collect(),
        &clock,
    );
    assert_eq!(with_views.len(), frames.len());
    for (i, (part, alone)) in with_views.iter().zip(&batched).enumerate() {
        let views = &part.views.as_ref().expect("views").views;
        let cameras: Vec<&str> = views.iter().map(|v| &*v.camera).collect();
        assert_eq!(cameras, ["top", "side"], "part {i}");
        assert_eq!(part.part_id, alone.part_id);
        assert!(views.iter().all(|v| v.inspection.part_id == alone.part_id));
        if i == lost {
            // Rejected either way: on the view's error, or on a defect its top view found.
            assert_ne!(part.verdict, linesight::part::Verdict::Pass);
            assert_eq!(views[1].inspection.verdict, linesight::part::Verdict::Error);
            assert_eq!(
                views[1].inspection.error.as_deref(),
                Some("side camera lost")
            );
            continue;
        }
        let (top, side) = (
            views[0].inspection.score.expect("top score"),
            views[1].inspection.score.expect("side score"),
        );
        assert!(
            (top - side).abs() <= 1e-4 * top.abs().max(1.0),
            "part {i}: the same image scored {top} and {side} in one call"
        );
        assert_eq!(part.verdict, alone.verdict, "part {i}");
    }
    // The inspect worker itself, with every part already queued when it starts: it takes
    // them four at a time (`[model] batch = 4`), and each verdict still reaches the tracker
    // under its own part.
    {
        let (queue, frames_in) = std::sync::mpsc::sync_channel(frames.len());
        for frame in &frames {
            queue.send(frame.clone()).expect("queue");
        }
        drop(queue);
        let (verdicts, mut verdicts_out) = tokio::sync::mpsc::channel(frames.len().max(1));
        let (shadow_jobs, _shadow_out) = std::sync::mpsc::sync_channel(1);
        linesight::inspect::run_inspector(linesight::inspect::InspectContext {
            inspector: Inspector {
                undistorter: Undistorter::new(&calibration).expect("remap tables"),
                models: inspector.models.clone(),
            },
            camera: std::sync::Arc::from("station"),
            views: Vec::new(),
            stop_views: tokio_util::sync::CancellationToken::new(),
            frames: frames_in,
            inspections: verdicts,
            clock: clock.clone(),
            metrics: linesight::metrics::Metrics::new(),
            shadow_jobs,
            workers: std::num::NonZeroUsize::MIN,
            batch: std::num::NonZeroUsize::new(4).expect("four"),
        });
        let mut by_worker = std::collections::HashMap::new();
        while let Ok(inspection) = verdicts_out.try_recv() {
            by_worker.insert(inspection.part_id, inspection);
        }
        assert_eq!(
            by_worker.len(),
            frames.len(),
            "a verdict for every queued part"
        );
        for together in &batched {
            let worker = &by_worker[&together.part_id];
            assert_eq!(
                (worker.verdict, &worker.defect_class),
                (together.verdict, &together.defect_class),
                "part {:?} through the worker",
                together.part_id
            );
            let (a, b) = (
                together.score.expect("a score"),
                worker.score.expect("a score"),
            );
            assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
    }
    let mut stored = Vec::new();
    for (frame, together) in frames.into_iter().zip(batched) {
        let index = frame.part_id.0 as usize;
        let sample = &samples[index];
        let inspection = inspector.inspect(frame, &clock);
        assert_eq!(together.part_id, inspection.part_id);
        assert_eq!(
            (together.verdict, &together.defect_class, &together.error),
            (
                inspection.verdict,
                &inspection.defect_class,
                &inspection.error
            ),
            "part {index} judged in a batch and alone"
        );
        let (alone, batch) = (
            inspection.score.expect("a score"),
            together.score.expect("a score"),
        );
        assert!(
            (alone - batch).abs() <= 1e-4 * alone.abs().max(1.0),
            "part {index}: score {alone} alone, {batch} in a batch"
        );
        let heat_map = inspection.heat_map.expect("a heat map");
        let png = linesight::record::heat_map_png(&heat_map).expect("png");
        let levels = image::load_from_memory(&png)
            .expect("a PNG")
            .to_luma8()
            .into_raw();
        stored.push(StoredHeatMap {
            defective: sample.defective(),
            class: sample.class.clone(),
            verdict: inspection.verdict,
            defect_class: inspection.defect_class,
            levels,
            boxes: inspection.defect_boxes,
            truth: sample.mask.as_deref().and_then(mask_bbox),
            size: (width, height),
        });
    }
    stored
}

/// Stored heat maps that show the threshold: every good part the model passed stays below it
/// almost everywhere (a model judges the whole image, so a lone cell may cross), and every
/// defective part it rejected has cells past it, but not most of them (a saturated map would
/// show a defect everywhere).
pub fn assert_heat_maps_show_the_threshold(stored: &[StoredHeatMap]) {
    use linesight::part::Verdict;
    let summary = |part: &StoredHeatMap| {
        format!(
            "defective {}, {:?}, {:.1} % of cells past the threshold, peak {}",
            part.defective,
            part.verdict,
            100.0 * part.share_past_threshold(),
            part.levels.iter().max().copied().unwrap_or(0)
        )
    };
    let calm = stored
        .iter()
        .filter(|p| !p.defective && p.verdict == Verdict::Pass);
    let flagged = stored
        .iter()
        .filter(|p| p.defective && p.verdict == Verdict::Fail);
    assert!(calm.clone().count() >= 3 && flagged.clone().count() >= 3);
    for part in calm.clone() {
        assert!(part.share_past_threshold() < 0.02, "{}", summary(part));
    }
    for part in flagged.clone() {
        let share = part.share_past_threshold();
        assert!(share > 0.0 && share < 0.5, "{}", summary(part));
    }
    // The record outlines a rejected part's defect, where it is: most rejected parts with a
    // mask have a box over it. A passed part with no defect class has none (the inspect stage
    // draws them only where there is a defect to show).
    for part in calm {
        if part.defect_class.is_none() {
            assert!(part.boxes.is_empty(), "{}: {:?}", summary(part), part.boxes);
        }
    }
    let masked: Vec<&StoredHeatMap> = flagged.filter(|p| p.truth.is_some()).collect();
    assert!(
        masked.len() >= 3,
        "{} rejected parts with a mask",
        masked.len()
    );
    let boxed = masked.iter().filter(|p| p.boxes_mark_the_defect()).count();
    let seen: Vec<String> = masked
        .iter()
        .map(|p| format!("truth {:?} boxes {:?}", p.truth, p.boxes))
        .collect();
    assert!(
        4 * boxed >= 3 * masked.len(),
        "{boxed} of {} rejected parts with a mask have a box over it: {seen:#?}",
        masked.len()
    );
}
