//! ONNX `MatMulInteger` by constant weights on glance's int8 kernel (`src/kernels/int8.rs`),
//! for x86 CPUs where tract's own int8 kernel is slow (see `compute.rs`).
//!
//! [`claim`] rewrites the graph's qualifying nodes before tract parses it; [`register`] teaches
//! the parser the new op types:
//! - [`DYNAMIC_OP`], where the node is the middle of what dynamic quantization exports
//!   (`DynamicQuantizeLinear` -> `MatMulInteger` -> `Cast` -> `Mul` by `x_scale * w_scale`):
//!   the whole chain becomes one op from f32 to f32, computing the same integers and the same
//!   f32 products. tract's `DynamicQuantizeLinear` alone took a fifth of the TrOCR encoder.
//! - [`OP_TYPE`] for any other `MatMulInteger` by constant weights: same inputs and exact i32
//!   output, so the rest of the graph is untouched.

use std::collections::HashSet;
use std::sync::Arc;

use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::{GraphProto, NodeProto};
use tract_onnx::tract_hir::internal::*;

use super::matmul::{constant, product_shape, product_shape_rule, weights};
use super::surgery::{producer, remove_nodes, sole_reader};
use crate::kernels::int8::{self, Bytes, PackedB};

/// The op type of a claimed `MatMulInteger`.
pub const OP_TYPE: &str = "GlanceMatMulInteger";
/// The op type of a claimed dynamic quantization chain: inputs `x` (f32), weights, weight
/// zero point (or ""), weight scale.
pub const DYNAMIC_OP: &str = "GlanceDynamicMatMul";

/// What [`claim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// Dynamic quantization chains made one [`DYNAMIC_OP`].
    pub fused: usize,
    /// Other products renamed [`OP_TYPE`].
    pub renamed: usize,
}

/// Takes every `MatMulInteger` glance's kernel can: weights are a 2-D initializer with an
/// initializer zero point (or none), and the activations' zero point, if any, is a scalar (a
/// `DynamicQuantizeLinear` output, as dynamically quantized exports have, or an initializer).
/// The dead `DynamicQuantizeLinear` and scale products a fused chain leaves are pruned by tract.
pub fn claim(graph: &mut GraphProto) -> Claimed {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let is_scalar_init = |name: &str| {
        graph
            .initializer
            .iter()
            .any(|t| t.name == name && t.dims.iter().product::<i64>() == 1)
    };
    let dynamic_zero_points: HashSet<&str> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "DynamicQuantizeLinear")
        .filter_map(|n| n.output.get(2).map(String::as_str))
        .collect();
    fn input(n: &NodeProto, i: usize) -> Option<&str> {
        n.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }
    let claimable: Vec<usize> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "MatMulInteger")
        .filter(|(_, n)| {
            let weights_2d = input(n, 1).is_some_and(|w| {
                graph
                    .initializer
                    .iter()
                    .any(|t| t.name == w && t.dims.len() == 2)
            });
            let a_zero =
                input(n, 2).is_none_or(|z| dynamic_zero_points.contains(z) || is_scalar_init(z));
            let b_zero = input(n, 3).is_none_or(|z| initializers.contains(z));
            weights_2d && a_zero && b_zero
        })
        .map(|(at, _)| at)
        .collect();
    let mut fused = HashSet::new();
    for &at in &claimable {
        if let Some(chain) = dynamic_chain(graph, at) {
            let mmi = &graph.node[at];
            let node = NodeProto {
                op_type: DYNAMIC_OP.into(),
                name: format!("{}.glance", mmi.name),
                input: vec![
                    chain.x,
                    mmi.input[1].clone(),
                    input(mmi, 3).unwrap_or_default().to_string(),
                    chain.w_scale,
                ],
                output: graph.node[chain.mul].output.clone(),
                ..Default::default()
            };
            // The chain's last node is replaced in place (the graph stays in order); the
            // integer product and its cast are no longer read.
            graph.node[chain.mul] = node;
            fused.extend([at, chain.cast]);
        } else {
            graph.node[at].op_type = OP_TYPE.into();
        }
    }
    remove_nodes(graph, &fused);
    Claimed {
        fused: fused.len() / 2,
        renamed: claimable.len() - fused.len() / 2,
    }
}

/// Node indices and names of a dynamic quantization chain around `MatMulInteger` `at`.
struct Chain {
    x: String,
    w_scale: String,
    cast: usize,
    mul: usize,
}

/// `DynamicQuantizeLinear(x) -> MatMulInteger(q, w, zero, w_zero) -> Cast(float) ->
/// Mul(_, Mul(x_scale, w_scale))` with `w_scale` an initializer, the integer product and its
/// cast read by nothing else.
fn dynamic_chain(graph: &GraphProto, at: usize) -> Option<Chain> {
    let node = |at: usize| &graph.node[at];
    let producer = |name: &str| producer(graph, name);
    // A damaged file may have nodes without inputs or outputs: `?`, never an index.
    let mmi = node(at);
    let (quantized, product) = (mmi.input.first()?, mmi.output.first()?);
    let dql = node(producer(quantized)?);
    let same_dql = dql.op_type == "DynamicQuantizeLinear"
        && dql.output.first() == mmi.input.first()
        && dql.output.get(2) == mmi.input.get(2);
    let cast = sole_reader(graph, product)?;
    let is_float = node(cast)
        .attribute
        .iter()
        .any(|a| a.name == "to" && a.i == tract_onnx::pb::tensor_proto::DataType::Float as i64);
    let cast_out = node(cast).output.first()?;
    let mul = sole_reader(graph, cast_out)?;
    let is_mul = node(mul).op_type == "Mul" && node(mul).input.len() == 2;
    if !same_dql || node(cast).op_type != "Cast" || !is_float || !is_mul {
        return None;
    }
    let scales = node(mul).input.iter().find(|i| *i != cast_out)?;
    let scales = node(producer(scales)?);
    let x_scale = dql.output.get(1)?;
    let w_scale = match &scales.input[..] {
        [a, b] if a == x_scale => b,
        [a, b] if b == x_scale => a,
        _ => return None,
    };
    let per_tensor_or_column = graph
        .initializer
        .iter()
        .any(|t| &t.name == w_scale && t.dims.len() <= 1);
    let x = dql.input.first()?;
    (scales.op_type == "Mul" && per_tensor_or_column).then(|| Chain {
        x: x.clone(),
        w_scale: w_scale.clone(),
        cast,
        mul,
    })
}

/// Lets `onnx` parse [`OP_TYPE`] and [`DYNAMIC_OP`].
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert(OP_TYPE, parse);
    onnx.op_register.insert(DYNAMIC_OP, parse_dynamic);
}

fn parse(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let mut zero_points = optional_inputs(node).skip(2);
    let op = Parsed {
        a_zero: zero_points.next().flatten(),
        b_zero: zero_points.next().flatten(),
        w_scale: None,
    };
    Ok((expand(op), vec![]))
}

fn parse_dynamic(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let mut optional = optional_inputs(node).skip(2);
    let op = Parsed {
        a_zero: None,
        b_zero: optional.next().flatten(),
        w_scale: optional.next().flatten(),
    };
    ensure!(op.w_scale.is_some(), "{DYNAMIC_OP} without a weight scale");
    Ok((expand(op), vec![]))
}

/// The parsed node: where its optional inputs are. With a weight scale, the input is f32
/// activations ([`DYNAMIC_OP`]); without, 8-bit ones ([`OP_TYPE`]).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Parsed {
    a_zero: Option<usize>,
    b_zero: Option<usize>,
    w_scale: Option<usize>,
}

impl Expansion for Parsed {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> TractResult<()> {
        let optional = [self.a_zero, self.b_zero, self.w_scale];
        check_input_arity(inputs, 2 + optional.iter().flatten().count())?;
        check_output_arity(outputs, 1)?;
        if self.w_scale.is_some() {
            s.equals(&inputs[0].datum_type, f32::datum_type())?;
            s.equals(&outputs[0].datum_type, f32::datum_type())?;
        } else {
            s.equals(&outputs[0].datum_type, i32::datum_type())?;
        }
        if let Some(z) = self.a_zero {
            s.equals(&inputs[z].datum_type, &inputs[0].datum_type)?
        }
        if let Some(z) = self.b_zero {
            s.equals(&inputs[z].datum_type, &inputs[1].datum_type)?
        }
        product_shape_rule(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let (weights, k, n) = weights(model, inputs[1], prefix)?;
        let b_zero: Vec<i32> = match self.b_zero {
            Some(z) => integers(&*constant(model, inputs[z], prefix, "weight zero points")?)?,
            None => vec![],
        };
        let b = Bytes {
            values: weights.as_bytes(),
            signed: signed(weights.datum_type())?,
        };
        let packed = PackedB::new(b, k, n, &b_zero).map_err(|e| format_err!("{prefix}: {e}"))?;
        let input = match self.w_scale {
            Some(at) => {
                let scale = constant(model, inputs[at], prefix, "weight scales")?;
                let scale = scale.cast_to::<f32>()?;
                let scale = scale.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
                ensure!(
                    scale.len() == 1 || scale.len() == n,
                    "{prefix}: {} weight scales for {n} columns",
                    scale.len()
                );
                Activations::Float { w_scale: scale }
            }
            None => Activations::Quantized,
        };
        let mut wired = tvec![inputs[0]];
        wired.extend(self.a_zero.map(|z| inputs[z]));
        let op = QMatMul {
            b: Arc::new(packed),
            input,
        };
        model.wire_node(prefix, op, &wired)
    }
}

fn signed(dt: DatumType) -> TractResult<bool> {
    match dt {
        DatumType::I8 => Ok(true),
        DatumType::U8 => Ok(false),
        other => bail!("MatMulInteger of {other:?}, expected int8 or uint8"),
    }
}

fn integers(t: &Tensor) -> TractResult<Vec<i32>> {
    let t = t.cast_to::<i32>()?;
    let values = t.try_as_plain_ram()?.as_slice::<i32>()?.to_vec();
    Ok(values)
}

/// `[..., m, k]` activations times the packed `[k, n]` weights: `[..., m, n]`.
#[derive(Debug, Clone)]
pub struct QMatMul {
    b: Arc<PackedB>,
    input: Activations,
}

/// What a [`QMatMul`] takes and gives.
#[derive(Debug, Clone, PartialEq)]
enum Activations {
    /// 8-bit values (and their scalar zero point, if the node has one) to exact i32 sums.
    Quantized,
    /// f32 values, quantized as `DynamicQuantizeLinear` does, to f32 results rescaled by
    /// `x_scale * w_scale` (one weight scale, or one per column).
    Float { w_scale: Vec<f32> },
}

impl PartialEq for QMatMul {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.b, &other.b) && self.input == other.input
    }
}

impl Eq for QMatMul {}

impl Op for QMatMul {
    fn name(&self) -> StaticName {
        "GlanceQMatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "[{}, {}] weights, {} kernel",
            self.b.k(),
            self.b.n(),
            if crate::kernels::avx2() {
                "AVX2"
            } else {
                "portable"
            }
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for QMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let a = &inputs[0];
        let shape = product_shape(a.shape(), self.b.k(), self.b.n())?;
        let m = a.len() / self.b.k();
        let c = match &self.input {
            Activations::Quantized => {
                let a0 = match inputs.get(1) {
                    Some(z) => *integers(z)?
                        .first()
                        .context("empty activation zero point")?,
                    None => 0,
                };
                let values = Bytes {
                    values: a.as_bytes(),
                    signed: signed(a.datum_type())?,
                };
                filled(&shape, |c| int8::matmul(values, a0, m, &self.b, c))?
            }
            Activations::Float { w_scale } => {
                let x = a.try_as_plain_ram()?;
                let x = x.as_slice::<f32>()?;
                filled(&shape, |y| int8::dynamic_matmul(x, m, &self.b, w_scale, y))?
            }
        };
        Ok(tvec!(c.into_tvalue()))
    }
}

/// A tensor of `shape` that `fill` writes.
fn filled<T: Datum + tract_num_traits::Zero>(
    shape: &[usize],
    fill: impl FnOnce(&mut [T]) -> Result<(), String>,
) -> TractResult<Tensor> {
    let mut t = Tensor::zero::<T>(shape)?;
    fill(t.try_as_plain_ram_mut()?.as_slice_mut::<T>()?).map_err(|e| format_err!("{e}"))?;
    Ok(t)
}

impl TypedOp for QMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = product_shape(&inputs[0].shape, self.b.k(), self.b.n())?;
        Ok(tvec!(match self.input {
            Activations::Quantized => i32::fact(shape),
            Activations::Float { .. } => f32::fact(shape),
        }))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let rows: TDim = inputs[0].shape.iter().rev().skip(1).product();
        let macs = rows * (self.b.k() * self.b.n());
        Ok(tvec!((Cost::FMA(i32::datum_type()), macs)))
    }

    as_op!();
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::compute::Integers;
    use crate::model::graph::{Graph, Shapes};
    use std::borrow::Cow;
    use std::path::Path;
    use tract_onnx::pb::{
        attribute_proto::AttributeType, tensor_proto::DataType, type_proto, AttributeProto,
        ModelProto, OperatorSetIdProto, TensorProto, TypeProto, ValueInfoProto,
    };

    pub(in crate::model) fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: outputs[0].into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn cast_to_float(input: &str, output: &str) -> NodeProto {
        let mut cast = node("Cast", &[input], &[output]);
        cast.attribute.push(AttributeProto {
            name: "to".into(),
            i: DataType::Float as i64,
            r#type: AttributeType::Int as i32,
            ..Default::default()
        });
        cast
    }

    pub(in crate::model) fn tensor(
        name: &str,
        dt: DataType,
        dims: &[usize],
        raw: Vec<u8>,
    ) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: dt as i32,
            raw_data: raw,
            ..Default::default()
        }
    }

    pub(in crate::model) fn float_value(name: &str, dims: &[usize]) -> ValueInfoProto {
        use tract_onnx::pb::tensor_shape_proto::{dimension::Value, Dimension};
        let dim = |d: usize| Dimension {
            value: Some(Value::DimValue(d as i64)),
            ..Default::default()
        };
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: DataType::Float as i32,
                    shape: Some(tract_onnx::pb::TensorShapeProto {
                        dim: dims.iter().map(|&d| dim(d)).collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `y1`: the dynamic quantization chain of `x [2, 5, k]` by uint8 weights `[k, n]` with
    /// per-column zero points and scales; `y2`: a product whose i32 result is also read as
    /// such (so it is renamed, not fused), through the same quantized activations.
    fn quantized_graph(k: usize, n: usize) -> ModelProto {
        let weights: Vec<u8> = (0..k * n).map(|i| (i * 7919 % 251) as u8).collect();
        let zeros: Vec<u8> = (0..n).map(|c| (120 + c % 9) as u8).collect();
        let scales: Vec<u8> = (0..n)
            .flat_map(|c| (0.01f32 + c as f32 * 1e-4).to_le_bytes())
            .collect();
        let graph = GraphProto {
            name: "q".into(),
            node: vec![
                node("DynamicQuantizeLinear", &["x"], &["xq", "xs", "xz"]),
                node("MatMulInteger", &["xq", "w", "xz", "wz"], &["acc"]),
                cast_to_float("acc", "accf"),
                node("Mul", &["xs", "ws"], &["scale"]),
                node("Mul", &["accf", "scale"], &["y1"]),
                node("MatMulInteger", &["xq", "w", "xz", "wz"], &["acc2"]),
                cast_to_float("acc2", "y2"),
                node("ReduceSum", &["acc2"], &["acc2_sum"]),
                cast_to_float("acc2_sum", "y3"),
            ],
            initializer: vec![
                tensor("w", DataType::Uint8, &[k, n], weights),
                tensor("wz", DataType::Uint8, &[n], zeros),
                tensor("ws", DataType::Float, &[n], scales),
            ],
            input: vec![float_value("x", &[2, 5, k])],
            output: vec![
                float_value("y1", &[2, 5, n]),
                float_value("y2", &[2, 5, n]),
                float_value("y3", &[]),
            ],
            ..Default::default()
        };
        model(graph)
    }

    /// `graph` as an opset 17 model.
    pub(in crate::model) fn model(graph: GraphProto) -> ModelProto {
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(graph),
            ..Default::default()
        }
    }

    fn run(proto: &ModelProto, integers: Integers, x: &Tensor) -> Vec<Vec<f32>> {
        let mut proto = proto.clone();
        let graph = proto.graph.as_mut().unwrap();
        integers
            .prepare(graph, &|t| Ok(Cow::Borrowed(&t.raw_data[..])))
            .unwrap();
        outputs_as_f32(&proto, x)
    }

    /// Every output of `proto` run on its one input `x`, as f32 values.
    pub(in crate::model) fn outputs_as_f32(proto: &ModelProto, x: &Tensor) -> Vec<Vec<f32>> {
        let shapes = Shapes::default();
        let g = Graph::prepare(Path::new("<test>"), proto, &shapes, 1).unwrap();
        let outputs = g.run(|_| Ok(x.clone())).unwrap();
        outputs
            .iter()
            .map(|t| {
                let t = t.cast_to::<f32>().unwrap();
                let values = t
                    .try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec();
                values
            })
            .collect()
    }

    #[test]
    fn the_chain_is_fused_and_other_products_renamed() {
        let mut proto = quantized_graph(4, 3);
        let graph = proto.graph.as_mut().unwrap();
        let claimed = claim(graph);
        assert_eq!(
            claimed,
            Claimed {
                fused: 1,
                renamed: 1
            }
        );
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            [
                "DynamicQuantizeLinear",
                "Mul",
                DYNAMIC_OP,
                OP_TYPE,
                "Cast",
                "ReduceSum",
                "Cast"
            ]
        );
        assert_eq!(graph.node[2].input, ["x", "w", "wz", "ws"]);
        assert_eq!(graph.node[2].output, ["y1"]);
    }

    #[test]
    fn damaged_chains_are_not_fused_and_do_not_panic() {
        // A product without outputs, and a Cast without outputs: renamed, left for tract to
        // refuse, never indexed past their ends.
        for node_ix in [1, 2] {
            let mut proto = quantized_graph(4, 3);
            let graph = proto.graph.as_mut().unwrap();
            graph.node[node_ix].output.clear();
            let claimed = claim(graph);
            assert_eq!(claimed.fused, 0, "node {node_ix}");
            assert_eq!(claimed.renamed, 2, "node {node_ix}");
        }
    }

    #[test]
    fn same_results_as_tracts_integer_kernels() {
        // Odd k and a column count that is not a whole panel: the kernel's padded edges.
        for (k, n) in [(37, 21), (64, 16)] {
            let proto = quantized_graph(k, n);
            let values: Vec<f32> = (0..2 * 5 * k)
                .map(|i| ((i * 31 % 97) as f32 - 40.0) / 9.0)
                .collect();
            let x = Tensor::from_shape(&[2, 5, k], &values).unwrap();
            let tract = run(&proto, Integers::Tract, &x);
            let glance = run(&proto, Integers::Glance, &x);
            // Bit for bit: the same integers, cast and scaled in the same order.
            assert_eq!(glance, tract, "k {k}, n {n}");
        }
    }
}
