//! Decoding an ONNX file without copying its weights.
//!
//! Decoding a whole `ModelProto` copies every initializer's `raw_data` out of the mapped file,
//! and tract then copies each into a tensor of its own: two copies of the weights at peak
//! (tract.md §2). Instead, glance walks the protobuf wire format of the mapped file and writes
//! a small copy of it in which every large initializer is an external-data reference (ONNX's
//! `data_location = EXTERNAL`, `location`, `offset`, `length`) to the file itself. tract then
//! reads each tensor from the file when it builds it, so only tract's own copy is ever whole.
//!
//! Only what leads to initializers is parsed: `ModelProto.graph` (7) → `GraphProto.initializer`
//! (5), and the subgraphs of node attributes (`NodeProto.attribute` (5) →
//! `AttributeProto.g` (6) / `graphs` (11)) where a merged decoder's branches keep theirs.
//! Everything else is copied byte for byte.

/// Tensors smaller than this stay inline: shape constants and small biases are not worth a
/// file read each.
const MIN_EXTERNAL_BYTES: usize = 4096;

/// Field numbers of onnx.proto3.
mod field {
    pub const MODEL_GRAPH: u64 = 7;
    pub const GRAPH_NODE: u64 = 1;
    pub const GRAPH_INITIALIZER: u64 = 5;
    pub const NODE_ATTRIBUTE: u64 = 5;
    pub const ATTRIBUTE_GRAPH: u64 = 6;
    pub const ATTRIBUTE_GRAPHS: u64 = 11;
    pub const TENSOR_RAW_DATA: u64 = 9;
    pub const TENSOR_EXTERNAL_DATA: u64 = 13;
    pub const TENSOR_DATA_LOCATION: u64 = 14;
    pub const ENTRY_KEY: u64 = 1;
    pub const ENTRY_VALUE: u64 = 2;
}

const LENGTH_DELIMITED: u64 = 2;
/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: u64 = 1;

/// The protobuf of `file` (the bytes of an ONNX file) with large initializers turned into
/// references to `location` (the file's own name, relative to its directory).
pub fn externalize(file: &[u8], location: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(1 << 16);
    for f in Fields::new(file, 0) {
        let f = f?;
        match (f.number, f.wire) {
            (field::MODEL_GRAPH, LENGTH_DELIMITED) => {
                let graph = rewrite_graph(f.payload, f.offset, location)?;
                put_bytes(&mut out, f.number, &graph);
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    Ok(out)
}

fn rewrite_graph(buf: &[u8], base: usize, location: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(buf.len().min(1 << 16));
    for f in Fields::new(buf, base) {
        let f = f?;
        match (f.number, f.wire) {
            (field::GRAPH_INITIALIZER, LENGTH_DELIMITED) => {
                let tensor = rewrite_tensor(f.payload, f.offset, location)?;
                put_bytes(&mut out, f.number, &tensor);
            }
            (field::GRAPH_NODE, LENGTH_DELIMITED) => {
                let node = rewrite_node(f.payload, f.offset, location)?;
                put_bytes(&mut out, f.number, &node);
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    Ok(out)
}

fn rewrite_node(buf: &[u8], base: usize, location: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(buf.len());
    for f in Fields::new(buf, base) {
        let f = f?;
        match (f.number, f.wire) {
            (field::NODE_ATTRIBUTE, LENGTH_DELIMITED) => {
                let mut attr = Vec::with_capacity(f.payload.len());
                for a in Fields::new(f.payload, f.offset) {
                    let a = a?;
                    match (a.number, a.wire) {
                        (field::ATTRIBUTE_GRAPH | field::ATTRIBUTE_GRAPHS, LENGTH_DELIMITED) => {
                            let graph = rewrite_graph(a.payload, a.offset, location)?;
                            put_bytes(&mut attr, a.number, &graph);
                        }
                        _ => attr.extend_from_slice(a.raw),
                    }
                }
                put_bytes(&mut out, f.number, &attr);
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    Ok(out)
}

fn rewrite_tensor(buf: &[u8], base: usize, location: &str) -> Result<Vec<u8>, String> {
    let mut raw = None;
    let mut already_external = false;
    for f in Fields::new(buf, base) {
        let f = f?;
        match f.number {
            field::TENSOR_RAW_DATA if f.wire == LENGTH_DELIMITED => raw = Some(f),
            field::TENSOR_DATA_LOCATION | field::TENSOR_EXTERNAL_DATA => already_external = true,
            _ => {}
        }
    }
    let Some(raw) = raw.filter(|r| r.payload.len() >= MIN_EXTERNAL_BYTES && !already_external)
    else {
        return Ok(buf.to_vec());
    };
    let mut out = Vec::with_capacity(buf.len() - raw.payload.len() + 96);
    for f in Fields::new(buf, base) {
        let f = f?;
        if f.number != field::TENSOR_RAW_DATA {
            out.extend_from_slice(f.raw);
        }
    }
    for (key, value) in [
        ("location", location.to_string()),
        ("offset", raw.offset.to_string()),
        ("length", raw.payload.len().to_string()),
    ] {
        let mut entry = Vec::new();
        put_bytes(&mut entry, field::ENTRY_KEY, key.as_bytes());
        put_bytes(&mut entry, field::ENTRY_VALUE, value.as_bytes());
        put_bytes(&mut out, field::TENSOR_EXTERNAL_DATA, &entry);
    }
    put_varint(&mut out, field::TENSOR_DATA_LOCATION << 3);
    put_varint(&mut out, EXTERNAL);
    Ok(out)
}

/// One field of a protobuf message.
#[derive(Clone, Copy)]
struct Field<'a> {
    number: u64,
    wire: u64,
    /// The whole field, tag included, to copy it unchanged.
    raw: &'a [u8],
    /// The value of a length-delimited field.
    payload: &'a [u8],
    /// Where `payload` starts in the file.
    offset: usize,
}

/// The fields of one message, in order.
struct Fields<'a> {
    buf: &'a [u8],
    at: usize,
    base: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8], base: usize) -> Self {
        Fields { buf, at: 0, base }
    }

    fn next_field(&mut self) -> Result<Field<'a>, String> {
        let start = self.at;
        let tag = self.varint()?;
        let (number, wire) = (tag >> 3, tag & 7);
        let (payload_start, end) = match wire {
            0 => {
                self.varint()?;
                (self.at, self.at)
            }
            1 => (self.at, self.at + 8),
            5 => (self.at, self.at + 4),
            LENGTH_DELIMITED => {
                let len = usize::try_from(self.varint()?).map_err(|_| "length overflows")?;
                (self.at, self.at.checked_add(len).ok_or("length overflows")?)
            }
            w => {
                return Err(format!(
                    "unsupported protobuf wire type {w} at byte {}",
                    self.base + start
                ))
            }
        };
        if end > self.buf.len() {
            return Err(format!(
                "field {number} at byte {} runs past the end of its message (truncated file?)",
                self.base + start
            ));
        }
        self.at = end;
        Ok(Field {
            number,
            wire,
            raw: &self.buf[start..end],
            payload: &self.buf[payload_start..end],
            offset: self.base + payload_start,
        })
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.at)
                .ok_or_else(|| format!("truncated varint at byte {}", self.base + self.at))?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint too long at byte {}", self.base + self.at))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.buf.len() {
            return None;
        }
        let f = self.next_field();
        if f.is_err() {
            self.at = self.buf.len();
        }
        Some(f)
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, bytes: &[u8]) {
    put_varint(out, (number << 3) | LENGTH_DELIMITED);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tract_onnx::pb::{
        attribute_proto::AttributeType, tensor_proto::DataLocation, AttributeProto, GraphProto,
        ModelProto, NodeProto, TensorProto,
    };

    fn tensor(name: &str, bytes: usize) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: vec![bytes as i64 / 4],
            data_type: 1,
            raw_data: (0..bytes).map(|i| i as u8).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn large_initializers_become_references_to_their_bytes() {
        let branch = GraphProto {
            initializer: vec![tensor("in_branch", 8192)],
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: 8,
            graph: Some(GraphProto {
                name: "g".into(),
                initializer: vec![tensor("small", 16), tensor("big", 40000)],
                node: vec![NodeProto {
                    op_type: "If".into(),
                    attribute: vec![AttributeProto {
                        name: "then_branch".into(),
                        r#type: AttributeType::Graph as i32,
                        g: Some(branch),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let file = model.encode_to_vec();
        let small = ModelProto::decode(&externalize(&file, "m.onnx").unwrap()[..]).unwrap();
        assert!(small.encoded_len() < 2000);
        let g = small.graph.unwrap();
        assert_eq!(g.name, "g");
        assert_eq!(g.initializer[0].raw_data.len(), 16);
        let check = |t: &TensorProto, original: &TensorProto| {
            assert!(t.raw_data.is_empty());
            assert_eq!(t.data_location, Some(DataLocation::External as i32));
            let get = |k: &str| {
                t.external_data
                    .iter()
                    .find(|e| e.key == k)
                    .map(|e| e.value.clone())
                    .unwrap()
            };
            assert_eq!(get("location"), "m.onnx");
            let offset: usize = get("offset").parse().unwrap();
            let length: usize = get("length").parse().unwrap();
            assert_eq!(&file[offset..offset + length], &original.raw_data[..]);
        };
        check(&g.initializer[1], &tensor("big", 40000));
        let branch = g.node[0].attribute[0].g.as_ref().unwrap();
        check(&branch.initializer[0], &tensor("in_branch", 8192));
    }

    #[test]
    fn truncated_files_are_errors() {
        let model = ModelProto {
            graph: Some(GraphProto {
                initializer: vec![tensor("big", 40000)],
                ..Default::default()
            }),
            ..Default::default()
        };
        let file = model.encode_to_vec();
        for cut in [1, 10, 100, file.len() - 1] {
            assert!(externalize(&file[..cut], "m.onnx").is_err(), "cut at {cut}");
        }
    }
}
