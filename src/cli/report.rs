//! The tables `train` and `eval` print: ranking metrics, the metrics at the threshold, pixel
//! metrics, and each family's own rows.

use linesight::learn::eval::{BoxMetrics, DetectionMetrics, ThresholdMetrics};
use linesight::models::anomaly::AnomalyMetrics;
use linesight::models::defect_net::EvalMetrics;
use linesight::models::supervised::{CrossValidation, SupervisedMetrics};
use linesight::models::template::TemplateMetrics;

/// One row of a metrics table; `None` prints as n/a.
fn row(name: &str, value: Option<f64>) {
    match value {
        Some(v) => println!("{name:<22} {v:>10.4}"),
        None => println!("{name:<22} {:>10}", "n/a"),
    }
}

/// The rows every evaluation prints: ranking metrics, then the metrics at the threshold.
fn common(n: (usize, usize), auroc: Option<f64>, ap: Option<f64>, t: &ThresholdMetrics) {
    println!("{:<22} {:>10}", "metric", "value");
    println!("{:<22} {:>10}", "test items", n.0);
    println!("{:<22} {:>10}", "defective", n.1);
    row("image AUROC", auroc);
    row("average precision", ap);
    row("threshold", Some(f64::from(t.threshold)));
    row("accuracy", Some(t.accuracy));
    row("F1", Some(t.f1));
    row("escape rate", Some(t.escape_rate));
    row("false-reject rate", Some(t.false_reject_rate));
}

/// The rows of a held-out evaluation on a dataset: counts, ranking, the threshold's metrics
/// (when there are good images to measure it on), pixel metrics.
fn detection(d: &DetectionMetrics, at: Option<&ThresholdMetrics>, threshold: f32) {
    match at {
        Some(at) => common(
            (d.n_test, d.n_test_defective),
            d.image_auroc,
            d.average_precision,
            at,
        ),
        None => {
            println!("{:<22} {:>10}", "metric", "value");
            println!("{:<22} {:>10}", "test items", d.n_test);
            row("threshold", Some(f64::from(threshold)));
        }
    }
    println!("{:<22} {:>10}", "skipped (unreadable)", d.n_skipped);
    row("pixel AUROC", d.pixel_auroc);
    row("PRO (FPR ≤ 0.3)", d.pixel_pro);
}

pub fn anomaly_metrics(metrics: &AnomalyMetrics) {
    let at = &metrics.at_threshold;
    detection(&metrics.detection, Some(at), at.threshold);
    for (class, m) in &metrics.per_class {
        let auroc = m
            .auroc_vs_good
            .map_or(String::new(), |a| format!("  AUROC vs good {a:.3}"));
        println!(
            "{:<22} {:>5}/{:<5}{auroc}",
            format!("flagged {class}"),
            m.flagged,
            m.n
        );
    }
    // Which of the summed scores finds this product's defects.
    let alone = &metrics.score_auroc;
    for (score, auroc) in [
        ("patch", alone.patch),
        ("image", alone.image),
        ("head", alone.head),
        ("coarse", alone.coarse_image),
        ("discriminator", alone.discriminator),
    ] {
        if auroc.is_some() {
            row(&format!("AUROC of {score} alone"), auroc);
        }
    }
}

pub fn supervised_metrics(classes: &[String], threshold: f32, metrics: &SupervisedMetrics) {
    detection(&metrics.detection, metrics.at_threshold.as_ref(), threshold);
    row("defect-vs-good acc.", metrics.defect_vs_good_accuracy);
    row("defect-class acc.", metrics.defect_class_accuracy);
    row("class accuracy", Some(metrics.class_accuracy));
    if let Some(thin) = &metrics.thin_defect {
        for (what, at) in [
            ("model", &thin.at_model_threshold),
            ("best", &thin.best_over_images),
        ] {
            println!(
                "{:<22} {:>10.4}  (precision {:.4}, recall {:.4}; heat map ≥ {:.2}, within {} px)",
                format!("thin-defect F1 ({what})"),
                at.f1,
                at.precision,
                at.recall,
                at.threshold,
                thin.tolerance_px
            );
        }
    }
    if let Some(boxes) = &metrics.boxes {
        box_metrics(boxes);
    }
    let width = classes.iter().map(String::len).max().unwrap_or(4).max(10);
    println!("confusion (rows: true class, columns: predicted)");
    print!("{:>width$}", "");
    for class in classes {
        print!(" {class:>width$}");
    }
    println!();
    for (class, counts) in classes.iter().zip(&metrics.confusion) {
        print!("{class:>width$}");
        for count in counts {
            print!(" {count:>width$}");
        }
        println!();
    }
}

/// Each fold's held-out figures, then all folds pooled.
pub fn cross_validation(validation: &CrossValidation) {
    let figure = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.4}"));
    println!(
        "{:<6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "fold", "images", "defective", "AUROC", "AP", "threshold", "accuracy"
    );
    for fold in &validation.folds {
        let d = &fold.held_out;
        println!(
            "{:<6} {:>6} {:>9} {:>9} {:>9} {:>9.4} {:>9.4}",
            fold.fold,
            d.n_test,
            d.n_test_defective,
            figure(d.image_auroc),
            figure(d.average_precision),
            fold.threshold,
            fold.accuracy
        );
    }
    let d = &validation.pooled;
    println!(
        "{:<6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9.4}",
        "pooled",
        d.n_test,
        d.n_test_defective,
        figure(d.image_auroc),
        figure(d.average_precision),
        "",
        validation.pooled_accuracy
    );
    row("mean fold AP", validation.mean_fold_average_precision);
    if d.n_skipped > 0 {
        println!("skipped (unreadable or unknown class): {}", d.n_skipped);
    }
}

pub fn defect_net_metrics(metrics: &EvalMetrics) {
    common(
        (metrics.n_test, metrics.n_test_defective),
        metrics.image_auroc,
        metrics.average_precision,
        &metrics.at_threshold,
    );
    for (class, m) in &metrics.per_class {
        println!(
            "{:<22} {:>5}/{:<5}",
            format!("flagged {class}"),
            m.detected,
            m.n
        );
    }
}

/// Box detection: AP at each overlap rule, the types' mean, each type's. The label column
/// widens to the longest type's label ("  spurious-copper AP@0.5") so the figures stay in one
/// column.
pub fn box_metrics(boxes: &BoxMetrics) {
    let type_label = |class: &str| format!("  {class} AP@0.5");
    let width = (boxes.per_class.iter())
        .map(|class| type_label(&class.class).chars().count())
        .fold(22, usize::max);
    for at in &boxes.at_iou {
        println!(
            "{:<width$} {:>10.4}  (precision {:.4}, recall {:.4}; {} boxes for {} true on {} images)",
            format!("box AP@{}", at.iou),
            at.average_precision,
            at.precision,
            at.recall,
            boxes.n_predicted_boxes,
            boxes.n_true_boxes,
            boxes.n_images
        );
    }
    for mean in &boxes.mean_average_precision {
        println!(
            "{:<width$} {:>10.4}  (mean over {} defect types)",
            format!("box mAP@{}", mean.iou),
            mean.value,
            boxes.per_class.len()
        );
    }
    for class in &boxes.per_class {
        let ap = |i: usize| {
            class
                .at_iou
                .get(i)
                .map_or(f64::NAN, |a| a.average_precision)
        };
        println!(
            "{:<width$} {:>10.4}  (AP@0.33 {:.4}; {} boxes named so for {} true)",
            type_label(&class.class),
            ap(0),
            ap(1),
            class.n_predicted_boxes,
            class.n_true_boxes
        );
    }
}

/// A template model's figures: parts flagged, then its boxes.
pub fn template_metrics(threshold: f32, metrics: &TemplateMetrics) {
    println!(
        "{:<22} {:>5}/{:<5}(a defect of probability ≥ {threshold:.2})",
        "flagged parts", metrics.n_flagged, metrics.n_test
    );
    row("defective recall", metrics.defective_recall);
    match &metrics.boxes {
        Some(boxes) => box_metrics(boxes),
        None => println!("no labelled boxes among the parts scored"),
    }
}
