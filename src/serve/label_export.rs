//! Labelled parts as a training set: a zip in the YOLO or the MVTec AD folder layout, with
//! the images, streamed while it is written (a station's labelled images can run to
//! gigabytes, and the answer must start before the request's time limit).
//!
//! - `yolo`: `images/<sha256>.png`, `labels/<sha256>.txt` (one `class cx cy w h` line per
//!   region, normalised to the image; empty for a good part) and `data.yaml` naming the
//!   classes. Every region leaves as its bounding box: the detection format every YOLO reads.
//! - `mvtec`: `train/good/<sha256>.png` for good parts, `test/<class>/<sha256>.png` for
//!   defective ones, `ground_truth/<class>/<sha256>_mask.png` (255 = defect) painted from the
//!   regions, and where they name other types than the part's class, `<sha256>_boxes.txt`
//!   beside it (each region's box and type): the layout `linesight train` and `linesight eval
//!   --layout mvtec` read.
//!
//! `linesight-export.json` at the end lists what went in and the labelled parts left out
//! because their image is no longer kept.

use std::io::Write;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::mpsc;
use zip::write::SimpleFileOptions;

use super::labelling::LabelledParts;
use super::{ApiError, ApiState};
use crate::learn::dataset::{class_folder as folder_name, region_boxes};
use crate::part::Verdict;
use crate::record::coco::{LabelledImage, LabelledSource};
use crate::record::regions_mask;

/// The layouts an export can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    Yolo,
    Mvtec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExportQuery {
    format: ExportFormat,
}

/// `GET /api/v1/labels/export?format=yolo|mvtec`.
pub(super) async fn export(
    State(api): State<ApiState>,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let reader = api.clone();
    let listed = tokio::task::spawn_blocking(move || LabelledParts::list(&reader))
        .await
        .map_err(|e| ApiError::Unavailable(format!("the export failed: {e}")))??;
    let body = streamed_body(move |sink| write_zip(&api, sink, query.format, &listed));
    let name = match query.format {
        ExportFormat::Yolo => "linesight-labels-yolo.zip",
        ExportFormat::Mvtec => "linesight-labels-mvtec.zip",
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// A response body that `write` fills on a blocking thread as it goes, sent in 256 KiB chunks.
/// A write that fails (or a client that hangs up) breaks the download: the client never gets
/// a short file that looks whole.
pub(super) fn streamed_body(
    write: impl FnOnce(&mut ChannelWriter) -> std::io::Result<()> + Send + 'static,
) -> Body {
    let (sender, mut receiver) = mpsc::channel::<std::io::Result<Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut sink = ChannelWriter::new(sender.clone());
        // A panic ends the body with an error too: dropping the sender alone would end it
        // cleanly, and the client would keep a short file that looks whole.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write(&mut sink).and_then(|()| sink.flush())
        }))
        .unwrap_or_else(|_| Err(std::io::Error::other("the export failed")));
        if let Err(error) = written {
            tracing::warn!(%error, "export stopped");
            let _ = sender.blocking_send(Err(error));
        }
    });
    Body::from_stream(async_stream::stream! {
        while let Some(chunk) = receiver.recv().await {
            yield chunk;
        }
    })
}

fn write_zip(
    api: &ApiState,
    sink: &mut ChannelWriter,
    format: ExportFormat,
    listed: &LabelledParts,
) -> std::io::Result<()> {
    let mut zip = zip::ZipWriter::new_stream(sink);
    // PNGs are compressed already.
    let stored = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    let classes = listed.class_names();
    let mut exported = Vec::new();
    let mut missing = listed.without_image.clone();
    let mut gone = Vec::new();
    listed.reader(api, &mut gone).each(&mut |part| {
        let Some(path) = api.store.images().path(&part.image) else {
            missing.push(part.part_id); // evicted since it was listed
            return Ok(());
        };
        let png = std::fs::read(&path)?;
        let digest = &part.image;
        let defective = part.verdict == Verdict::Fail;
        let class = part.defect_class.as_deref().unwrap_or("defect");
        match format {
            ExportFormat::Yolo => {
                zip.start_file(format!("images/{digest}.png"), stored)?;
                zip.write_all(&png)?;
                zip.start_file(format!("labels/{digest}.txt"), stored)?;
                zip.write_all(yolo_lines(part, &classes).as_bytes())?;
            }
            ExportFormat::Mvtec => {
                let folder = if defective {
                    format!("test/{}", folder_name(class))
                } else {
                    "train/good".into()
                };
                zip.start_file(format!("{folder}/{digest}.png"), stored)?;
                zip.write_all(&png)?;
                if defective && !part.regions.is_empty() {
                    let mask = regions_mask(&part.regions, part.width, part.height);
                    let png = crate::record::gray_png(&mask).map_err(std::io::Error::other)?;
                    zip.start_file(
                        format!("ground_truth/{}/{digest}_mask.png", folder_name(class)),
                        stored,
                    )?;
                    zip.write_all(&png)?;
                    // Regions of other types than the part's, each with its box and type.
                    let boxes = region_boxes(&part.regions, class, part.width, part.height);
                    if let Some(boxes) = boxes {
                        zip.start_file(
                            format!("ground_truth/{}/{digest}_boxes.txt", folder_name(class)),
                            stored,
                        )?;
                        zip.write_all(boxes.as_bytes())?;
                    }
                }
            }
        }
        exported.push(part.part_id);
        Ok(())
    })?;
    missing.extend(gone);
    if format == ExportFormat::Yolo {
        zip.start_file("data.yaml", stored)?;
        let mut yaml = String::from("# Written by Linesight: every region as its bounding box.\n");
        yaml.push_str("path: .\ntrain: images\nval: images\nnames:\n");
        for (index, class) in classes.iter().enumerate() {
            // JSON strings are valid YAML scalars, whatever the class name holds.
            yaml.push_str(&format!("  {index}: {}\n", serde_json::Value::from(*class)));
        }
        zip.write_all(yaml.as_bytes())?;
    }
    zip.start_file("linesight-export.json", stored)?;
    let manifest = serde_json::json!({
        "station": api.store.station(),
        "format": match format { ExportFormat::Yolo => "yolo", ExportFormat::Mvtec => "mvtec" },
        "parts": exported,
        "parts_without_image": missing,
        "classes": classes,
    });
    zip.write_all(manifest.to_string().as_bytes())?;
    zip.finish()?;
    Ok(())
}

/// A part's YOLO label file: `class cx cy w h` per region, normalised to the image.
fn yolo_lines(part: &LabelledImage, classes: &[&str]) -> String {
    let (w, h) = (part.width.max(1) as f32, part.height.max(1) as f32);
    let mut lines = String::new();
    for region in &part.regions {
        let (Some([x, y, bw, bh]), Ok(index)) = (
            region.shape.bounding_box(),
            classes.binary_search(&region.class.as_str()),
        ) else {
            continue; // an empty mask has no box
        };
        lines.push_str(&format!(
            "{index} {:.6} {:.6} {:.6} {:.6}\n",
            (x + bw / 2.0) / w,
            (y + bh / 2.0) / h,
            bw / w,
            bh / h
        ));
    }
    lines
}

/// Bytes written on a blocking thread, sent to the response body in 256 KiB chunks; a client
/// that hangs up ends the write with an error.
pub(super) struct ChannelWriter {
    sender: mpsc::Sender<std::io::Result<Bytes>>,
    buffer: Vec<u8>,
}

const CHUNK_BYTES: usize = 256 * 1024;

impl ChannelWriter {
    fn new(sender: mpsc::Sender<std::io::Result<Bytes>>) -> ChannelWriter {
        ChannelWriter {
            sender,
            buffer: Vec::with_capacity(CHUNK_BYTES),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK_BYTES),
        ));
        self.sender.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client stopped reading")
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Region, Shape};

    #[test]
    fn yolo_lines_are_normalised_boxes_of_every_region() {
        let part = LabelledImage {
            part_id: 1,
            image: "a".repeat(64),
            width: 100,
            height: 50,
            verdict: Verdict::Fail,
            defect_class: Some("dent".into()),
            regions: vec![
                Region {
                    class: "scratch".into(),
                    shape: Shape::Box {
                        x: 10.0,
                        y: 5.0,
                        width: 20.0,
                        height: 10.0,
                    },
                },
                Region {
                    class: "dent".into(),
                    shape: Shape::Polygon {
                        points: vec![[0.0, 0.0], [50.0, 0.0], [50.0, 50.0]],
                    },
                },
            ],
        };
        assert_eq!(
            yolo_lines(&part, &["dent", "scratch"]),
            "1 0.200000 0.200000 0.200000 0.200000\n0 0.250000 0.500000 0.500000 1.000000\n"
        );
    }
}
