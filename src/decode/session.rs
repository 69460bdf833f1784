//! The decoder session: runs decoder steps for a batch of rows and keeps their KV cache.
//!
//! It knows nothing of beams: a strategy asks for the logits of the last position of every row
//! and tells the session how rows were reordered (`reorder`).

use tract_onnx::prelude::*;

use crate::error::{Error, Result};
use crate::model::graph::{Graph, Port};
use crate::model::names;

/// The decoder graphs of a model, shared by every generation.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// Runs the whole prefix from nothing: `decoder_model`, the merged file's no-cache branch,
    /// or a no-past decoder.
    pub first: Graph,
    /// Runs new tokens against a KV cache; `None` for a no-past decoder, which recomputes the
    /// prefix at every step.
    pub with_past: Option<Graph>,
    pub vocab_size: usize,
}

impl Decoder {
    /// Checks that the graphs take and give what a decoder must, so that a wrong file fails at
    /// load time with its name, not in the middle of generation.
    pub fn new(first: Graph, with_past: Option<Graph>) -> Result<Decoder> {
        for graph in std::iter::once(&first).chain(&with_past) {
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
        if let Some(with_past) = &with_past {
            for port in with_past
                .inputs
                .iter()
                .filter(|p| names::past_key(&p.name).is_some())
            {
                let key = names::past_key(&port.name).unwrap_or_default();
                let produced = std::iter::once(&first).chain(Some(with_past)).any(|g| {
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
        let logits = &first.outputs[first.output_index(names::LOGITS).unwrap_or(0)];
        let vocab_size = logits.shape.last().copied().flatten().ok_or_else(|| {
            Error::graph(
                &first.path,
                format!("cannot tell the vocabulary size from {}", logits.describe()),
            )
        })?;
        Ok(Decoder {
            first,
            with_past,
            vocab_size,
        })
    }

    /// Starts decoding for `encoder_states` (`[rows, sequence, hidden]`, one row per sequence).
    pub fn session(&self, encoder_states: Tensor) -> Session<'_> {
        Session {
            decoder: self,
            encoder_states,
            cache: Vec::new(),
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
/// (`X` in `past_key_values.X` / `present.X`).
#[derive(Debug, Clone)]
struct CacheEntry {
    key: String,
    tensor: Tensor,
}

/// The state of one generation: encoder output per row and the KV cache per row.
pub struct Session<'d> {
    decoder: &'d Decoder,
    encoder_states: Tensor,
    cache: Vec<CacheEntry>,
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
        let (graph, new) = match (&self.decoder.with_past, self.cached_len) {
            (Some(g), n) if n > 0 => (g, n),
            _ => (&self.decoder.first, 0),
        };
        let fresh: Vec<&[u32]> = rows.iter().map(|r| &r[new..]).collect();
        let one_row = graph
            .input(names::INPUT_IDS)
            .is_some_and(|p| p.shape.first() == Some(&Some(1)));
        let (logits, presents) = if one_row && rows.len() > 1 {
            self.run_row_by_row(graph, &fresh)?
        } else {
            self.run(graph, &fresh, &self.encoder_states, &self.cache)?
        };
        if self.decoder.with_past.is_some() {
            self.store(presents);
            self.cached_len = len;
        }
        self.steps += 1;
        if let Some(r) = (0..logits.rows()).find(|&r| logits.row(r).iter().any(|x| x.is_nan())) {
            return Err(Error::Generation(format!(
                "the decoder returned NaN logits for row {r} at step {} ({})",
                self.steps,
                self.decoder.first.path.display()
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
        self.encoder_states = gather_rows(&self.encoder_states, from)?;
        for entry in &mut self.cache {
            entry.tensor = gather_rows(&entry.tensor, from)?;
        }
        Ok(())
    }

    /// Runs a graph that only takes one row (tract-hf-recipes.md item 6) on each row in turn
    /// and stacks the results.
    fn run_row_by_row(
        &self,
        graph: &Graph,
        tokens: &[&[u32]],
    ) -> Result<(Logits, Vec<CacheEntry>)> {
        let one = |t: &Tensor, r: usize| {
            t.slice(0, r, r + 1)
                .map_err(|e| Error::Generation(e.to_string()))
        };
        let mut data = Vec::with_capacity(tokens.len() * self.decoder.vocab_size);
        let mut presents: Vec<CacheEntry> = Vec::new();
        for (r, row) in tokens.iter().enumerate() {
            let cache: Vec<CacheEntry> = self
                .cache
                .iter()
                .map(|e| {
                    Ok(CacheEntry {
                        key: e.key.clone(),
                        tensor: one(&e.tensor, r)?,
                    })
                })
                .collect::<Result<_>>()?;
            let (logits, row_presents) =
                self.run(graph, &[row], &one(&self.encoder_states, r)?, &cache)?;
            data.extend(logits.data);
            if r == 0 {
                presents = row_presents;
            } else {
                for (all, new) in presents.iter_mut().zip(row_presents) {
                    all.tensor = Tensor::stack_tensors(0, &[&all.tensor, &new.tensor])
                        .map_err(|e| Error::Generation(e.to_string()))?;
                }
            }
        }
        Ok((
            Logits {
                vocab: self.decoder.vocab_size,
                data,
            },
            presents,
        ))
    }

    fn run(
        &self,
        graph: &Graph,
        tokens: &[&[u32]],
        encoder_states: &Tensor,
        cache: &[CacheEntry],
    ) -> Result<(Logits, Vec<CacheEntry>)> {
        let rows = tokens.len();
        let seq = tokens[0].len();
        let outputs = graph.run(|port| {
            if port.name == names::INPUT_IDS {
                let ids: Vec<i64> = tokens
                    .iter()
                    .flat_map(|r| r.iter().map(|&t| t as i64))
                    .collect();
                return Tensor::from_shape(&[rows, seq], &ids)
                    .map_err(|e| Error::graph(&graph.path, e));
            }
            if port.name == names::ENCODER_HIDDEN_STATES {
                return Ok(encoder_states.clone());
            }
            let key = names::past_key(&port.name).unwrap_or_default();
            match cache.iter().find(|e| e.key == key) {
                Some(entry) => Ok(entry.tensor.clone()),
                // Nothing cached yet: a zero-length past (Optimum's convention for step 0).
                None => empty_past(graph, port, rows),
            }
        })?;
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
                    tensor: value.clone().into_tensor(),
                })
            })
            .collect();
        Ok((logits, presents))
    }

    /// Keeps the new cache tensors the with-past graph will ask for.
    fn store(&mut self, presents: Vec<CacheEntry>) {
        let Some(with_past) = &self.decoder.with_past else {
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
            match self.cache.iter_mut().find(|e| e.key == entry.key) {
                Some(slot) => slot.tensor = entry.tensor,
                None => self.cache.push(entry),
            }
        }
    }
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
