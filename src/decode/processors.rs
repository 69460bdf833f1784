//! Logits processors, in the order transformers 4.57 `_get_logits_processor` applies them.
//!
//! Each one edits the scores of one row given the tokens of that row so far (decoder prompt
//! included). Greedy search hands them raw logits; beam search hands them log-probabilities.

use super::config::GenerationConfig;

/// One step of score editing, as a Hugging Face `LogitsProcessor`.
pub trait LogitsProcessor: Send + Sync {
    fn process(&self, tokens: &[u32], scores: &mut [f32]);
}

/// The processors a configuration asks for, in transformers' order.
pub struct Processors(Vec<Box<dyn LogitsProcessor>>);

impl Processors {
    pub fn new(config: &GenerationConfig) -> Processors {
        let mut list: Vec<Box<dyn LogitsProcessor>> = Vec::new();
        if config.repetition_penalty != 1.0 {
            list.push(Box::new(RepetitionPenalty(config.repetition_penalty)));
        }
        if config.no_repeat_ngram_size > 0 {
            list.push(Box::new(NoRepeatNGram(config.no_repeat_ngram_size)));
        }
        if !config.bad_words_ids.is_empty() {
            list.push(Box::new(NoBadWords(config.bad_words_ids.clone())));
        }
        // `min_new_tokens` is folded into `min_length` when the config is resolved.
        if config.min_length > 0 && !config.eos_token_id.is_empty() {
            list.push(Box::new(MinLength {
                min_length: config.min_length,
                eos: config.eos_token_id.clone(),
            }));
        }
        if let Some(bos) = config.forced_bos_token_id {
            list.push(Box::new(ForceAt {
                len: 1,
                tokens: vec![bos],
            }));
        }
        if !config.forced_eos_token_id.is_empty() {
            list.push(Box::new(ForceAt {
                len: config.max_length - 1,
                tokens: config.forced_eos_token_id.clone(),
            }));
        }
        Processors(list)
    }

    pub fn apply(&self, tokens: &[u32], scores: &mut [f32]) {
        for p in &self.0 {
            p.process(tokens, scores);
        }
    }
}

/// Divides positive scores (multiplies negative ones) of every token already in the sequence.
struct RepetitionPenalty(f32);

impl LogitsProcessor for RepetitionPenalty {
    fn process(&self, tokens: &[u32], scores: &mut [f32]) {
        let mut seen = vec![false; scores.len()];
        for &t in tokens {
            let t = t as usize;
            if t < scores.len() && !std::mem::replace(&mut seen[t], true) {
                let s = scores[t];
                scores[t] = if s < 0.0 { s * self.0 } else { s / self.0 };
            }
        }
    }
}

/// Bans every token that would repeat an n-gram already in the sequence.
struct NoRepeatNGram(usize);

impl LogitsProcessor for NoRepeatNGram {
    fn process(&self, tokens: &[u32], scores: &mut [f32]) {
        let n = self.0;
        if tokens.len() + 1 < n {
            return;
        }
        let prefix = &tokens[tokens.len() + 1 - n..];
        for window in tokens.windows(n) {
            if &window[..n - 1] == prefix {
                ban(scores, window[n - 1]);
            }
        }
    }
}

/// Bans single tokens always, and the last token of a longer sequence when the others end the
/// current sequence (transformers' `NoBadWordsLogitsProcessor`).
struct NoBadWords(Vec<Vec<u32>>);

impl LogitsProcessor for NoBadWords {
    fn process(&self, tokens: &[u32], scores: &mut [f32]) {
        for bad in &self.0 {
            // Empty sequences are refused when the settings are resolved.
            let Some((last, prefix)) = bad.split_last() else {
                continue;
            };
            if tokens.ends_with(prefix) {
                ban(scores, *last);
            }
        }
    }
}

/// Forbids EOS while the sequence is shorter than `min_length`.
struct MinLength {
    min_length: usize,
    eos: Vec<u32>,
}

impl LogitsProcessor for MinLength {
    fn process(&self, tokens: &[u32], scores: &mut [f32]) {
        if tokens.len() < self.min_length {
            for &e in &self.eos {
                ban(scores, e);
            }
        }
    }
}

/// At sequence length `len`, allows only `tokens` (forced BOS at 1, forced EOS at max_length - 1).
struct ForceAt {
    len: usize,
    tokens: Vec<u32>,
}

impl LogitsProcessor for ForceAt {
    fn process(&self, tokens: &[u32], scores: &mut [f32]) {
        if tokens.len() == self.len {
            scores.fill(f32::NEG_INFINITY);
            for &t in &self.tokens {
                if let Some(s) = scores.get_mut(t as usize) {
                    *s = 0.0;
                }
            }
        }
    }
}

fn ban(scores: &mut [f32], token: u32) {
    if let Some(s) = scores.get_mut(token as usize) {
        *s = f32::NEG_INFINITY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_repeat_ngram_bans_completions_of_seen_prefixes() {
        let mut scores = vec![0.0; 6];
        // bigram size 2: after "... 3", tokens that followed a 3 before (4 and 5) are banned.
        NoRepeatNGram(2).process(&[1, 3, 4, 2, 3, 5, 3], &mut scores);
        assert_eq!(
            scores,
            [0.0, 0.0, 0.0, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY]
        );
        // Too short for any n-gram.
        let mut scores = vec![0.0; 3];
        NoRepeatNGram(3).process(&[1], &mut scores);
        assert!(scores.iter().all(|&s| s == 0.0));
    }

    #[test]
    fn repetition_penalty_counts_each_token_once() {
        let mut scores = vec![2.0, -2.0, 2.0];
        RepetitionPenalty(2.0).process(&[0, 0, 1], &mut scores);
        assert_eq!(scores, [1.0, -4.0, 2.0]);
    }

    #[test]
    fn bad_words_match_on_prefix() {
        let p = NoBadWords(vec![vec![1], vec![2, 3]]);
        let mut scores = vec![0.0; 4];
        p.process(&[0, 2], &mut scores);
        assert_eq!(scores, [0.0, f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY]);
        let mut scores = vec![0.0; 4];
        p.process(&[2, 0], &mut scores);
        assert_eq!(scores, [0.0, f32::NEG_INFINITY, 0.0, 0.0]);
    }
}
