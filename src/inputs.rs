//! Images as people have them: files, directories, a stream of frames on stdin, a watched folder.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::vision::stream::Frames;

/// File extensions taken from directories (files named explicitly are always tried).
const IMAGE_EXTENSIONS: [&str; 12] = [
    "png", "jpg", "jpeg", "gif", "bmp", "tif", "tiff", "webp", "pnm", "pgm", "ppm", "tga",
];

/// One encoded image and the name it is reported under.
pub struct Input {
    pub name: String,
    pub bytes: Result<Vec<u8>>,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Files named on the command line, with directories replaced by the images under them
/// (recursively, in sorted order).
pub fn expand(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for arg in args {
        if arg.is_dir() {
            let mut found = Vec::new();
            walk(arg, &mut found)?;
            found.sort();
            out.extend(found);
        } else {
            out.push(arg.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

pub fn read_file(path: &Path) -> Input {
    Input {
        name: path.display().to_string(),
        bytes: crate::vision::image::read_encoded(path),
    }
}

/// The frames of a stream (stdin), named `-#1`, `-#2`, …
pub fn frames(reader: impl Read) -> impl Iterator<Item = Input> {
    Frames::new(reader).enumerate().map(|(i, frame)| {
        let name = format!("-#{}", i + 1);
        let bytes = frame.map_err(|e| Error::image(Path::new(&name), e.to_string()));
        Input { name, bytes }
    })
}

/// Images appearing in `dir` (recursively), each once its size has stopped changing, forever.
/// Images already there when watching starts are processed first.
pub fn watch(dir: &Path, poll: Duration) -> impl Iterator<Item = Input> + '_ {
    let mut seen: HashSet<PathBuf> = HashSet::new();
    // Size seen at the previous poll, for files still being written.
    let mut pending: Vec<(PathBuf, u64)> = Vec::new();
    let mut ready: std::collections::VecDeque<PathBuf> = Default::default();
    std::iter::from_fn(move || loop {
        if let Some(path) = ready.pop_front() {
            return Some(read_file(&path));
        }
        let mut found = Vec::new();
        if let Err(e) = walk(dir, &mut found) {
            log::warn!("{e}");
        }
        found.sort();
        found.retain(|p| !seen.contains(p));
        let mut still = Vec::new();
        for path in found {
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match pending.iter().find(|(p, _)| *p == path) {
                Some((_, before)) if *before == size && size > 0 => {
                    seen.insert(path.clone());
                    ready.push_back(path);
                }
                _ => still.push((path, size)),
            }
        }
        pending = still;
        if ready.is_empty() {
            std::thread::sleep(poll);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_expand_recursively_in_order() {
        let dir = std::env::temp_dir().join(format!("glance-inputs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b")).unwrap();
        for f in ["c.png", "a.jpg", "notes.txt", "b/z.PNG"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let got = expand(&[dir.clone(), PathBuf::from("named.txt")]).unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|p| p.strip_prefix(&dir).unwrap_or(p).display().to_string())
            .collect();
        assert_eq!(names, ["a.jpg", "b/z.PNG", "c.png", "named.txt"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
