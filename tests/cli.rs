//! The command line: output contract, inputs that fail among good ones (tests/hostile.rs has
//! the table of bad inputs).

mod common;

use std::process::Output;

use common::*;

#[test]
fn json_output_has_the_contracted_fields() {
    let model = model_fixture("trocr");
    let out = run_glance(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--json",
        "--num-beams",
        "2",
        "--num-return-sequences",
        "2",
        image("rgb.png").to_str().unwrap(),
        image("wide.jpg").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0]["image"].as_str().unwrap().ends_with("rgb.png"));
    assert!(lines[1]["image"].as_str().unwrap().ends_with("wide.jpg"));
    for l in &lines {
        assert!(l["text"].is_string());
        assert!(l["score"].is_number());
        assert_eq!(
            l["tokens"][0], 2,
            "sequences start with the decoder start token"
        );
        assert_eq!(l["sequences"].as_array().unwrap().len(), 2);
        for k in ["preprocess", "encode", "decode"] {
            assert!(l["timings_ms"][k].is_number(), "timings_ms.{k}");
        }
    }
}

#[test]
fn pixel_values_round_trip_through_npy() {
    let tmp = TempDir::new("npy");
    let npy = tmp.path().join("pv.npy");
    let model = model_fixture("trocr");
    let m = model.to_str().unwrap();
    let a = run_glance(&[
        "run",
        "--model",
        m,
        "--json",
        "--save-pixel-values",
        npy.to_str().unwrap(),
        image("gray.png").to_str().unwrap(),
    ]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let b = run_glance(&[
        "run",
        "--model",
        m,
        "--json",
        "--pixel-values",
        npy.to_str().unwrap(),
    ]);
    assert!(b.status.success(), "{}", text(&b.stderr));
    let tokens = |o: &Output| {
        serde_json::from_str::<serde_json::Value>(text(&o.stdout).lines().next().unwrap()).unwrap()
            ["tokens"]
            .clone()
    };
    assert_eq!(tokens(&a), tokens(&b));
}

#[test]
fn unreadable_image_is_named_and_others_still_run() {
    let tmp = TempDir::new("badimage");
    let bad = tmp.path().join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let model = model_fixture("trocr");
    let out = run_glance(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        bad.to_str().unwrap(),
        image("rgb.png").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.starts_with("glance: ") && err.contains("broken.png"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "the good image is still processed"
    );
}
