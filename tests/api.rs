//! The library API: streaming, stopping, batching, sharing a model between threads.

mod common;

use common::*;
use glance::{GenerateOptions, GenerationOptions, Model};

fn model(arch: &str) -> Model {
    open_fixture(arch)
}

#[test]
fn model_is_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
    let m = model("trocr");
    let pixels = m.load_image(&image("rgb.png")).unwrap();
    let alone = m.generate(&pixels, &greedy(8)).unwrap().remove(0).tokens;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| m.generate(&pixels, &greedy(8)).unwrap().remove(0).tokens))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), alone);
        }
    });
}

#[test]
fn streaming_gives_the_tokens_generate_gives() {
    let m = model("vitgpt2");
    let pixels = m.load_image(&image("wide.jpg")).unwrap();
    let whole = m.generate(&pixels, &greedy(10)).unwrap().remove(0);
    let streamed: Vec<u32> = m
        .stream(&pixels, &greedy(10))
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect();
    assert_eq!(streamed, whole.tokens[1..]);

    let mut by_callback = Vec::new();
    let out = m.generate_with(&pixels, &greedy(10), |_, t| {
        by_callback.push(t.id);
        true
    });
    assert_eq!(by_callback, whole.tokens[1..]);
    assert_eq!(out.unwrap()[0].tokens, whole.tokens);
}

#[test]
fn a_callback_can_stop_generation() {
    let m = model("trocr");
    let pixels = m.load_image(&image("gray.png")).unwrap();
    let mut n = 0;
    let out = m
        .generate_with(&pixels, &greedy(10), |_, _| {
            n += 1;
            n < 3
        })
        .unwrap()
        .remove(0);
    assert_eq!(out.tokens.len(), 1 + 3);
    assert!(out.truncated);
}

#[test]
fn a_batch_gives_what_each_image_gives_alone() {
    for arch in ARCHS {
        let m = model(arch);
        let a = m.load_image(&image("rgb.png")).unwrap();
        let b = m.load_image(&image("palette.png")).unwrap();
        let batch = glance::PixelValues::stack(&[&a, &b]).unwrap();
        for beams in [1, 3] {
            let options = GenerateOptions {
                generation: GenerationOptions {
                    max_new_tokens: Some(8),
                    num_beams: Some(beams),
                    ..Default::default()
                },
                ..Default::default()
            };
            let together: Vec<Vec<u32>> = m
                .generate(&batch, &options)
                .unwrap()
                .into_iter()
                .map(|o| o.tokens)
                .collect();
            let alone: Vec<Vec<u32>> = [&a, &b]
                .iter()
                .map(|p| m.generate(p, &options).unwrap().remove(0).tokens)
                .collect();
            assert_eq!(together, alone, "{arch}, {beams} beams");
        }
    }
}

#[test]
fn bad_options_are_errors() {
    let m = model("trocr");
    let pixels = m.load_image(&image("rgb.png")).unwrap();
    let with = |g: GenerationOptions| {
        m.generate(
            &pixels,
            &GenerateOptions {
                generation: g,
                ..Default::default()
            },
        )
    };
    let err = with(GenerationOptions {
        num_beams: Some(0),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("num_beams"), "{err}");
    let err = with(GenerationOptions {
        num_beams: Some(2),
        num_return_sequences: Some(3),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("num_return_sequences"), "{err}");
    let err = with(GenerationOptions {
        bad_words_ids: Some(vec![vec![100_000]]),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("outside the model's vocabulary"),
        "{err}"
    );
    let err = with(GenerationOptions {
        max_length: Some(1),
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("max_length"), "{err}");
    let wrong = glance::PixelValues {
        shape: [1, 3, 10, 10],
        data: vec![0.0; 5],
    };
    assert!(m.generate(&wrong, &GenerateOptions::default()).is_err());
}

#[test]
fn a_time_budget_stops_decoding_cleanly() {
    let m = model("trocr");
    let pixels = m.load_image(&image("rgb.png")).unwrap();
    let full = m.generate(&pixels, &greedy(10)).unwrap().remove(0);
    for beams in [1, 3] {
        let options = |budget: std::time::Duration| GenerateOptions {
            generation: GenerationOptions {
                num_beams: Some(beams),
                ..greedy(10).generation
            },
            time_budget: Some(budget),
            ..Default::default()
        };
        // Out of time at once: one step is taken, and the output says it was cut short.
        let cut = m
            .generate(&pixels, &options(std::time::Duration::ZERO))
            .unwrap()
            .remove(0);
        assert!(cut.truncated, "beams {beams}");
        assert_eq!(cut.tokens.len(), 2, "beams {beams}: {:?}", cut.tokens);
        // A budget that is not reached changes nothing.
        let ample = m
            .generate(&pixels, &options(std::time::Duration::from_secs(600)))
            .unwrap()
            .remove(0);
        if beams == 1 {
            assert_eq!(ample.tokens, full.tokens);
        }
        assert!(!ample.truncated || ample.tokens.len() == full.tokens.len());
    }
}

/// Beam search keeps one cross-attention cache row per image while its rows stay grouped by
/// image (model::attention); rows reordered out of that order make the session fall back to one
/// copy per row. Either way each row's logits are those of its own sequence decoded alone.
#[test]
fn cross_cache_rows_follow_their_images_when_rows_leave_image_order() {
    use tract_onnx::prelude::Tensor;
    let m = model("trocr");
    let graphs = m.graphs();
    let states: Vec<Tensor> = ["rgb.png", "wide.jpg"]
        .iter()
        .map(|name| {
            let pixels = m.load_image(&image(name)).unwrap();
            graphs.encoder.run(&pixels).unwrap()
        })
        .collect();
    let both = Tensor::stack_tensors(0, &states).unwrap();
    // Rows of a session of both images: histories, starting from the decoder start token 2.
    let mut session = graphs.decoder.session(both);
    session.step(&[&[2], &[2]]).unwrap();
    // Two beams per image, grouped (one cache row per image), then a step.
    session.reorder(&[0, 0, 1, 1]).unwrap();
    let rows: [&[u32]; 4] = [&[2, 5], &[2, 6], &[2, 7], &[2, 8]];
    session.step(&rows).unwrap();
    // Rows of images 0, 1, 0, 1: no longer grouped, so the cache is copied per row.
    session.reorder(&[0, 2, 1, 3]).unwrap();
    let rows: [&[u32]; 4] = [&[2, 5, 9], &[2, 7, 10], &[2, 6, 11], &[2, 8, 12]];
    let logits = session.step(&rows).unwrap();
    for (r, (row, image)) in rows.iter().zip([0, 1, 0, 1]).enumerate() {
        let mut alone = graphs.decoder.session(states[image].clone());
        let want = alone.step(&[row]).unwrap();
        let worst = logits
            .row(r)
            .iter()
            .zip(want.row(0))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "row {r}: logits differ by {worst}");
    }
}
