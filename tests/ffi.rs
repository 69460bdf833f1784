//! The C interface: what the C program of tests/ffi/ prints is what the Rust API gives
//! (tests/ffi/expected.txt is computed here), the JSON it returns is `Output::to_json`, and
//! hostile calls are errors.

mod common;

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;

use common::*;
use glance::ffi::*;
use glance::{GenerateOptions, GenerationOptions, Model, Resolution, Rgb8};
use serde_json::Value;

fn beams(max_new_tokens: usize, num_beams: usize) -> GenerateOptions {
    GenerateOptions {
        generation: GenerationOptions {
            max_new_tokens: Some(max_new_tokens),
            num_beams: Some(num_beams),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The made-up image of glance_test.c's `synthetic`, as RGB.
fn synthetic() -> Rgb8 {
    let (w, h) = (37usize, 23usize);
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            data.push((x * 7 + y * 3) as u8);
            data.push((x * x + y * 5) as u8);
            data.push((x * y + 11) as u8);
        }
    }
    Rgb8::new(w, h, data)
}

/// One line of the C program's output, from the Rust API.
fn line(
    name: &str,
    model: &Model,
    image: &Rgb8,
    options: &GenerateOptions,
    stop_after: usize,
) -> String {
    let pixels = model.preprocess(image, Resolution::Native).unwrap();
    let mut streamed = 0;
    let out = model
        .generate_with(&pixels, options, |_, _| {
            streamed += 1;
            stop_after == 0 || streamed < stop_after
        })
        .unwrap()
        .remove(0);
    format!(
        "{name}\ttokens={}\ttruncated={}\tstreamed={streamed}\ttext={}",
        serde_json::to_string(&out.tokens).unwrap(),
        out.truncated,
        serde_json::to_string(&out.text).unwrap()
    )
}

/// What glance_test.c prints, computed with the Rust API.
fn rust_lines() -> String {
    let trocr = open_fixture("trocr");
    let vitgpt2 = open_fixture("vitgpt2");
    let donut = open_fixture("donut");
    let file = |name: &str| Rgb8::open(&image(name)).unwrap();
    let budget0 = GenerateOptions {
        time_budget: Some(std::time::Duration::ZERO),
        ..Default::default()
    };
    let max8 = |o: GenerateOptions| GenerateOptions {
        generation: GenerationOptions {
            max_new_tokens: Some(8),
            ..o.generation
        },
        ..o
    };
    let lines = [
        line("trocr_rgb_greedy", &trocr, &file("rgb.png"), &greedy(8), 0),
        line(
            "trocr_gray_beams3",
            &trocr,
            &file("gray.png"),
            &beams(8, 3),
            0,
        ),
        line("trocr_rgb_stop3", &trocr, &file("rgb.png"), &greedy(8), 3),
        line(
            "trocr_rgb_budget0",
            &trocr,
            &file("rgb.png"),
            &max8(budget0),
            0,
        ),
        line(
            "vitgpt2_wide_greedy",
            &vitgpt2,
            &file("wide.jpg"),
            &GenerateOptions {
                generation: GenerationOptions {
                    max_new_tokens: Some(10),
                    ..Default::default()
                },
                ..Default::default()
            },
            0,
        ),
        line(
            "vitgpt2_rgba_beams2",
            &vitgpt2,
            &file("rgba.png"),
            &beams(6, 2),
            0,
        ),
        line(
            "donut_palette_greedy",
            &donut,
            &file("palette.png"),
            &max8(GenerateOptions::default()),
            0,
        ),
        line(
            "trocr_buffer_rgb",
            &trocr,
            &synthetic(),
            &max8(GenerateOptions::default()),
            0,
        ),
        line(
            "trocr_buffer_rgba",
            &trocr,
            &synthetic(),
            &max8(GenerateOptions::default()),
            0,
        ),
        "threads\tsame".to_string(),
    ];
    lines.join("\n") + "\n"
}

fn ffi_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ffi")
}

#[test]
fn expected_output_is_the_rust_apis() {
    let want = rust_lines();
    let path = ffi_dir().join("expected.txt");
    if std::env::var_os("GLANCE_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        committed, want,
        "tests/ffi/expected.txt is not what the Rust API gives; GLANCE_BLESS=1 cargo test --test ffi rewrites it"
    );
}

/// Where cargo put the libglance.so and libglance.a of this build: beside this test binary, in
/// target/<profile>/deps (`cargo test` leaves them there; only `cargo build` copies them up to
/// target/<profile>, so those may be older).
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

/// The target triple to hand tests/ffi/run.sh when this test is built for an ARM target (and
/// run through qemu by scripts/arm-run), with the C compiler run.sh then uses.
fn c_target() -> (Option<&'static str>, String) {
    let triple = if cfg!(target_arch = "aarch64") {
        Some("aarch64-unknown-linux-gnu")
    } else if cfg!(target_arch = "arm") {
        Some("armv7-unknown-linux-gnueabihf")
    } else {
        None
    };
    let cc = match triple {
        Some(t) if t.starts_with("aarch64") => "aarch64-linux-gnu-gcc",
        Some(_) => "arm-linux-gnueabihf-gcc",
        None => "cc",
    };
    (triple, std::env::var("CC").unwrap_or_else(|_| cc.into()))
}

#[test]
fn the_c_program_prints_what_the_rust_api_gives() {
    let (triple, cc) = c_target();
    if Command::new(&cc).arg("--version").output().is_err() {
        eprintln!("NOTICE: no C compiler ({cc}); the C test of tests/ffi/ is skipped");
        return;
    }
    let dir = lib_dir();
    assert!(
        dir.join("libglance.a").exists() && dir.join("libglance.so").exists(),
        "{}: no libglance.a / libglance.so (crate-type in Cargo.toml's [lib])",
        dir.display()
    );
    let out = Command::new("bash")
        .arg(ffi_dir().join("run.sh"))
        .args(triple)
        .env("CC", &cc)
        .env("GLANCE_LIB_DIR", &dir)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tests/ffi/run.sh failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn the_header_declares_every_entry_point() {
    let header =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("include/glance.h"))
            .unwrap();
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi.rs")).unwrap();
    let exported: Vec<&str> = source
        .split("extern \"C\" fn ")
        .skip(1)
        .filter_map(|rest| rest.split('(').next())
        .filter(|name| name.starts_with("glance_"))
        .collect();
    assert!(exported.len() >= 7, "{exported:?}");
    for name in exported {
        assert!(
            header.contains(&format!("{name}(")),
            "include/glance.h lacks {name}: run scripts/gen-header.sh"
        );
    }
}

// ---- calling the C functions from Rust ----

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn open(arch: &str) -> *mut GlanceModel {
    let dir = c(model_fixture(arch).to_str().unwrap());
    let opts = c(r#"{"threads": 1}"#);
    // SAFETY: NUL-terminated strings.
    let m = unsafe { glance_model_open(dir.as_ptr(), opts.as_ptr()) };
    assert!(!m.is_null(), "{}", last_error());
    m
}

fn last_error() -> String {
    let p = glance_last_error();
    if p.is_null() {
        return String::new();
    }
    // SAFETY: glance's NUL-terminated string, read before the next call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The result of glance_generate_file as JSON, or the error text.
fn generate_file(
    m: *mut GlanceModel,
    path: &Path,
    options: &str,
    callback: GlanceTokenCallback,
    user_data: *mut c_void,
) -> Result<Value, String> {
    let path = c(path.to_str().unwrap());
    let options = c(options);
    // SAFETY: NUL-terminated strings; the callback takes this user_data.
    let s =
        unsafe { glance_generate_file(m, path.as_ptr(), options.as_ptr(), callback, user_data) };
    if s.is_null() {
        return Err(last_error());
    }
    // SAFETY: a string from glance, not freed yet.
    let json = unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_string();
    glance_string_free(s);
    Ok(serde_json::from_str(&json).unwrap())
}

fn without_timings(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("timings_ms");
    v
}

#[test]
fn the_json_is_the_rust_apis() {
    let m = open("trocr");
    let model = open_fixture("trocr");
    let img = image("palette.png");
    let pixels = model.load_image(&img).unwrap();
    let cases = [
        (r#"{"max_new_tokens": 6, "num_beams": 1}"#, greedy(6)),
        (
            r#"{"max_new_tokens": 6, "num_beams": 3, "num_return_sequences": 2, "length_penalty": 0.5}"#,
            GenerateOptions {
                generation: GenerationOptions {
                    num_return_sequences: Some(2),
                    length_penalty: Some(0.5),
                    ..beams(6, 3).generation
                },
                ..Default::default()
            },
        ),
        (
            r#"{"max_new_tokens": 5, "ignore_generation_config": true, "no_repeat_ngram_size": 2}"#,
            GenerateOptions {
                generation: GenerationOptions {
                    max_new_tokens: Some(5),
                    no_repeat_ngram_size: Some(2),
                    ..Default::default()
                },
                ignore_model_generation_config: true,
                ..Default::default()
            },
        ),
    ];
    for (json, options) in cases {
        let got = generate_file(m, &img, json, None, ptr::null_mut()).unwrap();
        let t = &got["timings_ms"];
        assert!(t["preprocess"].as_f64().unwrap() > 0.0, "{got}");
        assert!(t["encode"].is_number() && t["decode"].is_number(), "{got}");
        let want = model
            .generate(&pixels, &options)
            .unwrap()
            .remove(0)
            .to_json();
        // Through text and back, as the C side's JSON came (serde_json's parser may round a
        // float's last digit).
        let want = serde_json::from_str(&want.to_string()).unwrap();
        assert_eq!(without_timings(got), without_timings(want), "{json}");
    }
    assert_eq!(glance_model_close(m), 0);
}

/// Collects streamed token texts.
unsafe extern "C" fn collect(
    text: *const c_char,
    len: usize,
    _id: u32,
    user: *mut c_void,
) -> c_int {
    // SAFETY: glance passes `len` bytes of UTF-8 and the String given as user_data.
    let (bytes, out) = unsafe {
        (
            std::slice::from_raw_parts(text.cast::<u8>(), len),
            &mut *user.cast::<String>(),
        )
    };
    out.push_str(std::str::from_utf8(bytes).unwrap());
    0
}

#[test]
fn streamed_pieces_make_the_text() {
    for (arch, img) in [
        ("trocr", "rgb.png"),
        ("vitgpt2", "wide.jpg"),
        ("donut", "rgb.png"),
    ] {
        let m = open(arch);
        for options in [
            r#"{"max_new_tokens": 10}"#,
            r#"{"max_new_tokens": 10, "num_beams": 2}"#,
        ] {
            let mut streamed = String::new();
            let out = generate_file(
                m,
                &image(img),
                options,
                Some(collect),
                (&mut streamed as *mut String).cast(),
            )
            .unwrap();
            assert_eq!(out["text"], streamed.as_str(), "{arch} {options}");
        }
        assert_eq!(glance_model_close(m), 0);
    }
}

/// A model to close from the token callback, and what each close returned.
struct Closer {
    model: *mut GlanceModel,
    closes: Vec<c_int>,
}

/// Closes the model of the `Closer` given as user_data, at every token.
unsafe extern "C" fn close_model(_: *const c_char, _: usize, _: u32, user: *mut c_void) -> c_int {
    // SAFETY: glance passes the Closer given as user_data.
    let closer = unsafe { &mut *user.cast::<Closer>() };
    closer.closes.push(glance_model_close(closer.model));
    0
}

#[test]
fn a_model_closed_while_generating_finishes_that_generation() {
    let m = open("trocr");
    let mut closer = Closer {
        model: m,
        closes: Vec::new(),
    };
    let out = generate_file(
        m,
        &image("rgb.png"),
        r#"{"max_new_tokens": 6, "num_beams": 1}"#,
        Some(close_model),
        (&mut closer as *mut Closer).cast(),
    )
    .unwrap();
    // The first close closes it, the others find it closed.
    assert_eq!(closer.closes[0], 0);
    assert!(
        closer.closes[1..].iter().all(|&c| c == -1),
        "{:?}",
        closer.closes
    );
    let whole = open_fixture("trocr");
    let pixels = whole.load_image(&image("rgb.png")).unwrap();
    assert_eq!(
        out["tokens"],
        serde_json::json!(whole.generate(&pixels, &greedy(6)).unwrap()[0].tokens)
    );
    let err = generate_file(m, &image("rgb.png"), "", None, ptr::null_mut()).unwrap_err();
    assert!(err.contains("not an open model"), "{err}");
    assert_eq!(glance_model_close(m), -1);
}

#[test]
fn one_model_serves_several_threads() {
    let m = open("vitgpt2");
    let alone = generate_file(
        m,
        &image("wide.jpg"),
        r#"{"max_new_tokens": 6}"#,
        None,
        ptr::null_mut(),
    )
    .unwrap();
    let handle = m as usize;
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(move || {
                    generate_file(
                        handle as *mut GlanceModel,
                        &image("wide.jpg"),
                        r#"{"max_new_tokens": 6}"#,
                        None,
                        ptr::null_mut(),
                    )
                    .unwrap()
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap()["tokens"], alone["tokens"]);
        }
    });
    assert_eq!(glance_model_close(m), 0);
}

#[test]
fn hostile_calls_are_errors() {
    let m = open("trocr");
    let rgb = image("rgb.png");
    let bad_utf8 = b"\xff\xfe\0";
    // SAFETY: NULL, or NUL-terminated byte strings.
    unsafe {
        assert!(glance_model_open(ptr::null(), ptr::null()).is_null());
        assert!(last_error().contains("dir is NULL"), "{}", last_error());
        assert!(glance_model_open(bad_utf8.as_ptr().cast(), ptr::null()).is_null());
        assert!(last_error().contains("UTF-8"), "{}", last_error());
        assert!(glance_generate_file(
            m,
            bad_utf8.as_ptr().cast(),
            ptr::null(),
            None,
            ptr::null_mut()
        )
        .is_null());
        assert!(
            last_error().contains("path is not valid UTF-8"),
            "{}",
            last_error()
        );
    }
    for (options, what) in [
        ("{garbage", "not valid JSON"),
        (r#"{"beams": 2}"#, "unknown option \"beams\""),
        (r#"{"max_new_tokens": "ten"}"#, "\"max_new_tokens\""),
        (r#"{"num_beams": 0}"#, "num_beams"),
        (r#"{"resolution": {"height": 5, "width": 7}}"#, "5x7"),
    ] {
        let err = generate_file(m, &rgb, options, None, ptr::null_mut()).unwrap_err();
        assert!(err.contains(what), "{options}: {err}");
    }
    let px = [0u8; 48];
    // SAFETY: `px` holds the 48 bytes said; NULL options and callback.
    let rgb_call = |w: usize, h: usize, stride: usize, channels: usize| unsafe {
        let s = glance_generate_rgb(
            m,
            px.as_ptr(),
            px.len(),
            w,
            h,
            stride,
            channels,
            ptr::null(),
            None,
            ptr::null_mut(),
        );
        assert!(s.is_null(), "{w}x{h} {stride} {channels}");
        last_error()
    };
    assert!(rgb_call(0, 4, 12, 3).contains("empty"));
    assert!(rgb_call(4, 4, 11, 3).contains("stride"));
    assert!(rgb_call(4, 4, 16, 1).contains("channels"));
    assert!(rgb_call(4, 5, 12, 3).contains("holds 48 bytes"));
    assert!(rgb_call(usize::MAX / 2, 2, usize::MAX, 3).contains("overflows"));
    // The same buffer with sizes that fit is read.
    // SAFETY: as above.
    let ok = unsafe {
        glance_generate_rgb(
            m,
            px.as_ptr(),
            px.len(),
            4,
            4,
            12,
            3,
            c(r#"{"max_new_tokens": 2}"#).as_ptr(),
            None,
            ptr::null_mut(),
        )
    };
    assert!(!ok.is_null(), "{}", last_error());
    glance_string_free(ok);
    glance_string_free(ok);
    assert!(last_error().contains("freed already"));
    assert_eq!(glance_model_close(m), 0);
    assert_eq!(glance_model_close(m), -1);
    assert!(last_error().contains("not an open model"));
    let err = generate_file(m, &rgb, "", None, ptr::null_mut()).unwrap_err();
    assert!(err.contains("not an open model"), "{err}");
}
