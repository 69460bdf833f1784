//! glance: read an image, write text, on a CPU, offline.
//!
//! glance runs Hugging Face vision encoder-decoder models (TrOCR, ViT-GPT2, Donut) exported to
//! ONNX by Optimum or for transformers.js, straight from their directory, with
//! [tract](https://github.com/sonos/tract). Its decoding loop reproduces transformers'
//! `generate()` token for token.
//!
//! ```no_run
//! use glance::{GenerateOptions, Model, OpenOptions};
//!
//! let model = Model::open("models/my-trocr".as_ref(), &OpenOptions::default())?;
//! let pixels = model.load_image("line.png".as_ref())?;
//! let out = model.generate(&pixels, &GenerateOptions::default())?;
//! println!("{}", out[0].text);
//! # Ok::<(), glance::Error>(())
//! ```
//!
//! Tokens can be streamed as they are chosen, through a callback ([`Model::generate_with`]) or
//! an iterator ([`Model::stream`]).

pub mod bench;
pub mod decode;
pub mod error;
pub mod ffi;
#[doc(hidden)]
pub mod fuzz;
pub mod inputs;
mod kernels;
pub mod model;
pub mod ocr;
mod report;
pub mod text;
pub mod vision;

use std::path::Path;
use std::time::Instant;

use tract_onnx::prelude::Tensor;

pub use decode::{EarlyStopping, GenerationConfig, GenerationOptions, Sequence};
pub use error::{Error, Result};
pub use model::encoder::{IdGrid, InputSizes};
pub use model::layout::{DecoderForm, Dtype};
pub use model::{Compute, ModelDir, OpenOptions};
pub use vision::{PixelValues, Rgb8, Size};

use decode::beam::beam_search;
use decode::greedy::Greedy;
use model::Graphs;
use text::Text;
use vision::ImageProcessor;

/// What to generate, beyond the model's own settings.
#[derive(Debug, Clone, Default)]
pub struct GenerateOptions {
    /// Overrides of the model's generation settings (`None` fields keep the model's value).
    pub generation: GenerationOptions,
    /// Text the decoder starts from (a Donut task prompt such as `<s_cord-v2>`).
    pub prompt: Option<String>,
    /// Keep special tokens in the text.
    pub keep_special_tokens: bool,
    /// Take only the special token ids from the model's generation settings and Hugging Face's
    /// library defaults for the rest, as transformers does when `generate()` is given a fresh
    /// `GenerationConfig()`.
    pub ignore_model_generation_config: bool,
    /// Stop decoding once this much time has passed since generation began (the encoder always
    /// runs to its end); the outputs are then marked truncated.
    pub time_budget: Option<std::time::Duration>,
}

/// One sequence with its text.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceText {
    pub tokens: Vec<u32>,
    pub text: String,
    pub score: Option<f32>,
}

/// Time spent per stage, in milliseconds. Encoding and decoding are shared by the images of a
/// batch; each image reports the batch's time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub preprocess_ms: f64,
    pub encode_ms: f64,
    pub decode_ms: f64,
}

/// The result for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The best sequence's text.
    pub text: String,
    /// The best sequence, as Hugging Face returns it: decoder prompt first, EOS included when
    /// generated, no padding.
    pub tokens: Vec<u32>,
    /// The best sequence's beam score; `None` for greedy search.
    pub score: Option<f32>,
    /// Every returned sequence, best first (`num_return_sequences` of them).
    pub sequences: Vec<SequenceText>,
    /// The best sequence's confidence: the geometric mean of its tokens' probabilities.
    pub confidence: f32,
    /// Generation was stopped before EOS or the length limit.
    pub truncated: bool,
    pub timings: Timings,
}

/// The size an image is brought to before the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolution {
    /// The size the model's image processor gives (its training size).
    #[default]
    Native,
    /// Exactly this size (a ViT's position embeddings are resampled for its patch grid).
    Exact(Size),
    /// The image's aspect ratio, as large as the encoder's patch budget allows, padded to whole
    /// patches.
    KeepAspect,
}

/// How [`Model::read_page`] treats an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageMode {
    /// A document: find the text lines, read them all, in reading order.
    #[default]
    Page,
    /// The whole image is one text line.
    Line,
}

/// One recognised line of a page.
#[derive(Debug, Clone, PartialEq)]
pub struct LineText {
    pub text: String,
    /// Where the line is, in the (deskewed) page.
    pub bbox: ocr::Rect,
    /// The model's confidence, between 0 and 1 (the mean over the line's chunks).
    pub score: f32,
}

/// The text of a page, line by line.
#[derive(Debug, Clone, PartialEq)]
pub struct PageText {
    /// The lines joined by newlines.
    pub text: String,
    pub lines: Vec<LineText>,
    /// The time budget ran out: lines after the last one read are missing, and the last ones
    /// read may be cut short.
    pub truncated: bool,
    pub timings: Timings,
}

/// How many line chunks go through the model together.
const PAGE_BATCH: usize = 8;

/// A streamed token: its id and the text it adds.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    pub text: String,
}

/// A loaded model: graphs optimized once, shared by every generation (and every thread).
#[derive(Debug)]
pub struct Model {
    dir: ModelDir,
    graphs: Graphs,
    processor: ImageProcessor,
    text: Text,
    max_image_pixels: u64,
}

impl Model {
    /// Opens a model directory (Optimum layout, or transformers.js with graphs under `onnx/`).
    pub fn open(dir: &Path, options: &OpenOptions) -> Result<Model> {
        let max_image_pixels = options
            .max_image_pixels
            .unwrap_or(vision::image::DEFAULT_MAX_PIXELS);
        if max_image_pixels == 0 {
            return Err(Error::Option("max_image_pixels must be at least 1".into()));
        }
        let dir = ModelDir::open(dir, options)?;
        let processor = vision::preprocess::load(&dir.root)?;
        let runtime = model::Runtime {
            threads: options.threads,
            compute: options.compute,
        };
        // The tokenizer loads beside the graphs: parsing a large tokenizer.json (a 64k-token
        // BPE) takes about a fifth of a second, on a core tract's graph optimizer leaves idle.
        let (text, graphs) = std::thread::scope(|s| {
            let text = s.spawn(|| Text::load(&dir.root));
            let graphs = Graphs::load(&dir, processor.output_size(), runtime);
            let text = text
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (text, graphs)
        });
        // A bad tokenizer is reported before bad graphs, as when they loaded one after the other.
        let text = text?;
        let graphs = graphs?;
        Ok(Model {
            dir,
            graphs,
            processor,
            text,
            max_image_pixels,
        })
    }

    /// The largest image, in pixels, this model takes ([`OpenOptions::max_image_pixels`]).
    pub fn max_image_pixels(&self) -> u64 {
        self.max_image_pixels
    }

    pub fn dir(&self) -> &ModelDir {
        &self.dir
    }

    pub fn processor(&self) -> &ImageProcessor {
        &self.processor
    }

    pub fn text(&self) -> &Text {
        &self.text
    }

    pub fn graphs(&self) -> &Graphs {
        &self.graphs
    }

    /// Decodes an image file and preprocesses it for this model.
    pub fn load_image(&self, path: &Path) -> Result<PixelValues> {
        self.load_image_at(path, Resolution::Native)
    }

    /// Decodes an image file and brings it to `resolution` for this model.
    pub fn load_image_at(&self, path: &Path, resolution: Resolution) -> Result<PixelValues> {
        self.preprocess(&Rgb8::open_within(path, self.max_image_pixels)?, resolution)
    }

    /// Preprocesses an image for this model at `resolution`: the image processor's own size,
    /// an exact size, or the image's aspect ratio within the encoder's patch budget.
    pub fn preprocess(&self, image: &Rgb8, resolution: Resolution) -> Result<PixelValues> {
        let (w, h) = (image.width, image.height);
        if w == 0 || h == 0 {
            return Err(Error::Option(format!("the image is empty ({w}x{h})")));
        }
        if image.data.len() != w * h * 3 {
            return Err(Error::Option(format!(
                "an RGB image of {w}x{h} pixels needs {} bytes, not {}",
                w.saturating_mul(h).saturating_mul(3),
                image.data.len()
            )));
        }
        vision::image::TooManyPixels::check(w as u64, h as u64, self.max_image_pixels)
            .map_err(|e| Error::Option(format!("the image is {e}")))?;
        let sizes = self.graphs.encoder.sizes();
        match resolution {
            Resolution::Native => Ok(self.processor.preprocess(image)),
            Resolution::Exact(size) => {
                sizes.check(size)?;
                Ok(self.processor.with_size(size).preprocess(image))
            }
            Resolution::KeepAspect => {
                let image_size = Size {
                    height: image.height,
                    width: image.width,
                };
                match sizes.keep_aspect(image_size) {
                    Some((canvas, content)) => {
                        Ok(self.processor.preprocess_fitted(image, canvas, content))
                    }
                    // Swin-style encoders (Donut) keep the aspect ratio in their processor.
                    None if matches!(sizes, InputSizes::Multiple { .. }) => {
                        Ok(self.processor.preprocess(image))
                    }
                    None => Err(Error::Option(format!(
                        "--keep-aspect: the encoder of {} takes only its native size (glance resamples the position embeddings of ViT and DeiT encoders)",
                        self.dir.root.display()
                    ))),
                }
            }
        }
    }

    /// The grid of visual-word ids of each image, for a model with a discrete visual tokenizer.
    pub fn tokenize(&self, pixels: &PixelValues) -> Result<Vec<IdGrid>> {
        pixels.check()?;
        self.graphs.encoder.tokenize(pixels)
    }

    /// Generates text for each image of a batch of pixel values.
    pub fn generate(&self, pixels: &PixelValues, options: &GenerateOptions) -> Result<Vec<Output>> {
        self.generate_with(pixels, options, |_, _| true)
    }

    /// Like [`Model::generate`], calling `on_token(image, token)` as each token is chosen.
    /// Returning `false` stops generation; the outputs are then marked truncated. With beam
    /// search, tokens are only known when the search ends and are reported then.
    pub fn generate_with(
        &self,
        pixels: &PixelValues,
        options: &GenerateOptions,
        mut on_token: impl FnMut(usize, &Token) -> bool,
    ) -> Result<Vec<Output>> {
        let (prompt, config) = self.prepare(options)?;
        let start = Instant::now();
        let out_of_time = || options.time_budget.is_some_and(|b| start.elapsed() >= b);
        let states = self.encode(pixels)?;
        let encode_ms = ms(start);
        let start = Instant::now();
        let session = self.graphs.decoder.session(states);
        let results: Vec<Vec<Sequence>> = if config.num_beams == 1 {
            let mut greedy = Greedy::new(session, config, &prompt);
            let mut pieces = vec![Pieces::default(); pixels.batch()];
            let mut stopped = false;
            while let Some(chosen) = greedy.step()? {
                for (row, token) in chosen.iter().enumerate() {
                    if let Some(id) = token {
                        let token =
                            pieces[row].push(&self.text, *id, options.keep_special_tokens)?;
                        stopped |= !on_token(row, &token);
                    }
                }
                if stopped || out_of_time() {
                    break;
                }
            }
            greedy.finish().into_iter().map(|s| vec![s]).collect()
        } else {
            let mut session = session;
            let results = beam_search(&mut session, &config, &prompt, &out_of_time)?;
            for (row, seqs) in results.iter().enumerate() {
                let mut pieces = Pieces::default();
                for &id in &seqs[0].tokens[prompt.len()..] {
                    let token = pieces.push(&self.text, id, options.keep_special_tokens)?;
                    if !on_token(row, &token) {
                        break;
                    }
                }
            }
            results
        };
        let timings = Timings {
            preprocess_ms: 0.0,
            encode_ms,
            decode_ms: ms(start),
        };
        results
            .into_iter()
            .map(|seqs| self.output(seqs, options, timings))
            .collect()
    }

    /// Streams the tokens of one image (a batch of one) with greedy search, as an iterator.
    pub fn stream(
        &self,
        pixels: &PixelValues,
        options: &GenerateOptions,
    ) -> Result<TokenStream<'_>> {
        if pixels.batch() != 1 {
            return Err(Error::Option(format!(
                "streaming takes one image, not {}",
                pixels.batch()
            )));
        }
        let (prompt, config) = self.prepare(options)?;
        if config.num_beams != 1 {
            return Err(Error::Option(
                "streaming needs greedy search (num_beams 1)".into(),
            ));
        }
        let session = self.graphs.decoder.session(self.encode(pixels)?);
        Ok(TokenStream {
            model: self,
            greedy: Some(Greedy::new(session, config, &prompt)),
            pieces: Pieces::default(),
            keep_special_tokens: options.keep_special_tokens,
        })
    }

    /// The lines of a document image and, for each chunk of each line, the image the model
    /// reads (page mode's analysis, without recognition: what `read_page` recognises).
    pub fn page_layout(&self, image: &Rgb8, mode: PageMode) -> (Vec<ocr::Line>, Vec<Rgb8>) {
        // A model made for text lines (much wider than high) takes each chunk on its line canvas;
        // other models get the chunk as an image and resize it their own way.
        let canvas = self
            .processor
            .output_size()
            .filter(|s| s.width >= 4 * s.height);
        let aspect = canvas.map_or(ocr::DEFAULT_MAX_ASPECT, |s| {
            s.width as f64 / s.height as f64
        });
        let (page, lines) = match mode {
            PageMode::Line => {
                let page = ocr::Page::of_line(image);
                let line = page.single_line(aspect);
                (page, line.into_iter().collect())
            }
            PageMode::Page => {
                let page = ocr::Page::new(image);
                let lines = page.lines(aspect);
                (page, lines)
            }
        };
        let chunks = lines
            .iter()
            .flat_map(|l| &l.chunks)
            .map(|chunk| {
                let crop = page.gray.crop(*chunk);
                match canvas {
                    Some(s) => ocr::line_canvas(&crop, s.height, s.width),
                    None => crop.to_rgb(),
                }
            })
            .collect();
        (lines, chunks)
    }

    /// Reads the text of a document image (OCR): in page mode the lines are found, cut into
    /// chunks that fit the model's input, recognised in batches, and returned in reading order.
    pub fn read_page(
        &self,
        image: &Rgb8,
        options: &GenerateOptions,
        mode: PageMode,
    ) -> Result<PageText> {
        let start = Instant::now();
        let (lines, chunks) = self.page_layout(image, mode);
        let pixels: Vec<PixelValues> = chunks
            .iter()
            .map(|c| self.processor.preprocess(c))
            .collect();
        let mut timings = Timings {
            preprocess_ms: ms(start),
            ..Timings::default()
        };
        let mut chunk_texts = Vec::with_capacity(pixels.len());
        let mut truncated = false;
        for group in pixels.chunks(PAGE_BATCH) {
            // The time budget is the page's: each batch gets what is left of it.
            let time_budget = match options.time_budget {
                Some(budget) if start.elapsed() >= budget => {
                    truncated = true;
                    break;
                }
                Some(budget) => Some(budget - start.elapsed()),
                None => None,
            };
            let options = GenerateOptions {
                time_budget,
                ..options.clone()
            };
            let refs: Vec<&PixelValues> = group.iter().collect();
            let batch = PixelValues::stack(&refs)
                .ok_or_else(|| Error::Generation("line chunks of different sizes".into()))?;
            for out in self.generate(&batch, &options)? {
                truncated |= out.truncated;
                timings.encode_ms += out.timings.encode_ms / group.len() as f64;
                timings.decode_ms += out.timings.decode_ms / group.len() as f64;
                chunk_texts.push((out.text.trim().to_string(), out.confidence));
            }
        }
        let mut next = chunk_texts.into_iter();
        let lines: Vec<LineText> = lines
            .iter()
            .map(|line| {
                let parts: Vec<(String, f32)> = next.by_ref().take(line.chunks.len()).collect();
                let score = parts.iter().map(|p| p.1).sum::<f32>() / parts.len().max(1) as f32;
                let words: Vec<&str> = parts
                    .iter()
                    .map(|p| p.0.as_str())
                    .filter(|t| !t.is_empty())
                    .collect();
                LineText {
                    text: words.join(" "),
                    bbox: line.bbox,
                    score,
                }
            })
            .filter(|l| !l.text.is_empty())
            .collect();
        let text = lines
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        Ok(PageText {
            text,
            lines,
            truncated,
            timings,
        })
    }

    /// The decoder prompt and the resolved generation settings.
    fn prepare(&self, options: &GenerateOptions) -> Result<(Vec<u32>, GenerationConfig)> {
        let file = &self.dir.generation;
        let model = if options.ignore_model_generation_config {
            GenerationOptions {
                decoder_start_token_id: file.decoder_start_token_id,
                bos_token_id: file.bos_token_id,
                eos_token_id: file.eos_token_id.clone(),
                pad_token_id: file.pad_token_id,
                ..Default::default()
            }
        } else {
            file.clone()
        };
        let o = options.generation.clone().or(model.clone());
        let start = o.decoder_start_token_id.or(o.bos_token_id).ok_or_else(|| {
            Error::config(
                &self.dir.config.path,
                "names neither decoder_start_token_id nor bos_token_id: glance cannot start decoding",
            )
        })?;
        let prompt = match &options.prompt {
            None => vec![start],
            Some(text) => {
                let ids = self.text.encode_prompt(text)?;
                if ids.is_empty() {
                    return Err(Error::Option(format!(
                        "the prompt {text:?} encodes to no tokens"
                    )));
                }
                // transformers prepends the start token unless the prompt has it, except for
                // Donut, whose task prompt is the whole prefix.
                if self.dir.prompt_is_whole_prefix() || ids[0] == start {
                    ids
                } else {
                    std::iter::once(start).chain(ids).collect()
                }
            }
        };
        let vocab = self.graphs.decoder.vocab_size;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Option(format!(
                "prompt token {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let config = GenerationConfig::resolve(&options.generation, &model, prompt.len(), vocab)?;
        if let Some(positions) = self.dir.decoder.positions {
            if config.max_length > positions {
                return Err(Error::Option(format!(
                    "max_length {} (a decoder prompt of {} tokens and up to {} new ones) is more than the {positions} positions the decoder has ({}#decoder)",
                    config.max_length,
                    prompt.len(),
                    config.max_length - prompt.len(),
                    self.dir.config.path.display()
                )));
            }
        }
        Ok((prompt, config))
    }

    fn encode(&self, pixels: &PixelValues) -> Result<Tensor> {
        pixels.check()?;
        self.graphs.encoder.run(pixels)
    }

    fn output(
        &self,
        seqs: Vec<Sequence>,
        options: &GenerateOptions,
        timings: Timings,
    ) -> Result<Output> {
        let sequences = seqs
            .iter()
            .map(|s| {
                Ok(SequenceText {
                    tokens: s.tokens.clone(),
                    text: self.text.decode(&s.tokens, !options.keep_special_tokens)?,
                    score: s.score,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let best = &sequences[0];
        Ok(Output {
            text: best.text.clone(),
            tokens: best.tokens.clone(),
            score: best.score,
            truncated: seqs[0].truncated,
            confidence: seqs[0].confidence,
            sequences,
            timings,
        })
    }
}

/// Turns token ids into the pieces of text they add, as the whole sequence decodes (a token
/// may only make sense together with the next, as with byte-level BPE).
#[derive(Debug, Clone, Default)]
struct Pieces {
    ids: Vec<u32>,
    text: String,
}

impl Pieces {
    fn push(&mut self, text: &Text, id: u32, keep_special: bool) -> Result<Token> {
        self.ids.push(id);
        let now = text.decode(&self.ids, !keep_special)?;
        let piece = match now.strip_prefix(self.text.as_str()) {
            Some(rest) => rest.to_string(),
            None => String::new(),
        };
        if now.len() >= self.text.len() {
            self.text = now;
        }
        Ok(Token { id, text: piece })
    }
}

/// Greedy tokens of one image, one at a time ([`Model::stream`]).
pub struct TokenStream<'m> {
    model: &'m Model,
    greedy: Option<Greedy<'m>>,
    pieces: Pieces,
    keep_special_tokens: bool,
}

impl Iterator for TokenStream<'_> {
    type Item = Result<Token>;
    fn next(&mut self) -> Option<Result<Token>> {
        let greedy = self.greedy.as_mut()?;
        match greedy.step() {
            Ok(Some(chosen)) => match chosen.first().copied().flatten() {
                Some(id) => Some(
                    self.pieces
                        .push(&self.model.text, id, self.keep_special_tokens),
                ),
                None => {
                    self.greedy = None;
                    None
                }
            },
            Ok(None) => {
                self.greedy = None;
                None
            }
            Err(e) => {
                self.greedy = None;
                Some(Err(e))
            }
        }
    }
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
