//! ONNX `MatMul` by constant f32 weights (and the bias `Add` after it, as exports write a
//! linear layer) on glance's f32 kernel (`src/kernels/float.rs`), on x86 CPUs with AVX2 and
//! FMA, where tract's own f32 kernel is the slower one (see the kernel's notes). On aarch64 and
//! armv7 nothing is claimed: tract's hand-written NEON kernels run there.
//!
//! [`claim`] rewrites the graph's qualifying nodes before tract parses it; [`register`] teaches
//! the parser [`OP_TYPE`].

use std::collections::HashSet;
use std::sync::Arc;

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{tensor_proto::DataType, GraphProto, NodeProto};
use tract_onnx::tract_hir::internal::*;

use super::surgery::{initializer, remove_nodes, sole_reader};
use crate::kernels::float::{self, PackedWeights};

/// The op type of a claimed product. Inputs: activations `[..., k]`, weights `[k, n]`, and
/// optionally the bias `[n]`.
pub const OP_TYPE: &str = "GlanceMatMul";

/// Whether this CPU runs f32 products on glance's kernel.
pub fn claims() -> bool {
    crate::kernels::avx2_fma()
}

/// What [`claim`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// Products that took their bias `Add` with them.
    pub with_bias: usize,
    /// Products alone.
    pub alone: usize,
}

/// Takes every `MatMul` of activations by a 2-D f32 initializer, with the `Add` of a 1-D f32
/// initializer that is the product's only reader, if there is one.
pub fn claim(graph: &mut GraphProto) -> Claimed {
    // The initializer's own name, if `name` is an f32 one of this rank.
    let float_init = |name: &str, rank: usize| {
        initializer(graph, name)
            .filter(|t| t.dims.len() == rank && t.data_type == DataType::Float as i32)
            .map(|t| t.name.clone())
    };
    let claimable: Vec<(usize, String)> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "MatMul" && (n.domain.is_empty() || n.domain == "ai.onnx"))
        .filter_map(|(at, n)| match (&n.input[..], &n.output[..]) {
            ([x, w], [_]) if initializer(graph, x).is_none() => Some((at, float_init(w, 2)?)),
            _ => None,
        })
        .collect();
    let mut fused = HashSet::new();
    let mut claimed = Vec::with_capacity(claimable.len());
    for (at, weights) in &claimable {
        let node = &graph.node[*at];
        let product = &node.output[0];
        let bias = sole_reader(graph, product).and_then(|add_at| {
            let add = &graph.node[add_at];
            let bias = match &add.input[..] {
                [a, b] if a == product => b,
                [a, b] if b == product => a,
                _ => return None,
            };
            (add.op_type == "Add").then_some(())?;
            Some((add_at, float_init(bias, 1)?))
        });
        // The Add (or the product itself) is replaced in place: the graph stays in order.
        let (place, name, output) = match &bias {
            Some((add_at, _)) => {
                let add = &graph.node[*add_at];
                (*add_at, &add.name, &add.output)
            }
            None => (*at, &node.name, &node.output),
        };
        let mut input = vec![node.input[0].clone(), weights.clone()];
        input.extend(bias.as_ref().map(|(_, b)| b.clone()));
        let op = NodeProto {
            op_type: OP_TYPE.into(),
            name: format!("{name}.glance"),
            input,
            output: output.clone(),
            ..Default::default()
        };
        if bias.is_some() {
            fused.insert(*at);
        }
        claimed.push((place, op));
    }
    for (place, op) in claimed {
        graph.node[place] = op;
    }
    remove_nodes(graph, &fused);
    Claimed {
        with_bias: fused.len(),
        alone: claimable.len() - fused.len(),
    }
}

/// Lets `onnx` parse [`OP_TYPE`].
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert(OP_TYPE, parse);
}

fn parse(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((
        expand(Parsed {
            bias: node.input.len() == 3,
        }),
        vec![],
    ))
}

/// The parsed node: whether it has a bias input.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Parsed {
    bias: bool,
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
        check_input_arity(inputs, 2 + self.bias as usize)?;
        check_output_arity(outputs, 1)?;
        for input in inputs {
            s.equals(&input.datum_type, f32::datum_type())?;
        }
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        product_shape_rule(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let (weights, k, n) = weights(model, inputs[1], prefix)?;
        let bias = if self.bias {
            let bias = constant(model, inputs[2], prefix, "bias")?;
            let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
            ensure!(
                bias.len() == n,
                "{prefix}: a bias of {} values for {n} columns",
                bias.len()
            );
            bias
        } else {
            vec![]
        };
        let op = MatMul {
            weights: Weights::Plain(weights),
            k,
            n,
            bias: Arc::new(bias),
        };
        model.wire_node(prefix, op, &[inputs[0]])
    }
}

/// The constant at `outlet`: `what` the node named `prefix` reads.
pub(super) fn constant(
    model: &TypedModel,
    outlet: OutletId,
    prefix: &str,
    what: &str,
) -> TractResult<Arc<Tensor>> {
    let fact = model.outlet_fact(outlet)?;
    let konst = fact.konst.clone();
    konst.with_context(|| format!("{prefix}: the {what} are not constant"))
}

/// The constant 2-D weights at `outlet` and their shape `(k, n)`.
pub(super) fn weights(
    model: &TypedModel,
    outlet: OutletId,
    prefix: &str,
) -> TractResult<(Arc<Tensor>, usize, usize)> {
    let weights = constant(model, outlet, prefix, "weights")?;
    match *weights.shape() {
        [k, n] => Ok((weights, k, n)),
        ref other => bail!("{prefix}: weights of shape {other:?}, expected 2-D"),
    }
}

/// The output's shape rule of a product of inputs 0 and 1 (activations by weights).
pub(super) fn product_shape_rule<'r, 'p: 'r>(
    s: &mut Solver<'r>,
    inputs: &'p [TensorProxy],
    outputs: &'p [TensorProxy],
) -> TractResult<()> {
    s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, a, b| {
        let (_, _, c, _) =
            tract_onnx::tract_hir::ops::matmul::compute_shapes(a, b, false, false, false)?;
        s.equals(&outputs[0].shape, c)
    })
}

/// The shape of `[..., m, k]` activations times `[k, n]` weights: `[..., m, n]`.
pub(super) fn product_shape<D: DimLike>(a: &[D], k: usize, n: usize) -> TractResult<TVec<D>> {
    let Some((last, rest)) = a.split_last() else {
        bail!("a matrix product of a scalar");
    };
    if let Ok(last) = last.to_usize() {
        ensure!(last == k, "activations [.., {last}] for weights [{k}, ..]");
    }
    let mut shape: TVec<D> = rest.iter().cloned().collect();
    shape.push(D::from(n));
    Ok(shape)
}

/// `[..., m, k]` activations times the `[k, n]` weights, plus the bias if any.
#[derive(Debug, Clone)]
pub struct MatMul {
    weights: Weights,
    k: usize,
    n: usize,
    /// `[n]`, or empty.
    bias: Arc<Vec<f32>>,
}

/// A product's weights.
#[derive(Debug, Clone)]
enum Weights {
    /// tract's constant, until the plan's code generation packs it ([`TypedOp::codegen`]):
    /// packed when the node is wired, every packed copy of a graph was alive beside every
    /// unpacked constant of tract's parsed model (ViT-GPT2 fp32: peak RSS 1583 -> 1753 MB).
    Plain(Arc<Tensor>),
    Packed(Arc<PackedWeights>),
}

impl Weights {
    fn pack(t: &Tensor, k: usize, n: usize) -> TractResult<PackedWeights> {
        let values = t.try_as_plain_ram()?;
        PackedWeights::new(values.as_slice::<f32>()?, k, n).map_err(|e| format_err!("{e}"))
    }
}

impl PartialEq for MatMul {
    fn eq(&self, other: &Self) -> bool {
        let same_weights = match (&self.weights, &other.weights) {
            (Weights::Plain(a), Weights::Plain(b)) => Arc::ptr_eq(a, b),
            (Weights::Packed(a), Weights::Packed(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        same_weights && Arc::ptr_eq(&self.bias, &other.bias)
    }
}

impl Eq for MatMul {}

impl Op for MatMul {
    fn name(&self) -> StaticName {
        "GlanceMatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let bias = if self.bias.is_empty() {
            ""
        } else {
            " and bias"
        };
        Ok(vec![format!("[{}, {}] weights{bias}", self.k, self.n)])
    }

    op_as_typed_op!();
}

impl EvalOp for MatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let packed_now;
        let b = match &self.weights {
            Weights::Packed(b) => b,
            // Only a graph run before its code generation (tract's constant folding).
            Weights::Plain(t) => {
                packed_now = Weights::pack(t, self.k, self.n)?;
                &packed_now
            }
        };
        let a = &inputs[0];
        let shape = product_shape(a.shape(), self.k, self.n)?;
        let m = a.len() / self.k;
        let a = a.try_as_plain_ram()?;
        // SAFETY: f32 has no invalid bit patterns, and the kernel writes every value.
        let mut c = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        let mut out = c.try_as_plain_ram_mut()?;
        float::matmul(a.as_slice::<f32>()?, m, b, &self.bias, out.as_slice_mut()?)
            .map_err(|e| format_err!("{e}"))?;
        Ok(tvec!(c.into_tvalue()))
    }
}

impl TypedOp for MatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = product_shape(&inputs[0].shape, self.k, self.n)?;
        Ok(tvec!(f32::fact(shape)))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let rows: TDim = inputs[0].shape.iter().rev().skip(1).product();
        let macs = rows * (self.k * self.n);
        Ok(tvec!((Cost::FMA(f32::datum_type()), macs)))
    }

    /// Packs the weights, one node at a time, once tract's parsed model is gone: each
    /// constant is freed as its packed copy replaces it.
    fn codegen(
        &self,
        model: &TypedModel,
        node: &TypedNode,
    ) -> TractResult<Option<TypedModelPatch>> {
        let Weights::Plain(t) = &self.weights else {
            return Ok(None);
        };
        let packed = Weights::pack(t, self.k, self.n)
            .with_context(|| format!("{}: packing the weights", node.name))?;
        let op = MatMul {
            weights: Weights::Packed(Arc::new(packed)),
            ..self.clone()
        };
        TypedModelPatch::replace_single_op(model, node, &node.inputs, op).map(Some)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::qmatmul::tests::{float_value, model, node, outputs_as_f32, tensor};
    use tract_onnx::pb::{ModelProto, TensorProto};

    fn floats(name: &str, dims: &[usize], seed: usize) -> TensorProto {
        let len = dims.iter().product::<usize>();
        let raw = (0..len)
            .flat_map(|i| (((i * 7919 + seed) % 201) as f32 / 100.0 - 1.0).to_le_bytes())
            .collect();
        tensor(name, DataType::Float, dims, raw)
    }

    /// `x [2, 3, k]` by `w [k, n]`: `y1` with a bias (fused; the bias through an `Identity`, as
    /// torch exports parameters equal to another), `y2` read twice (alone), `y3`
    /// a graph output that an Add also reads (alone), `y4` plus a non-constant (alone).
    fn linear_graph(k: usize, n: usize) -> ModelProto {
        model(GraphProto {
            name: "linear".into(),
            node: vec![
                node("Identity", &["b"], &["b_again"]),
                node("MatMul", &["x", "w"], &["xw"]),
                node("Add", &["b_again", "xw"], &["y1"]),
                node("MatMul", &["x", "w"], &["y2"]),
                node("Add", &["y2", "b"], &["y2_plus_b"]),
                node("Mul", &["y2", "y2_plus_b"], &["y2_squared"]),
                node("MatMul", &["x", "w"], &["y3"]),
                node("Add", &["y3", "b"], &["y3_plus_b"]),
                node("MatMul", &["x", "w"], &["xw4"]),
                node("Add", &["xw4", "y1"], &["y4"]),
            ],
            initializer: vec![floats("w", &[k, n], 1), floats("b", &[n], 2)],
            input: vec![float_value("x", &[2, 3, k])],
            output: ["y1", "y2_squared", "y3", "y3_plus_b", "y4"]
                .iter()
                .map(|y| float_value(y, &[2, 3, n]))
                .collect(),
            ..Default::default()
        })
    }

    #[test]
    fn linear_layers_are_claimed_with_their_bias() {
        let mut proto = linear_graph(4, 3);
        let graph = proto.graph.as_mut().unwrap();
        let claimed = claim(graph);
        assert_eq!(
            claimed,
            Claimed {
                with_bias: 1,
                alone: 3
            }
        );
        let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(
            ops,
            ["Identity", OP_TYPE, OP_TYPE, "Add", "Mul", OP_TYPE, "Add", OP_TYPE, "Add"]
        );
        assert_eq!(graph.node[1].input, ["x", "w", "b"]);
        assert_eq!(graph.node[1].output, ["y1"]);
    }

    #[test]
    fn the_plan_holds_the_weights_packed_only() {
        let mut proto = linear_graph(8, 5);
        claim(proto.graph.as_mut().unwrap());
        let mut onnx = tract_onnx::onnx();
        register(&mut onnx);
        let parsed = onnx.parse(&proto, None).unwrap().model;
        let plan = parsed.into_optimized().unwrap();
        let products: Vec<&MatMul> = plan.nodes().iter().filter_map(|n| n.op_as()).collect();
        assert_eq!(products.len(), 4);
        for p in products {
            assert!(matches!(p.weights, Weights::Packed(_)), "{p:?}");
        }
    }

    #[test]
    fn same_results_as_tracts_product() {
        // Odd k and a column count that is not a whole panel: the kernel's padded edges.
        for (k, n) in [(37, 21), (64, 16)] {
            let proto = linear_graph(k, n);
            let mut claimed = proto.clone();
            claim(claimed.graph.as_mut().unwrap());
            let values: Vec<f32> = (0..2 * 3 * k)
                .map(|i| ((i * 31 % 97) as f32 - 40.0) / 9.0)
                .collect();
            let x = Tensor::from_shape(&[2, 3, k], &values).unwrap();
            let (tract, glance) = (outputs_as_f32(&proto, &x), outputs_as_f32(&claimed, &x));
            for (y, (want, got)) in tract.iter().zip(&glance).enumerate() {
                for (w, g) in want.iter().zip(got) {
                    // Sums in another order: close, not equal.
                    assert!(
                        (w - g).abs() <= 1e-4 * w.abs().max(1.0),
                        "k {k}, n {n}, y{y}"
                    );
                }
            }
        }
    }
}
