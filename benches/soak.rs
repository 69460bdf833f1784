//! Soak and concurrency run (issue "Robustness"): many generations in one process, resident
//! memory sampled as they go, then several threads sharing one loaded model.
//!
//! ```sh
//! cargo bench --bench soak                       # TrOCR fixture, 2000 + 4 x 500 generations
//! cargo bench --bench soak -- --model DIR --generations 2000 --threads 4 --per-thread 500 IMAGE...
//! ```
//!
//! Fails (exit 1) when resident memory after the last generation is more than 5% above what it
//! was after the first 100, or when a thread's result differs from the single-threaded one for
//! the same image.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use glance::bench::memory;
use glance::{GenerateOptions, Model, OpenOptions, PixelValues};

struct Args {
    model: PathBuf,
    images: Vec<PathBuf>,
    generations: usize,
    threads: usize,
    per_thread: usize,
}

fn parse() -> Result<Args, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("tests/fixtures");
    let mut args = Args {
        model: fixtures.join("models/trocr"),
        images: Vec::new(),
        generations: 2000,
        threads: 4,
        per_thread: 500,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--model" => args.model = it.next().ok_or("--model needs a directory")?.into(),
            "--generations" => args.generations = number("--generations")?,
            "--threads" => args.threads = number("--threads")?,
            "--per-thread" => args.per_thread = number("--per-thread")?,
            // cargo bench passes --bench to every bench target.
            "--bench" => {}
            other if other.starts_with('-') => return Err(format!("unknown option {other}")),
            image => args.images.push(image.into()),
        }
    }
    if args.images.is_empty() {
        args.images = ["rgb.png", "gray.png", "wide.jpg", "palette.png"]
            .iter()
            .map(|n| fixtures.join("images").join(n))
            .collect();
    }
    if args.generations < 200 || args.threads == 0 {
        return Err("--generations must be at least 200 and --threads at least 1".into());
    }
    Ok(args)
}

fn mib(bytes: Option<u64>) -> f64 {
    bytes.unwrap_or(0) as f64 / (1 << 20) as f64
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> glance::Result<bool> {
    let model = Model::open(
        &args.model,
        &OpenOptions {
            threads: 1,
            ..Default::default()
        },
    )?;
    let pixels: Vec<PixelValues> = args
        .images
        .iter()
        .map(|p| model.load_image(p))
        .collect::<glance::Result<_>>()?;
    let options = GenerateOptions::default();
    let generate = |i: usize| -> glance::Result<Vec<u32>> {
        Ok(model
            .generate(&pixels[i % pixels.len()], &options)?
            .remove(0)
            .tokens)
    };
    let reference: Vec<Vec<u32>> = (0..pixels.len()).map(generate).collect::<Result<_, _>>()?;

    println!(
        "soak: {} generations on one thread, {} images, model {}",
        args.generations,
        pixels.len(),
        args.model.display()
    );
    let start = Instant::now();
    let mut after_100 = None;
    let mut samples = Vec::new();
    for i in 0..args.generations {
        let tokens = generate(i)?;
        if tokens != reference[i % pixels.len()] {
            println!("generation {i}: tokens differ from the first run on the same image");
            return Ok(false);
        }
        if (i + 1) % 100 == 0 {
            let rss = memory("VmRSS");
            after_100.get_or_insert(rss);
            samples.push(format!("{:.1}", mib(rss)));
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let first = mib(after_100.flatten());
    let last = mib(memory("VmRSS"));
    let growth = if first > 0.0 { last / first - 1.0 } else { 0.0 };
    println!("  RSS MiB every 100 generations: {}", samples.join(" "));
    println!(
        "  after 100: {first:.1} MiB, after {}: {last:.1} MiB ({:+.2}%), peak {:.1} MiB; {:.2} ms per generation",
        args.generations,
        growth * 100.0,
        mib(memory("VmHWM")),
        seconds * 1e3 / args.generations as f64
    );
    let memory_ok = growth <= 0.05;

    println!(
        "concurrency: {} threads sharing the model, {} generations each",
        args.threads, args.per_thread
    );
    let start = Instant::now();
    let mismatches: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.threads)
            .map(|t| {
                let generate = &generate;
                let reference = &reference;
                s.spawn(move || -> glance::Result<usize> {
                    let mut bad = 0;
                    for i in 0..args.per_thread {
                        let image = (i + t) % reference.len();
                        bad += usize::from(generate(image)? != reference[image]);
                    }
                    Ok(bad)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a soak thread panicked"))
            .sum::<glance::Result<usize>>()
    })?;
    let total = args.threads * args.per_thread;
    println!(
        "  {total} generations in {:.1} s: {} equal to the single-threaded result, {mismatches} different; RSS {:.1} MiB",
        start.elapsed().as_secs_f64(),
        total - mismatches,
        mib(memory("VmRSS"))
    );
    if !memory_ok {
        println!("FAIL: resident memory grew by more than 5%");
    }
    Ok(memory_ok && mismatches == 0)
}
