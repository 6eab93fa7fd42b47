//! The golden-template family end to end on generated boards in DeepPCB's layout: traces on a
//! ground, each tested board beside its defect-free template, its defects labelled with typed
//! boxes. The model learns which differences are defects and of which type, is scored on the
//! held-out boards, and runs in a station's registry with its product's golden image.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use linesight::learn::dataset::Layout;
use linesight::learn::progress::Progress;
use linesight::models::backbone::WeightsSearch;
use linesight::models::template::{self, CompareSettings, REFERENCE_FILE, TemplateSettings};
use linesight::part::GrayImage;

use crate::write_png;

const SIDE: usize = 160;
const GROUND: u8 = 225;
const COPPER: u8 = 30;

/// A board: horizontal traces 8 pixels wide, 24 apart, on a bright ground.
pub(crate) fn template() -> Vec<u8> {
    let mut pixels = vec![GROUND; SIDE * SIDE];
    for top in (12..SIDE - 12).step_by(24) {
        for y in top..top + 8 {
            for x in 8..SIDE - 8 {
                pixels[y * SIDE + x] = COPPER;
            }
        }
    }
    pixels
}

fn fill(pixels: &mut [u8], [x0, y0, x1, y1]: [usize; 4], value: u8) {
    for y in y0..y1 {
        for x in x0..x1 {
            pixels[y * SIDE + x] = value;
        }
    }
}

/// A tested board: the template with a defect of each of `kinds` (DeepPCB's type numbers:
/// 1 open, 2 short, 5 spurious copper, 6 pin-hole) at random places, a scan's wandering edges
/// and a few specks of dust; and each defect's box as its labeller draws it (6 pixels round).
pub(crate) fn tested(rng: &mut ChaCha8Rng, kinds: &[u8]) -> (Vec<u8>, Vec<([usize; 4], u8)>) {
    let mut pixels = template();
    let mut boxes = Vec::new();
    for (slot, &kind) in kinds.iter().enumerate() {
        // One defect per pair of traces, so that no two overlap.
        let trace = 12 + 48 * slot;
        let x = rng.gen_range(20..SIDE - 30);
        let defect = match kind {
            // A trace cut through.
            1 => [x, trace, x + 6, trace + 8],
            // Two traces bridged.
            2 => [x, trace + 8, x + 6, trace + 24],
            // A speck of copper on the ground between two traces.
            5 => [x, trace + 13, x + 7, trace + 19],
            // A hole in a trace.
            _ => [x, trace + 2, x + 4, trace + 6],
        };
        let value = if matches!(kind, 1 | 6) {
            GROUND
        } else {
            COPPER
        };
        fill(&mut pixels, defect, value);
        let [x0, y0, x1, y1] = defect;
        boxes.push(([x0 - 6, y0 - 6, x1 + 5, y1 + 5], kind));
    }
    // Edges wander by a pixel, as a scan's do.
    let edges: Vec<usize> = (SIDE..SIDE * (SIDE - 1))
        .filter(|&i| pixels[i] != pixels[i - SIDE] || pixels[i] != pixels[i + SIDE])
        .collect();
    for i in edges {
        if rng.gen_bool(0.2) {
            pixels[i] = if pixels[i] == COPPER { GROUND } else { COPPER };
        }
    }
    // Dust: single dark pixels on the ground.
    for _ in 0..3 {
        let i = rng.gen_range(0..SIDE * SIDE);
        if pixels[i] == GROUND {
            pixels[i] = COPPER;
        }
    }
    (pixels, boxes)
}

pub(crate) fn image(pixels: Vec<u8>) -> GrayImage {
    GrayImage::new(SIDE as u32, SIDE as u32, pixels).expect("a square board")
}

/// 48 boards in DeepPCB's layout under `root`, each with two defects of rotating types.
fn write_boards(root: &Path) {
    let boards = root.join("PCBData/group1/1");
    let notes = root.join("PCBData/group1/1_not");
    std::fs::create_dir_all(&notes).expect("annotations dir");
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    let types = [1u8, 2, 5, 6];
    for i in 0..48 {
        let id = format!("{i:08}");
        write_png(&boards.join(format!("{id}_temp.jpg")), &image(template()));
        let kinds = [types[i % 4], types[(i + 1) % 4]];
        let (pixels, boxes) = tested(&mut rng, &kinds);
        write_png(&boards.join(format!("{id}_test.jpg")), &image(pixels));
        let text: String = (boxes.iter())
            .map(|([x0, y0, x1, y1], kind)| format!("{x0} {y0} {x1} {y1} {kind}\n"))
            .collect();
        std::fs::write(notes.join(format!("{id}.txt")), text).expect("annotation");
    }
}

/// A training run on the boards in DeepPCB's layout under `data`, into `out`, with the
/// default comparison kept as given; a test changes what it is about.
fn boards(data: &Path, out: &Path) -> TemplateSettings {
    TemplateSettings {
        name: "boards".into(),
        layout: Layout::Deeppcb,
        data: data.to_owned(),
        reference: None,
        compare: CompareSettings::default(),
        choose_compare: false,
        out_dir: out.to_owned(),
        progress: Progress::hidden(),
    }
}

#[test]
fn defects_are_found_by_comparing_each_board_with_its_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pcb");
    write_boards(&root);
    let golden = dir.path().join("golden.png");
    write_png(&golden, &image(template()));
    let out = dir.path().join("model");
    let card = template::train(&TemplateSettings {
        reference: Some(golden),
        ..boards(&root, &out)
    })
    .expect("trains");
    let family = &card.family;
    // The boards' copper is dark and covers less of them: the pattern.
    assert_eq!(family.compare.pattern, template::PatternSide::Dark);
    assert_eq!(
        family.classifier.classes,
        ["no defect", "open", "pin-hole", "short", "spurious-copper"]
    );
    // The margin learnt from the labelled boxes: 6 pixels drawn round each defect.
    assert!(
        (5..=8).contains(&family.box_margin_px),
        "{}",
        family.box_margin_px
    );
    // Held out: every 4th tested board, 12 of them, 24 defects; the dust and the wandering
    // edges are no defect, and each defect's box names its type.
    let metrics = &family.metrics;
    assert_eq!(metrics.n_test, 12);
    assert_eq!(metrics.n_flagged, 12);
    let boxes = metrics.boxes.as_ref().expect("box metrics");
    assert_eq!(boxes.n_true_boxes, 24);
    let map = boxes.mean_average_precision[0].value;
    assert!(map >= 0.9, "held-out box mAP@0.5 {map}: {boxes:?}");
    assert!(
        card.head.threshold_rule.contains("best box F1"),
        "{}",
        card.head.threshold_rule
    );

    // The model, with its golden image, runs in a station: a clean board passes, a board with
    // a short fails with the short's box.
    assert!(out.join(REFERENCE_FILE).exists());
    let detector = linesight::models::load(
        &out,
        &WeightsSearch::station(None, dir.path()),
        &candle_core::Device::Cpu,
    )
    .expect("a station loads it");
    assert_eq!(detector.input_size(), Some((SIDE as u32, SIDE as u32)));
    let threshold = detector.head().threshold;
    let clean = detector.judge(&image(template())).expect("judges");
    assert!(
        clean.score < threshold,
        "a clean board scored {}",
        clean.score
    );
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let (pixels, truth) = tested(&mut rng, &[2]);
    let judgement = detector.judge(&image(pixels)).expect("judges");
    assert!(
        judgement.score >= threshold,
        "a short scored {}",
        judgement.score
    );
    assert_eq!(judgement.defect_class.as_deref(), Some("short"));
    let found = detector.defect_boxes(&judgement, SIDE as u32, SIDE as u32, threshold);
    assert_eq!(found.len(), 1, "{found:?}");
    let [x0, y0, x1, y1] = truth[0].0.map(|v| v as u32);
    let iou = linesight::learn::eval::box_iou(&found[0].bbox, &[x0, y0, x1 + 1, y1 + 1]);
    assert!(
        iou > 0.5,
        "{:?} against {:?}: IoU {iou}",
        found[0].bbox,
        truth[0].0
    );
    // The heat map marks the short's cells and nothing far from it.
    let map = &judgement.heat_map;
    let cell = |x: u32, y: u32| map.values[((y / 8) * map.width + x / 8) as usize];
    let (cx, cy) = ((x0 + x1) / 2, (y0 + y1) / 2);
    assert!(cell(cx, cy) >= threshold, "{}", cell(cx, cy));
    assert_eq!(cell(2, SIDE as u32 - 2), 0.0);
    // Shorts tolerated, the part is judged on its other defects: none past the threshold.
    let tolerating = detector
        .judge_tolerating(
            &image(tested(&mut ChaCha8Rng::seed_from_u64(99), &[2]).0),
            &["short"],
        )
        .expect("judges");
    let rejecting = tolerating
        .rejecting
        .expect("a score without the tolerated type");
    assert!(rejecting.score < threshold, "{rejecting:?}");
    assert!(
        detector
            .judge_tolerating(&image(template()), &["open"])
            .expect("judges")
            .rejecting
            .is_some_and(|r| r.score == 0.0 && r.class.is_none())
    );
    // A part of another size is an error, never a pass.
    let small = GrayImage::new(80, 80, vec![GROUND; 80 * 80]).expect("80x80");
    assert!(detector.judge(&small).is_err());

    // Without its golden image a station refuses it, and says what is missing.
    std::fs::remove_file(out.join(REFERENCE_FILE)).expect("remove the reference");
    let error = linesight::models::load(
        &out,
        &WeightsSearch::station(None, dir.path()),
        &candle_core::Device::Cpu,
    )
    .expect_err("refused");
    assert!(error.to_string().contains(REFERENCE_FILE), "{error}");
}

#[test]
fn the_run_chooses_how_deep_differences_must_reach_on_its_validation_parts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pcb");
    write_boards(&root);
    // A depth past the boards' holes and cuts, which reach at most 4 pixels past the traces'
    // edges: a product given another product's setting.
    let given = CompareSettings {
        min_depth_px: 6.0,
        ..CompareSettings::default()
    };
    let settings = |choose_compare, out: &str| TemplateSettings {
        compare: given,
        choose_compare,
        ..boards(&root, &dir.path().join(out))
    };
    let map = |card: &linesight::models::card::ModelCard<template::TemplateCard>| {
        let boxes = card.family.metrics.boxes.as_ref().expect("box metrics");
        boxes.mean_average_precision[0].value
    };
    // Kept as given, the holes and cuts are never candidates: half the types go unfound.
    let fixed = template::train(&settings(false, "fixed")).expect("trains");
    assert!(fixed.family.compare_choice.is_none());
    assert_eq!(fixed.family.compare.min_depth_px, 6.0);
    assert!(map(&fixed) < 0.6, "held-out box mAP@0.5 {}", map(&fixed));
    // Chosen on the validation parts: a depth that finds them.
    let chosen = template::train(&settings(true, "chosen")).expect("trains");
    let choice = chosen
        .family
        .compare_choice
        .as_ref()
        .expect("a recorded choice");
    let n_choices =
        template::train::DEPTH_CHOICES_PX.len() * template::train::JOIN_CHOICES_PX.len();
    assert_eq!(choice.trials.len(), n_choices);
    let first = &choice.trials[0];
    assert_eq!((first.min_depth_px, first.join_px), (6.0, 7));
    assert!(choice.min_depth_px <= 4.0, "{choice:?}");
    assert_eq!(
        (
            chosen.family.compare.min_depth_px,
            chosen.family.compare.join_px
        ),
        (choice.min_depth_px, choice.join_px)
    );
    let figure_of = |depth: f32, join: u32| {
        (choice.trials.iter())
            .find(|t| (t.min_depth_px, t.join_px) == (depth, join))
            .and_then(|t| t.validation_map)
            .expect("a figure")
    };
    assert!(
        figure_of(choice.min_depth_px, choice.join_px)
            > figure_of(6.0, 7) + template::train::CHOICE_MARGIN,
        "{choice:?}"
    );
    assert!(choice.rule.contains("given depth 6 px"), "{}", choice.rule);
    // Then the crumb size, at the depth and join chosen: the given one first, half and twice
    // it beside, and the given one stands unless beaten by more than chance.
    let given_islands = CompareSettings::default().min_island_px;
    let islands: Vec<usize> = (choice.island_trials.iter())
        .map(|t| t.min_island_px)
        .collect();
    assert_eq!(
        islands,
        [given_islands, given_islands / 2, given_islands * 2]
    );
    let chosen_islands = choice.min_island_px.expect("a crumb size chosen");
    assert_eq!(chosen.family.compare.min_island_px, chosen_islands);
    let island_figure = |size: usize| {
        (choice.island_trials.iter())
            .find(|t| t.min_island_px == size)
            .and_then(|t| t.validation_map)
            .expect("a figure")
    };
    assert_eq!(
        island_figure(given_islands),
        figure_of(choice.min_depth_px, choice.join_px)
    );
    if chosen_islands != given_islands {
        assert!(
            island_figure(chosen_islands)
                > island_figure(given_islands) + template::train::CHOICE_MARGIN,
            "{choice:?}"
        );
    } else {
        assert!(
            (choice.island_trials.iter())
                .filter_map(|t| t.validation_map)
                .all(|m| m <= island_figure(given_islands) + template::train::CHOICE_MARGIN),
            "{choice:?}"
        );
    }
    assert_eq!(template::train::island_choices(1), [2]);
    assert!(map(&chosen) >= 0.9, "held-out box mAP@0.5 {}", map(&chosen));
    // The card, with its choice, loads.
    template::TemplateModel::load(&dir.path().join("chosen")).expect("loads");
}

#[test]
fn a_dataset_without_references_or_boxes_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pcb");
    write_boards(&root);
    let settings = |layout| TemplateSettings {
        layout,
        ..boards(&root, &dir.path().join("model"))
    };
    // In MVTec AD's layout nothing pairs the parts, and no golden image was given.
    let parts = dir.path().join("parts");
    let mut generator = linesight::simulate::PartGenerator::new(5, 64, 64, 0.0);
    crate::write_mvtec_parts(&parts, &mut generator, 4, 2);
    let error = template::train(&TemplateSettings {
        data: parts,
        ..settings(Layout::Mvtec)
    })
    .expect_err("refused");
    assert!(error.to_string().contains("--reference"), "{error}");
    // Boards without their annotations teach nothing of what a defect is.
    std::fs::remove_dir_all(root.join("PCBData/group1/1_not")).expect("remove the boxes");
    std::fs::create_dir_all(root.join("PCBData/group1/1_not")).expect("mkdir");
    for i in 0..48 {
        std::fs::write(root.join(format!("PCBData/group1/1_not/{i:08}.txt")), "").expect("write");
    }
    let error = template::train(&settings(Layout::Deeppcb)).expect_err("refused");
    assert!(error.to_string().contains("labelled with boxes"), "{error}");
}

#[test]
fn the_cli_trains_and_scores_a_template_model() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pcb");
    write_boards(&root);
    let out = dir.path().join("model");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_linesight"))
            .args(args)
            .output()
            .expect("runs")
    };
    let (data, model) = (root.to_str().expect("utf-8"), out.to_str().expect("utf-8"));
    let trained = run(&[
        "train", "template", "--layout", "deeppcb", "--data", data, "--out", model,
    ]);
    let said = String::from_utf8_lossy(&trained.stdout);
    assert!(
        trained.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&trained.stderr)
    );
    assert!(said.contains("threshold: defect probability"), "{said}");
    let json = dir.path().join("held-out.json");
    let scored = run(&[
        "eval",
        "template",
        "--model",
        model,
        "--layout",
        "deeppcb",
        "--data",
        data,
        "--json",
        json.to_str().expect("utf-8"),
    ]);
    let said = String::from_utf8_lossy(&scored.stdout);
    assert!(
        scored.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&scored.stderr)
    );
    assert!(said.contains("box mAP@0.5"), "{said}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parses");
    assert_eq!(metrics["n_test"], 12);
    // A folder whose parts have no reference, scored by a model without a golden image: an
    // error that says so, never a table of zeros.
    let parts = dir.path().join("parts");
    let mut generator = linesight::simulate::PartGenerator::new(5, 64, 64, 0.0);
    crate::write_mvtec_parts(&parts, &mut generator, 4, 4);
    let refused = run(&[
        "eval",
        "template",
        "--model",
        model,
        "--layout",
        "mvtec",
        "--data",
        parts.to_str().expect("utf-8"),
        "--split",
        "all",
    ]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        said.contains("has a reference to compare it with"),
        "{said}"
    );
}

/// A product without pairs, as a station's own records are: every part compared with the
/// product's golden image (`--reference`), in MVTec AD's layout with typed boxes beside the
/// defective parts.
/// Parts of one product in MVTec's layout under `root`, compared with its golden image
/// (`train/good/golden.png`, returned): 8 good and 32 defective to train on, 4 and 8 to test,
/// the defective ones' boxes beside them. Each part sits up to `wander` pixels off the
/// golden image's place each way, as a loose fixture leaves it, its boxes moved with it.
fn write_parts(root: &Path, wander: i64) -> std::path::PathBuf {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let types = [1u8, 2, 5, 6];
    let names = ["open", "short", "spurious copper", "pin-hole"];
    let mut write = |split: &str, class: &str, n: usize, offset: usize| {
        for i in 0..n {
            let stem = format!("{:03}", offset + i);
            let (mut pixels, mut boxes) = if class == "good" {
                tested(&mut rng, &[])
            } else {
                tested(&mut rng, &[types[i % 4], types[(i + 1) % 4]])
            };
            if wander > 0 {
                let (dx, dy) = (
                    rng.gen_range(-wander..=wander),
                    rng.gen_range(-wander..=wander),
                );
                pixels = moved(&pixels, dx, dy);
                for (bbox, _) in &mut boxes {
                    let [x0, y0, x1, y1] = *bbox;
                    let by = |v: usize, d: i64| usize::try_from(v as i64 + d).expect("on the part");
                    *bbox = [by(x0, dx), by(y0, dy), by(x1, dx), by(y1, dy)];
                }
            }
            write_png(
                &root.join(format!("{split}/{class}/{stem}.png")),
                &image(pixels),
            );
            if class != "good" {
                let text: String = (boxes.iter())
                    .map(|([x0, y0, x1, y1], kind)| {
                        let name = names[types.iter().position(|t| t == kind).expect("a type")];
                        format!("{x0} {y0} {x1} {y1} {name}\n")
                    })
                    .collect();
                let notes = root.join(format!("ground_truth/{class}/{stem}_boxes.txt"));
                std::fs::create_dir_all(notes.parent().expect("parent")).expect("mkdir");
                std::fs::write(notes, text).expect("boxes");
            }
        }
    };
    write("train", "good", 8, 0);
    write("train", "defect", 32, 0);
    write("test", "good", 4, 100);
    write("test", "defect", 8, 100);
    // The golden image sits among the good parts: it is not compared with itself.
    let golden = root.join("train/good/golden.png");
    write_png(&golden, &image(template()));
    golden
}

/// `pixels` moved `dx` right and `dy` down, the ground showing where the board left.
fn moved(pixels: &[u8], dx: i64, dy: i64) -> Vec<u8> {
    let mut out = vec![GROUND; SIDE * SIDE];
    for y in 0..SIDE as i64 {
        for x in 0..SIDE as i64 {
            let (from_x, from_y) = (x - dx, y - dy);
            if (0..SIDE as i64).contains(&from_x) && (0..SIDE as i64).contains(&from_y) {
                out[(y * SIDE as i64 + x) as usize] =
                    pixels[(from_y * SIDE as i64 + from_x) as usize];
            }
        }
    }
    out
}

#[test]
fn parts_without_references_of_their_own_are_compared_with_the_golden_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("parts");
    let golden = write_parts(&root, 0);
    let out = dir.path().join("model");
    let card = template::train(&TemplateSettings {
        name: "parts".into(),
        layout: Layout::Mvtec,
        reference: Some(golden.clone()),
        ..boards(&root, &out)
    })
    .expect("trains");
    let family = &card.family;
    // 8 good and 32 defective training parts; the golden image left out.
    assert_eq!(family.n_train, 40);
    assert_eq!(family.metrics.n_test, 12);
    assert_eq!(family.metrics.defective_recall, Some(1.0));
    assert!(family.metrics.n_flagged <= 9, "{:?}", family.metrics);
    let map = family
        .metrics
        .boxes
        .as_ref()
        .expect("boxes")
        .mean_average_precision[0]
        .value;
    assert!(map >= 0.9, "held-out box mAP@0.5 {map}");
    // The drift watch has a reference: the parts' light, and the good parts' scores.
    let drift = card.head.drift.as_ref().expect("a drift reference");
    assert!(!drift.good_scores.is_empty());
    // Its light is learnt from parts whatever their labels, and its rule says so.
    assert!(
        drift.input.limit_rule.contains("(defective or not)"),
        "{}",
        drift.input.limit_rule
    );
    // The model scores the folder again from its own golden image.
    let model = template::TemplateModel::load(&out).expect("loads");
    assert!(model.reference.is_some());
    let (held_out, _) = template::held_out_part(
        &linesight::learn::dataset::read(Layout::Mvtec, &root).expect("reads"),
    );
    let again = template::evaluate(&model, &held_out, Layout::Mvtec, None, &Progress::hidden())
        .expect("scores");
    assert_eq!(again, family.metrics);
}

#[test]
fn the_run_searches_as_far_as_its_parts_sit_off_the_golden_image() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("parts");
    // A loose fixture: parts up to 5 pixels off the golden image's place each way. (A part
    // off only sideways is measured by its traces' ends alone: the unit tests of
    // `offset_of` hold that.)
    let golden = write_parts(&root, 5);
    let settings = |choose_compare, out: &str| TemplateSettings {
        name: "loose".into(),
        layout: Layout::Mvtec,
        reference: Some(golden.clone()),
        choose_compare,
        ..boards(&root, &dir.path().join(out))
    };
    let map = |card: &linesight::models::card::ModelCard<template::TemplateCard>| {
        (card.family.metrics.boxes.as_ref()).map_or(0.0, |b| b.mean_average_precision[0].value)
    };
    // Searched within the 2 pixels given, most parts are compared misaligned: every edge of
    // their traces differs, and the defects drown among those differences.
    let fixed = template::train(&settings(false, "fixed")).expect("trains");
    assert!(fixed.family.alignment_choice.is_none());
    assert_eq!(fixed.family.compare.align_px, 2);
    assert!(map(&fixed) < 0.7, "held-out box mAP@0.5 {}", map(&fixed));
    // Measured, the parts sit up to 5 pixels off; the run searches past that.
    let chosen = template::train(&settings(true, "chosen")).expect("trains");
    let choice = (chosen.family.alignment_choice.as_ref()).expect("a recorded choice");
    assert_eq!(choice.largest_offset_px, 5, "{choice:?}");
    // An evenly spread sample of the 40 training parts.
    assert_eq!(
        choice.parts_by_offset_px.iter().sum::<usize>(),
        template::train::OFFSET_SAMPLE.min(chosen.family.n_train)
    );
    assert_eq!(choice.align_px, template::train::reach_for(5, 2));
    assert!(choice.align_px >= 6, "{choice:?}");
    assert_eq!(chosen.family.compare.align_px, choice.align_px);
    assert!(choice.rule.contains("sat 5 px off"), "{}", choice.rule);
    assert!(map(&chosen) >= 0.9, "held-out box mAP@0.5 {}", map(&chosen));
    // Misaligned, every trace's end and edge was a candidate: several times as many boxes.
    let boxes = |card: &linesight::models::card::ModelCard<template::TemplateCard>| {
        (card.family.metrics.boxes.as_ref()).map_or(0, |b| b.n_predicted_boxes)
    };
    assert!(
        boxes(&fixed) > 3 * boxes(&chosen),
        "{} boxes misaligned, {} aligned",
        boxes(&fixed),
        boxes(&chosen)
    );
    // The station's model searches as far: it loads and scores the parts again alike.
    let model = template::TemplateModel::load(&dir.path().join("chosen")).expect("loads");
    assert_eq!(model.card.family.compare.align_px, choice.align_px);
}

#[test]
fn the_reach_searched_covers_the_parts_measured_within_its_bounds() {
    use template::compare::MAX_ALIGN_PX;
    use template::train::reach_for;
    for largest in 0..=MAX_ALIGN_PX {
        for given in 0..=4 {
            let reach = reach_for(largest, given);
            assert!(reach >= given && reach <= MAX_ALIGN_PX);
            assert!(
                reach > largest || reach == MAX_ALIGN_PX,
                "{largest} {given} {reach}"
            );
        }
    }
    assert_eq!(reach_for(0, 2), 2);
    assert_eq!(reach_for(8, 2), 11);
}

#[test]
fn a_card_edited_out_of_shape_is_refused_when_loaded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("pcb");
    write_boards(&root);
    let out = dir.path().join("model");
    template::train(&boards(&root, &out)).expect("trains");
    let card_path = out.join("card.json");
    let original: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&card_path).expect("card")).expect("json");
    let refused = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut card = original.clone();
        edit(&mut card);
        std::fs::write(&card_path, card.to_string()).expect("write");
        template::TemplateModel::load(&out)
            .expect_err("refused")
            .to_string()
    };
    let said = refused(&|c| {
        let row = c["classifier"]["weights"][1].clone();
        c["classifier"]["weights"]
            .as_array_mut()
            .expect("rows")
            .push(row);
    });
    assert!(said.contains("weights"), "{said}");
    let said = refused(&|c| c["classifier"]["classes"][0] = "good".into());
    assert!(said.contains("no defect"), "{said}");
    let said = refused(&|c| c["threshold"] = 0.0.into());
    assert!(said.contains("threshold"), "{said}");
    let said = refused(&|c| c["compare"]["align_px"] = 100_000.into());
    assert!(said.contains("align_px"), "{said}");
    let said = refused(&|c| c["box_margin_px"] = u32::MAX.into());
    assert!(said.contains("box_margin_px"), "{said}");
}
