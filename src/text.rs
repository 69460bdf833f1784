//! Token ids to text and prompts to token ids, with the model's `tokenizer.json`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::model::json::JsonFile;

/// The model's tokenizer, with the Python-side settings `tokenizer.json` does not carry.
pub struct Text {
    path: PathBuf,
    tokenizer: tokenizers::Tokenizer,
    /// transformers 4.x applies `clean_up_tokenization` after decoding when
    /// tokenizer_config.json says so (the Rust crate does not know this setting).
    clean_up_spaces: bool,
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Text")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Text {
    /// Loads `tokenizer.json` from `dir`, and `tokenizer_config.json` when present.
    pub fn load(dir: &Path) -> Result<Text> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::tokenizer(
                &path,
                "missing: glance needs the fast tokenizer file tokenizer.json",
            ));
        }
        // The tokenizers crate panics on some malformed files (found by fuzzing).
        let tokenizer = crate::error::guarded(|| tokenizers::Tokenizer::from_file(&path))
            .map_err(|what| Error::tokenizer(&path, format!("cannot load: {what}")))?
            .map_err(|e| Error::tokenizer(&path, format!("cannot load: {e}")))?;
        let config = JsonFile::read_optional(&dir.join("tokenizer_config.json"))?;
        let clean_up_spaces = match &config {
            Some(c) => c.bool("clean_up_tokenization_spaces")?.unwrap_or(false),
            None => false,
        };
        Ok(Text {
            path,
            tokenizer,
            clean_up_spaces,
        })
    }

    /// The number of ids the tokenizer knows, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Token ids to text, as transformers' `tokenizer.decode(ids, skip_special_tokens=…)` does.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self
            .tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::tokenizer(&self.path, format!("cannot decode {ids:?}: {e}")))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// A prompt's token ids without added special tokens, as Donut task prompts are made
    /// (`tokenizer(prompt, add_special_tokens=False)`).
    pub fn encode_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.encode(prompt, false).map_err(|e| {
            Error::tokenizer(
                &self.path,
                format!("cannot encode the prompt {prompt:?}: {e}"),
            )
        })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of one token, for streaming and diagnostics.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }
}

/// transformers' `PreTrainedTokenizerBase.clean_up_tokenization`.
fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

#[cfg(test)]
mod tests {
    #[test]
    fn clean_up_matches_transformers() {
        assert_eq!(
            super::clean_up_tokenization("industry , Mr . Brown 's"),
            "industry, Mr. Brown's"
        );
    }
}
