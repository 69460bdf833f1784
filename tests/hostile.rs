//! Hostile input: every case of README.md's "Hostile input" table, run through the `glance`
//! binary. Each must end in one clear `glance:` error line naming what was wrong (or, for the
//! image kinds glance reads, in text), never a panic, a hang or an unbounded allocation. The
//! table and these cases are checked against each other, so neither can drift.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use glance::{Model, OpenOptions};
use prost::Message;
use tract_onnx::pb::{GraphProto, ModelProto, TensorProto};

/// What a case must give.
enum Expect {
    /// A failing run whose one error line contains this.
    Error(&'static str),
    /// A successful run printing text.
    Text,
}

struct Case {
    id: &'static str,
    expect: Expect,
    run: fn(&Path) -> Output,
}

/// A directory holding links to the TrOCR fixture's files, for one file to be replaced.
fn fixture_copy(tmp: &Path) -> PathBuf {
    let dir = tmp.join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(model_fixture("trocr")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            link(&path, &dir.join(path.file_name().unwrap()));
        }
    }
    dir
}

fn replace(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    std::fs::write(path, bytes).unwrap();
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(model_fixture("trocr").join(name)).unwrap()
}

/// A fixture model with `name` replaced by `bytes`, run on a good image.
fn with_file(tmp: &Path, name: &str, bytes: &[u8]) -> Output {
    let dir = fixture_copy(tmp);
    replace(&dir, name, bytes);
    run_on(&dir, &[], &image("rgb.png"))
}

/// A fixture model with one JSON file edited, run on a good image.
fn with_json(tmp: &Path, name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Output {
    let mut value: serde_json::Value = serde_json::from_slice(&fixture_bytes(name)).unwrap();
    edit(&mut value);
    with_file(tmp, name, value.to_string().as_bytes())
}

/// A fixture model with one ONNX graph edited, run on a good image.
fn with_graph(tmp: &Path, name: &str, edit: impl FnOnce(&mut ModelProto)) -> Output {
    let mut proto = ModelProto::decode(fixture_bytes(name).as_slice()).unwrap();
    edit(&mut proto);
    with_file(tmp, name, &proto.encode_to_vec())
}

fn run_on(model: &Path, extra: &[&str], image: &Path) -> Output {
    let mut args = vec!["run", "--model", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(image.to_str().unwrap());
    run_glance(&args)
}

/// The fixture model, unchanged, on an image written into `tmp`.
fn on_image(tmp: &Path, bytes: &[u8]) -> Output {
    let path = tmp.join("input.img");
    std::fs::write(&path, bytes).unwrap();
    run_on(&model_fixture("trocr"), &[], &path)
}

/// A PNG file with this header and a little zlib data: the header may claim any size.
fn png(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend(kind);
        out.extend(data);
        let crc = crc32(&out[start..]);
        out.extend(crc.to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    // A stored (uncompressed) zlib block of 16 zero bytes.
    let idat = [
        0x78, 0x01, 0x01, 0x10, 0x00, 0xef, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0x00, 0x00, 0x00, 0x01,
    ];
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A real JPEG whose frame header claims `side` x `side` pixels.
fn jpeg_claiming(side: u16) -> Vec<u8> {
    let mut bytes = std::fs::read(image("wide.jpg")).unwrap();
    let sof = bytes
        .windows(2)
        .position(|w| w[0] == 0xFF && matches!(w[1], 0xC0..=0xC2))
        .unwrap();
    bytes[sof + 5..sof + 7].copy_from_slice(&side.to_be_bytes());
    bytes[sof + 7..sof + 9].copy_from_slice(&side.to_be_bytes());
    bytes
}

/// Pixel values filled with `value`, in the fixture's input shape, fed with `--pixel-values`.
fn pixel_values_of(tmp: &Path, value: f32) -> Output {
    let path = tmp.join("pixels.npy");
    glance::vision::npy::write(&path, &[1, 3, 64, 64], &vec![value; 3 * 64 * 64]).unwrap();
    let model = model_fixture("trocr");
    run_glance(&[
        "run",
        "--model",
        model.to_str().unwrap(),
        "--pixel-values",
        path.to_str().unwrap(),
    ])
}

/// The fixture with every weight of the matrix product that makes `logits` set to `value`, in
/// each fp32 decoder file.
fn with_lm_head_of(tmp: &Path, value: f32) -> Output {
    fn poison(g: &mut GraphProto, value: f32, outer: &mut [TensorProto]) {
        let weights: Vec<String> = g
            .node
            .iter()
            .filter(|n| n.output.iter().any(|o| o == "logits"))
            .flat_map(|n| n.input.clone())
            .collect();
        for t in g.initializer.iter_mut().chain(outer.iter_mut()) {
            if weights.contains(&t.name) {
                let n = t.raw_data.len() / 4;
                t.raw_data = value.to_le_bytes().repeat(n);
            }
        }
        let mut inits = std::mem::take(&mut g.initializer);
        for node in &mut g.node {
            for branch in node.attribute.iter_mut().filter_map(|a| a.g.as_mut()) {
                poison(branch, value, &mut inits);
            }
        }
        g.initializer = inits;
    }
    let dir = fixture_copy(tmp);
    for name in [
        "decoder_model.onnx",
        "decoder_with_past_model.onnx",
        "decoder_model_merged.onnx",
    ] {
        let mut proto = ModelProto::decode(fixture_bytes(name).as_slice()).unwrap();
        poison(proto.graph.as_mut().unwrap(), value, &mut []);
        replace(&dir, name, &proto.encode_to_vec());
    }
    run_on(&dir, &[], &image("rgb.png"))
}

fn rename_input(proto: &mut ModelProto, to: &str) {
    let g = proto.graph.as_mut().unwrap();
    let from = g.input[0].name.clone();
    g.input[0].name = to.into();
    for node in &mut g.node {
        for name in node.input.iter_mut().filter(|n| **n == from) {
            *name = to.into();
        }
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    vec![
        // Graph files.
        Case {
            id: "onnx-truncated",
            expect: Error("encoder_model.onnx: not a valid ONNX file"),
            run: |t| {
                let b = fixture_bytes("encoder_model.onnx");
                with_file(t, "encoder_model.onnx", &b[..b.len() / 2])
            },
        },
        Case {
            id: "onnx-not-onnx",
            expect: Error("encoder_model.onnx: not a valid ONNX file"),
            run: |t| with_file(t, "encoder_model.onnx", b"this is not a model\n"),
        },
        Case {
            id: "onnx-empty",
            expect: Error("decoder_with_past_model.onnx: "),
            run: |t| with_file(t, "decoder_with_past_model.onnx", b""),
        },
        Case {
            id: "onnx-header-bit-flip",
            expect: Error("encoder_model.onnx: "),
            run: |t| {
                let mut b = fixture_bytes("encoder_model.onnx");
                b[0] ^= 0x80;
                with_file(t, "encoder_model.onnx", &b)
            },
        },
        Case {
            id: "graph-input-renamed",
            expect: Error("must take pixel_values"),
            run: |t| with_graph(t, "encoder_model.onnx", |p| rename_input(p, "image")),
        },
        Case {
            id: "graph-input-type",
            expect: Error("found pixel_values (INT64)"),
            run: |t| {
                with_graph(t, "encoder_model.onnx", |p| {
                    use tract_onnx::pb::type_proto::Value;
                    let input = &mut p.graph.as_mut().unwrap().input[0];
                    if let Some(Value::TensorType(tt)) =
                        input.r#type.as_mut().and_then(|t| t.value.as_mut())
                    {
                        tt.elem_type = 7; // INT64
                    }
                })
            },
        },
        Case {
            id: "graph-no-logits",
            expect: Error("must have an output named logits"),
            run: |t| {
                with_graph(t, "decoder_with_past_model.onnx", |p| {
                    let g = p.graph.as_mut().unwrap();
                    let from = g.output[0].name.clone();
                    g.output[0].name = "scores".into();
                    for node in &mut g.node {
                        for name in node.output.iter_mut().filter(|n| **n == from) {
                            *name = "scores".into();
                        }
                    }
                })
            },
        },
        Case {
            id: "graph-unsupported-operator",
            expect: Error("operator not supported by tract: FancyAdd"),
            run: |t| {
                with_graph(t, "encoder_model.onnx", |p| {
                    let g = p.graph.as_mut().unwrap();
                    let node = g.node.iter_mut().find(|n| n.op_type == "Add").unwrap();
                    node.op_type = "FancyAdd".into();
                })
            },
        },
        Case {
            id: "dir-without-decoder",
            expect: Error("no complete set of graphs"),
            run: |t| {
                let dir = t.join("model");
                std::fs::create_dir_all(&dir).unwrap();
                for name in [
                    "config.json",
                    "preprocessor_config.json",
                    "tokenizer.json",
                    "encoder_model.onnx",
                ] {
                    link(&model_fixture("trocr").join(name), &dir.join(name));
                }
                run_on(&dir, &[], &image("rgb.png"))
            },
        },
        // Configs.
        Case {
            id: "config-missing",
            expect: Error("config.json: missing"),
            run: |t| {
                let dir = fixture_copy(t);
                std::fs::remove_file(dir.join("config.json")).unwrap();
                run_on(&dir, &[], &image("rgb.png"))
            },
        },
        Case {
            id: "config-not-json",
            expect: Error("config.json: not valid JSON"),
            run: |t| with_file(t, "config.json", b"{\"encoder\": [1, 2"),
        },
        Case {
            id: "config-wrong-type",
            expect: Error("\"num_beams\" must be a non-negative integer, found \"four\""),
            run: |t| {
                with_json(t, "generation_config.json", |v| {
                    v["num_beams"] = "four".into()
                })
            },
        },
        Case {
            id: "config-vocab-0",
            expect: Error("config.json#decoder: \"vocab_size\" is 0"),
            run: |t| with_json(t, "config.json", |v| v["decoder"]["vocab_size"] = 0.into()),
        },
        Case {
            id: "config-vocab-mismatch",
            expect: Error("decoder.vocab_size is 5000 but the decoder graph's logits have 301"),
            run: |t| {
                with_json(t, "config.json", |v| {
                    v["decoder"]["vocab_size"] = 5000.into()
                })
            },
        },
        Case {
            id: "config-max-new-tokens-1e9",
            expect: Error("\"max_new_tokens\" is 1000000000, more than the limit of 1048576"),
            run: |t| {
                with_json(t, "generation_config.json", |v| {
                    v["max_new_tokens"] = 1_000_000_000u64.into()
                })
            },
        },
        Case {
            id: "config-num-beams-0",
            expect: Error("num_beams must be at least 1"),
            run: |t| with_json(t, "generation_config.json", |v| v["num_beams"] = 0.into()),
        },
        Case {
            id: "config-image-size-0",
            expect: Error("preprocessor_config.json: \"size\" holds 0"),
            run: |t| {
                with_json(t, "preprocessor_config.json", |v| {
                    v["size"]["height"] = 0.into()
                })
            },
        },
        Case {
            id: "option-max-new-tokens-1e9",
            expect: Error("more than glance's limit of 1048576 tokens"),
            run: |_| {
                run_on(
                    &model_fixture("trocr"),
                    &["--max-new-tokens", "1000000000"],
                    &image("rgb.png"),
                )
            },
        },
        Case {
            id: "option-past-positions",
            expect: Error("is more than the 64 positions the decoder has"),
            run: |_| {
                run_on(
                    &model_fixture("trocr"),
                    &["--min-new-tokens", "100", "--max-new-tokens", "100"],
                    &image("rgb.png"),
                )
            },
        },
        Case {
            id: "tract-panic",
            expect: Error("tract failed running the graph: range end index"),
            run: |t| {
                let mut config: serde_json::Value =
                    serde_json::from_slice(&fixture_bytes("config.json")).unwrap();
                config["decoder"]
                    .as_object_mut()
                    .unwrap()
                    .remove("max_position_embeddings");
                let dir = fixture_copy(t);
                replace(&dir, "config.json", config.to_string().as_bytes());
                run_on(
                    &dir,
                    &["--min-new-tokens", "100", "--max-new-tokens", "100"],
                    &image("rgb.png"),
                )
            },
        },
        // Tokens and tokenizer.
        Case {
            id: "tokenizer-broken",
            expect: Error("tokenizer.json: cannot load"),
            run: |t| with_file(t, "tokenizer.json", b"{\"model\": {\"type\": \"BPE\""),
        },
        Case {
            id: "start-token-outside-vocab",
            expect: Error("prompt token 99999 is outside the vocabulary of 301"),
            run: |t| {
                with_json(t, "generation_config.json", |v| {
                    v["decoder_start_token_id"] = 99999.into()
                })
            },
        },
        Case {
            id: "eos-token-outside-vocab",
            expect: Error("token id 99999 is outside the model's vocabulary of 301"),
            run: |t| {
                with_json(t, "generation_config.json", |v| {
                    v["eos_token_id"] = 99999.into()
                })
            },
        },
        // Images.
        Case {
            id: "image-empty-file",
            expect: Error("input.img: the file is empty"),
            run: |t| on_image(t, b""),
        },
        Case {
            id: "image-not-an-image",
            expect: Error("input.img: not an image format glance can read"),
            run: |t| on_image(t, b"hello, I am text"),
        },
        Case {
            id: "image-truncated",
            expect: Error("input.img: cannot decode"),
            run: |t| on_image(t, &std::fs::read(image("rgb.png")).unwrap()[..200]),
        },
        Case {
            id: "image-0x0",
            expect: Error("input.img: cannot decode"),
            run: |t| on_image(t, &png(0, 0)),
        },
        Case {
            id: "image-png-bomb",
            expect: Error("100000x100000 pixels, more than the limit of 100000000"),
            run: |t| on_image(t, &png(100_000, 100_000)),
        },
        Case {
            id: "image-jpeg-bomb",
            expect: Error("65000x65000 pixels, more than the limit of 100000000"),
            run: |t| on_image(t, &jpeg_claiming(65000)),
        },
        Case {
            id: "image-over-max-pixels",
            expect: Error("120x80 pixels, more than the limit of 9599"),
            run: |_| {
                run_on(
                    &model_fixture("trocr"),
                    &["--max-pixels", "9599"],
                    &image("rgb.png"),
                )
            },
        },
        Case {
            id: "image-endless-file",
            expect: Error("/dev/zero: the file is larger than the limit of 256 MiB"),
            run: |_| run_on(&model_fixture("trocr"), &[], Path::new("/dev/zero")),
        },
        Case {
            id: "image-16-bit",
            expect: Text,
            run: |_| run_on(&model_fixture("trocr"), &[], &image("gray16.png")),
        },
        Case {
            id: "image-cmyk",
            expect: Text,
            run: |_| run_on(&model_fixture("trocr"), &[], &image("cmyk.jpg")),
        },
        Case {
            id: "image-animated",
            expect: Text,
            run: |_| run_on(&model_fixture("trocr"), &[], &image("animated.gif")),
        },
        // Pixel tensors given by the caller.
        Case {
            id: "pixel-values-nan",
            expect: Error("pixel values hold NaN at index 0: the encoder takes finite numbers"),
            run: |t| pixel_values_of(t, f32::NAN),
        },
        Case {
            id: "pixel-values-inf",
            expect: Error("pixel values hold inf at index 0"),
            run: |t| pixel_values_of(t, f32::INFINITY),
        },
        // Model outputs: the weights of the decoder's LM head, after every softmax, poisoned.
        Case {
            id: "nan-in-outputs",
            expect: Error("the decoder returned NaN or infinite logits"),
            run: |t| with_lm_head_of(t, f32::NAN),
        },
        Case {
            id: "inf-in-outputs",
            expect: Error("the decoder returned NaN or infinite logits"),
            run: |t| with_lm_head_of(t, f32::INFINITY),
        },
    ]
}

#[test]
fn every_hostile_input_gives_a_clear_outcome() {
    let mut failures = Vec::new();
    for case in cases() {
        if case.id == "image-endless-file" && !Path::new("/dev/zero").exists() {
            continue;
        }
        let tmp = TempDir::new(case.id);
        let out = (case.run)(tmp.path());
        let err = text(&out.stderr);
        let verdict = match case.expect {
            Expect::Error(what) => {
                let lines: Vec<&str> = err.lines().collect();
                if out.status.success() {
                    Some(format!("succeeded; stdout {}", text(&out.stdout)))
                } else if err.contains("panicked") || lines.len() != 1 {
                    Some(format!("not one clean error line: {err}"))
                } else if !lines[0].starts_with("glance: ") || !lines[0].contains(what) {
                    Some(format!("error does not say {what:?}: {err}"))
                } else {
                    None
                }
            }
            Expect::Text => (!out.status.success() || text(&out.stdout).trim().is_empty())
                .then(|| format!("no text: {err}")),
        };
        if let Some(v) = verdict {
            failures.push(format!("{}: {v}", case.id));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// README.md's table lists every case, with the words its error must contain.
#[test]
fn readme_table_matches_the_cases() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let rows: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `")).collect();
    let cases = cases();
    for case in &cases {
        let row = rows
            .iter()
            .find(|r| r.starts_with(&format!("| `{}` |", case.id)))
            .unwrap_or_else(|| {
                panic!("README.md's hostile-input table has no row for {}", case.id)
            });
        if let Expect::Error(what) = case.expect {
            // The table writes quotes and pipes as Markdown needs.
            let cell = row.replace("\\|", "|");
            assert!(
                cell.contains(what),
                "README row for {} should quote {what:?}: {row}",
                case.id
            );
        }
    }
    let ids: Vec<&str> = cases.iter().map(|c| c.id).collect();
    for row in rows {
        let id = row.trim_start_matches("| `").split('`').next().unwrap();
        if id.contains('-') && !row.contains("(not a case)") {
            assert!(ids.contains(&id), "README row {id} has no test case");
        }
    }
}

/// What glance decodes from the image kinds it accepts is what PIL gives
/// (scripts/make_hostile_images.py).
#[test]
fn cmyk_and_animated_images_decode_as_pil_does() {
    let cmyk = glance::Rgb8::open(&image("cmyk.jpg")).unwrap();
    let px = &cmyk.data[(5 * cmyk.width + 5) * 3..][..3];
    for (got, want) in px.iter().zip([245u8, 55, 225]) {
        assert!(
            got.abs_diff(want) <= 3,
            "CMYK pixel {px:?}, PIL gives [245, 55, 225]"
        );
    }
    let gif = glance::Rgb8::open(&image("animated.gif")).unwrap();
    assert_eq!(
        &gif.data[..3],
        &[255, 0, 0],
        "the first frame, as PIL reads it"
    );
}

/// Bit flips anywhere in the graph files: an error naming the file, or (inside weight bytes,
/// which ONNX does not checksum) a model that runs; never a panic.
#[test]
fn bit_flips_in_graphs_never_panic() {
    let tmp = TempDir::new("bitflips");
    let pixels = open_fixture("trocr").load_image(&image("rgb.png")).unwrap();
    let options = greedy(4);
    let mut errors = 0;
    for name in ["encoder_model.onnx", "decoder_with_past_model.onnx"] {
        let original = fixture_bytes(name);
        // Deterministic positions spread over the file, denser in its first kilobytes (the
        // header and graph structure).
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for i in 0..12 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let span = if i % 2 == 0 {
                4096.min(original.len())
            } else {
                original.len()
            };
            let at = (state as usize) % span;
            let mut bytes = original.clone();
            bytes[at] ^= 1 << (state >> 60 & 7);
            let dir = fixture_copy(&tmp.path().join(format!("{name}-{i}")));
            replace(&dir, name, &bytes);
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Model::open(&dir, &OpenOptions::default())
                    .and_then(|m| m.generate(&pixels, &options).map(|_| ()))
            }));
            match outcome {
                Err(_) => panic!("{name}: a flip at byte {at} made glance panic"),
                Ok(Err(e)) => {
                    errors += 1;
                    let msg = e.to_string();
                    assert!(
                        msg.contains(name) || msg.contains("invalid option"),
                        "{msg}"
                    );
                }
                Ok(Ok(())) => {}
            }
        }
    }
    println!("24 bit flips: {errors} errors naming the file, the rest ran");
}
