//! The anomaly model end to end on a generated MVTec-layout dataset: learns from good parts
//! only, then separates held-out defective parts from good ones.

use std::path::{Path, PathBuf};
use std::process::Command;

use linesight::inspect::registry::Registry;
use linesight::learn::dataset::Layout;
use linesight::learn::progress::Progress;
use linesight::models::anomaly::bank_size::BankSize;
use linesight::models::anomaly::discriminator;
use linesight::models::anomaly::input_size;
use linesight::models::anomaly::orientation::Orientations;
use linesight::models::anomaly::patch_stages::{self, StagesSetting};
use linesight::models::anomaly::train::{self as anomaly_train, AnomalySettings, InputSize};
use linesight::models::anomaly::{AnomalyModel, BANK_FILE, ScoreKind};
use linesight::models::backbone::bf16::{self, Precision};
use linesight::models::backbone::{PatchStages, Resampling, WeightsId, WeightsSearch};
use linesight::models::card::CARD_FILE;
use linesight::simulate::{DefectKind, PartGenerator};

use crate::{backbone_weights, write_mvtec_parts, write_tile_dataset};

/// The most a model's score may move when its backbone multiplies in bfloat16, as a share of
/// the spread (standard deviation) of good parts' scores.
const BF16_SHARE_OF_GOOD_SPREAD: f32 = 0.5;

/// What most tests here train with: the MVTec-layout folder `data`, a 128 input, both feature
/// maps, a bank of `bank` entries, two painted defects per good image for the head, a coarse
/// image score at 64, a short-trained discriminator (off by default, on here so that its
/// saving, loading and scoring are exercised) and no turned copies; each test changes what it
/// is about.
fn small_model(
    name: &str,
    data: &Path,
    out_dir: PathBuf,
    bank: usize,
    seed: u64,
) -> AnomalySettings {
    AnomalySettings {
        name: name.into(),
        layout: Layout::Mvtec,
        data: data.to_owned(),
        backbone_weights: backbone_weights(),
        bank_size: BankSize::Fixed(bank),
        input_size: InputSize::Fixed(128),
        patch_stages: StagesSetting::Given(PatchStages::Both),
        target_false_reject_rate: 0.05,
        synthetic_defects_per_good: 2,
        coarse_input_size: Some(64),
        discriminator_steps: 40,
        discriminator_noise_std: discriminator::DEFAULT_NOISE_STD,
        orientations: Orientations::None,
        seed,
        out_dir,
        progress: Progress::hidden(),
    }
}

/// The feature maps' trial runs every image through the backbone once for its three
/// candidates, each searching both maps' features cut to its own channels. Each candidate's
/// scores are what an extractor keeping only its maps (the other channels zeroed) gives,
/// searched by brute force here: the farthest patch's distance to its nearest bank patch, for
/// each validation image and then its painted copies (the trial's painter, restarted from the
/// seed).
#[test]
fn one_pass_over_the_images_scores_each_set_of_maps_as_its_own_extractor_would() {
    use rand::SeedableRng;
    let _one = crate::CPU_HEAVY.blocking_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tiles");
    write_mvtec_parts(&root, &mut PartGenerator::new(9, 96, 96, 0.0), 12, 0);
    let mut images: Vec<PathBuf> = std::fs::read_dir(root.join("train/good"))
        .expect("good images")
        .map(|entry| entry.expect("entry").path())
        .collect();
    images.sort();
    let (fit, validation) = images.split_at(8);
    // A 64 input: 64 patches an image, few enough for a brute-force search unoptimised.
    let features = linesight::models::backbone::PatchFeatures::load(
        &backbone_weights(),
        &candle_core::Device::Cpu,
    )
    .expect("backbone")
    .with_input_size(64);
    let (copies, seed) = (3, 7);
    let maps = PatchStages::ALL;
    let phase = linesight::learn::progress::Phase::hidden();
    let started = std::time::Instant::now();
    let together = input_size::painted_trials(
        &features, fit, validation, copies, seed, &phase, "a test", &maps,
    )
    .expect("trials")
    .expect("fit images read");
    let took = started.elapsed().as_secs_f64();
    assert_eq!(together.len(), maps.len());
    let load = |path: &PathBuf| linesight::learn::dataset::load_gray(path).expect("image");
    let rows = |extractor: &linesight::models::backbone::PatchFeatures,
                image: &linesight::part::GrayImage| {
        let patches = extractor.extract(image).expect("features").patches;
        patches.to_vec2::<f32>().expect("rows")
    };
    for (stages, trial) in maps.into_iter().zip(&together) {
        let own = features.clone().with_patch_stages(stages);
        let bank: Vec<Vec<f32>> = fit
            .iter()
            .flat_map(|path| rows(&own, &load(path)))
            .collect();
        let farthest = |image: &linesight::part::GrayImage| {
            let nearest = |patch: &Vec<f32>| {
                (bank.iter())
                    .map(|entry| {
                        (patch.iter().zip(entry))
                            .map(|(a, b)| f64::from(a - b).powi(2))
                            .sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min)
                    .sqrt()
            };
            rows(&own, image).iter().map(nearest).fold(0.0, f64::max)
        };
        let mut painter = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut expected = Vec::new();
        for path in validation {
            let image = load(path);
            expected.push(farthest(&image));
            for _ in 0..copies {
                let painted = linesight::learn::synthetic_defect::paint(&image, &mut painter);
                expected.push(farthest(&painted.image));
            }
        }
        assert_eq!(trial.scores.len(), expected.len(), "{stages:?}");
        for (got, want) in trial.scores.iter().zip(&expected) {
            assert!(
                (f64::from(*got) - want).abs() <= 1e-3 * want.max(1.0),
                "{stages:?}: {:?} against {expected:?}",
                trial.scores
            );
        }
        assert!(trial.seconds > 0.0, "{trial:?}");
    }
    // Each trial's time is its own searches and a share of the pass they shared, so together
    // they are the pass: no part counted twice.
    let counted: f64 = together.iter().map(|trial| trial.seconds).sum();
    assert!(counted <= took, "{counted} s counted in a {took} s pass");
    // Zeroing a map changes every score: the candidates are measured apart.
    for pair in together.windows(2) {
        let same = (pair[0].scores.iter().zip(&pair[1].scores)).filter(|(a, b)| a == b);
        assert_eq!(same.count(), 0, "{together:?}");
    }
}

/// A model keeping one of the two maps searches its bank in that map's channels alone
/// (stride 8: 40 of 152), and finds the distances a search over every channel finds: the
/// channels cut are zero in the extractor's patches and in the bank made of them.
#[test]
fn a_model_keeping_one_map_searches_its_channels_alone_with_the_same_distances() {
    use linesight::models::anomaly::{PatchCore, nearest_distances, search_layout};
    let _one = crate::CPU_HEAVY.blocking_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("tiles");
    write_mvtec_parts(&root, &mut PartGenerator::new(11, 96, 96, 0.0), 6, 2);
    let load = |path: PathBuf| linesight::learn::dataset::load_gray(&path).expect("image");
    let images = |folder: &str| -> Vec<linesight::part::GrayImage> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join(folder))
            .expect("images")
            .map(|entry| entry.expect("entry").path())
            .collect();
        paths.sort();
        paths.into_iter().map(load).collect()
    };
    let (good, defective) = (images("train/good"), images("test/defect"));
    let features = linesight::models::backbone::PatchFeatures::load(
        &backbone_weights(),
        &candle_core::Device::Cpu,
    )
    .expect("backbone")
    .with_input_size(64);
    let mut searched = Vec::new();
    for stages in PatchStages::ALL {
        let extractor = features.clone().with_patch_stages(stages);
        let patches = |image: &linesight::part::GrayImage| {
            extractor.extract(image).expect("features").patches
        };
        let bank = candle_core::Tensor::cat(&good[..4].iter().map(patches).collect::<Vec<_>>(), 0)
            .expect("bank");
        let (bank_t, bank_sq) = search_layout(&bank).expect("layout");
        // A bank cut already (or of another model) is refused, not searched as it comes.
        let cut = bank.narrow(1, 0, 40).expect("narrow");
        let refused = PatchCore::from_bank(extractor.clone(), cut).expect_err("a narrow bank");
        assert!(refused.to_string().contains("152 values"), "{refused}");
        let model = PatchCore::from_bank(extractor.clone(), bank).expect("model");
        assert_eq!(
            model.searched_channels(),
            stages.channels().len(),
            "{stages:?}"
        );
        for image in good[4..].iter().chain(&defective) {
            let queries = patches(image);
            let narrow = model.nearest(&queries).expect("narrow search");
            let wide = nearest_distances(&queries, &bank_t, &bank_sq).expect("wide search");
            assert_eq!(narrow.len(), wide.len());
            for (got, want) in narrow.iter().zip(&wide) {
                assert!(
                    (got - want).abs() <= 1e-3 * want.max(1.0),
                    "{stages:?}: {got} against {want}"
                );
            }
            // The model's own patch score is read from the same search.
            let (raw, heat_map) = model.raw_scores(image).expect("scores");
            assert_eq!(heat_map.values.len(), narrow.len());
            for (got, want) in heat_map.values.iter().zip(&narrow) {
                assert!((got - want).abs() <= 1e-4 * want.max(1.0), "{stages:?}");
            }
            assert!(raw.patch > 0.0, "{stages:?}");
            searched.push(narrow);
        }
    }
    // The three sets of maps are three different searches.
    let per_set = searched.len() / PatchStages::ALL.len();
    assert_ne!(searched[0], searched[per_set]);
    assert_ne!(searched[per_set], searched[2 * per_set]);
}

/// `--bank-size auto` (the default) tries no bank whose search costs more per part than a
/// 256 input's against 4,096 entries of both maps' 152 channels. A model keeping the stride-8
/// map alone searches 40 channels, so the same cost buys it 8,192 entries; stride 16 alone
/// (112 channels) stays at 4,096.
#[test]
fn a_model_keeping_one_map_may_choose_a_larger_bank_for_the_same_search_cost() {
    let _one = crate::CPU_HEAVY.blocking_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("parts");
    write_mvtec_parts(&root, &mut PartGenerator::new(13, 256, 256, 0.0), 15, 2);
    let candidates_tried = |stages: PatchStages| {
        let card = anomaly_train::train(&AnomalySettings {
            input_size: InputSize::Fixed(256),
            patch_stages: StagesSetting::Given(stages),
            bank_size: BankSize::AUTO,
            synthetic_defects_per_good: 0,
            coarse_input_size: None,
            ..small_model(
                "bank",
                &root,
                dir.path().join(format!("{stages:?}")),
                4096,
                1,
            )
        })
        .expect("trains");
        let choice = card
            .family
            .bank_size_choice
            .expect("the run chose the bank");
        assert_eq!(choice.n_validation, 3, "{choice:?}");
        choice.rule
    };
    for (stages, candidates) in [
        (PatchStages::Both, "[1024, 2048, 4096] entries"),
        (PatchStages::Stride8, "[1024, 2048, 4096, 8192] entries"),
        (PatchStages::Stride16, "[1024, 2048, 4096] entries"),
    ] {
        let rule = candidates_tried(stages);
        assert!(rule.contains(candidates), "{stages:?}: {rule}");
    }
}

/// `--input-size auto` (the default): the run tries each size up to the images' own
/// resolution on defects painted on its good validation images, keeps every trial on the
/// card, and trains at the size the rule picks; images too small for a larger size get the
/// smallest without a trial. `--patch-stages auto` (the default) then tries the feature maps
/// at that size the same way.
#[test]
fn the_input_size_is_chosen_from_the_products_own_good_images() {
    let _one = crate::CPU_HEAVY.blocking_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let train = |side: u32, name: &str| {
        let root = dir.path().join(name);
        write_mvtec_parts(&root, &mut PartGenerator::new(5, side, side, 0.0), 20, 4);
        anomaly_train::train(&AnomalySettings {
            input_size: InputSize::AUTO,
            patch_stages: StagesSetting::Auto,
            synthetic_defects_per_good: 0,
            coarse_input_size: None,
            ..small_model(
                name,
                &root,
                dir.path().join(format!("{name}-model")),
                512,
                1,
            )
        })
        .expect("trains")
        .family
    };

    let card = train(256, "tiles-256");
    let choice = card.input_size_choice.expect("the choice is on the card");
    let sizes: Vec<usize> = choice.trials.iter().map(|t| t.input_size).collect();
    assert_eq!(sizes, [128, 256], "{choice:?}");
    assert_eq!(choice.median_shorter_side, 256);
    // 20 good training images: 16 fit, 4 validate (each scored unpainted and painted).
    assert_eq!((choice.n_fit, choice.n_validation), (16, 4));
    for trial in &choice.trials {
        assert!(
            (0.0..=1.0).contains(&trial.painted_auroc) && trial.seconds > 0.0,
            "{trial:?}"
        );
    }
    assert_eq!(choice.chosen, input_size::chosen_size(&choice.trials));
    assert_eq!(
        card.input.input_size, choice.chosen,
        "trained at the size chosen"
    );
    let stages = card.patch_stages_choice.as_ref().expect("the maps' choice");
    let tried: Vec<PatchStages> = stages.trials.iter().map(|t| t.stages).collect();
    assert_eq!(tried, PatchStages::ALL, "{stages:?}");
    assert!(
        (stages.trials.iter()).all(|t| (0.0..=1.0).contains(&t.painted_auroc) && t.seconds > 0.0),
        "{stages:?}"
    );
    assert_eq!((stages.n_fit, stages.n_validation), (16, 4));
    assert_eq!(stages.chosen, patch_stages::chosen_stages(&stages.trials));
    assert_eq!(card.input.patch_stages, stages.chosen, "trained on them");

    let card = train(96, "tiles-96");
    let choice = card.input_size_choice.expect("the choice is on the card");
    assert!(choice.trials.is_empty(), "{choice:?}");
    assert_eq!((choice.chosen, card.input.input_size), (128, 128));
    assert!(choice.rule.contains("only candidate"), "{}", choice.rule);
    // The input size had nothing to compare; the maps still do.
    let stages = card.patch_stages_choice.expect("the maps' choice");
    assert_eq!(stages.trials.len(), PatchStages::ALL.len(), "{stages:?}");
}

/// A model whose patch features keep one feature map keeps it wherever it is loaded: the
/// card records the map, the loaded model zeroes the other in every patch and scores the
/// held-out parts exactly as training did; a card without the field (a model from before the
/// choice) reads both maps and scores differently.
#[test]
fn a_model_keeps_the_feature_maps_it_learnt_on_when_loaded() {
    let _one = crate::CPU_HEAVY.blocking_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("parts");
    write_mvtec_parts(&root, &mut PartGenerator::new(9, 128, 128, 0.0), 20, 4);
    let model_dir = dir.path().join("model");
    let card = anomaly_train::train(&AnomalySettings {
        patch_stages: StagesSetting::Given(PatchStages::Stride8),
        ..small_model("stride8", &root, model_dir.clone(), 512, 2)
    })
    .expect("trains")
    .family;
    assert_eq!(card.input.patch_stages, PatchStages::Stride8);
    assert!(card.patch_stages_choice.is_none(), "given, not chosen");

    let weights = backbone_weights();
    let load = || {
        AnomalyModel::load(
            &model_dir,
            &WeightsSearch::file(&weights),
            &candle_core::Device::Cpu,
        )
        .expect("loads")
    };
    let loaded = load();
    assert_eq!(
        loaded.model.extractor().patch_stages(),
        PatchStages::Stride8
    );
    // Its discriminator was trained, saved and loaded on those 40 channels.
    assert_eq!(
        (loaded.model.discriminator())
            .expect("a discriminator")
            .channels(),
        40
    );
    let samples = linesight::learn::dataset::read(Layout::Mvtec, &root).expect("dataset");
    let (_, held_out) =
        linesight::learn::dataset::split_every(&samples, anomaly_train::HOLDOUT_EVERY);
    let (again, _) = anomaly_train::evaluate_each(
        &loaded.model,
        &held_out,
        loaded.card.head.threshold,
        &Progress::hidden(),
    )
    .expect("evaluates");
    assert_eq!(
        again.detection.image_auroc,
        card.metrics.detection.image_auroc
    );
    assert_eq!(again.at_threshold, card.metrics.at_threshold);
    let image = (held_out.iter())
        .find_map(|s| linesight::learn::dataset::load_gray(&s.image).ok())
        .expect("a readable held-out image");
    let patches = (loaded
        .model
        .extractor()
        .extract(&image)
        .expect("features")
        .patches)
        .to_vec2::<f32>()
        .expect("patches");
    let stride8 = linesight::models::backbone::FEATURE_CHANNELS.0;
    assert!(
        patches
            .iter()
            .all(|p| p[stride8..].iter().all(|&v| v == 0.0))
    );
    assert!(
        patches
            .iter()
            .any(|p| p[..stride8].iter().any(|&v| v != 0.0))
    );
    let (raw, _) = loaded.model.raw_scores(&image).expect("raw scores");

    let mut card_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model_dir.join(CARD_FILE)).expect("card"))
            .expect("card json");
    assert_eq!(card_json["patch_stages"], "stride8");
    // A card from before the maps were chosen, which had no discriminator either.
    let object = card_json.as_object_mut().expect("card object");
    object.remove("patch_stages");
    object.remove("discriminator");
    (object["score_scale"].as_object_mut())
        .expect("a score scale")
        .remove("discriminator");
    std::fs::write(model_dir.join(CARD_FILE), card_json.to_string()).expect("card");
    let old = load();
    assert_eq!(old.model.extractor().patch_stages(), PatchStages::Both);
    let (old_raw, _) = old.model.raw_scores(&image).expect("raw scores");
    assert_ne!(old_raw.patch, raw.patch, "both maps read");
}

/// With enough good validation images (100 good parts, 20 of them validating) the run chooses
/// which scores it sums on defects painted on them: the patch score always, the others where
/// they clear the bar; the scale leaves out exactly the rest, the model shipped sums what the
/// card says, and a card whose scale and choice disagree is refused.
#[test]
fn the_scores_summed_are_chosen_on_defects_painted_on_the_validation_images() {
    let _one = crate::CPU_HEAVY.blocking_lock();
    let weights = backbone_weights();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("parts");
    let mut generator = PartGenerator::new(8, 128, 128, 0.0);
    write_mvtec_parts(&root, &mut generator, 100, 4);
    let out = dir.path().join("model");
    let card = anomaly_train::train(&small_model("chosen-scores", &root, out.clone(), 512, 2))
        .expect("trains")
        .family;
    let choice = card.score_choice.clone().expect("the score choice");
    assert_eq!((choice.n_good, choice.n_painted), (20, 40));
    assert!(!choice.rule.contains("too few"), "{}", choice.rule);
    assert!(choice.counted.contains(&ScoreKind::Patch), "{choice:?}");
    let scale = card.score_scale.expect("a score scale");
    for kind in ScoreKind::ALL {
        let auroc = choice
            .painted_auroc
            .of_kind(kind)
            .expect("every score tried");
        let counted = choice.counted.contains(&kind);
        assert_eq!(
            scale.left_out.contains(kind),
            !counted,
            "{kind:?}: {choice:?}"
        );
        if kind != ScoreKind::Patch && !choice.rule.starts_with("every score") {
            assert_eq!(counted, auroc >= choice.bar, "{kind:?}: {choice:?}");
        }
    }

    // The model shipped sums the counted scores, each in good standard deviations, by hand.
    let AnomalyModel { model, .. } = AnomalyModel::load(
        &out,
        &WeightsSearch::file(&weights),
        &candle_core::Device::Cpu,
    )
    .expect("loads");
    let part = generator.render(Some(DefectKind::Scratch)).image;
    let (raw, _) = model.raw_scores(&part).expect("scores");
    let spread = |kind: ScoreKind| match kind {
        ScoreKind::Patch => (scale.patch_mean, scale.patch_std),
        ScoreKind::Image => (scale.image_mean, scale.image_std),
        ScoreKind::Head => scale.head.map(|s| (s.mean, s.std)).expect("head spread"),
        ScoreKind::CoarseImage => (scale.coarse_image)
            .map(|s| (s.mean, s.std))
            .expect("coarse spread"),
        ScoreKind::Discriminator => (scale.discriminator)
            .map(|s| (s.mean, s.std))
            .expect("discriminator spread"),
    };
    let by_hand: f32 = (choice.counted.iter())
        .map(|&kind| {
            let (mean, std) = spread(kind);
            (kind.of(&raw).expect("scored") - mean) / std
        })
        .sum();
    let combined = model.combined(raw);
    assert!(
        (combined - by_hand).abs() <= 1e-4 * by_hand.abs().max(1.0),
        "{combined} against {by_hand} by hand"
    );

    // A card whose scale leaves out the patch score, or other scores than its choice, is
    // refused, saying so.
    let card_path = out.join(CARD_FILE);
    let card_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&card_path).expect("card")).expect("json");
    let refused = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut edited = card_json.clone();
        edit(&mut edited);
        std::fs::write(&card_path, edited.to_string()).expect("card");
        AnomalyModel::load(
            &out,
            &WeightsSearch::file(&weights),
            &candle_core::Device::Cpu,
        )
        .expect_err("refused")
        .to_string()
    };
    let why = refused(&|card| card["score_scale"]["left_out"] = serde_json::json!(["patch"]));
    assert!(why.contains("names the patch score"), "{why}");
    let why = refused(&|card| {
        card["score_choice"]["counted"] = serde_json::json!(["patch"]);
        card["score_scale"]["left_out"] = serde_json::json!([]);
    });
    assert!(
        why.contains("is not what `score_choice.counted` leaves out"),
        "{why}"
    );
}

/// A new product with a handful of good images (KolektorSDD's subset has 7): one lands in the
/// validation fold, the rest are fitted. Every one of them is still scored by a bank that never
/// held its patches, so the threshold sits above good parts the model has not seen, rather
/// than above the training images' own scores, which a bank holding their patches puts near
/// zero (KolektorSDD: all 6 held-out good parts rejected that way).
#[test]
fn a_handful_of_good_images_still_sets_the_threshold_on_parts_each_bank_never_saw() {
    let _one = crate::CPU_HEAVY.blocking_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("parts");
    let mut generator = PartGenerator::new(23, 256, 256, 0.0);
    write_mvtec_parts(&root, &mut generator, 7, 12);
    let card = anomaly_train::train(&small_model(
        "few-goods",
        &root,
        dir.path().join("model"),
        1024,
        5,
    ))
    .expect("trains");
    // All 7 scored out of fold, and the model shipped learns from all 7.
    assert_eq!(
        (card.family.n_train_good, card.family.n_validation_good),
        (7, 7),
        "{}",
        card.head.threshold_rule
    );
    assert!(
        card.head.threshold_rule.contains("cross-conformal"),
        "{}",
        card.head.threshold_rule
    );
    // 7 scores are too few for a 5 % promise (it takes 19): the rule says so.
    assert!(card.head.threshold_guarantee.is_none());
    assert!(
        card.head.threshold_rule.contains("without a guarantee"),
        "{}",
        card.head.threshold_rule
    );
    // Too few validation images to choose which scores count: all of them do.
    assert!(card.family.score_choice.is_none());
    // The 12 held-out good parts: a threshold above 7 good parts each scored by a bank
    // without it rejects about one new good part in 8, far from all of them.
    let at_threshold = &card.family.metrics.at_threshold;
    assert!(
        at_threshold.false_reject_rate <= 0.5,
        "{at_threshold:?}: {}",
        card.head.threshold_rule
    );
}

#[test]
fn anomaly_model_learns_good_parts_and_flags_defects() {
    let _one = crate::CPU_HEAVY.blocking_lock();
    let weights = backbone_weights();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("parts");
    let mut generator = PartGenerator::new(21, 256, 256, 0.0);
    write_mvtec_parts(&root, &mut generator, 24, 12);
    // A corrupt test image is skipped and counted, not fatal.
    std::fs::write(root.join("test/good/999.png"), b"not a png").expect("write");

    let settings = small_model("synthetic-parts", &root, dir.path().join("model"), 1024, 3);
    // A coarse image score at the model's own input size would count the image score twice.
    let refused = anomaly_train::train(&AnomalySettings {
        coarse_input_size: Some(128),
        ..settings.clone()
    })
    .expect_err("coarse size not below the input size")
    .to_string();
    assert!(refused.contains("coarse image score"), "{refused}");
    // A discriminator without noise would learn nothing: refused before anything is read.
    for noise in [0.0, f32::NAN] {
        let refused = anomaly_train::train(&AnomalySettings {
            discriminator_noise_std: noise,
            ..settings.clone()
        })
        .expect_err("no noise")
        .to_string();
        assert!(refused.contains("discriminator noise"), "{refused}");
    }
    let card = anomaly_train::train(&settings).expect("trains");
    // The 24 good training images in five folds, every 5th the validation fold: each fold is
    // scored by a bank and image Gaussians fitted without it, and all 24 scores choose the
    // threshold (cross-conformal); the bank and image Gaussians shipped learn from all 24.
    let head = &card.head;
    assert_eq!(head.kind, "anomaly");
    assert!(head.version.starts_with("synthetic-parts@"));
    assert!(head.threshold > 0.0);
    let card = &card.family;
    assert_eq!((card.n_train_good, card.n_validation_good), (24, 24));
    // 24 good images can promise 5 % false rejects (it takes 19), where the validation fold's
    // 4 alone could not; the rule says the promise is approximate.
    let promise = head
        .threshold_guarantee
        .expect("a promise from 24 good images");
    assert_eq!(promise.n, 24);
    assert!(
        head.threshold_rule.contains("5-fold cross-conformal")
            && head.threshold_rule.contains("approximate"),
        "{}",
        head.threshold_rule
    );
    // The drift reference: the inputs of the first fit's 20 images, their limit chosen on the
    // 4 validation images it never saw; the good scores of all 24, each from its fold's model.
    let drift = head.drift.as_ref().expect("a drift reference on the card");
    assert_eq!((drift.input.n_fit, drift.input.n_calibration), (20, 4));
    assert_eq!(drift.good_scores.len(), 24);
    assert!(!drift.scores_of_shipped_model);
    assert!(drift.input.limit.is_finite() && drift.input.limit > 0.0);
    // The image score, the patch head, the coarse image score and the discriminator are on,
    // scaled on the out-of-fold scores; the card says how the discriminator was trained.
    let scale = card.score_scale.expect("a score scale");
    assert!(scale.head.is_some(), "{card:?}");
    assert!(scale.coarse_image.is_some(), "{card:?}");
    assert!(scale.discriminator.is_some(), "{card:?}");
    let judge = card.discriminator.expect("the discriminator's settings");
    assert_eq!(
        (judge.steps, judge.noise_std, judge.hidden),
        (40, discriminator::DEFAULT_NOISE_STD, discriminator::HIDDEN)
    );
    // Which of them the model sums was tried on the 4 validation images, each also with 2
    // painted defects, scored by the first fit: too few to leave a score out, so all five
    // count, and the trial is on the card.
    let choice = card.score_choice.as_ref().expect("the score choice");
    assert_eq!((choice.n_good, choice.n_painted), (4, 8));
    assert_eq!(choice.counted, ScoreKind::ALL.to_vec(), "{choice:?}");
    assert!(choice.rule.contains("too few"), "{}", choice.rule);
    assert!(scale.left_out.is_empty(), "{scale:?}");
    for kind in ScoreKind::ALL {
        let auroc = choice
            .painted_auroc
            .of_kind(kind)
            .expect("every score tried");
        assert!((0.0..=1.0).contains(&auroc), "{kind:?}: {auroc}");
    }
    assert_eq!(card.coarse_input_size, Some(64));
    assert_eq!(card.synthetic_defects_per_good, 2);
    assert_eq!(card.input.input_size, 128);
    assert_eq!(card.input.resampling, Resampling::Antialiased);
    let metrics = &card.metrics;
    assert_eq!(
        (
            metrics.detection.n_test,
            metrics.detection.n_test_defective,
            metrics.detection.n_skipped
        ),
        (24, 12, 1)
    );
    let image_auroc = metrics
        .detection
        .image_auroc
        .expect("both classes held out");
    assert!(image_auroc > 0.9, "image AUROC {image_auroc}");
    assert!(
        metrics.detection.pixel_auroc.expect("masks") > 0.8,
        "pixel AUROC {:?}",
        metrics.detection.pixel_auroc
    );

    // The saved model scores exactly as the trained one did.
    let AnomalyModel {
        model,
        card: loaded_card,
    } = AnomalyModel::load(
        &dir.path().join("model"),
        &WeightsSearch::file(&weights),
        &candle_core::Device::Cpu,
    )
    .expect("loads");
    // The card names the weights by content, and the model loads wherever its folder is put,
    // with no weights beside it: a station finds them in the usual places.
    let named = loaded_card
        .family
        .input
        .weights
        .clone()
        .expect("the card names its weights");
    assert_eq!(
        named,
        WeightsId::of_file("efficientnet-lite0", &weights).expect("digest")
    );
    let moved = tempfile::tempdir().expect("tempdir");
    let moved_model = moved.path().join("registry/synthetic-parts");
    std::fs::create_dir_all(&moved_model).expect("mkdir");
    for entry in std::fs::read_dir(dir.path().join("model")).expect("model files") {
        let file = entry.expect("entry").path();
        std::fs::copy(&file, moved_model.join(file.file_name().expect("name"))).expect("copy");
    }
    let registry = Registry::new(
        moved.path().join("registry"),
        None,
        candle_core::Device::Cpu,
    );
    registry
        .load_dir(&moved_model)
        .expect("a moved model loads");
    // Weights of other content are never used, and the error says where it looked.
    let mut other = loaded_card.clone();
    other.family.input.weights = Some(WeightsId {
        sha256: "0".repeat(64),
        ..named
    });
    other.write(&moved_model).expect("card");
    let refused = registry
        .load_dir(&moved_model)
        .expect_err("no such weights")
        .to_string();
    assert!(
        refused.contains("000000000000")
            && refused.contains(
                "models/efficientnet-lite0/efficientnet-lite0.safetensors: other weights"
            ),
        "{refused}"
    );
    assert_eq!(loaded_card.family.bank_size, card.bank_size);
    let coarse = model.coarse_image().expect("the coarse image score");
    assert_eq!(coarse.extractor().input_size(), 64);
    assert_eq!(
        model.discriminator().expect("the discriminator").channels(),
        152
    );
    assert!(metrics.score_auroc.discriminator.is_some(), "{metrics:?}");
    assert_eq!(coarse.extractor().resampling(), Resampling::Antialiased);
    let samples = linesight::learn::dataset::read(Layout::Mvtec, &root).expect("dataset");
    let (training, held_out) =
        linesight::learn::dataset::split_every(&samples, anomaly_train::HOLDOUT_EVERY);
    // The threshold is calibrated on scores of models that never learnt the image they scored:
    // the same good training images score far higher there than under the model shipped,
    // whose bank holds their own patches. Were a fold's images in the model scoring them, the
    // two would be alike.
    let good_training: Vec<_> = training.into_iter().filter(|s| !s.defective()).collect();
    let (_, in_sample) = anomaly_train::evaluate_each(
        &model,
        &good_training,
        loaded_card.head.threshold,
        &Progress::hidden(),
    )
    .expect("scores the training images");
    let median = |scores: &mut Vec<f32>| {
        scores.sort_by(f32::total_cmp);
        scores[scores.len() / 2]
    };
    let in_sample_median = median(&mut in_sample.iter().map(|s| s.score).collect());
    let out_of_fold_median = median(
        &mut (loaded_card.head.drift.as_ref())
            .expect("drift")
            .good_scores
            .clone(),
    );
    assert!(
        out_of_fold_median > in_sample_median + 1.0,
        "out of fold {out_of_fold_median}, in sample {in_sample_median}"
    );
    let (again, each) = anomaly_train::evaluate_each(
        &model,
        &held_out,
        loaded_card.head.threshold,
        &Progress::hidden(),
    )
    .expect("evaluates");
    assert_eq!(again.at_threshold, metrics.at_threshold);
    assert_eq!(again.detection.image_auroc, metrics.detection.image_auroc);
    // Each image's scores, in the samples' order: the model's score is its raw scores
    // combined, and the rejected defective ones are the escape rate's complement.
    assert_eq!(each.len(), again.detection.n_test);
    for (scored, sample) in each.iter().zip(&held_out) {
        assert_eq!(
            (&scored.image, &scored.class),
            (&sample.image, &sample.class)
        );
        assert_eq!(scored.score, model.combined(scored.raw));
    }
    let defective: Vec<_> = each.iter().filter(|s| s.class != "good").collect();
    let caught = (defective.iter())
        .filter(|s| s.score >= loaded_card.head.threshold)
        .count();
    let escape_rate = 1.0 - caught as f64 / defective.len() as f64;
    assert!((escape_rate - again.at_threshold.escape_rate).abs() < 1e-9);
    // Every score the model sums, judged alone: each separates the painted defects from good
    // parts by itself to some degree, and one alone is what the combined score is not.
    let alone = &again.score_auroc;
    for (score, auroc) in [
        ("patch", alone.patch),
        ("image", alone.image),
        ("head", alone.head),
        ("coarse image", alone.coarse_image),
    ] {
        let auroc = auroc.unwrap_or_else(|| panic!("no AUROC of the {score} score alone"));
        assert!((0.5..=1.0).contains(&auroc), "{score} alone: {auroc}");
    }
    // The discriminator's too, judged alone (40 steps here: a figure, not a promise).
    let judged = alone
        .discriminator
        .expect("the discriminator's AUROC alone");
    assert!(
        (0.0..=1.0).contains(&judged),
        "discriminator alone: {judged}"
    );

    // The shadow and the training jobs score on one-thread pools of their own: the same score
    // as on every core (the kernels split work, never a sum), so a shadow's disagreements
    // with the live model are the models', not the threads'.
    let part = generator
        .render(Some(linesight::simulate::DefectKind::Scratch))
        .image;
    let (everywhere, _) = model.score(&part).expect("score");
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("pool")
        .install(|| model.score(&part))
        .expect("score")
        .0;
    assert!(
        (everywhere - one_thread).abs() <= 1e-5 * everywhere.abs().max(1.0),
        "{everywhere} on every core, {one_thread} on one thread"
    );

    // Parts scored side by side in one pass (`[model] batch`) get each its own scores, as
    // alone, whatever their sizes or what shares the batch.
    let mut other_camera = PartGenerator::new(5, 200, 160, 0.0);
    let batch = [
        part.clone(),
        generator.render(None).image,
        other_camera.render(Some(DefectKind::ALL[0])).image,
        other_camera.render(None).image,
    ];
    let images: Vec<&linesight::part::GrayImage> = batch.iter().collect();
    let together = model.raw_scores_many(&images).expect("batch scores");
    assert_eq!(together.len(), batch.len());
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * a.abs().max(1.0);
    for (i, (image, (raw, heat_map))) in batch.iter().zip(&together).enumerate() {
        let (alone, alone_map) = model.raw_scores(image).expect("score");
        let pairs = [
            (Some(alone.patch), Some(raw.patch)),
            (alone.image, raw.image),
            (alone.head, raw.head),
            (alone.coarse_image, raw.coarse_image),
            (alone.discriminator, raw.discriminator),
        ];
        for (a, b) in pairs {
            let (Some(a), Some(b)) = (a, b) else {
                panic!("image {i}: a score alone or in the batch is missing: {alone:?} / {raw:?}");
            };
            assert!(
                close(a, b),
                "image {i}: {alone:?} alone, {raw:?} in the batch"
            );
        }
        assert_eq!(heat_map.values.len(), alone_map.values.len());
        assert!(
            (heat_map.values.iter().zip(&alone_map.values)).all(|(&b, &a)| close(a, b)),
            "image {i}: heat maps differ"
        );
    }
    // bfloat16 products in the backbone's 1×1 convolutions (`[model] precision`, on CPUs
    // with AVX-512 BF16) move a model's scores by well under the spread of good parts' own
    // scores, and change no verdict away from the threshold. (On magnetic-tile the held-out
    // AUROC moved by 0.0007: `make eval-precision`.)
    if bf16::cpu_has_bf16() {
        let in_f32 = model.clone().with_precision(Precision::F32);
        let in_bf16 = model.clone().with_precision(Precision::Bf16);
        let threshold = loaded_card.head.threshold;
        let (mut pairs, mut good) = (Vec::new(), Vec::new());
        // (The corrupt test image is skipped, as evaluation skips it.)
        for sample in &held_out {
            let Ok(image) = linesight::learn::dataset::load_gray(&sample.image) else {
                continue;
            };
            let (f32_score, _) = in_f32.score(&image).expect("f32 score");
            let (bf16_score, _) = in_bf16.score(&image).expect("bf16 score");
            pairs.push((sample.image.clone(), f32_score, bf16_score));
            if !sample.defective() {
                good.push(f32_score);
            }
        }
        let mean = good.iter().sum::<f32>() / good.len() as f32;
        let spread =
            (good.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / good.len() as f32).sqrt();
        let bound = BF16_SHARE_OF_GOOD_SPREAD * spread;
        let worst = (pairs.iter())
            .map(|(_, a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("largest bf16 score change {worst}, bound {bound} (good parts' spread {spread})");
        assert!(
            worst <= bound,
            "bf16 moved a score by {worst}, more than {bound}"
        );
        for (path, f32_score, bf16_score) in &pairs {
            if (f32_score - threshold).abs() > bound {
                assert_eq!(
                    f32_score > &threshold,
                    bf16_score > &threshold,
                    "{}: {f32_score} in f32, {bf16_score} in bf16, threshold {threshold}",
                    path.display()
                );
            }
        }
    } else {
        eprintln!("skipping the bf16 check: this CPU has no AVX-512 BF16");
    }

    // The scores differ from image to image: the batch did not score one image four times.
    assert!(
        together
            .windows(2)
            .all(|pair| pair[0].0.patch != pair[1].0.patch),
        "{together:?}"
    );

    // A model saved before the image score (a bank alone, no scale or resampling in its card)
    // still loads, resamples images as it was trained to and scores by its patch distance
    // alone.
    let old = dir.path().join("old-model");
    std::fs::create_dir_all(&old).expect("old model dir");
    model
        .bank()
        .save_safetensors("bank", old.join(BANK_FILE))
        .expect("old bank");
    let card_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("model").join(CARD_FILE)).expect("card"),
    )
    .expect("card json");
    // The card without the given fields.
    let without = |keys: &[&str]| {
        let mut card = card_json.clone();
        for key in keys {
            card.as_object_mut().expect("card object").remove(*key);
        }
        card
    };
    let load_refused = |card: &serde_json::Value| {
        std::fs::write(old.join(CARD_FILE), card.to_string()).expect("card");
        AnomalyModel::load(
            &old,
            &WeightsSearch::file(&weights),
            &candle_core::Device::Cpu,
        )
        .expect_err("refused")
        .to_string()
    };
    // A card whose scale has a coarse spread but no coarse input size is refused: its
    // threshold was set on a sum with the coarse score in it.
    let refused = load_refused(&without(&["coarse_input_size"]));
    assert!(refused.contains("must come together"), "{refused}");
    // A card that names a coarse image score its bank file lacks is refused, saying so.
    // (An old card has no score choice either: a choice without a scale is refused.)
    let refused = load_refused(&without(&["score_scale", "resampling"]));
    assert!(refused.contains("without the `score_scale`"), "{refused}");
    let refused = load_refused(&without(&["score_scale", "resampling", "score_choice"]));
    assert!(refused.contains("coarse_image_mean"), "{refused}");
    // Likewise the discriminator: its spread without its settings, or settings whose tensors
    // the bank file lacks.
    let refused = load_refused(&without(&["discriminator"]));
    assert!(refused.contains("must come together"), "{refused}");
    let refused = load_refused(&without(&[
        "score_scale",
        "resampling",
        "score_choice",
        "coarse_input_size",
    ]));
    assert!(
        refused.contains("discriminator.adaptor_weight"),
        "{refused}"
    );
    let old_card = without(&[
        "score_scale",
        "resampling",
        "coarse_input_size",
        "score_choice",
        "discriminator",
    ]);
    std::fs::write(old.join(CARD_FILE), old_card.to_string()).expect("old card");
    let AnomalyModel {
        model: old_model,
        card: old_loaded_card,
    } = AnomalyModel::load(
        &old,
        &WeightsSearch::file(&weights),
        &candle_core::Device::Cpu,
    )
    .expect("old model loads");
    assert!(old_loaded_card.family.score_scale.is_none());
    assert_eq!(
        old_loaded_card.family.input.resampling,
        Resampling::Bilinear
    );
    assert_eq!(old_model.extractor().resampling(), Resampling::Bilinear);
    assert_eq!(model.extractor().resampling(), Resampling::Antialiased);
    let image = held_out
        .iter()
        .find_map(|s| linesight::learn::dataset::load_gray(&s.image).ok())
        .expect("a readable held-out image");
    let (raw, _) = old_model.raw_scores(&image).expect("raw scores");
    assert_eq!(raw.image, None);
    assert_eq!(old_model.score(&image).expect("score").0, raw.patch);
    assert_eq!(raw.head, None);
    assert_eq!(raw.coarse_image, None);
    assert_eq!(raw.discriminator, None);
    // The current model's score is the combined one, not the patch distance; its head,
    // coarse image Gaussian and discriminator came back from the bank file.
    let (raw, _) = model.raw_scores(&image).expect("raw scores");
    assert!(
        raw.image.is_some()
            && raw.head.is_some()
            && raw.coarse_image.is_some()
            && raw.discriminator.is_some(),
        "{raw:?}"
    );
    assert_ne!(model.score(&image).expect("score").0, raw.patch);

    // What the station stores (issue 19): heat maps on the threshold's scale, where a good
    // part stays calm and a defect stands out. Raw patch distances against a threshold in
    // deviations saturated them.
    let stored = crate::stored_heat_maps(
        Registry::new(dir.path().to_owned(), None, candle_core::Device::Cpu)
            .load_dir(&dir.path().join("model"))
            .expect("loads"),
        &held_out,
        (256, 256),
    );
    crate::assert_heat_maps_show_the_threshold(&stored);

    // `linesight eval` scores a test set of its own and says which part it scored (issue 21:
    // it always took the held-out quarter, and a folder with none reported zeros, exit 0).
    let eval = |data: &Path, layout: &str, split: &str, scores: Option<&Path>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_linesight"));
        command.arg("eval").arg("anomaly");
        if let Some(scores) = scores {
            command.arg("--scores").arg(scores);
        }
        let output = command
            .arg("--model")
            .arg(dir.path().join("model"))
            .args(["--layout", layout, "--split", split, "--data"])
            .arg(data)
            .arg("--backbone")
            .arg(&weights)
            .output()
            .expect("runs linesight");
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (
            output.status.success(),
            text(&output.stdout),
            text(&output.stderr),
        )
    };
    let test_items = |stdout: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("test items"))
            .map(|n| n.trim().to_owned())
    };
    // Three tiles a class: every fourth held out is none of them.
    let tiles = dir.path().join("tiles");
    write_tile_dataset(&tiles, &mut PartGenerator::new(8, 256, 256, 0.0), 3);
    let (ok, _, stderr) = eval(&tiles, "magnetic-tile", "held-out", None);
    assert!(!ok, "nothing scored must fail");
    assert!(
        stderr.contains("no image of") && stderr.contains("--split all"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = eval(&tiles, "magnetic-tile", "all", None);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("scored: every image of the folder"),
        "{stdout}"
    );
    assert_eq!(test_items(&stdout).as_deref(), Some("9"), "{stdout}");
    let (ok, stdout, stderr) = eval(&root, "mvtec", "held-out", None);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("scored: the held-out part"), "{stdout}");
    assert_eq!(test_items(&stdout).as_deref(), Some("24"), "{stdout}");
    assert!(stdout.contains("AUROC of patch alone"), "{stdout}");

    // `--scores` lists every scored image with its scores, as the table counts them.
    let listed = dir.path().join("scores.csv");
    let (ok, stdout, stderr) = eval(&tiles, "magnetic-tile", "all", Some(&listed));
    assert!(ok, "{stderr}");
    let mut rows = csv::Reader::from_path(&listed).expect("the scores are CSV");
    assert_eq!(
        rows.headers().expect("a header").iter().collect::<Vec<_>>(),
        [
            "image",
            "class",
            "score",
            "rejected",
            "patch",
            "image_gaussian",
            "head",
            "coarse_image",
            "discriminator"
        ]
    );
    let rows: Vec<csv::StringRecord> = rows.records().map(|r| r.expect("a row")).collect();
    assert_eq!(rows.len(), 9);
    let rejected = rows.iter().filter(|r| &r[3] == "true").count();
    let good_rejected = rows
        .iter()
        .filter(|r| &r[3] == "true" && &r[1] == "good")
        .count();
    for row in &rows {
        assert!(Path::new(&row[0]).starts_with(&tiles), "{row:?}");
        for column in 2..8 {
            if column != 3 {
                row[column].parse::<f32>().expect("a score in every column");
            }
        }
    }
    let share = |figure: &str| -> f64 {
        let line = (stdout.lines())
            .find_map(|l| l.strip_prefix(figure))
            .unwrap_or_else(|| panic!("no {figure} in {stdout}"));
        line.trim().parse().expect("a figure")
    };
    let goods = rows.iter().filter(|r| &r[1] == "good").count();
    let good_rate = good_rejected as f64 / goods as f64;
    assert!(
        (share("false-reject rate") - good_rate).abs() < 1e-4,
        "{stdout}"
    );
    let defect_rate = (rejected - good_rejected) as f64 / (rows.len() - goods) as f64;
    assert!(
        (share("escape rate") - (1.0 - defect_rate)).abs() < 1e-4,
        "{stdout}"
    );
    // A file it cannot write fails the run, saying where.
    let (ok, _, stderr) = eval(
        &root,
        "mvtec",
        "held-out",
        Some(&dir.path().join("no/such/dir/s.csv")),
    );
    assert!(!ok && stderr.contains("writing the scores to"), "{stderr}");
}

/// A product's good image, 128×128: a grain of dark and bright specks on grey that runs no
/// way in particular, and, with `marked`, a thick letter F printed near the top-left corner,
/// as a label or a moulded mark is: no flip or turn leaves an F an F.
fn speckled(rng: &mut impl rand::Rng, marked: bool) -> linesight::part::GrayImage {
    const SIDE: usize = 128;
    let mut pixels: Vec<u8> = (0..SIDE * SIDE).map(|_| rng.gen_range(110..146)).collect();
    for _ in 0..40 {
        let (cx, cy) = (rng.gen_range(0..SIDE), rng.gen_range(0..SIDE));
        let value = if rng.gen_bool(0.5) { 40 } else { 220 };
        for y in cy.saturating_sub(2)..(cy + 3).min(SIDE) {
            for x in cx.saturating_sub(2)..(cx + 3).min(SIDE) {
                pixels[y * SIDE + x] = value;
            }
        }
    }
    if marked {
        // The F's stem, its top bar and its shorter middle bar, 10 pixels thick.
        for (x0, x1, y0, y1) in [(16, 26, 12, 76), (16, 66, 12, 22), (16, 50, 38, 48)] {
            for y in y0..y1 {
                for x in x0..x1 {
                    pixels[y * SIDE + x] = 250;
                }
            }
        }
    }
    linesight::part::GrayImage::new(SIDE as u32, SIDE as u32, pixels).expect("size")
}

/// `--orientations auto`: the bank learns turned copies of the good images only where a
/// turned good part still looks like the product's good parts. A grain that runs every way
/// takes its turns; a part marked with an F takes none (a bank that learnt a mirrored F would
/// pass a part mounted the wrong way round). The card keeps each trial; turns given by name
/// are taken as given.
#[test]
fn turned_copies_are_learnt_only_where_a_turned_good_part_is_still_good() {
    use linesight::models::anomaly::orientation::{self, MAX_TURNED_AUROC, Orientation};
    use rand::SeedableRng;

    let _one = crate::CPU_HEAVY.blocking_lock();
    let dir = tempfile::tempdir().expect("tempdir");
    let write_product = |name: &str, marked: bool| {
        let root = dir.path().join(name);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for i in 0..60 {
            let image = speckled(&mut rng, marked);
            crate::write_png(&root.join(format!("train/good/{i:03}.png")), &image);
        }
        for i in 0..4 {
            let image = speckled(&mut rng, marked);
            crate::write_png(&root.join(format!("test/good/{i:03}.png")), &image);
        }
        root
    };
    let train = |root: &Path, orientations: Orientations| {
        anomaly_train::train(&AnomalySettings {
            synthetic_defects_per_good: 0,
            coarse_input_size: None,
            orientations,
            ..small_model("turns", root, root.with_extension("model"), 512, 1)
        })
        .expect("trains")
    };
    // How many of `images` the model just trained on `root` rejects.
    let rejected = |root: &Path, images: &[linesight::part::GrayImage]| {
        let loaded = AnomalyModel::load(
            &root.with_extension("model"),
            &WeightsSearch::file(backbone_weights()),
            &candle_core::Device::Cpu,
        )
        .expect("loads");
        (images.iter())
            .filter(|image| {
                let (score, _) = loaded.model.score(image).expect("scores");
                score >= loaded.card.head.threshold
            })
            .count()
    };

    let grain = write_product("grain", false);
    let card = train(&grain, Orientations::Auto).family;
    let choice = card.orientation_choice.expect("the choice is on the card");
    // 60 good training images: 48 fit, 12 validate; the trial takes up to 32 of each.
    assert_eq!((choice.n_fit, choice.n_validation), (32, 12), "{choice:?}");
    let tried: Vec<Orientation> = choice.trials.iter().map(|t| t.orientation).collect();
    assert_eq!(tried, Orientation::ALL, "every turn is tried");
    assert_eq!(
        choice.chosen,
        orientation::chosen_orientations(&choice.trials)
    );
    // Turned specks are specks: every trial here scored 0.33-0.45, far under the limit.
    assert_eq!(
        choice.chosen,
        Orientation::ALL,
        "a grain that runs every way keeps every turn: {choice:?}"
    );
    // The model folder reads back with its choice.
    let saved = AnomalyModel::load(
        &grain.with_extension("model"),
        &WeightsSearch::file(backbone_weights()),
        &candle_core::Device::Cpu,
    )
    .expect("loads");
    assert_eq!(saved.card.family.orientation_choice, Some(choice));

    let marked = write_product("marked", true);
    let card = train(&marked, Orientations::Auto).family;
    let choice = card.orientation_choice.expect("the choice is on the card");
    assert!(
        choice.chosen.is_empty(),
        "no turn leaves an F an F: {choice:?}"
    );
    // A mirrored or turned F scored 0.98-1.0 here, far over the limit.
    for trial in &choice.trials {
        assert!(trial.turned_auroc > MAX_TURNED_AUROC, "{trial:?}");
    }

    // Parts that arrive turned: the turns are taken as given, without a trial.
    let given: Orientations = "rotate180, flip-horizontal".parse().expect("turns");
    let card = train(&marked, given).family;
    let choice = card.orientation_choice.expect("the choice is on the card");
    assert_eq!(
        choice.chosen,
        [Orientation::Rotate180, Orientation::FlipHorizontal]
    );
    assert!(
        choice.trials.is_empty() && choice.rule.contains("given"),
        "{choice:?}"
    );
    // Every one of the 60 images turned both ways: 48 fit and 12 validation images.
    assert_eq!(choice.n_turned_images, 120, "{choice:?}");
    // The turns are learnt, not only written down: good parts mounted mirrored are rejected
    // by a model of the images as they are, and mostly passed by one that learnt the mirror.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mirrored: Vec<_> = (0..6)
        .map(|_| Orientation::FlipHorizontal.apply(&speckled(&mut rng, true)))
        .collect();
    let turned_model_rejects = rejected(&marked, &mirrored);
    let card = train(&marked, Orientations::None).family;
    assert!(card.orientation_choice.is_none());
    let plain_model_rejects = rejected(&marked, &mirrored);
    assert_eq!(
        plain_model_rejects,
        mirrored.len(),
        "a mirrored F is not a good part"
    );
    // Most pass (1 of 6 was rejected when this was written: the threshold, at a 5 % target
    // on 12 validation images, rejects some good parts too).
    assert!(
        turned_model_rejects * 2 < mirrored.len(),
        "{turned_model_rejects} of {} rejected",
        mirrored.len()
    );
    let refused = "flip-diagonal"
        .parse::<Orientations>()
        .expect_err("unknown turn");
    assert!(refused.contains("flip-horizontal"), "{refused}");
}
