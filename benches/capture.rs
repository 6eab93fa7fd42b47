//! Issue 18: the per-frame cost from the camera's appsink to the model's input tensor, release
//! build (`make bench`, or `cargo bench --bench capture`): the GRAY8 sample copied out of its
//! GStreamer buffer as capture does, its ROI undistorted with the calibration's remap tables
//! and area-averaged to the model's 224×224, and turned into the input tensor. Two camera
//! resolutions, each with a lens that distorts (k1 = -0.2) and a centred square ROI of the
//! frame's height.

use candle_core::Device;
use criterion::{Criterion, criterion_group, criterion_main};
use gstreamer as gst;
use gstreamer_video as gst_video;
use linesight::calibrate::{Calibration, Roi, Undistorter};
use linesight::capture::gray_image;
use linesight::models::defect_net::to_input;
use opencv::core::Mat;
use opencv::prelude::*;

/// The model's input side.
const MODEL_SIDE: u32 = 224;

fn frame_to_tensor(c: &mut Criterion) {
    gst::init().expect("GStreamer");
    for (width, height) in [(1280u32, 1024u32), (2448, 2048)] {
        let (fx, cx, cy) = (
            f64::from(width),
            f64::from(width) / 2.0,
            f64::from(height) / 2.0,
        );
        let calibration = Calibration {
            image_width: width,
            image_height: height,
            camera_matrix: Mat::from_slice_2d(&[[fx, 0.0, cx], [0.0, fx, cy], [0.0, 0.0, 1.0]])
                .expect("camera matrix"),
            distortion: Mat::from_slice(&[-0.2f64, 0.05, 0.0, 0.0, 0.0])
                .and_then(|m| m.try_clone())
                .expect("distortion"),
            roi: Roi {
                x: (width - height) / 2,
                y: 0,
                width: height,
                height,
            },
            output: Some((MODEL_SIDE, MODEL_SIDE)),
            homography: None,
            mm_per_pixel: None,
            id: None,
        };
        let undistorter = Undistorter::new(&calibration).expect("remap tables");
        let pixels: Vec<u8> = (0..height)
            .flat_map(|y| (0..width).map(move |x| ((x * 7 + y * 3) % 251) as u8))
            .collect();
        let info = gst_video::VideoInfo::builder(gst_video::VideoFormat::Gray8, width, height)
            .build()
            .expect("video info");
        let caps = info.to_caps().expect("caps");
        let buffer = gst::Buffer::from_mut_slice(pixels);
        let sample = gst::Sample::builder().buffer(&buffer).caps(&caps).build();
        // Its steps, each on its own.
        let raw = gray_image(&sample).expect("GRAY8 frame");
        let image = undistorter.apply(&raw).expect("undistorted ROI");
        c.bench_function(&format!("capture/step_copy_{width}x{height}"), |b| {
            b.iter(|| gray_image(&sample).expect("GRAY8 frame"))
        });
        c.bench_function(&format!("capture/step_undistort_{width}x{height}"), |b| {
            b.iter(|| undistorter.apply(&raw).expect("undistorted ROI"))
        });
        c.bench_function(&format!("capture/step_tensor_{width}x{height}"), |b| {
            b.iter(|| to_input(&[&image], &Device::Cpu).expect("input tensor"))
        });
        c.bench_function(&format!("capture/frame_to_tensor_{width}x{height}"), |b| {
            b.iter(|| {
                let raw = gray_image(&sample).expect("GRAY8 frame");
                let image = undistorter.apply(&raw).expect("undistorted ROI");
                to_input(&[&image], &Device::Cpu).expect("input tensor")
            })
        });
    }
}

criterion_group!(benches, frame_to_tensor);
criterion_main!(benches);
