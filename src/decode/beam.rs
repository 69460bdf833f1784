//! Beam search, as transformers 4.57 `_beam_search` runs it (the vectorised version): the same
//! candidates, the same finishing rules, the same f32 arithmetic, so the same tokens.

use super::config::{EarlyStopping, GenerationConfig};
use super::processors::Processors;
use super::session::Session;
use super::{log_softmax, Sequence};
use crate::error::{Error, Result};

/// transformers masks impossible entries by adding this rather than using -inf.
const MASKED: f32 = -1.0e9;

/// The beams of one input: running hypotheses and the best finished ones.
struct Beams {
    running: Vec<Vec<u32>>,
    running_scores: Vec<f32>,
    /// `num_beams` slots, best first; a slot is real only where `finished[k]`.
    done: Vec<Vec<u32>>,
    done_scores: Vec<f32>,
    finished: Vec<bool>,
    /// transformers' `is_early_stop_heuristic_unsatisfied`.
    may_improve: bool,
}

/// One candidate continuation: the parent beam, the token, the accumulated log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Candidate {
    beam: usize,
    token: u32,
    score: f32,
}

/// Runs beam search for `inputs` inputs at once; `session` holds one row per input and grows
/// to `inputs * num_beams` rows. Returns `num_return_sequences` sequences per input, best first.
///
/// `out_of_time` is asked after every step: when it says yes, the search stops and the slots no
/// finished hypothesis filled take the best running beams, marked truncated.
pub fn beam_search(
    session: &mut Session<'_>,
    config: &GenerationConfig,
    prompt: &[u32],
    out_of_time: &dyn Fn() -> bool,
) -> Result<Vec<Vec<Sequence>>> {
    let processors = Processors::new(config);
    let k = config.num_beams;
    let inputs = session.rows();
    let keep = 2.max(1 + config.eos_token_id.len()) * k;
    let mut all: Vec<Beams> = (0..inputs)
        .map(|_| Beams {
            running: vec![prompt.to_vec(); k],
            // Only the first beam is live at the start, so the first step expands one beam.
            running_scores: (0..k).map(|i| if i == 0 { 0.0 } else { MASKED }).collect(),
            done: vec![prompt.to_vec(); k],
            done_scores: vec![MASKED; k],
            finished: vec![false; k],
            may_improve: true,
        })
        .collect();
    let mut cur_len = prompt.len();
    let mut first = true;
    loop {
        // At the first step the beams of an input are identical and all but the first are
        // masked: compute one row per input, then copy it to every beam.
        let logits = if first {
            let views: Vec<&[u32]> = all.iter().map(|b| b.running[0].as_slice()).collect();
            let logits = session.step(&views)?;
            let expand: Vec<usize> = (0..inputs)
                .flat_map(|i| std::iter::repeat_n(i, k))
                .collect();
            session.reorder(&expand)?;
            logits
        } else {
            let views: Vec<&[u32]> = all
                .iter()
                .flat_map(|b| b.running.iter().map(Vec::as_slice))
                .collect();
            session.step(&views)?
        };
        let vocab = logits.vocab;

        let mut parents = Vec::with_capacity(inputs * k);
        let mut all_stop = true;
        let mut scores = vec![0f32; vocab];
        for (i, beams) in all.iter_mut().enumerate() {
            let mut candidates: Vec<Candidate> = Vec::with_capacity(keep + 1);
            for b in 0..k {
                // At the first step every beam of an input is the same row.
                let row = if first { i } else { i * k + b };
                log_softmax(logits.row(row), &mut scores);
                processors.apply(&beams.running[b], &mut scores);
                push_row_top(&mut candidates, keep, b, &scores, beams.running_scores[b]);
            }
            if candidates.len() < keep {
                return Err(Error::Option(format!(
                    "a vocabulary of {vocab} tokens is too small for {k} beams"
                )));
            }
            let stops: Vec<bool> = candidates
                .iter()
                .map(|c| config.eos_token_id.contains(&c.token) || cur_len + 1 >= config.max_length)
                .collect();
            all_stop &= stops.iter().all(|&s| s);

            // Next running beams: the best candidates that did not stop.
            let mut next: Vec<(f32, usize)> = candidates
                .iter()
                .zip(&stops)
                .enumerate()
                .map(|(ix, (c, &stop))| (if stop { c.score + MASKED } else { c.score }, ix))
                .collect();
            sort_desc(&mut next);
            next.truncate(k);

            // Finished hypotheses: only candidates ranked within num_beams may finish.
            let gen_len = (cur_len + 1 - prompt.len()) as f64;
            let denom = gen_len.powf(config.length_penalty as f64) as f32;
            let full =
                beams.finished.iter().all(|&f| f) && config.early_stopping == EarlyStopping::True;
            let mut merged: Vec<(f32, Vec<u32>, bool)> = (0..k)
                .map(|s| {
                    (
                        beams.done_scores[s],
                        beams.done[s].clone(),
                        beams.finished[s],
                    )
                })
                .collect();
            for (ix, c) in candidates.iter().enumerate() {
                let just_finished = stops[ix] && ix < k;
                let mut score = c.score / denom;
                if full {
                    score += MASKED;
                }
                if !beams.may_improve {
                    score += MASKED;
                }
                if !just_finished {
                    score += MASKED;
                }
                let mut seq = beams.running[c.beam].clone();
                seq.push(c.token);
                merged.push((score, seq, just_finished));
            }
            let mut order: Vec<(f32, usize)> =
                merged.iter().enumerate().map(|(ix, m)| (m.0, ix)).collect();
            sort_desc(&mut order);
            let chosen: Vec<(f32, Vec<u32>, bool)> = order[..k]
                .iter()
                .map(|&(_, ix)| merged[ix].clone())
                .collect();
            beams.done_scores = chosen.iter().map(|c| c.0).collect();
            beams.finished = chosen.iter().map(|c| c.2).collect();
            beams.done = chosen.into_iter().map(|c| c.1).collect();

            let mut running = Vec::with_capacity(k);
            let mut running_scores = Vec::with_capacity(k);
            for &(score, ix) in &next {
                let c = candidates[ix];
                let mut seq = beams.running[c.beam].clone();
                seq.push(c.token);
                running.push(seq);
                running_scores.push(score);
                parents.push(i * k + c.beam);
            }
            beams.running = running;
            beams.running_scores = running_scores;
        }
        session.reorder(&parents)?;
        first = false;
        cur_len += 1;

        for beams in &mut all {
            beams.may_improve &= may_improve(beams, config, cur_len, prompt.len());
        }
        let improvement_possible = all.iter().any(|b| b.may_improve);
        let exists_open_beam = !(all.iter().all(|b| b.finished.iter().all(|&f| f))
            && config.early_stopping == EarlyStopping::True);
        if !(improvement_possible && exists_open_beam && !all_stop) {
            break;
        }
        if out_of_time() {
            for beams in &mut all {
                let open = (0..k).filter(|&s| !beams.finished[s]);
                for (s, r) in open.zip(0..beams.running.len()) {
                    let generated = beams.running[r].len().saturating_sub(prompt.len()).max(1);
                    beams.done[s] = beams.running[r].clone();
                    beams.done_scores[s] =
                        beams.running_scores[r] / (generated as f32).powf(config.length_penalty);
                }
            }
            break;
        }
    }
    Ok(all
        .into_iter()
        .map(|beams| {
            (0..config.num_return_sequences)
                .map(|s| {
                    let tokens = beams.done[s].clone();
                    let score = beams.done_scores[s];
                    // The score is sum(log p) / len^length_penalty: undo the penalty for a mean.
                    let len = tokens.len().saturating_sub(prompt.len()).max(1) as f64;
                    let mean = score as f64 * len.powf(config.length_penalty as f64) / len;
                    Sequence {
                        tokens,
                        score: Some(score),
                        confidence: mean.exp() as f32,
                        truncated: !beams.finished[s],
                    }
                })
                .collect()
        })
        .collect())
}

/// transformers' `_check_early_stop_heuristic` for one input.
fn may_improve(
    beams: &Beams,
    config: &GenerationConfig,
    cur_len: usize,
    prompt_len: usize,
) -> bool {
    let length = if config.early_stopping == EarlyStopping::Never && config.length_penalty > 0.0 {
        config.max_length - prompt_len
    } else {
        cur_len - prompt_len
    };
    let best_possible =
        beams.running_scores[0] / (length as f64).powf(config.length_penalty as f64) as f32;
    let worst_done = beams
        .done_scores
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min);
    beams
        .finished
        .iter()
        .any(|&f| best_possible > if f { worst_done } else { MASKED })
}

/// Keeps `top` sorted best first with at most `n` entries; among equal scores the earlier
/// candidate (lower beam, then lower token) ranks first.
fn push_top(top: &mut Vec<Candidate>, n: usize, c: Candidate) {
    // NaN never reaches here: the session rejects NaN logits.
    if top.len() == n && c.score <= top[n - 1].score {
        return;
    }
    let at = top.partition_point(|t| t.score >= c.score);
    top.insert(at, c);
    top.truncate(n);
}

/// [`push_top`] of every token of beam `beam`'s row, `scores` plus the beam's score `base`:
/// a block of tokens whose best cannot enter a full list is skipped after one vectorised
/// maximum (the per-token check was most of a beam step's own work at 64044 tokens).
fn push_row_top(top: &mut Vec<Candidate>, n: usize, beam: usize, scores: &[f32], base: f32) {
    const BLOCK: usize = 64;
    for (at, block) in scores.chunks(BLOCK).enumerate() {
        if top.len() == n {
            let best = block
                .iter()
                .fold(f32::NEG_INFINITY, |m, &s| m.max(s + base));
            if best <= top[n - 1].score {
                continue;
            }
        }
        for (i, &s) in block.iter().enumerate() {
            let token = (at * BLOCK + i) as u32;
            let score = s + base;
            push_top(top, n, Candidate { beam, token, score });
        }
    }
}

/// Sorts `(score, index)` pairs best first, earlier index first among equals (a stable
/// `torch.topk`).
fn sort_desc(v: &mut [(f32, usize)]) {
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rows_top_is_the_top_of_its_tokens_one_by_one() {
        // Scores over several blocks, ties and -inf (suppressed tokens) included.
        let scores: Vec<f32> = (0..300u32)
            .map(|i| match i % 7 {
                0 => f32::NEG_INFINITY,
                _ => ((i * 7919) % 113) as f32 / 10.0 - 5.0,
            })
            .collect();
        for n in [1, 4, 8] {
            let mut want = vec![Candidate {
                beam: 0,
                token: 9,
                score: 1.5,
            }];
            let mut got = want.clone();
            for (token, &s) in scores.iter().enumerate() {
                let c = Candidate {
                    beam: 1,
                    token: token as u32,
                    score: s - 0.25,
                };
                push_top(&mut want, n, c);
            }
            push_row_top(&mut got, n, 1, &scores, -0.25);
            assert_eq!(got, want, "{n}");
        }
    }

    #[test]
    fn top_candidates_stay_sorted_and_bounded() {
        let mut top = Vec::new();
        for (i, s) in [0.1, 0.5, -1.0, 0.5, 0.9].into_iter().enumerate() {
            push_top(
                &mut top,
                3,
                Candidate {
                    beam: 0,
                    token: i as u32,
                    score: s,
                },
            );
        }
        let tokens: Vec<u32> = top.iter().map(|c| c.token).collect();
        assert_eq!(tokens, [4, 1, 3]);
    }
}
