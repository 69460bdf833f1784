//! The tensor names of Optimum's and transformers.js's exports: the one place that knows them.
//!
//! Two KV-cache naming schemes exist (hf-ecosystem.md §1):
//! - seq2seq decoders (TrOCR, MBart): `past_key_values.{i}.decoder.key|value` (self-attention,
//!   grows every step) and `past_key_values.{i}.encoder.key|value` (cross-attention, computed at
//!   the first step only); outputs `present.{i}.decoder|encoder.key|value`;
//! - decoder-only LMs with cross-attention (GPT-2): `past_key_values.{i}.key|value`, self-attention
//!   only, with `encoder_hidden_states` fed at every step.
//!
//! Either way the cache is `[batch, heads, sequence, head_dim]` and `present.X` answers `past_key_values.X`.

pub const PIXEL_VALUES: &str = "pixel_values";
pub const LAST_HIDDEN_STATE: &str = "last_hidden_state";
pub const INPUT_IDS: &str = "input_ids";
pub const ENCODER_HIDDEN_STATES: &str = "encoder_hidden_states";
pub const LOGITS: &str = "logits";

const PAST: &str = "past_key_values.";
const PRESENT: &str = "present.";

/// The axis of a cache tensor that grows with the sequence.
pub const KV_SEQUENCE_AXIS: usize = 2;

/// `past_key_values.X` → `Some("X")`.
pub fn past_key(name: &str) -> Option<&str> {
    name.strip_prefix(PAST)
}

/// `present.X` → `Some("X")`.
pub fn present_key(name: &str) -> Option<&str> {
    name.strip_prefix(PRESENT)
}

/// Whether a cache key (`X` in `past_key_values.X`) is a cross-attention entry, which is
/// computed once from the encoder output and never grows.
pub fn is_cross_attention(key: &str) -> bool {
    key.contains(".encoder.")
}

/// The batch axis of cross-attention cache inputs that [`super::attention`] reads as they
/// are: one row per image or one per row, not tied to `input_ids`' batch.
pub const CROSS_ROWS: &str = "glance_images";

/// `present.{i}.encoder.*` outputs of a cache step are empty placeholders in Optimum's merged
/// decoder (`_unify_onnx_outputs`): the step-0 values must be kept instead.
pub fn is_cross_attention_present(name: &str) -> bool {
    present_key(name).is_some_and(is_cross_attention)
}

/// Whether a decoder input stays the same for a whole generation of one image (the encoder
/// states, the cross-attention cache): what a step graph computes from such inputs alone is
/// computed once ([`super::hoist`]).
pub fn is_fixed_for_generation(name: &str) -> bool {
    name == ENCODER_HIDDEN_STATES || past_key(name).is_some_and(is_cross_attention)
}
