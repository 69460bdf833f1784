//! What arithmetic a graph runs in, and the graph rewrites that choose it.
//!
//! Quantized exports (DynamicQuantizeLinear + MatMulInteger / ConvInteger) keep their integer
//! products. tract's integer kernels are fast on aarch64 and armv7; on x86 with AVX2 alone
//! tract 0.23's int8 kernel reaches about 1 GOP/s (`glance matmul`), and with AVX-512 VNNI it
//! redid work on the weights at every run ([`tract_int8_is_fast`]), so on x86 the matrix
//! products run on glance's own kernel ([`super::qmatmul`]), exact like tract's.
//! Convolutions (the patch embedding, one per image) and CPUs without AVX2 compute the integer
//! products in f32 instead: the activations are still quantized exactly as the specification
//! says, and the integer weights (minus their zero point) become f32 weights, so every product
//! is the same integer; only the order of the f32 sums differs from an i32 accumulator. fp16
//! exports become f32 graphs on CPUs without fp16 arithmetic, where tract would emulate it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, type_proto, AttributeProto, GraphProto,
    NodeProto, TensorProto,
};

use crate::error::{Error, Result};

/// How a model's arithmetic is done (`--compute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compute {
    /// Integer kernels where this CPU runs them fast, f32 elsewhere; fp16 files in f32.
    #[default]
    Auto,
    /// Everything in f32: integer weights and fp16 files are widened at load.
    F32,
    /// Integer products kept integer, whatever the CPU (glance's kernel for matrix products
    /// on x86 with AVX2, tract's elsewhere).
    Int8,
    /// fp16 files kept in f16 (for CPUs with fp16 arithmetic, such as aarch64 with FEAT_FP16).
    F16,
}

impl Compute {
    /// Where the integer products of quantized graphs run on this machine.
    pub fn integers(self) -> Integers {
        let fast = if tract_int8_is_fast() {
            Some(Integers::Tract)
        } else if crate::kernels::avx2() {
            Some(Integers::Glance)
        } else {
            None
        };
        match (self, fast) {
            (Compute::F32, _) => Integers::F32,
            (_, Some(kernels)) => kernels,
            // Asked for integer products where none are fast: tract's, slow as they are.
            (Compute::Int8, None) => Integers::Tract,
            (Compute::Auto | Compute::F16, None) => Integers::F32,
        }
    }

    /// Whether fp16 graphs stay f16.
    pub fn keeps_f16(self) -> bool {
        self == Compute::F16
    }

    pub fn name(self) -> &'static str {
        match self {
            Compute::Auto => "auto",
            Compute::F32 => "f32",
            Compute::Int8 => "int8",
            Compute::F16 => "f16",
        }
    }
}

impl fmt::Display for Compute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compute {
    type Err = Error;
    fn from_str(s: &str) -> Result<Compute> {
        match s {
            "auto" => Ok(Compute::Auto),
            "f32" => Ok(Compute::F32),
            "int8" => Ok(Compute::Int8),
            "f16" => Ok(Compute::F16),
            _ => Err(Error::Option(format!(
                "--compute {s:?}: expected auto, f32, int8 or f16"
            ))),
        }
    }
}

/// Where a quantized graph's integer products run ([`Compute::integers`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integers {
    /// tract's integer kernels.
    Tract,
    /// Matrix products on glance's AVX2 kernel ([`super::qmatmul`]), convolutions in f32.
    Glance,
    /// Widened to f32 products of the same integers ([`integers_to_f32`]).
    F32,
}

impl Integers {
    /// Applies the choice to a graph before tract parses it.
    pub fn prepare(self, graph: &mut GraphProto, bytes: &Bytes) -> Result<()> {
        match self {
            Integers::Tract => {}
            Integers::Glance => {
                let claimed = super::qmatmul::claim(graph);
                let widened = integers_to_f32(graph, bytes, &["ConvInteger"])?;
                log::debug!(
                    "integer products on glance's kernel: {} fused with their quantization, {} \
                     alone; {widened} convolutions in f32",
                    claimed.fused,
                    claimed.renamed
                );
            }
            Integers::F32 => {
                integers_to_f32(graph, bytes, &["MatMulInteger", "ConvInteger"])?;
            }
        }
        Ok(())
    }
}

/// Whether tract has fast int8 kernels for this CPU: aarch64 and armv7 (NEON). Not x86, VNNI
/// or not. On an AVX-512 VNNI CPU (AMD Zen 4) tract 0.23.9 widened the TrOCR-small LM head's
/// int8 weights to i32 and summed them at every decoding step (60 of a 75 ms step; the step
/// takes 2.9 ms on glance's kernel): its constant folding leaves weights over 4 MiB with two
/// readers as they are (`CONST_FOLD_MEM_BUDGET`). Its `DynamicQuantizeLinear` also took 10 ms
/// per encoder layer there.
pub fn tract_int8_is_fast() -> bool {
    cfg!(not(target_arch = "x86_64"))
}

/// The bytes of an initializer, inline or from the graph's file.
pub type Bytes<'a> = dyn for<'t> Fn(&'t TensorProto) -> Result<Cow<'t, [u8]>> + 'a;

/// Rewrites every node of `ops` (`MatMulInteger`, `ConvInteger`) whose weights are
/// initializers (and whose result is only cast to float, as quantized exports do) into the f32
/// `MatMul` / `Conv` of the same integers. Returns how many were rewritten.
pub fn integers_to_f32(graph: &mut GraphProto, bytes: &Bytes, ops: &[&str]) -> Result<usize> {
    let casts_to_float: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Cast" && attr_i(n, "to") == Some(DataType::Float as i64))
        .filter_map(|n| n.input.first().map(String::as_str))
        .collect();
    let mut plan = Vec::new();
    for (at, node) in graph.node.iter().enumerate() {
        if !ops.contains(&node.op_type.as_str()) {
            continue;
        }
        let (Some(out), Some(w)) = (node.output.first(), node.input.get(1)) else {
            continue;
        };
        let only_cast = casts_to_float.contains(out.as_str())
            && graph
                .node
                .iter()
                .filter(|n| n.input.contains(out))
                .all(|n| n.op_type == "Cast")
            && !graph.output.iter().any(|o| &o.name == out);
        let weight = find(graph, w);
        let zero = node.input.get(3).filter(|z| !z.is_empty());
        let zero_ok = zero.is_none_or(|z| find(graph, z).is_some());
        if only_cast && weight.is_some() && zero_ok {
            plan.push(at);
        }
    }
    let mut made: HashSet<String> = HashSet::new();
    let mut new_inits = Vec::new();
    let mut replaced = 0;
    for &at in plan.iter().rev() {
        let node = graph.node[at].clone();
        let w_name = &node.input[1];
        let f32_name = format!("{w_name}.glance_f32");
        if !made.contains(&f32_name) {
            let w = find(graph, w_name).ok_or_else(|| Error::Option(w_name.clone()))?;
            let zero = node
                .input
                .get(3)
                .filter(|z| !z.is_empty())
                .and_then(|z| find(graph, z));
            let conv = node.op_type == "ConvInteger";
            new_inits.push(widened(w, zero, conv, &f32_name, bytes)?);
            made.insert(f32_name.clone());
        }
        let out = &node.output[0];
        let cast = |input: &str, output: String| {
            let mut n = simple("Cast", &[input], &output);
            n.attribute.push(AttributeProto {
                name: "to".into(),
                r#type: AttributeType::Int as i32,
                i: DataType::Float as i64,
                ..Default::default()
            });
            n
        };
        let mut nodes = vec![cast(&node.input[0], format!("{out}.glance_x"))];
        let mut x = format!("{out}.glance_x");
        if let Some(zp) = node.input.get(2).filter(|z| !z.is_empty()) {
            nodes.push(cast(zp, format!("{out}.glance_xzp")));
            nodes.push(simple(
                "Sub",
                &[&x, &format!("{out}.glance_xzp")],
                &format!("{out}.glance_xc"),
            ));
            x = format!("{out}.glance_xc");
        }
        let mut product = simple(
            if node.op_type == "ConvInteger" {
                "Conv"
            } else {
                "MatMul"
            },
            &[&x, &f32_name],
            out,
        );
        product.attribute = node.attribute.clone();
        nodes.push(product);
        // Unique names (tract refuses duplicates), from the output when the node has none.
        let base = if node.name.is_empty() {
            out
        } else {
            &node.name
        };
        for (i, n) in nodes.iter_mut().enumerate() {
            n.name = format!("{base}/glance_f32_{i}");
        }
        graph.node.splice(at..=at, nodes);
        replaced += 1;
    }
    graph.initializer.extend(new_inits);
    // The integer weights are no longer read: drop them so tract never loads them.
    let read: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    graph
        .initializer
        .retain(|t| read.contains(&t.name) || graph.output.iter().any(|o| o.name == t.name));
    Ok(replaced)
}

/// `(w - zero_point)` as an f32 initializer. The zero point is per tensor, or per output
/// column (MatMulInteger, axis -1) / per output channel (ConvInteger, axis 0).
fn widened(
    w: &TensorProto,
    zero: Option<&TensorProto>,
    conv: bool,
    name: &str,
    bytes: &Bytes,
) -> Result<TensorProto> {
    let bad = |msg: String| Error::Generation(format!("weights {}: {msg}", w.name));
    let values = integers(w, &bytes(w)?).ok_or_else(|| bad("not int8 or uint8".into()))?;
    let zeros = match zero {
        Some(z) => integers(z, &bytes(z)?).ok_or_else(|| bad("zero point not 8-bit".into()))?,
        None => vec![0],
    };
    let dims: Vec<usize> = w.dims.iter().map(|&d| d.max(0) as usize).collect();
    if dims.iter().product::<usize>() != values.len() || dims.is_empty() {
        return Err(bad(format!("{} values for dims {dims:?}", values.len())));
    }
    let per = zeros.len();
    let zero_of = |i: usize| -> Result<i32> {
        if per == 1 {
            return Ok(zeros[0]);
        }
        let axis_len = if conv { dims[0] } else { dims[dims.len() - 1] };
        if per != axis_len {
            return Err(bad(format!("{per} zero points for an axis of {axis_len}")));
        }
        Ok(if conv {
            zeros[i / (values.len() / dims[0])]
        } else {
            zeros[i % axis_len]
        })
    };
    let mut raw = Vec::with_capacity(values.len() * 4);
    for (i, v) in values.iter().enumerate() {
        raw.extend_from_slice(&((v - zero_of(i)?) as f32).to_le_bytes());
    }
    Ok(TensorProto {
        name: name.into(),
        dims: w.dims.clone(),
        data_type: DataType::Float as i32,
        raw_data: raw,
        ..Default::default()
    })
}

fn integers(t: &TensorProto, raw: &[u8]) -> Option<Vec<i32>> {
    let from_raw = !raw.is_empty();
    match DataType::try_from(t.data_type).ok()? {
        DataType::Int8 if from_raw => Some(raw.iter().map(|&b| b as i8 as i32).collect()),
        DataType::Uint8 if from_raw => Some(raw.iter().map(|&b| b as i32).collect()),
        DataType::Int8 | DataType::Uint8 => Some(t.int32_data.clone()),
        _ => None,
    }
}

/// Turns an fp16 graph into an f32 one: initializers, constants, casts to f16, and the types
/// of its inputs and outputs. Returns whether anything was f16.
pub fn f16_to_f32(graph: &mut GraphProto, bytes: &Bytes) -> Result<bool> {
    let mut changed = false;
    for t in graph.initializer.iter_mut() {
        changed |= tensor_to_f32(t, bytes)?;
    }
    for node in graph.node.iter_mut() {
        for attr in node.attribute.iter_mut() {
            if let Some(t) = attr.t.as_mut() {
                changed |= tensor_to_f32(t, bytes)?;
            }
            if let Some(g) = attr.g.as_mut() {
                changed |= f16_to_f32(g, bytes)?;
            }
            for g in attr.graphs.iter_mut() {
                changed |= f16_to_f32(g, bytes)?;
            }
        }
        let casts_to_f16 = matches!(node.op_type.as_str(), "Cast" | "EyeLike" | "RandomNormal")
            && attr_i(node, "to").or(attr_i(node, "dtype")) == Some(DataType::Float16 as i64);
        if casts_to_f16 {
            for attr in node.attribute.iter_mut() {
                if (attr.name == "to" || attr.name == "dtype") && attr.i == DataType::Float16 as i64
                {
                    attr.i = DataType::Float as i64;
                    changed = true;
                }
            }
        }
    }
    for v in graph
        .input
        .iter_mut()
        .chain(graph.output.iter_mut())
        .chain(graph.value_info.iter_mut())
    {
        if let Some(type_proto::Value::TensorType(t)) =
            v.r#type.as_mut().and_then(|t| t.value.as_mut())
        {
            if t.elem_type == DataType::Float16 as i32 {
                t.elem_type = DataType::Float as i32;
                changed = true;
            }
        }
    }
    Ok(changed)
}

fn tensor_to_f32(t: &mut TensorProto, bytes: &Bytes) -> Result<bool> {
    if t.data_type != DataType::Float16 as i32 {
        return Ok(false);
    }
    let values = super::graph::floats(t, &bytes(t)?).unwrap_or_default();
    t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    t.int32_data.clear();
    t.external_data.clear();
    t.data_location = None;
    t.data_type = DataType::Float as i32;
    Ok(true)
}

fn find<'g>(graph: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
    graph.initializer.iter().find(|t| t.name == name)
}

fn attr_i(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

fn simple(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int8(name: &str, dims: &[i64], values: &[i8]) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Int8 as i32,
            raw_data: values.iter().map(|&v| v as u8).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn integer_matmul_becomes_f32_matmul_of_the_same_integers() {
        let mut cast = simple("Cast", &["acc"], "accf");
        cast.attribute.push(AttributeProto {
            name: "to".into(),
            i: DataType::Float as i64,
            ..Default::default()
        });
        let mut g = GraphProto {
            node: vec![
                simple("MatMulInteger", &["xq", "w", "xz", "wz"], "acc"),
                cast,
            ],
            // [K=2, N=3] weights with a per-column zero point.
            initializer: vec![
                int8("w", &[2, 3], &[1, -2, 3, 4, 5, -6]),
                int8("wz", &[3], &[1, 0, -1]),
            ],
            ..Default::default()
        };
        let inline: &Bytes = &|t| Ok(Cow::Borrowed(&t.raw_data[..]));
        assert_eq!(
            integers_to_f32(&mut g, inline, &["MatMulInteger"]).unwrap(),
            1
        );
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Cast", "Cast", "Sub", "MatMul", "Cast"]);
        assert_eq!(g.node[3].output, ["acc"]);
        let names: HashSet<&str> = g.node.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names.len(), g.node.len(), "node names must be unique");
        // Only the widened weights remain: (w - zero point), column by column.
        assert_eq!(g.initializer.len(), 1);
        let w: Vec<f32> = g.initializer[0]
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(w, [0.0, -2.0, 4.0, 3.0, 5.0, -5.0]);
    }

    #[test]
    fn results_read_as_integers_are_left_alone() {
        let mut g = GraphProto {
            node: vec![simple("MatMulInteger", &["xq", "w"], "acc")],
            initializer: vec![int8("w", &[1, 1], &[1])],
            ..Default::default()
        };
        let inline: &Bytes = &|t| Ok(Cow::Borrowed(&t.raw_data[..]));
        assert_eq!(
            integers_to_f32(&mut g, inline, &["MatMulInteger"]).unwrap(),
            0
        );
        assert_eq!(g.node.len(), 1);
    }
}
