//! The JSON form of a result: what `glance run --json` and `glance caption --json` print (with
//! the image's name added) and what the C ABI returns, so that there is one format.

use serde_json::{json, Value};

use crate::{Output, Timings};

impl Timings {
    /// `{"preprocess", "encode", "decode"}`, in milliseconds.
    pub fn to_json(&self) -> Value {
        json!({"preprocess": self.preprocess_ms, "encode": self.encode_ms, "decode": self.decode_ms})
    }
}

impl Output {
    /// `{"text", "tokens", "score", "confidence", "truncated", "timings_ms"}`, and `"sequences"`
    /// (`[{"tokens", "text", "score"}]`, best first) when more than one sequence was returned.
    /// `score` is `null` for greedy search.
    pub fn to_json(&self) -> Value {
        let mut obj = json!({
            "text": self.text,
            "tokens": self.tokens,
            "score": self.score,
            "confidence": self.confidence,
            "truncated": self.truncated,
            "timings_ms": self.timings.to_json(),
        });
        if self.sequences.len() > 1 {
            obj["sequences"] = self
                .sequences
                .iter()
                .map(|s| json!({"tokens": s.tokens, "text": s.text, "score": s.score}))
                .collect();
        }
        obj
    }
}
