//! Preprocessing parity: pixel values within one 8-bit level of Hugging Face's (transformers 4.57,
//! PIL) for every fixture image and model, measured before rescaling and normalisation.

mod common;

use common::*;
use glance::vision::{preprocess, Rgb8};

#[test]
fn pixel_values_match_hugging_face() {
    let mut lines = Vec::new();
    let mut worst_overall = 0f64;
    for arch in ARCHS {
        let oracle = oracle(arch);
        let processor = preprocess::load(&model_fixture(arch)).unwrap();
        for (image, _) in oracle["pixel_values"].as_object().unwrap() {
            let want = hf_pixel_values(arch, &oracle, image);
            let got = processor.preprocess(&Rgb8::open(&common::image(image)).unwrap());
            assert_eq!(got.shape, want.shape, "{arch} {image}: shape");
            let plane = got.height() * got.width();
            let mut worst = 0f64;
            let mut differing = 0;
            for (i, (g, w)) in got.data.iter().zip(&want.data).enumerate() {
                let c = i / plane;
                let d = (processor.to_8bit_scale(c, *g) - processor.to_8bit_scale(c, *w)).abs();
                worst = worst.max(d);
                differing += (d > 0.01) as usize;
            }
            worst_overall = worst_overall.max(worst);
            lines.push(format!(
                "{arch:8} {image:14} max |diff| {worst:.3} levels, {differing} of {} values differ",
                got.data.len()
            ));
        }
    }
    println!("{}", lines.join("\n"));
    assert!(
        worst_overall <= 1.0 + 1e-3,
        "a pixel differs by {worst_overall} levels:\n{}",
        lines.join("\n")
    );
}
