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

/// Broken JPEGs (every cut point, flipped bytes) give errors or pixels, never a panic or a hang.
#[test]
fn hostile_jpegs_never_panic() {
    let name = std::path::Path::new("hostile.jpg");
    for file in ["wide.jpg", "exif_rot.jpg"] {
        let bytes = std::fs::read(common::image(file)).unwrap();
        for cut in (0..bytes.len()).step_by(7) {
            let _ = Rgb8::decode(&bytes[..cut], name, 1 << 20);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            let mut b = bytes.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state % b.len() as u64) as usize;
                b[at] ^= (state >> 32) as u8 | 1;
            }
            let _ = Rgb8::decode(&b, name, 1 << 20);
        }
    }
    // A header claiming a huge image is refused before anything is allocated.
    let mut huge = std::fs::read(common::image("wide.jpg")).unwrap();
    let sof = huge.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    huge[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    let err = Rgb8::decode(&huge, name, glance::vision::image::DEFAULT_MAX_PIXELS).unwrap_err();
    assert!(err.to_string().contains("hostile.jpg"), "{err}");
}
