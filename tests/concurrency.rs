//! One loaded model shared by several threads gives each the same results as one thread
//! (`cargo bench --bench soak` runs the long version: 2000 + 4 x 500 generations).

mod common;

use common::*;
use glance::{GenerateOptions, GenerationOptions};

#[test]
fn threads_sharing_a_model_get_the_single_threaded_results() {
    let model = open_fixture("trocr");
    let images = ["rgb.png", "gray.png", "wide.jpg", "palette.png"];
    let pixels: Vec<_> = images
        .iter()
        .map(|n| model.load_image(&image(n)).unwrap())
        .collect();
    // Greedy and beam search: beam search rearranges its cache rows, greedy does not.
    for num_beams in [1, 2] {
        let options = GenerateOptions {
            generation: GenerationOptions {
                num_beams: Some(num_beams),
                ..Default::default()
            },
            ..Default::default()
        };
        let run = |i: usize| model.generate(&pixels[i], &options).unwrap().remove(0);
        let reference: Vec<_> = (0..pixels.len()).map(run).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let (run, reference) = (&run, &reference);
                    s.spawn(move || {
                        for i in 0..12 {
                            let image = (i + t) % reference.len();
                            let out = run(image);
                            assert_eq!(
                                out.tokens, reference[image].tokens,
                                "thread {t}, image {image}"
                            );
                            assert_eq!(out.text, reference[image].text);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap();
            }
        });
    }
}
