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
    /// Generation stopped before EOS or the length limit (a caller's stop, a time budget).
    pub truncated: bool,
}
