//! Attention products on glance's kernel (`src/kernels/attention.rs`): decoders' cross-attention
//! over the cache, so that the beams of one image share one copy of it, and encoders'
//! self-attention, which tract ran as general products with a packing of each operand.
//!
//! BART-family exports (TrOCR, MBart in Donut) compute cross-attention over the cache in one of
//! two ways, by transformers version:
//! - `Reshape(past.encoder.key, [rows * heads, -1, depth]) -> Transpose(0, 2, 1) -> MatMul(q, _)
//!   -> Softmax(-1) -> MatMul(_, Reshape(past.encoder.value, ..))` (TrOCR);
//! - `Transpose(past.encoder.key, (0, 1, 3, 2)) -> Mul(_, scale) -> MatMul(q, _) -> Softmax(-1)
//!   -> MatMul(_, past.encoder.value)` (the 4-D form, scale split between q and k).
//!
//! GPT-2 (ViT-GPT2) projects its cross-attention keys and values from `encoder_hidden_states`
//! in the step graph; glance cuts them out into a cache of its own (`model::cut_encoder_only`),
//! the keys as the export had transposed them for the product (`[batch, heads, depth, keys]`):
//! `Mul(past.key, scale) -> MatMul(q, _) -> Add(_, mask) -> Softmax(-1) -> MatMul(_, past.value)`,
//! the mask made from the encoder states' shape (all zeros: every image position is seen).
//! The op reads those keys as they are and adds the mask.
//!
//! Every row reads its own copy of the keys and values: at four beams, four copies of the same
//! numbers, read at every step. [`claim`] makes each such chain one [`OP_TYPE`] node reading the
//! cache inputs as they are, and gives those inputs a batch dimension of their own
//! ([`names::CROSS_ROWS`]): the session may then hold one row per image
//! (`decode/session.rs`), and the op pairs each row with its image's keys and values.
//!
//! A step's self-attention reads its cache the TrOCR way too, through the `present` keys and
//! values (the past with the new token's appended): [`claim_self`] makes those chains the same
//! op, each row with its own keys.
//!
//! ViT, DeiT and their kin write self-attention as `Mul(q, s) -> MatMul(_, Mul(Transpose(k), s))
//! -> Softmax(-1) -> MatMul(_, v)` (SDPA, keys transposed from `[batch, seq, heads, depth]` by
//! `(0, 2, 3, 1)`) or `MatMul(q, Transpose(k)) -> Div(_, sqrt(depth)) -> Softmax -> MatMul(_, v)`
//! (eager): [`claim_encoder`] makes each one [`OP_TYPE`] node too.

use tract_onnx::model::{optional_inputs, ParsingContext};
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension::Value, AttributeProto,
    GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use tract_onnx::tract_hir::internal::*;

use std::collections::HashSet;
use std::path::Path;

use super::names;
use super::surgery::{
    constant_node_tensor, producer, remove_nodes, sole_node_reader, sole_reader, sole_values_reader,
};
use crate::kernels::attention::{self, Dims};

/// The op type of a claimed cross-attention. Inputs: `q` (`[rows * heads, queries, depth]` or
/// `[rows, heads, queries, depth]`), the key and value cache inputs (`[images or rows, heads,
/// keys, depth]`; the keys `[.., depth, keys]` with attribute `keys_transposed` = 1), then
/// optional ones (`""` where absent): the scalar the keys are multiplied by, the shapes the
/// export reshaped keys and values to (checked when the graph is typed), the scalar the
/// queries (or the scores) are multiplied by, the one the scores are divided by, and a mask
/// added to the scores (of the queries' rank, broadcast to the scores).
pub const OP_TYPE: &str = "GlanceSharedAttention";
/// An attribute of [`OP_TYPE`]: 1 where the keys are `[images, heads, depth, keys]`.
const KEYS_TRANSPOSED: &str = "keys_transposed";

/// What [`undo`] needs to give the graph back as it was.
#[derive(Debug)]
pub struct Claimed {
    /// How many attention chains became one node.
    pub count: usize,
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
}

impl Claimed {
    /// What `graph` is before `count` chains are rewritten.
    fn before(graph: &GraphProto, count: usize) -> Claimed {
        Claimed {
            count,
            nodes: graph.node.clone(),
            inputs: graph.input.clone(),
        }
    }
}

/// Rewrites every cross-attention over the cache into [`OP_TYPE`], or nothing: when one cache
/// input is read some other way, rows could not share the cache, so no chain is claimed.
pub fn claim(graph: &mut GraphProto) -> Option<Claimed> {
    let cross: Vec<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| is_cross(n))
        .collect();
    // A chain starts at its keys: the values' inputs start none.
    let chains: Vec<Chain> = cross
        .iter()
        .filter_map(|k| chain(graph, k, Cache::Shared))
        .collect();
    if chains.is_empty() || cross.len() != 2 * chains.len() {
        return None;
    }
    let before = Claimed::before(graph, chains.len());
    for c in &chains {
        for input in graph
            .input
            .iter_mut()
            .filter(|i| i.name == c.key || i.name == c.value)
        {
            own_batch_dim(input);
        }
    }
    rewrite(graph, chains);
    Some(before)
}

/// Rewrites a decoder step's self-attention over its cache into [`OP_TYPE`]: the chains that
/// read a `present.{i}.decoder.key` output (the cache input with the new token's keys
/// appended), as [`claim`]'s read the cross-attention cache. Each row has its own keys; the
/// op spares tract's packing of the grown cache at every step (TrOCR-small at four beams:
/// 0.4-0.5 of a 3.3-3.7 ms step in `OptMatMulPack`). The exports' step graphs take one new
/// token (the session feeds longer prompts one token at a time), so there is no causal mask.
pub fn claim_self(graph: &mut GraphProto) -> Option<Claimed> {
    let chains: Vec<Chain> = graph
        .output
        .iter()
        .map(|o| o.name.as_str())
        .filter(|n| names::present_key(n).is_some_and(|k| !names::is_cross_attention(k)))
        .filter_map(|k| chain(graph, k, Cache::PerRow))
        .collect();
    rewrite_claimed(graph, chains)
}

/// [`claim`] and [`claim_self`] on a decoder step graph, undone together.
pub fn claim_decoder(graph: &mut GraphProto) -> Option<Claimed> {
    let before = Claimed::before(graph, 0);
    let count = claim(graph).map_or(0, |c| c.count) + claim_self(graph).map_or(0, |c| c.count);
    (count > 0).then_some(Claimed { count, ..before })
}

fn is_cross(name: &str) -> bool {
    names::past_key(name).is_some_and(names::is_cross_attention)
}

/// Whether encoders' self-attention runs on glance's kernel on this CPU (where its blocked
/// product was measured: see `kernels::attention::blocked_is_fast`).
pub fn claims_encoders() -> bool {
    attention::blocked_is_fast()
}

/// Rewrites every self-attention of an encoder graph into [`OP_TYPE`] (those it recognises:
/// the others stay tract's).
pub fn claim_encoder(graph: &mut GraphProto) -> Option<Claimed> {
    let chains: Vec<Chain> = (0..graph.node.len())
        .filter(|&at| graph.node[at].op_type == "Softmax")
        .filter_map(|at| self_chain(graph, at))
        .collect();
    rewrite_claimed(graph, chains)
}

/// [`rewrite`] of `chains`, if any, with what [`undo`] needs.
fn rewrite_claimed(graph: &mut GraphProto, chains: Vec<Chain>) -> Option<Claimed> {
    if chains.is_empty() {
        return None;
    }
    let before = Claimed::before(graph, chains.len());
    rewrite(graph, chains);
    Some(before)
}

/// Each chain becomes one [`OP_TYPE`] node in place of its last product (so the graph stays in
/// order); the rest of it goes.
fn rewrite(graph: &mut GraphProto, chains: Vec<Chain>) {
    let mut dead = HashSet::new();
    for c in chains {
        let optional = |name: Option<String>| name.unwrap_or_default();
        let node = NodeProto {
            op_type: OP_TYPE.into(),
            name: format!("{}.glance", graph.node[c.weighted].name),
            input: vec![
                c.q,
                c.key,
                c.value,
                optional(c.key_scale),
                optional(c.key_shape),
                optional(c.value_shape),
                optional(c.query_scale),
                optional(c.scores_divisor),
                optional(c.mask),
            ],
            output: graph.node[c.weighted].output.clone(),
            attribute: c
                .keys_transposed
                .then(|| AttributeProto {
                    name: KEYS_TRANSPOSED.into(),
                    r#type: AttributeType::Int as i32,
                    i: 1,
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        };
        graph.node[c.weighted] = node;
        dead.extend(c.dead);
        if let Some(at) = c.heads_first {
            // `[batch, seq, heads, depth]` to `[batch, heads, seq, depth]`, where the export
            // went on to `[batch, heads, depth, seq]`.
            if let Some(perm) = graph.node[at]
                .attribute
                .iter_mut()
                .find(|a| a.name == "perm")
            {
                perm.ints = vec![0, 2, 1, 3];
            }
        }
    }
    remove_nodes(graph, &dead);
}

/// Gives the graph back as it was before [`claim`] or [`claim_encoder`].
pub fn undo(graph: &mut GraphProto, claimed: Claimed) {
    graph.node = claimed.nodes;
    graph.input = claimed.inputs;
}

/// Plans `proto` with the attention chains `claim` rewrites (`what` names them in the log), or,
/// when tract will not plan the rewritten graph, as it was.
pub fn plan_claimed<T>(
    proto: &mut ModelProto,
    path: &Path,
    what: &str,
    claim: impl FnOnce(&mut GraphProto) -> Option<Claimed>,
    plan: impl Fn(&ModelProto) -> crate::error::Result<T>,
) -> crate::error::Result<T> {
    let Some(claimed) = proto.graph.as_mut().and_then(claim) else {
        return plan(proto);
    };
    match plan(proto) {
        Ok(planned) => {
            log::debug!(
                "{}: {} {what} on glance's kernel",
                path.display(),
                claimed.count
            );
            Ok(planned)
        }
        Err(e) => {
            log::debug!("{}: {what} stay in tract ({e})", path.display());
            if let Some(g) = proto.graph.as_mut() {
                undo(g, claimed);
            }
            plan(proto)
        }
    }
}

/// Axis 0 of a cache input becomes [`names::CROSS_ROWS`], a symbol of its own.
fn own_batch_dim(input: &mut ValueInfoProto) {
    use tract_onnx::pb::type_proto::Value as Type;
    let Some(Type::TensorType(t)) = input.r#type.as_mut().and_then(|t| t.value.as_mut()) else {
        return;
    };
    if let Some(dim) = t.shape.as_mut().and_then(|s| s.dim.first_mut()) {
        dim.value = Some(Value::DimParam(names::CROSS_ROWS.into()));
    }
}

/// One cross-attention chain: the new node's inputs, the node it replaces and those it removes.
struct Chain {
    q: String,
    key: String,
    value: String,
    key_scale: Option<String>,
    key_shape: Option<String>,
    value_shape: Option<String>,
    query_scale: Option<String>,
    scores_divisor: Option<String>,
    /// Added to the scores before the softmax.
    mask: Option<String>,
    /// The keys are `[batch, heads, depth, keys]`.
    keys_transposed: bool,
    /// The second product, which the new node replaces.
    weighted: usize,
    dead: Vec<usize>,
    /// A transpose of the keys from `[batch, seq, heads, depth]` that is to stop at `[batch,
    /// heads, seq, depth]`, the layout the op reads.
    heads_first: Option<usize>,
}

/// Whose keys and values a chain reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cache {
    /// One image's, shared by its rows ([`claim`]): the inputs' batch dimension changes
    /// meaning, so nothing else may read them, not even their shape.
    Shared,
    /// Each row's own ([`claim_self`]): their shape may be read elsewhere (GPT-2 slices its
    /// causal mask by the keys' length).
    PerRow,
}

/// The chain that reads cache input `key`, each value in it read by the next node only.
fn chain(graph: &GraphProto, key: &str, cache: Cache) -> Option<Chain> {
    let node = |at: usize| &graph.node[at];
    let out = |at: usize| node(at).output.first().map(String::as_str);
    // Keys and values may also be graph outputs (a step's `present` cache, which stays): the
    // chain's own values may not.
    let sole_reader = |name: &str| sole_reader(graph, name);
    let cache_reader = |name: &str| match cache {
        Cache::Shared => sole_node_reader(graph, name),
        Cache::PerRow => sole_values_reader(graph, name),
    };
    // The one node reading `name`, when it is an `op` reading it as its input `slot`.
    let paired_value = key.strip_suffix(".key").map(|k| format!("{k}.value"));
    let reader = |name: &str, op: &str, slot: usize| {
        let at = if name == key || paired_value.as_deref() == Some(name) {
            cache_reader(name)?
        } else {
            sole_reader(name)?
        };
        let n = node(at);
        (n.op_type == op && n.input.get(slot).is_some_and(|i| i == name)).then_some(at)
    };
    let ints = |at: usize, name: &str| {
        let a = node(at).attribute.iter().find(|a| a.name == name)?;
        Some(a.ints.clone())
    };
    let mut dead = Vec::new();

    // Keys: reshaped to 3-D and transposed, or the 4-D cache transposed, or (GPT-2's cut
    // cache, `[batch, heads, depth, keys]`) already transposed for the product.
    let first = cache_reader(key)?;
    let (mut keys_out, key_shape, keys_transposed) = match node(first).op_type.as_str() {
        "Reshape" if node(first).input.first().map(String::as_str) == Some(key) => {
            let t = reader(out(first)?, "Transpose", 0)?;
            (ints(t, "perm")? == [0, 2, 1]).then_some(())?;
            dead.extend([first, t]);
            (out(t)?, Some(node(first).input.get(1)?.clone()), false)
        }
        "Transpose" if ints(first, "perm")? == [0, 1, 3, 2] => {
            dead.push(first);
            (out(first)?, None, false)
        }
        "Mul" | "MatMul" => (key, None, true),
        _ => return None,
    };
    // An optional scale of the keys.
    let mut key_scale = None;
    let next = sole_reader(keys_out)?;
    if node(next).op_type == "Mul" && node(next).input.len() == 2 {
        let inputs = &node(next).input;
        let other = if inputs[0] == keys_out {
            &inputs[1]
        } else {
            &inputs[0]
        };
        key_scale = Some(other.clone());
        dead.push(next);
        keys_out = out(next)?;
    }
    let scores = reader(keys_out, "MatMul", 1)?;
    dead.push(scores);
    // An optional mask added to the scores (GPT-2's, from the encoder states' shape).
    let mut scores_out = out(scores)?;
    let mut mask = None;
    let added = sole_reader(scores_out)?;
    if node(added).op_type == "Add" && node(added).input.len() == 2 {
        let inputs = &node(added).input;
        let m = if inputs[0] == scores_out { 1 } else { 0 };
        mask = Some(inputs[m].clone());
        dead.push(added);
        scores_out = out(added)?;
    }
    let softmax = reader(scores_out, "Softmax", 0)?;
    // Softmax's axis is the last (-1, or 2 of three dimensions) from opset 13; older opsets
    // flattened, so the attribute must say it.
    let axis = node(softmax).attribute.iter().find(|a| a.name == "axis")?.i;
    let mut weights = out(softmax)?;
    if let Some([is_nan, guard]) = nan_guard(graph, weights) {
        dead.extend([is_nan, guard]);
        weights = out(guard)?;
    }
    let weighted = reader(weights, "MatMul", 0)?;
    (axis == -1 || (axis == 2 && key_shape.is_some())).then_some(())?;
    dead.push(softmax);

    // Values: reshaped like the keys, or the 4-D cache itself. The cut cache names keys and
    // values alike: its values are what the second product reads.
    let value = if keys_transposed {
        let value = node(weighted).input.get(1)?;
        (value != key && is_cross(value)).then_some(value.clone())?
    } else {
        paired_value.clone()?
    };
    let value_shape = if key_shape.is_some() {
        let r = reader(&value, "Reshape", 0)?;
        (reader(out(r)?, "MatMul", 1)? == weighted).then_some(())?;
        dead.push(r);
        Some(node(r).input.get(1)?.clone())
    } else {
        (reader(&value, "MatMul", 1)? == weighted).then_some(())?;
        None
    };
    Some(Chain {
        q: node(scores).input.first()?.clone(),
        key: key.to_string(),
        value,
        key_scale,
        key_shape,
        value_shape,
        query_scale: None,
        scores_divisor: None,
        mask,
        keys_transposed,
        weighted,
        dead,
        heads_first: None,
    })
}

/// `Where(IsNaN(weights), 0, weights)` after a softmax (GPT-2's SDPA export: rows whose every
/// score is masked give zeros, not NaN), as the indices of the `IsNaN` and the `Where`, each
/// value read by the next node only. The kernel gives such rows zeros itself.
fn nan_guard(graph: &GraphProto, weights: &str) -> Option<[usize; 2]> {
    let node = |at: usize| &graph.node[at];
    let readers: Vec<usize> = (0..graph.node.len())
        .filter(|&at| node(at).input.iter().any(|i| i == weights))
        .collect();
    let (is_nan, guard) = match readers[..] {
        [a, b] if node(a).op_type == "IsNaN" => (a, b),
        [a, b] if node(b).op_type == "IsNaN" => (b, a),
        _ => return None,
    };
    let flags = node(is_nan).output.first()?;
    let zero = node(guard).input.get(1)?;
    let constant = |t: &TensorProto| super::graph::floats(t, &t.raw_data);
    let is_zero = super::surgery::initializer(graph, zero)
        .and_then(constant)
        .or_else(|| constant_node_tensor(graph, zero).and_then(constant))
        .is_some_and(|v| v.len() == 1 && v[0] == 0.0);
    let guards = node(guard).op_type == "Where"
        && node(guard).input[..] == [flags.clone(), zero.clone(), weights.to_string()]
        && sole_reader(graph, flags) == Some(guard);
    (guards && is_zero).then_some([is_nan, guard])
}

/// The encoder self-attention chain through the Softmax at `softmax`, each value in it read by
/// the next node only.
fn self_chain(graph: &GraphProto, softmax: usize) -> Option<Chain> {
    let node = |at: usize| &graph.node[at];
    let producer = |name: &str| producer(graph, name);
    let is_constant = |name: &str| {
        graph.initializer.iter().any(|t| t.name == name)
            || producer(name).is_some_and(|at| node(at).op_type == "Constant")
    };
    // The node making `name`, when it is an `op` and `name` is read by `reader` only.
    let made_by = |name: &str, op: &str, reader: usize| {
        let at = producer(name)?;
        (node(at).op_type == op && sole_reader(graph, name) == Some(reader)).then_some(at)
    };
    // `name` as `Mul(x, scale)` (either order) read by `reader` only: `(x, scale, the Mul)`.
    let scaled = |name: &str, reader: usize| {
        let at = made_by(name, "Mul", reader)?;
        let inputs = &node(at).input;
        match (is_constant(&inputs[0]), is_constant(inputs.get(1)?)) {
            (false, true) => Some((inputs[0].clone(), inputs[1].clone(), at)),
            (true, false) => Some((inputs[1].clone(), inputs[0].clone(), at)),
            _ => None,
        }
    };
    let out = |at: usize| node(at).output.first().cloned();
    let mut dead = vec![softmax];

    // Softmax over the keys of 4-D scores.
    let axis = node(softmax).attribute.iter().find(|a| a.name == "axis")?.i;
    (axis == -1 || axis == 3).then_some(())?;
    let weighted = sole_reader(graph, &out(softmax)?)?;
    let w = node(weighted);
    (w.op_type == "MatMul" && w.input.first() == out(softmax).as_ref()).then_some(())?;
    let value = w.input.get(1)?.clone();

    // Scores, perhaps divided (eager) or multiplied by a constant.
    let mut scores_in = node(softmax).input.first()?.clone();
    let (mut scores_divisor, mut query_scale) = (None, None);
    let mut next = softmax;
    if let Some(at) = made_by(&scores_in, "Div", softmax) {
        let inputs = &node(at).input;
        is_constant(inputs.get(1)?).then_some(())?;
        scores_divisor = Some(inputs[1].clone());
        scores_in = inputs[0].clone();
        next = at;
        dead.push(at);
    } else if let Some((x, scale, at)) = scaled(&scores_in, softmax) {
        (scores_in, query_scale) = (x, Some(scale));
        next = at;
        dead.push(at);
    }
    let scores = made_by(&scores_in, "MatMul", next)?;
    dead.push(scores);

    // Queries, perhaps scaled (SDPA scales both sides by the square root).
    let mut q = node(scores).input.first()?.clone();
    if query_scale.is_none() {
        if let Some((x, scale, at)) = scaled(&q, scores) {
            (q, query_scale) = (x, Some(scale));
            dead.push(at);
        }
    }
    // Keys, perhaps scaled, transposed from the op's layout or from heads second.
    let mut keys_t = node(scores).input.get(1)?.clone();
    let (mut key_scale, mut next) = (None, scores);
    if let Some((x, scale, at)) = scaled(&keys_t, scores) {
        (keys_t, key_scale, next) = (x, Some(scale), at);
        dead.push(at);
    }
    let transpose = made_by(&keys_t, "Transpose", next)?;
    let perm = &node(transpose)
        .attribute
        .iter()
        .find(|a| a.name == "perm")?
        .ints;
    let (key, heads_first) = match perm.as_slice() {
        [0, 1, 3, 2] => {
            dead.push(transpose);
            (node(transpose).input.first()?.clone(), None)
        }
        [0, 2, 3, 1] => (keys_t, Some(transpose)),
        _ => return None,
    };
    Some(Chain {
        q,
        key,
        value,
        key_scale,
        key_shape: None,
        value_shape: None,
        query_scale,
        scores_divisor,
        mask: None,
        keys_transposed: false,
        weighted,
        dead,
        heads_first,
    })
}

/// Lets `onnx` parse [`OP_TYPE`].
pub fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert(OP_TYPE, parse);
}

fn parse(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let mut optional = optional_inputs(node).skip(3);
    let op = Parsed {
        key_scale: optional.next().flatten(),
        key_shape: optional.next().flatten(),
        value_shape: optional.next().flatten(),
        query_scale: optional.next().flatten(),
        scores_divisor: optional.next().flatten(),
        mask: optional.next().flatten(),
        keys_transposed: node.get_attr_opt::<i64>(KEYS_TRANSPOSED)?.unwrap_or(0) != 0,
    };
    Ok((expand(op), vec![]))
}

/// Where the parsed node's optional inputs are.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Parsed {
    key_scale: Option<usize>,
    key_shape: Option<usize>,
    value_shape: Option<usize>,
    query_scale: Option<usize>,
    scores_divisor: Option<usize>,
    mask: Option<usize>,
    /// The keys are `[images, heads, depth, keys]`.
    keys_transposed: bool,
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
        let optional = [
            self.key_scale,
            self.key_shape,
            self.value_shape,
            self.query_scale,
            self.scores_divisor,
            self.mask,
        ];
        check_input_arity(inputs, 3 + optional.iter().flatten().count())?;
        check_output_arity(outputs, 1)?;
        for t in &inputs[..3] {
            s.equals(&t.datum_type, f32::datum_type())?;
        }
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[1].rank, 4)?;
        s.equals(&inputs[2].rank, 4)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let (q, k, v) = (
            model.outlet_fact(inputs[0])?,
            model.outlet_fact(inputs[1])?,
            model.outlet_fact(inputs[2])?,
        );
        let context = || format!("{prefix}: not the attention {OP_TYPE} computes");
        let reshaped = self.key_shape.is_some();
        ensure!(
            if reshaped {
                q.rank() == 3
            } else {
                q.rank() == 4 && q.shape[1] == k.shape[1]
            },
            "{}: queries {:?} for keys {:?}",
            context(),
            q.shape,
            k.shape
        );
        let mut keys = k.shape.to_tvec();
        if self.keys_transposed {
            ensure!(keys.len() == 4 && !reshaped, "{}: keys {keys:?}", context());
            keys.swap(2, 3);
        }
        ensure!(
            keys == v.shape.to_tvec(),
            "{}: keys {:?} and values {:?}",
            context(),
            k.shape,
            v.shape
        );
        for shape in [self.key_shape, self.value_shape].into_iter().flatten() {
            check_reshape(model.outlet_fact(inputs[shape])?, q, k).with_context(context)?;
        }
        let scalar = |at: Option<usize>| -> TractResult<f32> {
            let Some(at) = at else { return Ok(1.0) };
            let c = model.outlet_fact(inputs[at])?.konst.clone();
            let c = c
                .filter(|t| t.len() == 1)
                .with_context(|| format!("{}: scaled by a non-constant", context()))?;
            c.cast_to_scalar::<f32>()
        };
        let scale =
            scalar(self.key_scale)? * scalar(self.query_scale)? / scalar(self.scores_divisor)?;
        let mut wired: TVec<OutletId> = inputs[..3].into();
        if let Some(mask) = self.mask {
            let fact = model.outlet_fact(inputs[mask])?;
            ensure!(
                fact.datum_type == f32::datum_type() && fact.rank() == q.rank(),
                "{}: a mask {fact:?} for queries {:?}",
                context(),
                q.shape
            );
            wired.push(inputs[mask]);
        }
        let op = SharedAttention {
            scale,
            keys_transposed: self.keys_transposed,
        };
        model.wire_node(prefix, op, &wired)
    }
}

/// The export reshapes the cache to `[rows * heads, keys, depth]` (one of them may be -1), the
/// layout the kernel reads, with `rows * heads` the query blocks: anything else is some other
/// computation. The shapes are known when the graph is typed (constants of the input sizes).
fn check_reshape(shape: &TypedFact, q: &TypedFact, k: &TypedFact) -> TractResult<()> {
    let target = shape
        .konst
        .as_ref()
        .context("the cache is reshaped to a shape computed at run time")?
        .cast_to::<TDim>()?;
    let target = target.try_as_plain_ram()?.as_slice::<TDim>()?.to_vec();
    let any = TDim::from(-1);
    let fits = |axis: usize, want: &TDim| target[axis] == *want || target[axis] == any;
    let ok = target.len() == 3
        && target.iter().filter(|&d| *d == any).count() <= 1
        && q.rank() == 3
        && k.rank() == 4
        && fits(0, &q.shape[0])
        && fits(1, &k.shape[2])
        && fits(2, &k.shape[3]);
    ensure!(ok, "the cache reshaped to {target:?}");
    Ok(())
}

/// `softmax(scale q k^T + mask) v`, `q` of `rows * heads` query blocks, `k` and `v` of one row
/// per image or one per row.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedAttention {
    /// What the scores `q k^T` are multiplied by before the softmax.
    scale: f32,
    /// The keys are `[images, heads, depth, keys]` (GPT-2's cut cache), not `[.., keys, depth]`.
    keys_transposed: bool,
}

impl Eq for SharedAttention {}

impl Op for SharedAttention {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    op_as_typed_op!();
}

impl EvalOp for SharedAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        let mut k_shape: TVec<usize> = k.shape().into();
        if self.keys_transposed && k_shape.len() == 4 {
            k_shape.swap(2, 3);
        }
        let dims = dims(q.shape(), &k_shape, v.shape())?;
        let mask = match inputs.get(3) {
            Some(m) => {
                let values = m.try_as_plain_ram()?.as_slice::<f32>()?;
                let strides = mask_strides(m.shape(), q.rank(), dims)?;
                // An all-zero mask (every image position seen, as GPT-2's always is) changes
                // nothing.
                let zero = values.iter().all(|&x| x == 0.0);
                (!zero).then_some(attention::Mask { values, strides })
            }
            None => None,
        };
        let keys = k.try_as_plain_ram()?.as_slice::<f32>()?;
        let keys = if self.keys_transposed {
            attention::Keys::Transposed(keys)
        } else {
            attention::Keys::Rows(keys)
        };
        let mut out = Tensor::zero::<f32>(q.shape())?;
        attention::attend(
            q.try_as_plain_ram()?.as_slice::<f32>()?,
            self.scale,
            keys,
            v.try_as_plain_ram()?.as_slice::<f32>()?,
            mask,
            dims,
            out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        )
        .map_err(|e| format_err!("{e}"))?;
        Ok(tvec!(out.into_tvalue()))
    }
}

/// The kernel's sizes from `q` (`[rows * heads, queries, depth]` or `[rows, heads, queries,
/// depth]`) and `k`, `v` (`[images, heads, keys, depth]`), where the rows are the images' rows in
/// order, as many for each.
fn dims(q: &[usize], k: &[usize], v: &[usize]) -> TractResult<Dims> {
    let (Some((&depth, rest)), &[images, heads, keys, k_depth]) = (q.split_last(), k) else {
        bail!("cross-attention of queries {q:?} over keys {k:?}");
    };
    let (Some((&queries, blocks)), true) = (rest.split_last(), q.len() == 3 || q.len() == 4) else {
        bail!("cross-attention of queries {q:?}");
    };
    let blocks: usize = blocks.iter().product();
    ensure!(
        k == v && depth == k_depth && heads > 0 && images > 0 && (q.len() == 3 || q[1] == heads),
        "cross-attention of queries {q:?} over keys {k:?} and values {v:?}"
    );
    ensure!(
        blocks.is_multiple_of(heads) && (blocks / heads).is_multiple_of(images),
        "cross-attention of {blocks} query blocks for {heads} heads of {images} images"
    );
    Ok(Dims {
        groups: images,
        per_group: blocks / heads / images,
        heads,
        queries,
        keys,
        depth,
    })
}

/// The kernel's mask strides (rows, heads, query positions) for a mask of shape `mask`, of the
/// queries' rank, broadcast (dimensions of 1) to the scores `[rows, heads, queries, keys]` (or
/// `[rows * heads, queries, keys]` for 3-D queries).
fn mask_strides(mask: &[usize], rank: usize, dims: Dims) -> TractResult<[usize; 3]> {
    let rows = dims.groups * dims.per_group;
    let scores: TVec<usize> = if rank == 4 {
        tvec![rows, dims.heads, dims.queries, dims.keys]
    } else {
        tvec![rows * dims.heads, dims.queries, dims.keys]
    };
    let fits = mask.len() == scores.len()
        && mask.last() == scores.last()
        && mask.iter().zip(&scores).all(|(&m, &s)| m == s || m == 1);
    ensure!(fits, "an attention mask {mask:?} for scores {scores:?}");
    // Row-major strides, 0 along broadcast dimensions.
    let mut strides: TVec<usize> = mask
        .iter()
        .rev()
        .scan(1, |step, &m| {
            let stride = if m == 1 { 0 } else { *step };
            *step *= m;
            Some(stride)
        })
        .collect();
    strides.reverse();
    Ok(if rank == 4 {
        [strides[0], strides[1], strides[2]]
    } else {
        // Block `row * heads + head`.
        [strides[0] * dims.heads, strides[0], strides[1]]
    })
}

impl TypedOp for SharedAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let q: TDim = inputs[0].shape.iter().product();
        let keys = inputs[1].shape[2].clone();
        Ok(tvec!((Cost::FMA(f32::datum_type()), q * keys * 2)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::graph::{value_info, Graph, Port, Shapes};
    use std::path::Path;
    use tract_onnx::pb::{
        attribute_proto::AttributeType, tensor_proto::DataType, AttributeProto, ModelProto,
        OperatorSetIdProto, TensorProto,
    };

    const KEY: &str = "past_key_values.0.encoder.key";
    const VALUE: &str = "past_key_values.0.encoder.value";
    const HEADS: usize = 2;
    const KEYS: usize = 5;
    const DEPTH: usize = 3;

    fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        }
    }

    fn ints(name: &str, ints: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            ints: ints.to_vec(),
            r#type: AttributeType::Ints as i32,
            ..Default::default()
        }
    }

    fn int(name: &str, i: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            i,
            r#type: AttributeType::Int as i32,
            ..Default::default()
        }
    }

    fn port(name: &str, dims: &[&str]) -> Port {
        Port {
            name: name.into(),
            dt: f32::datum_type(),
            shape: dims.iter().map(|d| d.parse().ok()).collect(),
            dims: dims.iter().map(|d| d.to_string()).collect(),
        }
    }

    /// TrOCR's attention over a cache: `q` (to `query_shape`), `key` and `value` reshaped to
    /// `[rows * heads, .., depth]` by the shapes named beside them, keys transposed; "out".
    fn reshaped_chain(
        [key, key_shape]: [&str; 2],
        [value, value_shape]: [&str; 2],
    ) -> Vec<NodeProto> {
        vec![
            node("Reshape", &["q", "query_shape"], "q3", vec![]),
            node("Reshape", &[key, key_shape], "k3", vec![]),
            node("Transpose", &["k3"], "kt", vec![ints("perm", &[0, 2, 1])]),
            node("MatMul", &["q3", "kt"], "scores", vec![]),
            node("Softmax", &["scores"], "p", vec![int("axis", -1)]),
            node("Reshape", &[value, value_shape], "v3", vec![]),
            node("MatMul", &["p", "v3"], "out", vec![]),
        ]
    }

    /// The two forms of cross-attention over the cache that exports write.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Form {
        /// TrOCR's: reshaped to `[rows * heads, .., depth]`, keys transposed.
        Reshaped,
        /// 4-D, keys transposed and scaled.
        FourD,
    }

    /// Cross-attention over the cache, for `q [rows, heads, 1, depth]`; `extra` adds nodes
    /// (another reader of a value of the chain).
    fn graph(form: Form, extra: Vec<NodeProto>) -> ModelProto {
        let shape = |name: &str, middle: usize| TensorProto {
            name: name.into(),
            dims: vec![3],
            data_type: DataType::Int64 as i32,
            raw_data: [-1i64, middle as i64, DEPTH as i64]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            ..Default::default()
        };
        let (h, s, d) = (HEADS.to_string(), KEYS.to_string(), DEPTH.to_string());
        let (mut nodes, initializer, out) = match form {
            Form::Reshaped => (
                reshaped_chain([KEY, "key_shape"], [VALUE, "value_shape"]),
                vec![
                    shape("query_shape", 1),
                    shape("key_shape", KEYS),
                    shape("value_shape", KEYS),
                ],
                vec![format!("{HEADS}*batch_size"), "1".into(), d.clone()],
            ),
            Form::FourD => (
                vec![
                    node("Transpose", &[KEY], "kt", vec![ints("perm", &[0, 1, 3, 2])]),
                    node("Mul", &["kt", "scale"], "ks", vec![]),
                    node("MatMul", &["q", "ks"], "scores", vec![]),
                    node("Softmax", &["scores"], "p", vec![int("axis", -1)]),
                    node("MatMul", &["p", VALUE], "out", vec![]),
                ],
                vec![TensorProto {
                    name: "scale".into(),
                    data_type: DataType::Float as i32,
                    raw_data: 0.6f32.to_le_bytes().to_vec(),
                    ..Default::default()
                }],
                vec!["batch_size".into(), h.clone(), "1".into(), d.clone()],
            ),
        };
        let out: Vec<&str> = out.iter().map(String::as_str).collect();
        let cache = ["batch_size", &h, &s, &d];
        let inputs: [(&str, &[&str]); 3] = [
            ("q", &["batch_size", &h, "1", &d]),
            (KEY, &cache),
            (VALUE, &cache),
        ];
        nodes.extend(extra);
        model(nodes, initializer, &inputs, &out)
    }

    /// A model of `nodes` reading `inputs` (names and dimensions), whose outputs are `out`
    /// (of `out_dims`) and the first output of every node after the one making `out`.
    fn model(
        nodes: Vec<NodeProto>,
        initializer: Vec<TensorProto>,
        inputs: &[(&str, &[&str])],
        out_dims: &[&str],
    ) -> ModelProto {
        let made_out = nodes.iter().position(|n| n.output[0] == "out").unwrap();
        let mut outputs = vec![value_info("out", &port("out", out_dims))];
        for n in &nodes[made_out + 1..] {
            outputs.push(value_info(&n.output[0], &port(&n.output[0], &["x"])));
        }
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(GraphProto {
                name: "attention".into(),
                node: nodes,
                initializer,
                input: inputs
                    .iter()
                    .map(|(name, dims)| value_info(name, &port(name, dims)))
                    .collect(),
                output: outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tensor(shape: &[usize], seed: usize) -> Tensor {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|i| (((i + seed) * 7919) % 201) as f32 / 100.0 - 1.0)
            .collect();
        Tensor::from_shape(shape, &values).unwrap()
    }

    fn run(proto: &ModelProto, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let g = Graph::prepare(Path::new("<test>"), proto, &Shapes::default(), 1).unwrap();
        let out = g
            .run(|p| {
                Ok(match p.name.as_str() {
                    "q" => q.clone(),
                    KEY => k.clone(),
                    _ => v.clone(),
                })
            })
            .unwrap();
        out[0].clone().into_tensor()
    }

    /// Every output of `proto` run on `inputs` (by name).
    fn run_named(proto: &ModelProto, inputs: &[(&str, Tensor)]) -> Vec<Tensor> {
        let g = Graph::prepare(Path::new("<test>"), proto, &Shapes::default(), 1).unwrap();
        let out = g
            .run(|p| {
                let (_, t) = inputs.iter().find(|(n, _)| *n == p.name).unwrap();
                Ok(t.clone())
            })
            .unwrap();
        out.into_iter().map(|t| t.into_tensor()).collect()
    }

    fn close(a: &Tensor, b: &Tensor) {
        assert_eq!(a.shape(), b.shape());
        let (a, b) = (a.try_as_plain_ram().unwrap(), b.try_as_plain_ram().unwrap());
        let (a, b) = (a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{x} vs {y}");
        }
    }

    /// `claimed` on `q` of two beams for each of two images, `k` and `v` of one row per image,
    /// gives what `original` gives on the cache copied to every beam.
    fn same_as_tract_on_each_beams_copy(
        claimed: &ModelProto,
        original: &ModelProto,
        [q, k, v]: [&Tensor; 3],
    ) {
        let each = |t: &Tensor| {
            let rows: Vec<Tensor> = [0, 0, 1, 1]
                .iter()
                .map(|&r| t.slice(0, r, r + 1).unwrap())
                .collect();
            Tensor::stack_tensors(0, &rows).unwrap()
        };
        close(
            &run(claimed, q, k, v),
            &run(original, q, &each(k), &each(v)),
        );
    }

    fn op_types(model: &ModelProto) -> Vec<&str> {
        let nodes = &model.graph.as_ref().unwrap().node;
        nodes.iter().map(|n| n.op_type.as_str()).collect()
    }

    #[test]
    fn rows_share_their_images_keys_and_values() {
        for form in [Form::Reshaped, Form::FourD] {
            let original = graph(form, vec![]);
            let mut claimed = original.clone();
            let c = claim(claimed.graph.as_mut().unwrap()).expect("the chain is claimed");
            assert_eq!(c.count, 1);
            let ops = op_types(&claimed);
            let want: &[&str] = match form {
                Form::Reshaped => &["Reshape", OP_TYPE],
                Form::FourD => &[OP_TYPE],
            };
            assert_eq!(ops, want, "{form:?}");
            let g = Graph::prepare(Path::new("<test>"), &claimed, &Shapes::default(), 1).unwrap();
            assert_eq!(g.input(KEY).unwrap().dims[0], names::CROSS_ROWS);

            // Three rows with their own cache: the same as tract's.
            let q = tensor(&[3, HEADS, 1, DEPTH], 0);
            let k = tensor(&[3, HEADS, KEYS, DEPTH], 1);
            let v = tensor(&[3, HEADS, KEYS, DEPTH], 2);
            close(&run(&claimed, &q, &k, &v), &run(&original, &q, &k, &v));

            // Four rows (two beams of two images) with one cache row per image: the same as
            // tract's on the cache copied to every row.
            let q = tensor(&[4, HEADS, 1, DEPTH], 3);
            let k = tensor(&[2, HEADS, KEYS, DEPTH], 4);
            let v = tensor(&[2, HEADS, KEYS, DEPTH], 5);
            same_as_tract_on_each_beams_copy(&claimed, &original, [&q, &k, &v]);

            // Rows that are not whole groups of the images are an error, not a guess.
            let three = tensor(&[3, HEADS, 1, DEPTH], 6);
            let three_rows = |p: &Port| {
                Ok(match p.name.as_str() {
                    "q" => three.clone(),
                    KEY => k.clone(),
                    _ => v.clone(),
                })
            };
            assert!(g.run(three_rows).is_err());

            let mut undone = claimed.clone();
            undo(undone.graph.as_mut().unwrap(), c);
            assert_eq!(undone, original);
        }
    }

    /// GPT-2's cross-attention once its keys and values are cut out of the step graph
    /// (`model::cut_encoder_only`): keys `[batch, heads, depth, keys]` as the product reads
    /// them, scaled, and a mask added to the scores.
    fn gpt2_cut_graph(mask: &[f32]) -> ModelProto {
        let tensor = |name: &str, dims: Vec<i64>, values: &[f32]| TensorProto {
            name: name.into(),
            dims,
            data_type: DataType::Float as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        };
        let nodes = vec![
            node("Mul", &[KEY, "scale"], "ks", vec![]),
            node("MatMul", &["q", "ks"], "scores", vec![]),
            node("Add", &["scores", "mask"], "masked", vec![]),
            node("Softmax", &["masked"], "p", vec![int("axis", -1)]),
            node("MatMul", &["p", VALUE], "out", vec![]),
        ];
        let initializer = vec![
            tensor("scale", vec![], &[0.6]),
            tensor("mask", vec![1, 1, 1, KEYS as i64], mask),
        ];
        let (h, s, d) = (HEADS.to_string(), KEYS.to_string(), DEPTH.to_string());
        let q: &[&str] = &["batch_size", &h, "1", &d];
        let inputs: [(&str, &[&str]); 3] = [
            ("q", q),
            (KEY, &["batch_size", &h, &d, &s]),
            (VALUE, &["batch_size", &h, &s, &d]),
        ];
        model(nodes, initializer, &inputs, q)
    }

    #[test]
    fn gpt2_cut_keys_are_read_transposed_and_the_mask_added() {
        let hidden = [0.0, f32::MIN, 0.0, -2.0, 0.0];
        for mask in [[0.0; KEYS], hidden] {
            let original = gpt2_cut_graph(&mask);
            let mut claimed = original.clone();
            let c = claim(claimed.graph.as_mut().unwrap()).expect("the chain is claimed");
            assert_eq!((c.count, op_types(&claimed)), (1, vec![OP_TYPE]));
            // Two beams of two images, one cache row per image.
            let q = tensor(&[4, HEADS, 1, DEPTH], 7);
            let k = tensor(&[2, HEADS, DEPTH, KEYS], 8);
            let v = tensor(&[2, HEADS, KEYS, DEPTH], 9);
            same_as_tract_on_each_beams_copy(&claimed, &original, [&q, &k, &v]);
        }
    }

    /// A step's self-attention over its cache, TrOCR's way: the past keys and values with the
    /// new token's appended (the `present` outputs), reshaped to `[rows * heads, .., depth]`
    /// (the shape computed from the queries' as the export computes it).
    fn self_attention_graph() -> ModelProto {
        let int64 = |name: &str, dims: Vec<i64>, values: &[i64]| TensorProto {
            name: name.into(),
            dims,
            data_type: DataType::Int64 as i32,
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        };
        let concat = |past: &str, new: &str, present: &str| {
            node("Concat", &[past, new], present, vec![int("axis", -2)])
        };
        let (k, v) = ("present.0.decoder.key", "present.0.decoder.value");
        let mut nodes = vec![
            concat(PAST_KEY, "k_new", k),
            concat(PAST_VALUE, "v_new", v),
            node("Shape", &["q"], "q_shape", vec![]),
            node("Gather", &["q_shape", "zero"], "rows", vec![int("axis", 0)]),
            node("Mul", &["rows", "heads"], "blocks", vec![]),
            node("Unsqueeze", &["blocks", "first"], "blocks1", vec![]),
            node(
                "Concat",
                &["blocks1", "rest"],
                "kv_shape",
                vec![int("axis", 0)],
            ),
        ];
        nodes.extend(reshaped_chain([k, "kv_shape"], [v, "kv_shape"]));
        let initializer = vec![
            int64("query_shape", vec![3], &[-1, 1, DEPTH as i64]),
            int64("zero", vec![], &[0]),
            int64("heads", vec![], &[HEADS as i64]),
            int64("first", vec![1], &[0]),
            int64("rest", vec![2], &[-1, DEPTH as i64]),
        ];
        let (h, d) = (HEADS.to_string(), DEPTH.to_string());
        let one: &[&str] = &["rows", &h, "1", &d];
        let past: &[&str] = &["rows", &h, "past", &d];
        let inputs: [(&str, &[&str]); 5] = [
            ("q", one),
            (PAST_KEY, past),
            (PAST_VALUE, past),
            ("k_new", one),
            ("v_new", one),
        ];
        let out = format!("{HEADS}*rows");
        let mut proto = model(nodes, initializer, &inputs, &[&out, "1", &d]);
        let graph = proto.graph.as_mut().unwrap();
        for present in [k, v] {
            let dims = ["rows", &h, "total", &d];
            graph
                .output
                .push(value_info(present, &port(present, &dims)));
        }
        proto
    }

    const PAST_KEY: &str = "past_key_values.0.decoder.key";
    const PAST_VALUE: &str = "past_key_values.0.decoder.value";

    #[test]
    fn a_steps_self_attention_over_its_cache_is_claimed() {
        let original = self_attention_graph();
        let mut claimed = original.clone();
        let c = claim_decoder(claimed.graph.as_mut().unwrap()).expect("the chain is claimed");
        assert_eq!(c.count, 1);
        let ops = op_types(&claimed);
        assert_eq!(ops.iter().filter(|&&op| op == OP_TYPE).count(), 1);
        assert!(
            !ops.contains(&"Softmax") && !ops.contains(&"MatMul"),
            "{ops:?}"
        );
        // Three rows, each with a past of four positions and its own new token.
        let inputs = [
            ("q", tensor(&[3, HEADS, 1, DEPTH], 10)),
            (PAST_KEY, tensor(&[3, HEADS, 4, DEPTH], 11)),
            (PAST_VALUE, tensor(&[3, HEADS, 4, DEPTH], 12)),
            ("k_new", tensor(&[3, HEADS, 1, DEPTH], 13)),
            ("v_new", tensor(&[3, HEADS, 1, DEPTH], 14)),
        ];
        let (got, want) = (run_named(&claimed, &inputs), run_named(&original, &inputs));
        assert_eq!(got.len(), 3, "the output and both present values");
        for (g, w) in got.iter().zip(&want) {
            close(g, w);
        }
    }

    /// A step's self-attention GPT-2's way (SDPA export): the 4-D `present` keys transposed
    /// and scaled, a mask added (an input here; the export's is sliced from its causal mask by
    /// the keys' shape, read by a `Shape` beside the chain), and the softmax's NaN guard.
    fn gpt2_self_attention_graph() -> ModelProto {
        let (k, v) = ("present.0.key", "present.0.value");
        let (past_key, past_value) = ("past_key_values.0.key", "past_key_values.0.value");
        let concat = |past: &str, new: &str, present: &str| {
            node("Concat", &[past, new], present, vec![int("axis", -2)])
        };
        let nodes = vec![
            concat(past_key, "k_new", k),
            concat(past_value, "v_new", v),
            node("Transpose", &[k], "kt", vec![ints("perm", &[0, 1, 3, 2])]),
            node("Mul", &["kt", "scale"], "ks", vec![]),
            node("MatMul", &["q", "ks"], "scores", vec![]),
            node("Add", &["scores", "mask"], "masked", vec![]),
            node("Softmax", &["masked"], "p", vec![int("axis", -1)]),
            node("IsNaN", &["p"], "nan", vec![]),
            node("Where", &["nan", "zero", "p"], "p_guarded", vec![]),
            node("MatMul", &["p_guarded", v], "out", vec![]),
            node("Shape", &[k], "key_shape", vec![]),
        ];
        let float = |name: &str, value: f32| TensorProto {
            name: name.into(),
            data_type: DataType::Float as i32,
            raw_data: value.to_le_bytes().to_vec(),
            ..Default::default()
        };
        let (h, d) = (HEADS.to_string(), DEPTH.to_string());
        let one: &[&str] = &["rows", &h, "1", &d];
        let past: &[&str] = &["rows", &h, "past", &d];
        let inputs: [(&str, &[&str]); 6] = [
            ("q", one),
            (past_key, past),
            (past_value, past),
            ("k_new", one),
            ("v_new", one),
            ("mask", &["1", "1", "1", "total"]),
        ];
        let initializer = vec![float("scale", 0.6), float("zero", 0.0)];
        let mut proto = model(nodes, initializer, &inputs, one);
        let graph = proto.graph.as_mut().unwrap();
        for present in [k, v] {
            let dims = ["rows", &h, "total", &d];
            graph
                .output
                .push(value_info(present, &port(present, &dims)));
        }
        proto
    }

    #[test]
    fn gpt2_self_attention_is_claimed_with_its_mask_and_nan_guard() {
        let original = gpt2_self_attention_graph();
        let mut claimed = original.clone();
        let c = claim_decoder(claimed.graph.as_mut().unwrap()).expect("the chain is claimed");
        assert_eq!(c.count, 1);
        let ops = op_types(&claimed);
        for gone in ["Softmax", "MatMul", "IsNaN", "Where"] {
            assert!(!ops.contains(&gone), "{ops:?}");
        }
        // Three rows with a past of four positions; then every key masked, where the guard
        // gives zeros.
        let some = [0.3, -1.0, f32::MIN, 2.0, -0.5];
        for (all_masked, mask) in [(false, some), (true, [f32::NEG_INFINITY; 5])] {
            let mask = Tensor::from_shape(&[1, 1, 1, 5], &mask).unwrap();
            let inputs = [
                ("q", tensor(&[3, HEADS, 1, DEPTH], 10)),
                ("past_key_values.0.key", tensor(&[3, HEADS, 4, DEPTH], 11)),
                ("past_key_values.0.value", tensor(&[3, HEADS, 4, DEPTH], 12)),
                ("k_new", tensor(&[3, HEADS, 1, DEPTH], 13)),
                ("v_new", tensor(&[3, HEADS, 1, DEPTH], 14)),
                ("mask", mask),
            ];
            let (got, want) = (run_named(&claimed, &inputs), run_named(&original, &inputs));
            assert_eq!(
                got.len(),
                4,
                "the output, the keys' shape, both present values"
            );
            close(&got[0], &want[0]);
            for (g, w) in got.iter().zip(&want).skip(1) {
                assert_eq!(g, w);
            }
            if all_masked {
                let out = got[0].try_as_plain_ram().unwrap();
                let out = out.as_slice::<f32>().unwrap();
                assert!(out.iter().all(|&x| x == 0.0), "{out:?}");
            }
        }
    }

    /// An encoder's self-attention over inputs `q [1, heads, seq, depth]`, `k` and `v`, as SDPA
    /// exports write it (`k` as `[1, seq, heads, depth]`, both sides scaled by constants) or as
    /// eager ones do (`k` as `q`, scores divided).
    fn encoder_graph(sdpa: bool, seq: usize, extra: Vec<NodeProto>) -> ModelProto {
        let scalar = |name: &str, x: f32| TensorProto {
            name: name.into(),
            data_type: DataType::Float as i32,
            raw_data: x.to_le_bytes().to_vec(),
            ..Default::default()
        };
        let constant = |name: &str, x: f32| NodeProto {
            op_type: "Constant".into(),
            name: name.into(),
            output: vec![name.into()],
            attribute: vec![AttributeProto {
                name: "value".into(),
                t: Some(scalar(name, x)),
                r#type: AttributeType::Tensor as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let (h, s, d) = (HEADS.to_string(), seq.to_string(), DEPTH.to_string());
        let (mut nodes, initializer, k_dims) = if sdpa {
            (
                vec![
                    constant("cq", 0.7),
                    constant("ck", 0.7),
                    node("Mul", &["q", "cq"], "qs", vec![]),
                    node("Transpose", &["k"], "kt", vec![ints("perm", &[0, 2, 3, 1])]),
                    node("Mul", &["ck", "kt"], "kts", vec![]),
                    node("MatMul", &["qs", "kts"], "scores", vec![]),
                    node("Softmax", &["scores"], "p", vec![int("axis", -1)]),
                ],
                vec![],
                ["1", s.as_str(), h.as_str(), d.as_str()],
            )
        } else {
            (
                vec![
                    node("Transpose", &["k"], "kt", vec![ints("perm", &[0, 1, 3, 2])]),
                    node("MatMul", &["q", "kt"], "scores", vec![]),
                    node("Div", &["scores", "c"], "scaled", vec![]),
                    node("Softmax", &["scaled"], "p", vec![int("axis", -1)]),
                ],
                vec![scalar("c", 1.9)],
                ["1", h.as_str(), s.as_str(), d.as_str()],
            )
        };
        nodes.push(node("MatMul", &["p", "v"], "out", vec![]));
        nodes.extend(extra);
        let heads = ["1", h.as_str(), s.as_str(), d.as_str()];
        model(
            nodes,
            initializer,
            &[("q", &heads), ("k", &k_dims), ("v", &heads)],
            &heads,
        )
    }

    #[test]
    fn encoder_self_attention_is_claimed_in_both_export_forms() {
        for sdpa in [true, false] {
            // Few rows (the decoder's loop) and many (the blocked product).
            for seq in [5, 21] {
                let original = encoder_graph(sdpa, seq, vec![]);
                let mut claimed = original.clone();
                let c = claim_encoder(claimed.graph.as_mut().unwrap()).expect("claimed");
                assert_eq!(c.count, 1);
                let ops = op_types(&claimed);
                let want: &[&str] = if sdpa {
                    &["Constant", "Constant", "Transpose", OP_TYPE]
                } else {
                    &[OP_TYPE]
                };
                assert_eq!(ops, want);
                let q = tensor(&[1, HEADS, seq, DEPTH], 1);
                let k = if sdpa {
                    tensor(&[1, seq, HEADS, DEPTH], 2)
                } else {
                    tensor(&[1, HEADS, seq, DEPTH], 2)
                };
                let v = tensor(&[1, HEADS, seq, DEPTH], 3);
                let run = |proto: &ModelProto| {
                    let g =
                        Graph::prepare(Path::new("<test>"), proto, &Shapes::default(), 1).unwrap();
                    let out = g
                        .run(|p| {
                            Ok(match p.name.as_str() {
                                "q" => q.clone(),
                                "k" => k.clone(),
                                _ => v.clone(),
                            })
                        })
                        .unwrap();
                    out[0].clone().into_tensor()
                };
                close(&run(&claimed), &run(&original));
                let mut undone = claimed.clone();
                undo(undone.graph.as_mut().unwrap(), c);
                assert_eq!(undone, original);
            }
            // Scores read elsewhere stay tract's.
            let mut proto = encoder_graph(sdpa, 5, vec![node("Relu", &["scores"], "r", vec![])]);
            assert!(claim_encoder(proto.graph.as_mut().unwrap()).is_none());
        }
    }

    #[test]
    fn a_cache_read_elsewhere_is_not_claimed() {
        for form in [Form::Reshaped, Form::FourD] {
            let mut proto = graph(
                form,
                vec![node("Shape", &[VALUE], "value_shape_out", vec![])],
            );
            assert!(claim(proto.graph.as_mut().unwrap()).is_none());
            let softmax_twice = node("Softmax", &["scores"], "p2", vec![int("axis", -1)]);
            let mut proto = graph(form, vec![softmax_twice]);
            assert!(claim(proto.graph.as_mut().unwrap()).is_none());
        }
    }
}
