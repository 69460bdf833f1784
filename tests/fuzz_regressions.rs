//! Replays, through the fuzz targets' own code (src/fuzz.rs), every input kept in
//! fuzz/regressions/TARGET/ (what `scripts/fuzz.sh` found), and a few hand-made inputs of
//! each kind: each must return without a panic.

use std::path::Path;

use glance::fuzz::{fixture_model, Target, TARGETS};

fn target(name: &str) -> Target {
    TARGETS.iter().find(|(n, _)| *n == name).unwrap().1
}

#[test]
fn kept_crashes_no_longer_crash() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut replayed = 0;
    for (name, run) in TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            println!("{name}: {}", path.display());
            run(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
    }
    println!("{replayed} kept inputs replayed");
}

#[test]
fn targets_take_valid_and_broken_inputs() {
    let fixture = fixture_model();
    let read = |name: &str| std::fs::read(fixture.join(name)).unwrap();
    let config = read("config.json");
    for input in [
        &config[..],
        &config[..config.len() / 2],
        b"[1, 2]",
        b"\xff\xfe",
    ] {
        target("config")(input);
    }
    let tokenizer = read("tokenizer.json");
    for input in [&tokenizer[..], &tokenizer[..100], b"{}"] {
        target("tokenizer")(input);
    }
    let image = std::fs::read(fixture.join("../../images/rgb.png")).unwrap();
    for input in [&image[..], &image[..300], b"GIF89a"] {
        target("image")(input);
        target("frames")(input);
    }
    let mut graph = vec![0u8];
    graph.extend(read("encoder_model.onnx"));
    target("model_dir")(&graph);
    graph.truncate(graph.len() / 3);
    target("model_dir")(&graph);
    for input in [
        &b"{\"threads\": 1}\0{\"max_new_tokens\": 2}"[..],
        b"{\"threads\": -1}\0{\"num_beams\": \"x\"}",
        b"not json\0[]",
        b"",
    ] {
        target("ffi_options")(input);
    }
}
