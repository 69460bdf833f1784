//! Other input sizes than a model's training size (position-embedding interpolation), and the
//! visual tokenizer stage (continuous and discrete), against PyTorch references recorded by
//! scripts/make_resolution_fixtures.py (tests/fixtures/RESOLUTION.md).

mod common;

use common::*;
use glance::model::position::PositionEmbeddings;
use glance::vision::npy;
use glance::{GenerateOptions, GenerationOptions, Model, PixelValues, Resolution, Rgb8, Size};
use serde_json::Value;

fn open(name: &str) -> Model {
    open_fixture(name)
}

fn oracle(name: &str) -> Value {
    let path = model_fixture(name).join("resolution_oracle.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn array(dir: &str, entry: &Value) -> npy::Array {
    npy::read(&model_fixture(dir).join(entry["npy"].as_str().unwrap())).unwrap()
}

fn pixels(dir: &str, entry: &Value) -> PixelValues {
    let a = array(dir, entry);
    PixelValues {
        shape: a.shape.as_slice().try_into().unwrap(),
        data: a.data,
    }
}

fn size_of(case: &Value) -> Size {
    Size {
        height: case["size"][0].as_u64().unwrap() as usize,
        width: case["size"][1].as_u64().unwrap() as usize,
    }
}

/// transformers' library defaults, greedy, as the fixtures' `generate()` calls were made.
fn greedy(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        generation: GenerationOptions {
            max_new_tokens: Some(max_new_tokens),
            num_beams: Some(1),
            ..Default::default()
        },
        ignore_model_generation_config: true,
        ..Default::default()
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn encode(model: &Model, pixels: &PixelValues) -> Vec<f32> {
    let states = model.graphs().encoder.run(pixels).unwrap();
    let states = states.cast_to::<f32>().unwrap();
    let view = states.try_as_plain_ram().unwrap();
    view.as_slice::<f32>().unwrap().to_vec()
}

/// Every case of an interpolation oracle: encoder states within 1e-4 of PyTorch's, tokens
/// identical. `model` may be the split form of the oracle's model.
fn check_cases(model: &Model, oracle_dir: &str) {
    let o = oracle(oracle_dir);
    let max_new = o["max_new_tokens"].as_u64().unwrap() as usize;
    let cases = o["cases"].as_array().unwrap();
    let mut non_native = 0;
    let mut worst = 0f32;
    for case in cases {
        let what = format!("{oracle_dir} {} {:?}", case["image"], size_of(case));
        let pv = pixels(oracle_dir, &case["pixel_values"]);
        let expected = array(oracle_dir, &case["last_hidden_state"]);
        let states = encode(model, &pv);
        let diff = max_diff(&states, &expected.data);
        assert!(diff < 1e-4, "{what}: encoder states differ by {diff}");
        worst = worst.max(diff);
        let out = model.generate(&pv, &greedy(max_new)).unwrap().remove(0);
        assert_eq!(out.tokens, token_list(&case["tokens"]), "{what}: tokens");
        non_native += usize::from(!case["native"].as_bool().unwrap_or(false));
    }
    assert!(
        non_native >= 2 * 2,
        "{oracle_dir}: too few non-native cases"
    );
    eprintln!(
        "{}: {} cases ({non_native} at non-native sizes), tokens identical, encoder states within {worst:.1e}",
        model.dir().root.display(),
        cases.len()
    );
}

#[test]
fn vit_at_other_sizes_matches_hugging_face() {
    check_cases(&open("vit_res"), "vit_res");
}

#[test]
fn deit_at_other_sizes_matches_hugging_face() {
    check_cases(&open("deit_res"), "deit_res");
}

#[test]
fn split_visual_tokenizer_gives_the_unsplit_results() {
    for (split, whole) in [("vit_res_split", "vit_res"), ("deit_res_split", "deit_res")] {
        let model = open(split);
        assert!(model.dir().files.visual_tokenizer.is_some());
        check_cases(&model, whole);
    }
}

#[test]
fn image_resized_to_a_size_matches_the_processor() {
    for name in ["vit_res", "deit_res"] {
        let model = open(name);
        for case in oracle(name)["cases"].as_array().unwrap() {
            let image = Rgb8::open(&image(case["image"].as_str().unwrap())).unwrap();
            let ours = model
                .preprocess(&image, Resolution::Exact(size_of(case)))
                .unwrap();
            let theirs = pixels(name, &case["pixel_values"]);
            assert_eq!(ours.shape, theirs.shape);
            let diff = max_diff(&ours.data, &theirs.data);
            assert!(
                diff < 1e-6,
                "{name} {}: pixels differ by {diff}",
                case["image"]
            );
        }
    }
}

#[test]
fn position_embeddings_are_resampled_as_pytorch_does() {
    for name in ["vit_res", "deit_res"] {
        let o = oracle(name);
        let split = format!("{name}_split");
        let table = npy::read(&model_fixture(&split).join("position_embeddings.npy")).unwrap();
        let grid = &o["native_grid"];
        let grid = (
            grid[0].as_u64().unwrap() as usize,
            grid[1].as_u64().unwrap() as usize,
        );
        let table = PositionEmbeddings::new(&table.shape, table.data, grid).unwrap();
        assert_eq!(table.leading as u64, o["leading_tokens"].as_u64().unwrap());
        let mut checked = 0;
        for case in o["cases"].as_array().unwrap() {
            if case["position_embeddings"].is_null() {
                continue;
            }
            let expected = array(name, &case["position_embeddings"]);
            let g = &case["grid"];
            let ours = table.for_grid(
                g[0].as_u64().unwrap() as usize,
                g[1].as_u64().unwrap() as usize,
            );
            let diff = max_diff(&ours, &expected.data);
            assert!(diff < 1e-6, "{name} grid {g}: {diff}");
            checked += 1;
        }
        assert!(checked >= 3);
    }
}

#[test]
fn discrete_tokenizer_ids_and_tokens_match_pytorch() {
    let model = open("dvae");
    let o = oracle("dvae");
    let max_new = o["max_new_tokens"].as_u64().unwrap() as usize;
    for case in o["cases"].as_array().unwrap() {
        let pv = pixels("dvae", &case["pixel_values"]);
        let grid = model.tokenize(&pv).unwrap().remove(0);
        let expected: Vec<i64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()))
            .collect();
        assert_eq!(
            [grid.rows as u64, grid.cols as u64],
            [
                case["grid"][0].as_u64().unwrap(),
                case["grid"][1].as_u64().unwrap()
            ]
        );
        assert_eq!(grid.ids, expected, "{}: ids", case["image"]);
        let out = model.generate(&pv, &greedy(max_new)).unwrap().remove(0);
        assert_eq!(
            out.tokens,
            token_list(&case["tokens"]),
            "{}: tokens",
            case["image"]
        );
        // And from the image file, through the model's own preprocessing.
        let from_file = model
            .load_image(&image(case["image"].as_str().unwrap()))
            .unwrap();
        assert_eq!(model.tokenize(&from_file).unwrap().remove(0), grid);
    }
}

#[test]
fn tokenize_needs_a_discrete_tokenizer() {
    let model = open("vit_res");
    let pv = model.load_image(&image("rgb.png")).unwrap();
    let err = model.tokenize(&pv).unwrap_err().to_string();
    assert!(err.contains("discrete visual tokenizer"), "{err}");
}

#[test]
fn bad_sizes_are_clear_errors() {
    let model = open("vit_res");
    let img = Rgb8::open(&image("rgb.png")).unwrap();
    for (h, w, says) in [
        (0, 96, "zero"),
        (100, 96, "multiple of the 16x16 patch"),
        (96 * 16, 96 * 16, "limit"),
    ] {
        let err = model
            .preprocess(
                &img,
                Resolution::Exact(Size {
                    height: h,
                    width: w,
                }),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{h}x{w}")) && err.contains(says),
            "{err}"
        );
    }
    // A tensor of a size the encoder cannot take, given directly.
    let pv = PixelValues {
        shape: [1, 3, 40, 96],
        data: vec![0.0; 3 * 40 * 96],
    };
    let err = model.generate(&pv, &greedy(4)).unwrap_err().to_string();
    assert!(err.contains("40x96"), "{err}");
}

#[test]
fn keep_aspect_fits_the_patch_budget() {
    let model = open("vit_res");
    let img = Rgb8::open(&image("wide.jpg")).unwrap(); // 200x48, a text line
    let pv = model.preprocess(&img, Resolution::KeepAspect).unwrap();
    let (h, w) = (pv.height(), pv.width());
    assert!(w > h * 2, "{h}x{w} lost the aspect ratio");
    assert!((h / 16) * (w / 16) <= 36 && h % 16 == 0 && w % 16 == 0);
    let out = model.generate(&pv, &greedy(6)).unwrap().remove(0);
    assert!(out.tokens.len() > 1);
    // The native square size is kept for a square image.
    let square = Rgb8::new(50, 50, vec![128; 50 * 50 * 3]);
    let pv = model.preprocess(&square, Resolution::KeepAspect).unwrap();
    assert_eq!((pv.height(), pv.width()), (96, 96));
}

#[test]
fn cli_takes_size_keep_aspect_and_tokenize() {
    let vit = model_fixture("vit_res");
    let vit = vit.to_str().unwrap();
    let rgb = image("rgb.png");
    let rgb = rgb.to_str().unwrap();
    let o = oracle("vit_res");
    let case = o["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["image"] == "rgb.png" && c["size"] == serde_json::json!([64, 160]))
        .unwrap();
    let stdout = success_stdout(&run_glance(&[
        "run",
        "--model",
        vit,
        "--threads",
        "1",
        "--ignore-generation-config",
        "--max-new-tokens",
        "12",
        "--size",
        "64x160",
        "--json",
        rgb,
    ]));
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(token_list(&line["tokens"]), token_list(&case["tokens"]));

    let out = run_glance(&["run", "--model", vit, "--size", "64x150", rgb]);
    assert_clean_error(&out, "64x150");
    // A size that does not parse is refused by the argument parser itself.
    let out = run_glance(&["run", "--model", vit, "--size", "wide", rgb]);
    assert!(!out.status.success() && text(&out.stderr).contains("HEIGHTxWIDTH"));
    success_stdout(&run_glance(&["run", "--model", vit, "--keep-aspect", rgb]));

    let dvae = model_fixture("dvae");
    let stdout = success_stdout(&run_glance(&[
        "tokenize",
        "--model",
        dvae.to_str().unwrap(),
        rgb,
    ]));
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    let expected = &oracle("dvae")["cases"][0];
    assert_eq!(expected["image"], "rgb.png");
    assert_eq!(line["ids"], expected["ids"]);
    assert_eq!(line["grid"], expected["grid"]);
    assert_clean_error(&run_glance(&["tokenize", "--model", vit, rgb]), "discrete");
}
