//! Generation settings: what the caller asked for, what the model's files say, and Hugging Face's
//! library defaults, in that order of precedence (transformers 4.57 `GenerationConfig`).

use crate::error::{Error, Result};
use crate::model::json::JsonFile;

/// transformers' `early_stopping`: `true`, `false` or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EarlyStopping {
    /// Stop a batch item as soon as `num_beams` hypotheses are finished.
    True,
    /// Stop when no running beam can beat the worst finished one, judged at the current length.
    #[default]
    False,
    /// Judge at the longest length a beam could reach (canonical beam search).
    Never,
}

impl std::str::FromStr for EarlyStopping {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "true" | "True" => Ok(EarlyStopping::True),
            "false" | "False" => Ok(EarlyStopping::False),
            "never" => Ok(EarlyStopping::Never),
            _ => Err(Error::Option(format!(
                "early stopping must be true, false or never, not \"{s}\""
            ))),
        }
    }
}

/// Generation settings where every field may be unset. The caller's options, the model's
/// `generation_config.json` and its `config.json` are each read into one of these and layered
/// with [`GenerationOptions::or`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationOptions {
    pub max_new_tokens: Option<usize>,
    /// Total length, decoder prompt included (transformers' `max_length`).
    pub max_length: Option<usize>,
    pub min_new_tokens: Option<usize>,
    pub min_length: Option<usize>,
    pub num_beams: Option<usize>,
    pub num_return_sequences: Option<usize>,
    pub length_penalty: Option<f32>,
    pub early_stopping: Option<EarlyStopping>,
    pub no_repeat_ngram_size: Option<usize>,
    pub repetition_penalty: Option<f32>,
    pub bad_words_ids: Option<Vec<Vec<u32>>>,
    pub forced_bos_token_id: Option<u32>,
    pub forced_eos_token_id: Option<Vec<u32>>,
    pub decoder_start_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<Vec<u32>>,
    pub pad_token_id: Option<u32>,
}

/// Bounds on lengths read from files, so that an absurd value is an error, not an allocation.
pub const MAX_TOKENS: usize = 1 << 20;
const MAX_BEAMS: usize = 1024;

impl GenerationOptions {
    /// Each field from `self` where set, else from `other`.
    pub fn or(self, other: GenerationOptions) -> GenerationOptions {
        GenerationOptions {
            max_new_tokens: self.max_new_tokens.or(other.max_new_tokens),
            max_length: self.max_length.or(other.max_length),
            min_new_tokens: self.min_new_tokens.or(other.min_new_tokens),
            min_length: self.min_length.or(other.min_length),
            num_beams: self.num_beams.or(other.num_beams),
            num_return_sequences: self.num_return_sequences.or(other.num_return_sequences),
            length_penalty: self.length_penalty.or(other.length_penalty),
            early_stopping: self.early_stopping.or(other.early_stopping),
            no_repeat_ngram_size: self.no_repeat_ngram_size.or(other.no_repeat_ngram_size),
            repetition_penalty: self.repetition_penalty.or(other.repetition_penalty),
            bad_words_ids: self.bad_words_ids.or(other.bad_words_ids),
            forced_bos_token_id: self.forced_bos_token_id.or(other.forced_bos_token_id),
            forced_eos_token_id: self.forced_eos_token_id.or(other.forced_eos_token_id),
            decoder_start_token_id: self.decoder_start_token_id.or(other.decoder_start_token_id),
            bos_token_id: self.bos_token_id.or(other.bos_token_id),
            eos_token_id: self.eos_token_id.or(other.eos_token_id),
            pad_token_id: self.pad_token_id.or(other.pad_token_id),
        }
    }

    /// Reads the generation keys of a `generation_config.json` (or of a `config.json`, which
    /// carries the same keys for models saved without a generation config).
    pub fn from_json(file: &JsonFile) -> Result<GenerationOptions> {
        let early_stopping = match file.get("early_stopping") {
            None => None,
            Some(serde_json::Value::Bool(true)) => Some(EarlyStopping::True),
            Some(serde_json::Value::Bool(false)) => Some(EarlyStopping::False),
            Some(serde_json::Value::String(s)) if s == "never" => Some(EarlyStopping::Never),
            Some(v) => {
                return Err(file.error(format!(
                    "\"early_stopping\" must be true, false or \"never\", found {v}"
                )))
            }
        };
        Ok(GenerationOptions {
            max_new_tokens: file.usize("max_new_tokens", MAX_TOKENS)?,
            max_length: file.usize("max_length", MAX_TOKENS)?,
            min_new_tokens: file.usize("min_new_tokens", MAX_TOKENS)?,
            min_length: file.usize("min_length", MAX_TOKENS)?,
            num_beams: file.usize("num_beams", MAX_BEAMS)?,
            num_return_sequences: file.usize("num_return_sequences", MAX_BEAMS)?,
            length_penalty: file.f32("length_penalty")?,
            early_stopping,
            no_repeat_ngram_size: file.usize("no_repeat_ngram_size", MAX_TOKENS)?,
            repetition_penalty: file.f32("repetition_penalty")?,
            bad_words_ids: file.token_lists("bad_words_ids")?,
            forced_bos_token_id: file.token("forced_bos_token_id")?,
            forced_eos_token_id: file.tokens("forced_eos_token_id")?,
            decoder_start_token_id: file.token("decoder_start_token_id")?,
            bos_token_id: file.token("bos_token_id")?,
            eos_token_id: file.tokens("eos_token_id")?,
            pad_token_id: file.token("pad_token_id")?,
        })
    }

    /// What transformers' `GenerationConfig.from_model_config` takes from a `config.json`:
    /// its own keys, then those of its `decoder` section for keys still at their default.
    pub fn from_model_config(config: &JsonFile) -> Result<GenerationOptions> {
        let top = Self::from_json(config)?;
        let Some(decoder) = config.section("decoder")? else {
            return Ok(top);
        };
        let decoder = Self::from_json(&decoder)?;
        // A value equal to the library default counts as unset, as in transformers.
        let d = Defaults::HF;
        let unset = |o: GenerationOptions| GenerationOptions {
            max_length: o.max_length.filter(|&v| v != d.max_length),
            min_length: o.min_length.filter(|&v| v != 0),
            num_beams: o.num_beams.filter(|&v| v != 1),
            num_return_sequences: o.num_return_sequences.filter(|&v| v != 1),
            length_penalty: o.length_penalty.filter(|&v| v != 1.0),
            early_stopping: o.early_stopping.filter(|&v| v != EarlyStopping::False),
            no_repeat_ngram_size: o.no_repeat_ngram_size.filter(|&v| v != 0),
            repetition_penalty: o.repetition_penalty.filter(|&v| v != 1.0),
            ..o
        };
        Ok(unset(top).or(unset(decoder)))
    }
}

/// Hugging Face's library defaults for the fields glance uses.
struct Defaults {
    max_length: usize,
}

impl Defaults {
    const HF: Defaults = Defaults { max_length: 20 };
}

/// Settings resolved for one call to generate, with a known decoder prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Total length including the decoder prompt.
    pub max_length: usize,
    /// Total minimum length; `min_new_tokens` is folded in here, as transformers does.
    pub min_length: usize,
    pub prompt_len: usize,
    pub num_beams: usize,
    pub num_return_sequences: usize,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    pub no_repeat_ngram_size: usize,
    pub repetition_penalty: f32,
    pub bad_words_ids: Vec<Vec<u32>>,
    pub forced_bos_token_id: Option<u32>,
    pub forced_eos_token_id: Vec<u32>,
    pub eos_token_id: Vec<u32>,
    pub pad_token_id: u32,
}

impl GenerationConfig {
    /// Resolves the caller's options over the model's for a decoder prompt of `prompt_len`
    /// tokens, as transformers 4.57 `generate()` does (`_prepare_generated_length`).
    pub fn resolve(
        caller: &GenerationOptions,
        model: &GenerationOptions,
        prompt_len: usize,
        vocab_size: usize,
    ) -> Result<GenerationConfig> {
        let o = &caller.clone().or(model.clone());
        let max_length = match (o.max_new_tokens, o.max_length) {
            (Some(n), _) => n + prompt_len,
            // transformers counts a max_length of exactly the library default (20), when the caller did
            // not pass one, as new tokens; any other value is a total length.
            (None, Some(n)) if caller.max_length.is_some() || n != Defaults::HF.max_length => n,
            (None, _) => Defaults::HF.max_length + prompt_len,
        };
        let min_length = match o.min_new_tokens {
            Some(n) => n + prompt_len,
            None => o.min_length.unwrap_or(0),
        };
        let num_beams = o.num_beams.unwrap_or(1);
        let num_return_sequences = o.num_return_sequences.unwrap_or(1);
        if num_beams == 0 {
            return Err(Error::Option("num_beams must be at least 1".into()));
        }
        if num_return_sequences == 0 || num_return_sequences > num_beams {
            return Err(Error::Option(format!(
                "num_return_sequences ({num_return_sequences}) must be between 1 and num_beams ({num_beams})"
            )));
        }
        if max_length > MAX_TOKENS {
            return Err(Error::Option(format!(
                "max_length {max_length} is more than glance's limit of {MAX_TOKENS} tokens"
            )));
        }
        if max_length <= prompt_len {
            return Err(Error::Option(format!(
                "max_length ({max_length}) leaves no room to generate after a decoder prompt of {prompt_len} tokens"
            )));
        }
        let repetition_penalty = o.repetition_penalty.unwrap_or(1.0);
        if repetition_penalty <= 0.0 {
            return Err(Error::Option(format!(
                "repetition_penalty must be positive, not {repetition_penalty}"
            )));
        }
        let eos_token_id = o.eos_token_id.clone().unwrap_or_default();
        let pad_token_id = o
            .pad_token_id
            .or_else(|| eos_token_id.first().copied())
            .unwrap_or(0);
        let bad_words_ids = o.bad_words_ids.clone().unwrap_or_default();
        // transformers drops bad-word entries that are just an EOS token.
        let bad_words_ids: Vec<Vec<u32>> = bad_words_ids
            .into_iter()
            .filter(|seq| !(seq.len() == 1 && eos_token_id.contains(&seq[0])))
            .collect();
        let config = GenerationConfig {
            max_length,
            min_length,
            prompt_len,
            num_beams,
            num_return_sequences,
            length_penalty: o.length_penalty.unwrap_or(1.0),
            early_stopping: o.early_stopping.unwrap_or_default(),
            no_repeat_ngram_size: o.no_repeat_ngram_size.unwrap_or(0),
            repetition_penalty,
            bad_words_ids,
            forced_bos_token_id: o.forced_bos_token_id,
            forced_eos_token_id: o.forced_eos_token_id.clone().unwrap_or_default(),
            eos_token_id,
            pad_token_id,
        };
        config.check_ids(vocab_size)?;
        Ok(config)
    }

    /// Every token id the settings name must exist in the vocabulary.
    fn check_ids(&self, vocab_size: usize) -> Result<()> {
        let named = self
            .eos_token_id
            .iter()
            .chain(&self.forced_eos_token_id)
            .chain(self.forced_bos_token_id.iter())
            .chain(self.bad_words_ids.iter().flatten());
        for &id in named {
            if id as usize >= vocab_size {
                return Err(Error::Option(format!(
                    "token id {id} is outside the model's vocabulary of {vocab_size}"
                )));
            }
        }
        if self.bad_words_ids.iter().any(Vec::is_empty) {
            return Err(Error::Option(
                "bad_words_ids holds an empty sequence".into(),
            ));
        }
        Ok(())
    }
}
