//! Typed reads from the JSON files of a model directory, with errors that name the file and the key.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A parsed JSON object and the file it came from.
#[derive(Debug, Clone)]
pub struct JsonFile {
    pub path: PathBuf,
    pub value: Map<String, Value>,
}

impl JsonFile {
    /// Reads `path`, which must hold a JSON object.
    pub fn read(path: &Path) -> Result<JsonFile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &text)
    }

    /// Reads `path` if it exists; `Ok(None)` when it does not.
    pub fn read_optional(path: &Path) -> Result<Option<JsonFile>> {
        if path.exists() {
            Self::read(path).map(Some)
        } else {
            Ok(None)
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<JsonFile> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        match value {
            Value::Object(value) => Ok(JsonFile {
                path: path.to_path_buf(),
                value,
            }),
            other => Err(Error::config(
                path,
                format!("expected a JSON object, found {}", kind(&other)),
            )),
        }
    }

    /// The object under `key` (for example `decoder` in a VisionEncoderDecoder config.json) as a
    /// `JsonFile` of its own, so that errors still name the file, with the key path.
    pub fn section(&self, key: &str) -> Result<Option<JsonFile>> {
        match self.value.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => Ok(Some(JsonFile {
                path: PathBuf::from(format!("{}#{key}", self.path.display())),
                value: map.clone(),
            })),
            Some(other) => Err(self.wrong_type(key, "an object", other)),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.value.get(key).filter(|v| !v.is_null())
    }

    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::config(&self.path, msg)
    }

    fn wrong_type(&self, key: &str, expected: &str, found: &Value) -> Error {
        self.error(format!(
            "\"{key}\" must be {expected}, found {}",
            short(found)
        ))
    }

    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong_type(key, "true or false", other)),
        }
    }

    /// A non-negative integer no larger than `max`.
    pub fn usize(&self, key: &str, max: usize) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n as u128 <= max as u128 => Ok(Some(n as usize)),
                Some(n) => {
                    Err(self.error(format!("\"{key}\" is {n}, more than the limit of {max}")))
                }
                None => Err(self.wrong_type(key, "a non-negative integer", v)),
            },
        }
    }

    /// A positive size given as one integer (square) or `[height, width]`, as Hugging Face
    /// configs write `image_size` and `patch_size`; each side at most `max`.
    pub fn size_pair(&self, key: &str, max: usize) -> Result<Option<(usize, usize)>> {
        let side = |v: &Value| {
            v.as_u64()
                .filter(|&n| n > 0 && n as u128 <= max as u128)
                .map(|n| n as usize)
        };
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let pair = match v {
            Value::Array(items) if items.len() == 2 => side(&items[0]).zip(side(&items[1])),
            other => side(other).map(|n| (n, n)),
        };
        pair.map(Some).ok_or_else(|| {
            self.wrong_type(
                key,
                &format!("a size from 1 to {max} or [height, width]"),
                v,
            )
        })
    }

    /// A finite number.
    pub fn f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x as f32)),
                _ => Err(self.wrong_type(key, "a finite number", v)),
            },
        }
    }

    /// A token id.
    pub fn token(&self, key: &str) -> Result<Option<u32>> {
        self.usize(key, u32::MAX as usize)
            .map(|o| o.map(|n| n as u32))
    }

    /// A token id or a list of token ids (`eos_token_id` may be either).
    pub fn tokens(&self, key: &str) -> Result<Option<Vec<u32>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| as_token(v).ok_or_else(|| self.wrong_type(key, "a list of token ids", v)))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => as_token(v)
                .map(|t| Some(vec![t]))
                .ok_or_else(|| self.wrong_type(key, "a token id or a list of token ids", v)),
        }
    }

    /// A list of lists of token ids (`bad_words_ids`).
    pub fn token_lists(&self, key: &str) -> Result<Option<Vec<Vec<u32>>>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let bad = || self.wrong_type(key, "a list of lists of token ids", v);
        let Value::Array(rows) = v else {
            return Err(bad());
        };
        rows.iter()
            .map(|row| match row {
                Value::Array(ids) => ids.iter().map(|id| as_token(id).ok_or_else(bad)).collect(),
                _ => Err(bad()),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// A list of numbers (`image_mean`), or one number applied to every channel.
    pub fn f32s(&self, key: &str) -> Result<Option<Vec<f32>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_f64()
                        .filter(|x| x.is_finite())
                        .map(|x| x as f32)
                        .ok_or_else(|| self.wrong_type(key, "a list of numbers", v))
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(vec![x as f32])),
                _ => Err(self.wrong_type(key, "a number or a list of numbers", v)),
            },
        }
    }
}

fn as_token(v: &Value) -> Option<u32> {
    v.as_u64()
        .filter(|&n| n <= u32::MAX as u64)
        .map(|n| n as u32)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A value as a user would recognise it in their file, cut short.
fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}
