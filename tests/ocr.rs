//! `glance ocr` with the model shipped in models/, and `glance caption` on streams and watched
//! folders (with a fixture model).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn sample(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("samples")
        .join(name)
}

#[test]
fn ocr_reads_a_line_with_the_default_model() {
    let out = glance_command()
        .args(["ocr", "--line"])
        .arg(sample("line.png"))
        .output()
        .unwrap();
    assert_eq!(
        success_stdout(&out).trim(),
        "glance reads text on a Raspberry Pi."
    );
}

#[test]
fn ocr_reads_a_page_in_reading_order() {
    let out = glance_command()
        .args(["ocr", "--json"])
        .arg(sample("invoice.png"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&success_stdout(&out)).unwrap();
    let lines = v["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 3, "{v}");
    assert_eq!(lines[0]["text"], "Invoice 2024-0117, due 12 March 2024");
    assert_eq!(lines[2]["text"], "Thank you for your order!");
    for l in lines {
        let b: Vec<u64> = l["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(b.len(), 4);
        let score = l["score"].as_f64().unwrap();
        assert!(score > 0.5 && score <= 1.0, "{score}");
    }
    let tops: Vec<u64> = lines
        .iter()
        .map(|l| l["box"][1].as_u64().unwrap())
        .collect();
    assert!(
        tops.windows(2).all(|w| w[0] < w[1]),
        "reading order: {tops:?}"
    );
    assert_eq!(v["text"].as_str().unwrap().lines().count(), 3);
    assert_eq!(v["truncated"], false);
    assert!(v["timings_ms"]["encode"].is_number());
}

fn caption_json(args: &[&str], stdin: Option<Vec<u8>>) -> Vec<serde_json::Value> {
    let model = model_fixture("vitgpt2");
    let mut cmd = glance_command();
    cmd.args(["caption", "--json", "--max-new-tokens", "6", "--model"])
        .arg(&model)
        .args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    success_stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn caption_reads_a_stream_of_frames_on_stdin() {
    let files = [image("wide.jpg"), image("rgb.png"), image("exif_rot.jpg")];
    let one_by_one: Vec<serde_json::Value> = files
        .iter()
        .map(|f| caption_json(&[f.to_str().unwrap()], None).remove(0))
        .collect();
    let stream: Vec<u8> = files
        .iter()
        .flat_map(|f| std::fs::read(f).unwrap())
        .collect();
    let streamed = caption_json(&["-"], Some(stream));
    assert_eq!(streamed.len(), 3);
    for (i, (s, f)) in streamed.iter().zip(&one_by_one).enumerate() {
        assert_eq!(s["image"], format!("-#{}", i + 1));
        assert_eq!(s["tokens"], f["tokens"]);
    }
}

#[test]
fn caption_takes_directories_recursively_in_order() {
    let tmp = TempDir::new("captiondir");
    std::fs::create_dir_all(tmp.path().join("sub")).unwrap();
    link(&image("rgb.png"), &tmp.path().join("b.png"));
    link(&image("wide.jpg"), &tmp.path().join("sub/a.jpg"));
    std::fs::write(tmp.path().join("notes.txt"), "not an image").unwrap();
    let got = caption_json(&[tmp.path().to_str().unwrap()], None);
    let names: Vec<&str> = got.iter().map(|v| v["image"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2);
    assert!(
        names[0].ends_with("b.png") && names[1].ends_with("sub/a.jpg"),
        "{names:?}"
    );
}

#[test]
fn caption_watches_a_folder() {
    let tmp = TempDir::new("watch");
    let model = model_fixture("vitgpt2");
    let mut child = glance_command()
        .args(["caption", "--json", "--max-new-tokens", "4", "--model"])
        .arg(&model)
        .arg("--watch")
        .arg(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    std::fs::copy(image("rgb.png"), tmp.path().join("frame1.png")).unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let line = rx.recv_timeout(Duration::from_secs(60));
    child.kill().unwrap();
    child.wait().unwrap();
    let line = line.unwrap_or_else(|_| panic!("no output after {:?}", start.elapsed()));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(v["image"].as_str().unwrap().ends_with("frame1.png"), "{v}");
}

#[test]
fn ocr_stops_a_page_at_its_time_budget() {
    let out = glance_command()
        .args(["ocr", "--json", "--time-budget-ms", "0"])
        .arg(sample("invoice.png"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&success_stdout(&out)).unwrap();
    assert_eq!(v["truncated"], true, "{v}");
    assert!(v["lines"].as_array().unwrap().len() < 3, "{v}");
}
