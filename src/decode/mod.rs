//! The decoding loop: a decoder session that runs steps and keeps the KV cache, search strategies
//! that choose tokens (greedy, beam), and the logits processors between them.
//!
//! The strategies do not know about ONNX and the session does not know about beams: a strategy
//! asks the session for the logits of a batch of rows and tells it how to reorder them.

pub mod beam;
pub mod config;
pub mod greedy;
pub mod processors;
pub mod session;

pub use config::{EarlyStopping, GenerationConfig, GenerationOptions};

/// One generated sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// The whole sequence as Hugging Face returns it: decoder prompt first, EOS included when
    /// generated, no padding.
    pub tokens: Vec<u32>,
    /// Beam search's score (sum of log-probabilities over length^length_penalty); `None` for greedy.
    pub score: Option<f32>,
    /// The geometric mean of the probabilities the model gave the generated tokens (before
    /// logits processors for greedy search): a confidence between 0 and 1.
    pub confidence: f32,
    /// Generation stopped before EOS or the length limit (a caller's stop, a time budget).
    pub truncated: bool,
}

/// `torch.log_softmax` over one row, into `out`.
pub fn log_softmax(logits: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { log_softmax_avx2(logits, out) };
    }
    log_softmax_any(logits, out)
}

/// [`log_softmax_any`] compiled for AVX2 (eight lanes where the baseline has four).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn log_softmax_avx2(logits: &[f32], out: &mut [f32]) {
    log_softmax_any(logits, out)
}

#[inline(always)]
fn log_softmax_any(logits: &[f32], out: &mut [f32]) {
    let max = crate::kernels::max(logits);
    // f32 exponentials (as torch computes them) summed in f64, in eight lanes the compiler
    // vectorises with the exponentials: libm's, one call each, were most of a beam step's own
    // work (4 x 64044 of them for TrOCR).
    let mut lanes = [0f64; 8];
    let chunks = logits.chunks_exact(8);
    let rest: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| crate::kernels::exp(x - max) as f64)
        .sum();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += crate::kernels::exp(x - max) as f64;
        }
    }
    let sum = lanes.iter().sum::<f64>() + rest;
    let log_sum = sum.ln() as f32;
    for (o, &x) in out.iter_mut().zip(logits) {
        *o = x - max - log_sum;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_softmax_normalises() {
        let mut out = [0.0; 3];
        super::log_softmax(&[1.0, 2.0, 3.0], &mut out);
        let total: f32 = out.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
