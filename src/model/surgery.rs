//! Edits to an ONNX graph at the protobuf level, made before tract parses it.
//!
//! Each edit exists because tract 0.23.9 cannot run a Hugging Face export as it is
//! (../shared/docs/tract-hf-recipes.md has the verbatim failures). They keep the graph's
//! meaning: the same inputs give the same outputs.

use std::collections::HashSet;

use tract_onnx::pb::{self, attribute_proto::AttributeType, GraphProto, NodeProto, ValueInfoProto};

/// Which branch of Optimum's merged decoder to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    /// `use_cache_branch = false`: the whole prefix, no past (the `decoder_model` graph).
    NoCache,
    /// `use_cache_branch = true`: one step against a KV cache (the `decoder_with_past_model` graph).
    Cache,
}

/// The input Optimum's `merge_decoders` adds to choose the branch.
pub const USE_CACHE_BRANCH: &str = "use_cache_branch";

/// Replaces the `If` on `use_cache_branch` by the nodes of one of its branches.
///
/// tract types both branches of an `If` and refuses the merged decoder, whose branches return
/// `present.*` tensors of different shapes; and even where it could, it would re-plan the branch
/// at every step. Returns false when the graph has no such `If`.
pub fn splice_if(graph: &mut GraphProto, branch: Branch) -> Result<bool, String> {
    let Some(at) = graph.node.iter().position(|n| {
        n.op_type == "If" && n.input.first().map(String::as_str) == Some(USE_CACHE_BRANCH)
    }) else {
        return Ok(false);
    };
    let if_node = graph.node.remove(at);
    let wanted = match branch {
        Branch::Cache => "then_branch",
        Branch::NoCache => "else_branch",
    };
    let mut body = if_node
        .attribute
        .into_iter()
        .find(|a| a.name == wanted)
        .and_then(|a| a.g)
        .ok_or_else(|| format!("the If on {USE_CACHE_BRANCH} has no {wanted}"))?;
    if body.output.len() != if_node.output.len() {
        return Err(format!(
            "the If on {USE_CACHE_BRANCH} has {} outputs but its {wanted} has {}",
            if_node.output.len(),
            body.output.len()
        ));
    }
    graph.initializer.append(&mut body.initializer);
    graph.node.splice(at..at, body.node);
    // Optimum names branch outputs like the If outputs; where another exporter did not, bridge
    // them (an Identity from a name to itself would be a loop).
    for (outer, inner) in if_node.output.iter().zip(&body.output) {
        if outer != &inner.name {
            graph.node.push(identity(&inner.name, outer));
        }
    }
    graph.input.retain(|i| i.name != USE_CACHE_BRANCH);
    make_node_names_unique(graph);
    Ok(true)
}

/// Rewrites every `Gemm` as `MatMul` + `Add` (with transposes and scales where its attributes ask).
///
/// tract's Gemm multiplies the bias by an f32 `beta`, which fails on fp16 graphs; the plain ops
/// keep the graph's own dtype.
pub fn gemm_to_matmul(graph: &mut GraphProto) {
    let mut out = Vec::with_capacity(graph.node.len());
    for node in std::mem::take(&mut graph.node) {
        if node.op_type != "Gemm" || !node.domain.is_empty() && node.domain != "ai.onnx" {
            out.push(node);
            continue;
        }
        let attr_i = |name: &str, default: i64| {
            node.attribute
                .iter()
                .find(|a| a.name == name)
                .map_or(default, |a| a.i)
        };
        let attr_f = |name: &str, default: f32| {
            node.attribute
                .iter()
                .find(|a| a.name == name)
                .map_or(default, |a| a.f)
        };
        let base = if node.name.is_empty() {
            node.output[0].clone()
        } else {
            node.name.clone()
        };
        let tmp = |what: &str| format!("{base}/glance_{what}");
        let mut a = node.input[0].clone();
        let mut b = node.input[1].clone();
        if attr_i("transA", 0) != 0 {
            out.push(transpose(&a, &tmp("a_t"), &tmp("transpose_a")));
            a = tmp("a_t");
        }
        if attr_i("transB", 0) != 0 {
            out.push(transpose(&b, &tmp("b_t"), &tmp("transpose_b")));
            b = tmp("b_t");
        }
        let alpha = attr_f("alpha", 1.0);
        let beta = attr_f("beta", 1.0);
        let bias = node.input.get(2).filter(|c| !c.is_empty()).cloned();
        // Scales other than 1 would need typed constants; Optimum's exports never emit them.
        if alpha != 1.0 || (beta != 1.0 && bias.is_some()) {
            out.push(node);
            continue;
        }
        let y = node.output[0].clone();
        match bias {
            Some(c) => {
                out.push(simple("MatMul", &[&a, &b], &tmp("ab"), &tmp("matmul")));
                out.push(simple("Add", &[&tmp("ab"), &c], &y, &tmp("add")));
            }
            None => out.push(simple("MatMul", &[&a, &b], &y, &tmp("matmul"))),
        }
    }
    graph.node = out;
}

/// Rewrites `Pow(x, 2)` and `Pow(x, 3)` (constant exponents) as products: `x * x`, `x * x * x`.
///
/// That is what PyTorch computes for these exponents (its CPU `pow` special-cases them), so the
/// values are torch's, where tract's `powf` per value differs in the last bits; and GPT-2's
/// `gelu_new` (`Pow(x, 3)`) took 0.33 ms of an 11 ms ViT-GPT2 q8 step in libm's `powf`.
pub fn small_powers_as_products(graph: &mut GraphProto) {
    let exponent = |name: &str| -> Option<f32> {
        let tensor = match graph.initializer.iter().find(|t| t.name == name) {
            Some(t) => t,
            None => constant_node_tensor(graph, name)?,
        };
        if tensor.data_type != pb::tensor_proto::DataType::Float as i32 {
            return None;
        }
        match super::graph::floats(tensor, &tensor.raw_data)?[..] {
            [x] => Some(x),
            _ => None,
        }
    };
    let powers: Vec<(usize, f32)> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op_type == "Pow" && n.domain.is_empty() && n.input.len() == 2)
        .filter_map(|(at, n)| Some((at, exponent(&n.input[1])?)))
        .filter(|&(_, e)| e == 2.0 || e == 3.0)
        .collect();
    for (at, e) in powers.into_iter().rev() {
        let node = graph.node[at].clone();
        let (x, y) = (node.input[0].as_str(), node.output[0].as_str());
        let name = if node.name.is_empty() { y } else { &node.name };
        let square = format!("{name}/glance_square");
        let products = if e == 2.0 {
            vec![simple("Mul", &[x, x], y, &square)]
        } else {
            vec![
                simple("Mul", &[x, x], &square, &square),
                simple("Mul", &[&square, x], y, &format!("{name}/glance_cube")),
            ]
        };
        graph.node.splice(at..=at, products);
    }
}

/// Removes graph inputs that no node reads, and those named in `drop`.
///
/// After splicing, the merged decoder still declares the inputs of both branches; an unused
/// zero-length `past_key_values.*.encoder.*` input next to `encoder_hidden_states` makes tract
/// resolve `encoder_sequence_length` to both 0 and its real value.
pub fn prune_inputs(graph: &mut GraphProto) {
    let used = names_read(graph);
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    graph
        .input
        .retain(|i| used.contains(&i.name) || outputs.contains(&i.name));
}

/// Removes graph outputs for which `drop` is true (nodes left dead are pruned by tract).
pub fn drop_outputs(graph: &mut GraphProto, drop: impl Fn(&str) -> bool) {
    graph.output.retain(|o| !drop(&o.name));
}

/// Removes the nodes no graph output depends on, then the initializers and inputs no remaining
/// node reads (so tract never loads those weights).
pub fn prune_dead(graph: &mut GraphProto) {
    let mut needed: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
    // ONNX lists nodes in topological order: walking backwards sees every consumer first.
    let mut keep = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node_reads(node));
        }
    }
    let mut i = 0;
    graph.node.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    let used = names_read(graph);
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    graph
        .initializer
        .retain(|t| used.contains(&t.name) || outputs.contains(t.name.as_str()));
    prune_inputs(graph);
}

/// The values a decoder step graph computes from `source` (`encoder_hidden_states`) and
/// constants alone, which are the same at every step: GPT-2's cross-attention keys and values,
/// recomputed from the encoder states at every step by its export.
pub struct EncoderOnly {
    /// A graph computing them: `source` in, one output per value, named by [`Self::outputs`].
    pub graph: GraphProto,
    /// `(value in the step graph, output name of the cut graph)`.
    pub outputs: Vec<(String, String)>,
}

/// Finds the values of `step` that depend on `source` and constants only, and are read by the
/// rest of the graph; `name(j)` names the j-th. Values derived from `source`'s shape alone
/// (masks, sizes) are left where they are: they cost nothing to recompute.
pub fn encoder_only(
    step: &GraphProto,
    source: &str,
    name: impl Fn(usize) -> String,
) -> Option<EncoderOnly> {
    let mut constants: HashSet<&str> = step.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut derived: HashSet<&str> = HashSet::from([source]);
    let mut shape_only: HashSet<&str> = HashSet::new();
    let mut is_derived = vec![false; step.node.len()];
    for (i, node) in step.node.iter().enumerate() {
        let has_subgraph = node
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty());
        let inputs: Vec<&str> = node
            .input
            .iter()
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .collect();
        if has_subgraph {
            continue;
        }
        if inputs.iter().all(|i| constants.contains(i)) {
            constants.extend(node.output.iter().map(String::as_str));
            continue;
        }
        if !inputs
            .iter()
            .all(|i| constants.contains(i) || derived.contains(i))
        {
            continue;
        }
        is_derived[i] = true;
        derived.extend(node.output.iter().map(String::as_str));
        let from_shape = node.op_type == "Shape"
            || inputs
                .iter()
                .filter(|i| derived.contains(*i) && !constants.contains(*i))
                .all(|i| shape_only.contains(i));
        if from_shape {
            shape_only.extend(node.output.iter().map(String::as_str));
        }
    }
    // The derived values the rest of the graph reads.
    let mut frontier: Vec<String> = Vec::new();
    for (i, node) in step.node.iter().enumerate() {
        if is_derived[i] {
            continue;
        }
        for input in node_reads(node) {
            let heavy = derived.contains(input.as_str())
                && input != source
                && !shape_only.contains(input.as_str());
            if heavy && !frontier.contains(&input) {
                frontier.push(input);
            }
        }
    }
    if frontier.is_empty() {
        return None;
    }
    let outputs: Vec<(String, String)> = frontier
        .iter()
        .enumerate()
        .map(|(j, value)| (value.clone(), name(j)))
        .collect();
    let mut graph = GraphProto {
        name: format!("{}_encoder_only", step.name),
        node: step.node.clone(),
        initializer: step.initializer.clone(),
        input: step
            .input
            .iter()
            .filter(|i| i.name == source)
            .cloned()
            .collect(),
        output: outputs
            .iter()
            .map(|(_, out)| ValueInfoProto {
                name: out.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    for (value, out) in &outputs {
        graph.node.push(identity(value, out));
    }
    prune_dead(&mut graph);
    Some(EncoderOnly { graph, outputs })
}

/// Makes the step graph read each cut value from an input instead of computing it, then drops
/// what no longer contributes to its outputs. `inputs` are the new graph inputs (with types).
pub fn read_instead(
    step: &mut GraphProto,
    renames: &[(String, String)],
    inputs: Vec<ValueInfoProto>,
) {
    for node in step.node.iter_mut() {
        for input in node.input.iter_mut() {
            if let Some((_, to)) = renames.iter().find(|(from, _)| from == input) {
                *input = to.clone();
            }
        }
    }
    step.input.extend(inputs);
    prune_dead(step);
}

/// The index of the one node that reads `name`, when exactly one does and `name` is not a graph
/// output: a value a rewrite may fold into that node.
pub fn sole_reader(graph: &GraphProto, name: &str) -> Option<usize> {
    let is_output = graph.output.iter().any(|o| o.name == name);
    sole_node_reader(graph, name).filter(|_| !is_output)
}

/// The index of the only node reading value `name`, whether or not it is also a graph output.
pub fn sole_node_reader(graph: &GraphProto, name: &str) -> Option<usize> {
    sole_matching_reader(graph, name, |_| true)
}

/// The index of the only node reading the values of `name` (other nodes may read its shape),
/// whether or not it is also a graph output.
pub fn sole_values_reader(graph: &GraphProto, name: &str) -> Option<usize> {
    sole_matching_reader(graph, name, |n| n.op_type != "Shape")
}

fn sole_matching_reader(
    graph: &GraphProto,
    name: &str,
    counts: impl Fn(&NodeProto) -> bool,
) -> Option<usize> {
    let mut readers = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| counts(n) && n.input.iter().any(|i| i == name));
    let (first, _) = readers.next()?;
    readers.next().is_none().then_some(first)
}

/// The initializer value `name` is, directly or through `Identity` nodes (torch's exporter
/// writes one `Identity` per parameter whose values equal another's, such as biases that are
/// all zeros).
pub fn initializer<'g>(graph: &'g GraphProto, name: &str) -> Option<&'g pb::TensorProto> {
    let mut name = name;
    // Bounded: a malformed graph may have an Identity cycle.
    for _ in 0..8 {
        if let Some(t) = graph.initializer.iter().find(|t| t.name == name) {
            return Some(t);
        }
        let node = &graph.node[producer(graph, name)?];
        if node.op_type != "Identity" {
            return None;
        }
        name = node.input.first()?;
    }
    None
}

/// The tensor of the `Constant` node (its `value` attribute) that makes value `name`.
pub fn constant_node_tensor<'g>(graph: &'g GraphProto, name: &str) -> Option<&'g pb::TensorProto> {
    let node = &graph.node[producer(graph, name)?];
    if node.op_type != "Constant" {
        return None;
    }
    let value = node.attribute.iter().find(|a| a.name == "value")?;
    value.t.as_ref()
}

/// The index of the node that makes value `name`, if a node does.
pub fn producer(graph: &GraphProto, name: &str) -> Option<usize> {
    graph
        .node
        .iter()
        .position(|n| n.output.iter().any(|o| o == name))
}

/// Removes the nodes at indices `doomed`, keeping the others in order.
pub fn remove_nodes(graph: &mut GraphProto, doomed: &HashSet<usize>) {
    let mut at = 0;
    graph.node.retain(|_| {
        at += 1;
        !doomed.contains(&(at - 1))
    });
}

/// The names one node reads, its subgraphs included.
fn node_reads(node: &NodeProto) -> HashSet<String> {
    let g = GraphProto {
        node: vec![node.clone()],
        ..Default::default()
    };
    names_read(&g)
}

/// Every name a node of `graph` reads, including reads from inside subgraphs (which may refer
/// to names of the enclosing graph).
fn names_read(graph: &GraphProto) -> HashSet<String> {
    let mut used = HashSet::new();
    fn visit(g: &GraphProto, used: &mut HashSet<String>) {
        for node in &g.node {
            used.extend(node.input.iter().filter(|s| !s.is_empty()).cloned());
            for attr in &node.attribute {
                if let Some(sub) = &attr.g {
                    visit(sub, used);
                }
                for sub in &attr.graphs {
                    visit(sub, used);
                }
            }
        }
    }
    visit(graph, &mut used);
    used
}

/// tract refuses two nodes with one name; TrOCR's cache branch repeats names of the main graph's.
fn make_node_names_unique(graph: &mut GraphProto) {
    let mut seen = HashSet::new();
    let mut counter = 0;
    for node in graph.node.iter_mut() {
        let base = if node.name.is_empty() {
            node.op_type.clone()
        } else {
            node.name.clone()
        };
        while node.name.is_empty() || !seen.insert(node.name.clone()) {
            counter += 1;
            node.name = format!("{base}_glance{counter}");
        }
    }
}

fn simple(op: &str, inputs: &[&str], output: &str, name: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: name.to_string(),
        op_type: op.to_string(),
        ..Default::default()
    }
}

fn identity(input: &str, output: &str) -> NodeProto {
    simple(
        "Identity",
        &[input],
        output,
        &format!("{output}/glance_identity"),
    )
}

fn transpose(input: &str, output: &str, name: &str) -> NodeProto {
    let mut node = simple("Transpose", &[input], output, name);
    node.attribute.push(pb::AttributeProto {
        name: "perm".into(),
        r#type: AttributeType::Ints as i32,
        ints: vec![1, 0],
        ..Default::default()
    });
    node
}

/// The names of a graph's declared inputs that are not initializers.
pub fn real_inputs(graph: &GraphProto) -> Vec<&ValueInfoProto> {
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|i| !inits.contains(i.name.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str) -> ValueInfoProto {
        ValueInfoProto {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn splicing_keeps_the_chosen_branch_and_drops_the_condition() {
        let branch = |op: &str| GraphProto {
            node: vec![simple(op, &["x"], "y", "same_name")],
            output: vec![input("y")],
            ..Default::default()
        };
        let mut if_node = simple("If", &[USE_CACHE_BRANCH], "y", "optimum::if");
        for (name, op) in [("then_branch", "Relu"), ("else_branch", "Sigmoid")] {
            if_node.attribute.push(pb::AttributeProto {
                name: name.into(),
                r#type: AttributeType::Graph as i32,
                g: Some(branch(op)),
                ..Default::default()
            });
        }
        let main = GraphProto {
            node: vec![simple("Neg", &["a"], "x", "same_name"), if_node],
            input: vec![input("a"), input(USE_CACHE_BRANCH), input("unused")],
            output: vec![input("y")],
            ..Default::default()
        };
        let mut g = main.clone();
        assert!(splice_if(&mut g, Branch::Cache).unwrap());
        prune_inputs(&mut g);
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Neg", "Relu"]);
        let inputs: Vec<_> = g.input.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(inputs, ["a"]);
        let names: HashSet<_> = g.node.iter().map(|n| n.name.clone()).collect();
        assert_eq!(names.len(), 2, "node names must be unique after splicing");

        let mut g = main;
        assert!(splice_if(&mut g, Branch::NoCache).unwrap());
        assert_eq!(g.node[1].op_type, "Sigmoid");
    }

    #[test]
    fn dead_nodes_and_their_weights_are_pruned() {
        let init = |name: &str| pb::TensorProto {
            name: name.into(),
            ..Default::default()
        };
        let mut g = GraphProto {
            node: vec![
                simple("MatMul", &["x", "w_live"], "h", "live"),
                simple("MatMul", &["x", "w_dead"], "d", "dead"),
                simple("Relu", &["h"], "y", "out"),
            ],
            initializer: vec![init("w_live"), init("w_dead")],
            input: vec![input("x"), input("unused")],
            output: vec![input("y")],
            ..Default::default()
        };
        prune_dead(&mut g);
        let nodes: Vec<_> = g.node.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(nodes, ["live", "out"]);
        let inits: Vec<_> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(inits, ["w_live"]);
        assert_eq!(g.input.len(), 1);
    }

    #[test]
    fn values_from_the_encoder_states_alone_are_cut_out() {
        let init = |name: &str| pb::TensorProto {
            name: name.into(),
            ..Default::default()
        };
        let step = GraphProto {
            name: "step".into(),
            node: vec![
                simple("MatMul", &["enc", "w_k"], "k", "k_proj"),
                simple("Transpose", &["k"], "k_t", "k_t"),
                simple("Shape", &["enc"], "enc_shape", "shape"),
                simple("ConstantOfShape", &["enc_shape"], "mask", "mask"),
                simple("MatMul", &["h", "w_q"], "q", "q_proj"),
                simple("MatMul", &["q", "k_t"], "scores", "scores"),
                simple("Add", &["scores", "mask"], "y", "masked"),
            ],
            initializer: vec![init("w_k"), init("w_q")],
            input: vec![input("enc"), input("h")],
            output: vec![input("y")],
            ..Default::default()
        };
        let cut = encoder_only(&step, "enc", |j| format!("cut{j}")).unwrap();
        assert_eq!(cut.outputs, [("k_t".to_string(), "cut0".to_string())]);
        let ops: Vec<_> = cut.graph.node.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(ops, ["k_proj", "k_t", "cut0/glance_identity"]);
        assert_eq!(
            cut.graph.initializer.len(),
            1,
            "only the key projection's weights"
        );

        let mut step = step;
        read_instead(
            &mut step,
            &[("k_t".into(), "past_k".into())],
            vec![input("past_k")],
        );
        let ops: Vec<_> = step.node.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(ops, ["shape", "mask", "q_proj", "scores", "masked"]);
        assert!(step.initializer.iter().all(|t| t.name != "w_k"));
    }

    #[test]
    fn squares_and_cubes_become_products() {
        let scalar = |name: &str, x: f32| pb::TensorProto {
            name: name.into(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: x.to_le_bytes().to_vec(),
            ..Default::default()
        };
        let mut constant = simple("Constant", &[], "two", "two");
        constant.attribute.push(pb::AttributeProto {
            name: "value".into(),
            t: Some(scalar("", 2.0)),
            r#type: AttributeType::Tensor as i32,
            ..Default::default()
        });
        let mut g = GraphProto {
            node: vec![
                simple("Pow", &["x", "three"], "cube", "cube"),
                constant,
                simple("Pow", &["x", "two"], "square", "square"),
                simple("Pow", &["x", "half"], "root", "root"),
            ],
            initializer: vec![scalar("three", 3.0), scalar("half", 0.5)],
            ..Default::default()
        };
        small_powers_as_products(&mut g);
        let nodes: Vec<_> = g
            .node
            .iter()
            .map(|n| (n.op_type.as_str(), n.input.join(","), n.output[0].as_str()))
            .collect();
        assert_eq!(
            nodes,
            [
                ("Mul", "x,x".into(), "cube/glance_square"),
                ("Mul", "cube/glance_square,x".into(), "cube"),
                ("Constant", String::new(), "two"),
                ("Mul", "x,x".into(), "square"),
                ("Pow", "x,half".into(), "root"),
            ]
        );
    }

    #[test]
    fn gemm_becomes_matmul_and_add() {
        let mut gemm = simple("Gemm", &["a", "w", "c"], "y", "g");
        gemm.attribute.push(pb::AttributeProto {
            name: "transB".into(),
            i: 1,
            ..Default::default()
        });
        let mut g = GraphProto {
            node: vec![gemm],
            ..Default::default()
        };
        gemm_to_matmul(&mut g);
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        assert_eq!(ops, ["Transpose", "MatMul", "Add"]);
        assert_eq!(g.node[2].output, ["y"]);
    }
}
