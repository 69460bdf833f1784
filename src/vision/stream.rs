//! Splitting a byte stream of concatenated images (JPEG or PNG frames, as `rpicam-still -o -`
//! or `ffmpeg -f image2pipe` write them) into one encoded image per frame.
//!
//! Frames are found by parsing their structure (JPEG segments and entropy-coded data, PNG chunks),
//! not by searching for end markers, which can also occur inside an embedded EXIF thumbnail.

use std::io::{self, Read};

/// The largest frame accepted; a stream that claims more is cut off with an error.
pub const MAX_FRAME_BYTES: usize = 256 << 20;

/// An iterator over the encoded frames of a stream.
pub struct Frames<R: Read> {
    reader: io::BufReader<R>,
    done: bool,
}

impl<R: Read> Frames<R> {
    pub fn new(reader: R) -> Frames<R> {
        Frames {
            reader: io::BufReader::new(reader),
            done: false,
        }
    }

    fn byte(&mut self, out: &mut Vec<u8>) -> io::Result<u8> {
        let mut b = [0u8; 1];
        self.reader.read_exact(&mut b)?;
        out.push(b[0]);
        if out.len() > MAX_FRAME_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame larger than the limit",
            ));
        }
        Ok(b[0])
    }

    fn take(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if out.len() + n > MAX_FRAME_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame larger than the limit",
            ));
        }
        let start = out.len();
        out.resize(start + n, 0);
        self.reader.read_exact(&mut out[start..])
    }

    /// The rest of a JPEG after its SOI marker.
    fn jpeg(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            // Markers may be preceded by fill bytes 0xFF.
            let mut marker = self.byte(out)?;
            if marker != 0xFF {
                return Err(bad("JPEG: expected a marker"));
            }
            while marker == 0xFF {
                marker = self.byte(out)?;
            }
            match marker {
                0xD9 => return Ok(()),          // EOI
                0x01 | 0xD0..=0xD7 => continue, // markers without a length
                _ => {}
            }
            let len = u16::from_be_bytes([self.byte(out)?, self.byte(out)?]) as usize;
            if len < 2 {
                return Err(bad("JPEG: segment length below 2"));
            }
            self.take(len - 2, out)?;
            if marker == 0xDA {
                // Entropy-coded data follows the scan header, up to the next marker that is not a
                // stuffed 0xFF00 or a restart marker.
                loop {
                    if self.byte(out)? != 0xFF {
                        continue;
                    }
                    let mut next = self.byte(out)?;
                    while next == 0xFF {
                        next = self.byte(out)?;
                    }
                    match next {
                        0x00 | 0xD0..=0xD7 => continue,
                        0xD9 => return Ok(()),
                        _ => {
                            // Another segment (progressive scans, DHT between scans): go back to
                            // segment parsing with this marker already read.
                            let len =
                                u16::from_be_bytes([self.byte(out)?, self.byte(out)?]) as usize;
                            if len < 2 {
                                return Err(bad("JPEG: segment length below 2"));
                            }
                            self.take(len - 2, out)?;
                            if next != 0xDA {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    /// The rest of a PNG after its 8-byte signature.
    fn png(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            let mut head = [0u8; 8];
            self.reader.read_exact(&mut head)?;
            out.extend_from_slice(&head);
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
            self.take(len + 4, out)?; // data and CRC
            if &head[4..8] == b"IEND" {
                return Ok(());
            }
        }
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

impl<R: Read> Iterator for Frames<R> {
    type Item = io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<io::Result<Vec<u8>>> {
        if self.done {
            return None;
        }
        let mut first = [0u8; 2];
        match self.reader.read(&mut first[..1]) {
            Ok(0) => {
                self.done = true;
                return None;
            }
            Ok(_) => {}
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        }
        let result = (|| {
            self.reader.read_exact(&mut first[1..])?;
            let mut out = first.to_vec();
            match first {
                [0xFF, 0xD8] => self.jpeg(&mut out)?,
                [0x89, b'P'] => {
                    self.take(6, &mut out)?;
                    if out[..8] != PNG_SIGNATURE {
                        return Err(bad("not a PNG signature"));
                    }
                    self.png(&mut out)?
                }
                _ => {
                    return Err(bad(
                        "the stream holds something that is neither a JPEG nor a PNG frame",
                    ))
                }
            }
            Ok(out)
        })();
        if result.is_err() {
            // A broken stream cannot be resynchronised reliably: stop after reporting.
            self.done = true;
        }
        Some(result.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                bad("the stream ends in the middle of a frame")
            } else {
                e
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30]));
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 3) as u8, 99]));
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut io::Cursor::new(&mut out), image::ImageFormat::Jpeg)
            .unwrap();
        out
    }

    #[test]
    fn splits_concatenated_frames() {
        let frames = [jpeg(33, 17), png(5, 4), jpeg(8, 8)];
        let stream: Vec<u8> = frames.concat();
        let got: Vec<Vec<u8>> = Frames::new(&stream[..]).map(|f| f.unwrap()).collect();
        assert_eq!(got, frames);
    }

    #[test]
    fn a_cut_stream_is_an_error_not_a_hang() {
        let stream = [jpeg(16, 16), jpeg(16, 16)].concat();
        let cut = &stream[..stream.len() - 10];
        let got: Vec<_> = Frames::new(cut).collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert!(got[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("ends in the middle"));
        let garbage: Vec<_> = Frames::new(&b"hello"[..]).collect();
        assert_eq!(garbage.len(), 1);
        assert!(garbage[0].is_err());
    }
}
