//! The command line: output contract, and one clear error line (no panic) for bad input.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;
use prost::Message;

fn copy_model(tag: &str) -> TempDir {
    let tmp = TempDir::new(tag);
    for entry in std::fs::read_dir(model_fixture("trocr")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            link(&path, &tmp.path().join(path.file_name().unwrap()));
        }
    }
    tmp
}

fn replace(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(path, bytes).unwrap();
}

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
fn missing_config_is_named() {
    let tmp = copy_model("noconfig");
    std::fs::remove_file(tmp.path().join("config.json")).unwrap();
    let out = run_glance(&[
        "run",
        "--model",
        tmp.path().to_str().unwrap(),
        image("rgb.png").to_str().unwrap(),
    ]);
    assert_clean_error(&out, "config.json");
}

#[test]
fn garbled_config_is_named() {
    let tmp = copy_model("badconfig");
    replace(tmp.path(), "config.json", b"{\"encoder\": [1, 2");
    let out = run_glance(&[
        "run",
        "--model",
        tmp.path().to_str().unwrap(),
        image("rgb.png").to_str().unwrap(),
    ]);
    assert_clean_error(&out, "config.json: not valid JSON");
    replace(
        tmp.path(),
        "generation_config.json",
        b"{\"num_beams\": \"four\"}",
    );
    replace(
        tmp.path(),
        "config.json",
        &std::fs::read(model_fixture("trocr").join("config.json")).unwrap(),
    );
    let out = run_glance(&[
        "run",
        "--model",
        tmp.path().to_str().unwrap(),
        image("rgb.png").to_str().unwrap(),
    ]);
    assert_clean_error(&out, "\"num_beams\" must be a non-negative integer");
}

#[test]
fn truncated_onnx_is_named() {
    let tmp = copy_model("truncated");
    let bytes = std::fs::read(model_fixture("trocr").join("decoder_model.onnx")).unwrap();
    replace(tmp.path(), "decoder_model.onnx", &bytes[..bytes.len() / 2]);
    let out = run_glance(&[
        "run",
        "--model",
        tmp.path().to_str().unwrap(),
        image("rgb.png").to_str().unwrap(),
    ]);
    assert_clean_error(&out, "decoder_model.onnx: not a valid ONNX file");
}

#[test]
fn directory_without_decoder_is_named() {
    let tmp = TempDir::new("nodecoder");
    for name in [
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "encoder_model.onnx",
    ] {
        link(&model_fixture("trocr").join(name), &tmp.path().join(name));
    }
    let out = run_glance(&[
        "run",
        "--model",
        tmp.path().to_str().unwrap(),
        image("rgb.png").to_str().unwrap(),
    ]);
    assert_clean_error(&out, "no complete set of graphs");
}

#[test]
fn unsupported_operator_is_named() {
    let tmp = copy_model("unsupported");
    let bytes = std::fs::read(model_fixture("trocr").join("encoder_model.onnx")).unwrap();
    let mut proto = tract_onnx::pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let node = proto
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.op_type == "Add")
        .unwrap();
    node.op_type = "FancyAdd".into();
    replace(tmp.path(), "encoder_model.onnx", &proto.encode_to_vec());
    let out = run_glance(&[
        "run",
        "--model",
        tmp.path().to_str().unwrap(),
        image("rgb.png").to_str().unwrap(),
    ]);
    assert_clean_error(&out, "operator not supported by tract: FancyAdd");
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
