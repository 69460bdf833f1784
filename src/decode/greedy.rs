//! Greedy search, as transformers 4.57 `_sample` runs it with `do_sample=False`, one step at a
//! time so that tokens can be streamed as they are chosen.

use super::config::GenerationConfig;
use super::processors::Processors;
use super::session::Session;
use super::{log_softmax, Sequence};
use crate::error::Result;

/// Greedy decoding of every row of a session, all rows starting from one prompt.
pub struct Greedy<'s> {
    session: Session<'s>,
    config: GenerationConfig,
    processors: Processors,
    prompt_len: usize,
    seqs: Vec<Vec<u32>>,
    done: Vec<bool>,
    /// Per row: the sum of the chosen tokens' log-probabilities, for the confidence.
    logprobs: Vec<f64>,
}

impl<'s> Greedy<'s> {
    pub fn new(session: Session<'s>, config: GenerationConfig, prompt: &[u32]) -> Greedy<'s> {
        let rows = session.rows();
        Greedy {
            session,
            processors: Processors::new(&config),
            config,
            prompt_len: prompt.len(),
            seqs: vec![prompt.to_vec(); rows],
            done: vec![false; rows],
            logprobs: vec![0.0; rows],
        }
    }

    pub fn is_finished(&self) -> bool {
        self.seqs[0].len() >= self.config.max_length || self.done.iter().all(|&d| d)
    }

    /// Chooses the next token of every row: `Some(token)` for rows still running, `None` for
    /// rows that had finished. Returns `Ok(None)` once every row is finished.
    pub fn step(&mut self) -> Result<Option<Vec<Option<u32>>>> {
        if self.is_finished() {
            return Ok(None);
        }
        let views: Vec<&[u32]> = self.seqs.iter().map(Vec::as_slice).collect();
        let logits = self.session.step(&views)?;
        let mut scores = Vec::with_capacity(logits.vocab);
        let mut probs = vec![0f32; logits.vocab];
        let mut chosen = Vec::with_capacity(self.seqs.len());
        for r in 0..self.seqs.len() {
            if self.done[r] {
                // A finished row keeps running (the batch stays rectangular) but takes padding.
                self.seqs[r].push(self.config.pad_token_id);
                chosen.push(None);
                continue;
            }
            scores.clear();
            scores.extend_from_slice(logits.row(r));
            self.processors.apply(&self.seqs[r], &mut scores);
            let next = argmax(&scores);
            log_softmax(logits.row(r), &mut probs);
            self.logprobs[r] += probs[next as usize] as f64;
            self.seqs[r].push(next);
            self.done[r] = self.config.eos_token_id.contains(&next);
            chosen.push(Some(next));
        }
        Ok(Some(chosen))
    }

    /// The sequences so far, padding removed; a sequence that neither reached EOS nor the length
    /// limit is marked truncated.
    pub fn finish(self) -> Vec<Sequence> {
        let (prompt_len, config) = (self.prompt_len, &self.config);
        self.seqs
            .into_iter()
            .zip(self.logprobs)
            .map(|(mut tokens, logprob)| {
                if let Some(end) = tokens[prompt_len..]
                    .iter()
                    .position(|t| config.eos_token_id.contains(t))
                {
                    tokens.truncate(prompt_len + end + 1);
                }
                let finished = tokens
                    .last()
                    .is_some_and(|t| config.eos_token_id.contains(t))
                    || tokens.len() >= config.max_length;
                let generated = tokens.len().saturating_sub(prompt_len).max(1) as f64;
                Sequence {
                    tokens,
                    score: None,
                    confidence: (logprob / generated).exp() as f32,
                    truncated: !finished,
                }
            })
            .collect()
    }
}

/// The index of the first maximum, as `torch.argmax` returns it.
pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}
