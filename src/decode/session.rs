//! The decoder session: runs decoder steps for a batch of rows and keeps their KV cache.
//!
//! It knows nothing of beams: a strategy asks for the logits of the last position of every row
//! and tells the session how rows were reordered (`reorder`).

use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::model::graph::{Graph, Hoisted, NodeTime, Port};
use crate::model::names;

/// Which graph runs which decoder step.
#[derive(Debug, Clone)]
pub enum Steps {
    /// No cache: the graph runs the whole prefix at every step.
    NoPast(Graph),
    /// `first` runs the prefix, `with_past` every later step (each holds the decoder weights).
    Split { first: Graph, with_past: Graph },
    /// `with_past` runs every step, the first from an empty self-attention cache, so the decoder
    /// weights are held once. `cross` computes the cross-attention cache
    /// (`present.*.encoder.*`) from `encoder_hidden_states` before the first step; GPT-2-style
    /// decoders, which take `encoder_hidden_states` at every step, have none.
    Shared {
        with_past: Graph,
        cross: Option<Graph>,
    },
}

impl Steps {
    /// The graph for a step, given how many tokens of each row the cache holds.
    fn graph_for(&self, cached_len: usize) -> &Graph {
        match self {
            Steps::NoPast(g) => g,
            Steps::Split { first, .. } if cached_len == 0 => first,
            Steps::Split { with_past, .. } | Steps::Shared { with_past, .. } => with_past,
        }
    }

    /// The graph that runs every step after the first.
    pub fn every_step(&self) -> &Graph {
        match self {
            Steps::NoPast(g) => g,
            Steps::Split { with_past, .. } | Steps::Shared { with_past, .. } => with_past,
        }
    }

    fn with_past(&self) -> Option<&Graph> {
        match self {
            Steps::NoPast(_) => None,
            Steps::Split { with_past, .. } | Steps::Shared { with_past, .. } => Some(with_past),
        }
    }

    fn cross(&self) -> Option<&Graph> {
        match self {
            Steps::Shared { cross, .. } => cross.as_ref(),
            _ => None,
        }
    }

    /// The graphs that run tokens (all but the cross-attention cut).
    fn token_graphs(&self) -> Vec<&Graph> {
        match self {
            Steps::NoPast(g) => vec![g],
            Steps::Split { first, with_past } => vec![first, with_past],
            Steps::Shared { with_past, .. } => vec![with_past],
        }
    }

    /// Every graph, for display.
    pub fn graphs(&self) -> Vec<&Graph> {
        let mut all = self.token_graphs();
        all.extend(self.cross());
        all
    }

    /// Whether `with_past` can run the first step: every past input it takes is either made by
    /// `cross` or a self-attention cache whose heads and head size are known (to make it empty).
    pub fn can_share(with_past: &Graph, cross: Option<&Graph>) -> bool {
        with_past.inputs.iter().all(|port| {
            let Some(key) = names::past_key(&port.name) else {
                return true;
            };
            let made_by_cross = cross.is_some_and(|c| {
                c.outputs
                    .iter()
                    .any(|o| names::present_key(&o.name) == Some(key))
            });
            made_by_cross
                || (!names::is_cross_attention(key)
                    && port.shape.len() == 4
                    && port.shape[1].is_some()
                    && port.shape[3].is_some())
        })
    }
}

/// The decoder graphs of a model, shared by every generation.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub steps: Steps,
    pub vocab_size: usize,
    /// Whether the step graph reads the cross-attention cache with one row per image
    /// ([`crate::model::attention`]), so beams need not copy it.
    cache_per_image: bool,
}

impl Decoder {
    /// Checks that the graphs take and give what a decoder must, so that a wrong file fails at
    /// load time with its name, not in the middle of generation.
    pub fn new(steps: Steps) -> Result<Decoder> {
        for graph in steps.token_graphs() {
            require_input(graph, names::INPUT_IDS)?;
            if graph.output_index(names::LOGITS).is_none() {
                return Err(Error::graph(
                    &graph.path,
                    format!(
                        "a decoder graph must have an output named {}",
                        names::LOGITS
                    ),
                ));
            }
            for port in &graph.inputs {
                let known = port.name == names::INPUT_IDS
                    || port.name == names::ENCODER_HIDDEN_STATES
                    || names::past_key(&port.name).is_some();
                if !known {
                    return Err(Error::graph(
                        &graph.path,
                        format!("unexpected decoder input {}", port.describe()),
                    ));
                }
            }
        }
        if let Some(with_past) = steps.with_past() {
            for port in with_past
                .inputs
                .iter()
                .filter(|p| names::past_key(&p.name).is_some())
            {
                let key = names::past_key(&port.name).unwrap_or_default();
                let produced = steps.graphs().iter().any(|g| {
                    g.outputs
                        .iter()
                        .any(|o| names::present_key(&o.name) == Some(key))
                });
                if !produced {
                    return Err(Error::graph(
                        &with_past.path,
                        format!("input {} is produced by no present.{key} output", port.name),
                    ));
                }
            }
        }
        let main = steps.graph_for(0);
        let logits = &main.outputs[main.output_index(names::LOGITS).unwrap_or(0)];
        let vocab_size = logits.shape.last().copied().flatten().ok_or_else(|| {
            Error::graph(
                &main.path,
                format!("cannot tell the vocabulary size from {}", logits.describe()),
            )
        })?;
        let cache_per_image = steps.with_past().is_some_and(|g| {
            let mut cross = g
                .inputs
                .iter()
                .filter(|p| names::past_key(&p.name).is_some_and(names::is_cross_attention))
                .peekable();
            cross.peek().is_some()
                && cross.all(|p| p.dims.first().map(String::as_str) == Some(names::CROSS_ROWS))
        });
        Ok(Decoder {
            steps,
            vocab_size,
            cache_per_image,
        })
    }

    /// Starts decoding for `encoder_states` (`[rows, sequence, hidden]`, one row per sequence).
    pub fn session(&self, encoder_states: Tensor) -> Session<'_> {
        let images = encoder_states.shape()[0];
        Session {
            decoder: self,
            cross_rows: if self.cache_per_image {
                CrossRows::PerImage { images }
            } else {
                CrossRows::PerRow
            },
            origin: (0..images).collect(),
            encoder_states: encoder_states.into_tvalue(),
            cache: Vec::new(),
            hoisted: None,
            cached_len: 0,
            steps: 0,
        }
    }
}

fn require_input<'g>(graph: &'g Graph, name: &str) -> Result<&'g Port> {
    graph.input(name).ok_or_else(|| {
        Error::graph(
            &graph.path,
            format!("a decoder graph must have an input named {name}"),
        )
    })
}

/// Logits of the last position of every row, `[rows, vocab]`, in f32.
#[derive(Debug, Clone)]
pub struct Logits {
    pub vocab: usize,
    pub data: Vec<f32>,
}

impl Logits {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.vocab..(r + 1) * self.vocab]
    }
    pub fn rows(&self) -> usize {
        self.data.len() / self.vocab
    }
}

/// One KV-cache tensor, `[rows, heads, sequence, head_dim]`, known by its cache key
/// (`X` in `past_key_values.X` / `present.X`). Shared, not owned: a step's output becomes the
/// next step's input without a copy (the cross-attention cache of TrOCR-small is 28 MB at four
/// beams, copied twice per step when it was owned).
#[derive(Debug, Clone)]
struct CacheEntry {
    key: String,
    tensor: TValue,
}

/// How the cross-attention cache holds its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrossRows {
    /// Row `r` is row `r`'s.
    PerRow,
    /// Row `i` is image `i`'s, and the session's rows are the images' rows in order, as many
    /// for each (beam search): the step graph pairs them up.
    PerImage { images: usize },
}

/// The state of one generation: encoder output per row and the KV cache per row.
pub struct Session<'d> {
    decoder: &'d Decoder,
    /// For each row, the image (row of the encoder output) it decodes.
    origin: Vec<usize>,
    cross_rows: CrossRows,
    encoder_states: TValue,
    cache: Vec<CacheEntry>,
    /// What the every-step graph computes from the encoder states and the cross-attention
    /// cache alone, for the current rows; `None` once those change.
    hoisted: Option<Hoisted>,
    /// How many tokens of each row the cache holds.
    cached_len: usize,
    steps: usize,
}

impl Session<'_> {
    pub fn rows(&self) -> usize {
        self.encoder_states.shape()[0]
    }

    /// Logits for the next token of every row. `rows[r]` is the whole sequence of row `r` so
    /// far, decoder prompt included; all rows have the same length. Only the tokens the cache
    /// does not hold yet are fed to the graph.
    pub fn step(&mut self, rows: &[&[u32]]) -> Result<Logits> {
        if rows.len() != self.rows() {
            return Err(Error::Generation(format!(
                "{} rows given for a session of {}",
                rows.len(),
                self.rows()
            )));
        }
        let len = rows.first().map_or(0, |r| r.len());
        if len == 0 || rows.iter().any(|r| r.len() != len) || len <= self.cached_len {
            return Err(Error::Generation(
                "rows must be non-empty, of one length, and grow".into(),
            ));
        }
        let graph = self.decoder.steps.graph_for(self.cached_len);
        // Exports trace the with-past graph with one new token, and transformers makes no
        // causal mask for one token: fed several new tokens (a prompt, from an empty cache),
        // each would attend to the ones after it (TrOCR's logits were 0.16 off for a
        // three-token prompt). So they go in one at a time.
        let with_past = self.decoder.steps.with_past();
        if with_past.is_some_and(|g| std::ptr::eq(g, graph)) && len - self.cached_len > 1 {
            for t in self.cached_len + 1..len {
                let prefix: Vec<&[u32]> = rows.iter().map(|r| &r[..t]).collect();
                self.step(&prefix)?;
            }
            return self.step(rows);
        }
        if self.cached_len == 0 {
            if let Some(cross) = self.decoder.steps.cross() {
                self.cache = self.cross_cache(cross, rows)?;
                self.hoisted = None;
            }
        }
        let fresh: Vec<&[u32]> = rows.iter().map(|r| &r[self.cached_len..]).collect();
        let one_row = graph
            .input(names::INPUT_IDS)
            .is_some_and(|p| p.shape.first() == Some(&Some(1)));
        let (logits, presents) = if one_row && rows.len() > 1 {
            self.run_row_by_row(graph, &fresh)?
        } else if std::ptr::eq(graph, self.decoder.steps.every_step()) {
            if self.hoisted.is_none() {
                let fixed = feed(graph, &fresh, &self.encoder_states, &self.cache);
                self.hoisted = Some(graph.hoist(fixed)?);
            }
            self.run(
                graph,
                &fresh,
                &self.encoder_states,
                &self.cache,
                self.hoisted.as_ref(),
            )?
        } else {
            self.run(graph, &fresh, &self.encoder_states, &self.cache, None)?
        };
        if self.decoder.steps.with_past().is_some() {
            self.store(presents);
            self.cached_len = len;
        }
        self.steps += 1;
        // +inf or NaN means the arithmetic broke down (overflow, NaN input); -inf is a token a
        // graph masks out on purpose.
        let broken = |x: &f32| x.is_nan() || *x == f32::INFINITY;
        if let Some(r) = (0..logits.rows()).find(|&r| logits.row(r).iter().any(broken)) {
            return Err(Error::Generation(format!(
                "the decoder returned NaN or infinite logits for row {r} at step {} ({})",
                self.steps,
                graph.path.display()
            )));
        }
        Ok(logits)
    }

    /// Rearranges rows: new row `i` is old row `from[i]` (beam search keeps the best beams,
    /// which may come from one parent several times). `from` may also grow the batch.
    pub fn reorder(&mut self, from: &[usize]) -> Result<()> {
        let identity = from.len() == self.rows() && from.iter().enumerate().all(|(i, &f)| i == f);
        if identity {
            return Ok(());
        }
        // Values computed from the encoder states alone (the states, the cross-attention cache)
        // are the same in every row of one image: when each new row comes from the same image
        // as before (beam search after its first expansion), they need no copying.
        let origin: Vec<usize> = from.iter().map(|&f| self.origin[f]).collect();
        let same_images = origin == self.origin;
        if !same_images {
            self.encoder_states = gather_rows(&self.encoder_states, from)?.into_tvalue();
            self.hoisted = None;
        }
        let per_image = match self.cross_rows {
            CrossRows::PerImage { images } => grouped_by_image(&origin, images),
            CrossRows::PerRow => false,
        };
        for entry in &mut self.cache {
            let rows = match (names::is_cross_attention(&entry.key), self.cross_rows) {
                (false, _) => Some(from),
                (true, CrossRows::PerImage { .. }) if per_image => None,
                // Rows no longer in order of their images: one copy per row from now on.
                (true, CrossRows::PerImage { .. }) => Some(origin.as_slice()),
                (true, CrossRows::PerRow) if same_images => None,
                (true, CrossRows::PerRow) => Some(from),
            };
            if let Some(rows) = rows {
                entry.tensor = gather_rows(&entry.tensor, rows)?.into_tvalue();
            }
        }
        if !per_image && self.cross_rows != CrossRows::PerRow {
            self.cross_rows = CrossRows::PerRow;
            self.hoisted = None;
        }
        self.origin = origin;
        Ok(())
    }

    /// Runs a graph that only takes one row (tract-hf-recipes.md item 6) on each row in turn
    /// and stacks the results.
    fn run_row_by_row(
        &self,
        graph: &Graph,
        tokens: &[&[u32]],
    ) -> Result<(Logits, Vec<CacheEntry>)> {
        let mut data = Vec::with_capacity(tokens.len() * self.decoder.vocab_size);
        let mut per_row = Vec::with_capacity(tokens.len());
        for (r, row) in tokens.iter().enumerate() {
            let cache: Vec<CacheEntry> = self
                .cache
                .iter()
                .map(|e| {
                    Ok(CacheEntry {
                        key: e.key.clone(),
                        tensor: row_of(&e.tensor, r)?.into_tvalue(),
                    })
                })
                .collect::<Result<_>>()?;
            let (logits, presents) = self.run(
                graph,
                &[row],
                &row_of(&self.encoder_states, r)?.into(),
                &cache,
                None,
            )?;
            data.extend(logits.data);
            per_row.push(presents);
        }
        Ok((
            Logits {
                vocab: self.decoder.vocab_size,
                data,
            },
            stack_rows(per_row)?,
        ))
    }

    /// Runs `graph` on `tokens`, with the values `hoisted` from its prelude where given.
    fn run(
        &self,
        graph: &Graph,
        tokens: &[&[u32]],
        encoder_states: &TValue,
        cache: &[CacheEntry],
        hoisted: Option<&Hoisted>,
    ) -> Result<(Logits, Vec<CacheEntry>)> {
        let feed = feed(graph, tokens, encoder_states, cache);
        let outputs = match hoisted {
            Some(hoisted) => graph.run_hoisted(feed, hoisted)?,
            None => graph.run(feed)?,
        };
        let at = graph.output_index(names::LOGITS).unwrap_or(0);
        let logits = last_position(graph, &outputs[at])?;
        let presents = graph
            .outputs
            .iter()
            .zip(outputs.iter())
            .filter_map(|(port, value)| {
                let key = names::present_key(&port.name)?;
                Some(CacheEntry {
                    key: key.to_string(),
                    tensor: value.clone(),
                })
            })
            .collect();
        Ok((logits, presents))
    }

    /// The cross-attention cache of every row, from the graph cut for it (one row at a time
    /// where that graph only takes one). The cut may still read `input_ids`: exports take the
    /// batch size for the K/V reshapes from the decoder's input.
    fn cross_cache(&self, cross: &Graph, tokens: &[&[u32]]) -> Result<Vec<CacheEntry>> {
        let rows = self.rows();
        let one_row = cross
            .input(names::ENCODER_HIDDEN_STATES)
            .is_some_and(|p| p.shape.first() == Some(&Some(1)));
        let run = |states: &TValue, tokens: &[&[u32]]| -> Result<Vec<CacheEntry>> {
            let outputs = cross.run(|port| {
                if port.name == names::ENCODER_HIDDEN_STATES {
                    Ok(states.clone())
                } else if port.name == names::INPUT_IDS {
                    input_ids(cross, tokens)
                } else {
                    Err(Error::graph(
                        &cross.path,
                        format!("unexpected input {}", port.describe()),
                    ))
                }
            })?;
            Ok(cross
                .outputs
                .iter()
                .zip(outputs.iter())
                .filter_map(|(port, value)| {
                    Some(CacheEntry {
                        key: names::present_key(&port.name)?.to_string(),
                        tensor: value.clone(),
                    })
                })
                .collect())
        };
        if !one_row || rows == 1 {
            return run(&self.encoder_states, tokens);
        }
        let per_row = (0..rows)
            .map(|r| run(&row_of(&self.encoder_states, r)?.into(), &tokens[r..r + 1]))
            .collect::<Result<Vec<_>>>()?;
        stack_rows(per_row)
    }

    /// Times every node of the graph the next step would run (on `rows`, as [`Session::step`]
    /// takes them), without changing the session: where a decoder step spends its time.
    pub fn profile_step(&self, rows: &[&[u32]]) -> Result<Vec<NodeTime>> {
        let graph = self.decoder.steps.graph_for(self.cached_len);
        let fresh: Vec<&[u32]> = rows.iter().map(|r| &r[self.cached_len..]).collect();
        graph.profile(feed(graph, &fresh, &self.encoder_states, &self.cache))
    }

    /// Keeps the new cache tensors the with-past graph will ask for.
    fn store(&mut self, presents: Vec<CacheEntry>) {
        let Some(with_past) = self.decoder.steps.with_past() else {
            return;
        };
        for entry in presents {
            let wanted = with_past
                .inputs
                .iter()
                .any(|p| names::past_key(&p.name) == Some(&entry.key));
            if !wanted {
                continue;
            }
            if names::is_cross_attention(&entry.key) {
                self.hoisted = None;
            }
            match self.cache.iter_mut().find(|e| e.key == entry.key) {
                Some(slot) => slot.tensor = entry.tensor,
                None => self.cache.push(entry),
            }
        }
    }
}

/// The value of each input of a decoder graph for one step.
fn feed<'a>(
    graph: &'a Graph,
    tokens: &'a [&'a [u32]],
    encoder_states: &'a TValue,
    cache: &'a [CacheEntry],
) -> impl FnMut(&Port) -> Result<TValue> + 'a {
    move |port| {
        if port.name == names::INPUT_IDS {
            return input_ids(graph, tokens);
        }
        if port.name == names::ENCODER_HIDDEN_STATES {
            return Ok(encoder_states.clone());
        }
        let key = names::past_key(&port.name).unwrap_or_default();
        match cache.iter().find(|e| e.key == key) {
            Some(entry) => Ok(entry.tensor.clone()),
            // Nothing cached yet: a zero-length past (Optimum's convention for step 0).
            None => empty_past(graph, port, tokens.len()).map(IntoTValue::into_tvalue),
        }
    }
}

/// `input_ids` for `graph`: `[rows, tokens]` of i64.
fn input_ids(graph: &Graph, tokens: &[&[u32]]) -> Result<TValue> {
    let ids: Vec<i64> = tokens
        .iter()
        .flat_map(|r| r.iter().map(|&t| t as i64))
        .collect();
    Tensor::from_shape(&[tokens.len(), tokens[0].len()], &ids)
        .map(IntoTValue::into_tvalue)
        .map_err(|e| Error::graph(&graph.path, e))
}

/// A `[rows, heads, 0, head_dim]` tensor for a past input nothing has filled yet.
fn empty_past(graph: &Graph, port: &Port, rows: usize) -> Result<Tensor> {
    let mut shape = Vec::with_capacity(port.shape.len());
    for (axis, dim) in port.shape.iter().enumerate() {
        shape.push(match (axis, dim) {
            (0, _) => rows,
            (names::KV_SEQUENCE_AXIS, _) => 0,
            (_, Some(d)) => *d,
            (_, None) => {
                return Err(Error::graph(
                    &graph.path,
                    format!("cannot make an empty cache for {}", port.describe()),
                ))
            }
        });
    }
    Tensor::zero_dt(port.dt, &shape).map_err(|e| Error::graph(&graph.path, e))
}

/// `[rows, seq, vocab]` logits of any float type → the last position of each row, in f32.
fn last_position(graph: &Graph, value: &TValue) -> Result<Logits> {
    let fail = |e: TractError| Error::graph(&graph.path, e);
    let t = value.cast_to::<f32>().map_err(fail)?;
    let shape = t.shape();
    if shape.len() != 3 || shape[1] == 0 {
        return Err(Error::graph(
            &graph.path,
            format!("logits have shape {shape:?}, expected [rows, sequence, vocab]"),
        ));
    }
    let (rows, seq, vocab) = (shape[0], shape[1], shape[2]);
    let all = t.try_as_plain_ram().map_err(fail)?;
    let all = all.as_slice::<f32>().map_err(fail)?;
    let mut data = Vec::with_capacity(rows * vocab);
    for r in 0..rows {
        let start = (r * seq + seq - 1) * vocab;
        data.extend_from_slice(&all[start..start + vocab]);
    }
    Ok(Logits { vocab, data })
}

/// Whether rows of `origin` are the rows of `images` images in order, as many for each.
fn grouped_by_image(origin: &[usize], images: usize) -> bool {
    images > 0
        && origin.len().is_multiple_of(images)
        && origin
            .iter()
            .enumerate()
            .all(|(r, &i)| i == r / (origin.len() / images))
}

/// Row `r` of `t` (axis 0), as a batch of one.
fn row_of(t: &Tensor, r: usize) -> Result<Tensor> {
    t.slice(0, r, r + 1)
        .map_err(|e| Error::Generation(e.to_string()))
}

/// The cache entries of rows run one at a time (each row's entries in the same order), stacked
/// into one entry per key.
fn stack_rows(rows: Vec<Vec<CacheEntry>>) -> Result<Vec<CacheEntry>> {
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    (0..first.len())
        .map(|i| {
            let parts: Vec<&Tensor> = rows.iter().map(|row| &*row[i].tensor).collect();
            Ok(CacheEntry {
                key: first[i].key.clone(),
                tensor: Tensor::stack_tensors(0, &parts)
                    .map_err(|e| Error::Generation(e.to_string()))?
                    .into_tvalue(),
            })
        })
        .collect()
}

/// Row `i` of the result is row `from[i]` of `t` (axis 0).
pub fn gather_rows(t: &Tensor, from: &[usize]) -> Result<Tensor> {
    let fail = |e: TractError| Error::Generation(format!("reordering the cache: {e}"));
    let rows: Vec<Tensor> = from
        .iter()
        .map(|&r| t.slice(0, r, r + 1))
        .collect::<TractResult<_>>()
        .map_err(fail)?;
    Tensor::stack_tensors(0, &rows).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::grouped_by_image;

    #[test]
    fn rows_grouped_by_image() {
        assert!(grouped_by_image(&[0, 0, 0, 1, 1, 1], 2));
        assert!(grouped_by_image(&[0, 1], 2));
        // A beam of image 1 among image 0's, an image without rows, an uneven split.
        assert!(!grouped_by_image(&[0, 1, 0, 1], 2));
        assert!(!grouped_by_image(&[0, 0], 2));
        assert!(!grouped_by_image(&[0, 0, 1], 2));
        assert!(!grouped_by_image(&[], 0));
    }
}
