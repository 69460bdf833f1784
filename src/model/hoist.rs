//! Hoisting: the part of a decoder step graph that depends only on inputs fixed for a whole
//! generation (the cross-attention cache, the encoder states) is cut into a *prelude*, run once
//! per image instead of at every token.
//!
//! It works on tract's optimized model, so that what gets hoisted includes tract's own layout
//! work: at every step TrOCR's export reshapes and transposes each layer's cross-attention keys,
//! and tract packs keys and values for its matrix kernels. At four beams that work on
//! `[4, 8, 578, 32]` tensors took half of TrOCR-small's step (BENCHMARKS.md).
//!
//! Before tract optimizes a step graph, [`orient_products`] puts the fixed operand first in
//! products of a step value by a fixed one, so that it is the side tract packs, and hoists.

use std::collections::HashSet;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::model::SpecialOps;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::plan::SimplePlan;

/// A step model split in two.
pub struct Split {
    /// The original model's inputs, then one input per hoisted value. It still takes the
    /// invariant inputs, even where no node reads them any more: their shapes tell tract the
    /// sizes (`encoder_sequence_length`) that packed hoisted values do not carry.
    pub step: TypedModel,
    /// Takes the original inputs at `reads`, in that order; gives the hoisted values in the
    /// order `step` takes them.
    pub prelude: TypedModel,
    pub reads: Vec<usize>,
}

/// The nodes of a model whose values are fixed for a generation: the invariant inputs, and what
/// depends on them and constants only.
struct Fixed {
    nodes: Vec<bool>,
    /// The symbols of the invariant inputs' shapes: a fixed value may only have these sizes, as
    /// one whose shape names the decoder's sequence length differs from step to step.
    sizes: HashSet<Symbol>,
}

impl Fixed {
    fn find(model: &TypedModel, invariant: &[bool], stateful: &[bool]) -> TractResult<Fixed> {
        let inputs = model.input_outlets()?;
        let mut sizes = HashSet::new();
        for (ix, input) in inputs.iter().enumerate() {
            if invariant.get(ix) == Some(&true) {
                for dim in model.outlet_fact(*input)?.shape.iter() {
                    sizes.extend(dim.symbols());
                }
            }
        }
        let n = model.nodes().len();
        let mut fixed = vec![false; n];
        let mut constant = vec![false; n];
        for id in model.eval_order()? {
            let node = model.node(id);
            if let Some(ix) = inputs.iter().position(|o| o.node == id) {
                fixed[id] = invariant.get(ix) == Some(&true);
                continue;
            }
            if node.inputs.is_empty() {
                constant[id] = true;
                continue;
            }
            let from_fixed = node
                .inputs
                .iter()
                .all(|i| fixed[i.node] || constant[i.node]);
            if !from_fixed || stateful.get(id) == Some(&true) {
                continue;
            }
            if !node.inputs.iter().any(|i| fixed[i.node]) {
                constant[id] = true;
                continue;
            }
            let fixed_sizes = node
                .outputs
                .iter()
                .all(|o| o.fact.shape.iter().all(|d| fixed_size(&sizes, d)));
            fixed[id] = node.outputs.len() == 1 && fixed_sizes;
        }
        Ok(Fixed {
            nodes: fixed,
            sizes,
        })
    }
}

/// Whether `dim` names only sizes of the fixed inputs (or none: a constant).
fn fixed_size(sizes: &HashSet<Symbol>, dim: &TDim) -> bool {
    dim.symbols().iter().all(|s| sizes.contains(s))
}

/// Splits `model` (optimized) when some of its work depends only on the inputs flagged in
/// `invariant` (one flag per input) and constants; `None` when there is none.
pub fn split(model: &TypedModel, invariant: &[bool]) -> TractResult<Option<Split>> {
    if !invariant.contains(&true) {
        return Ok(None);
    }
    let inputs = model.input_outlets()?.to_vec();
    let outputs = model.output_outlets()?.to_vec();
    // Ops that keep state between runs must run at every step, where the plan keeps it.
    let stateful: Vec<bool> = SimplePlan::new(model.clone())?
        .spawn()?
        .op_states
        .iter()
        .map(Option::is_some)
        .collect();
    let Fixed { nodes: fixed, .. } = Fixed::find(model, invariant, &stateful)?;
    let n = model.nodes().len();

    // The hoisted values: fixed node outputs read by the rest of the step.
    let is_input = |id: usize| inputs.iter().any(|o| o.node == id);
    let frontier: Vec<OutletId> = (0..n)
        .filter(|&id| fixed[id] && !is_input(id))
        .map(|id| OutletId::new(id, 0))
        .filter(|o| {
            outputs.contains(o) || model.outlet_successors(*o).iter().any(|s| !fixed[s.node])
        })
        .collect();
    if frontier.is_empty() {
        return Ok(None);
    }

    let reads: Vec<usize> = (0..inputs.len())
        .filter(|&ix| invariant.get(ix) == Some(&true))
        .collect();
    let mut prelude = model.clone();
    prelude.set_input_outlets(&reads.iter().map(|&ix| inputs[ix]).collect::<Vec<_>>())?;
    prelude.select_output_outlets(&frontier)?;
    prelude.compact()?;

    let mut step = model.clone();
    for outlet in &frontier {
        let id = outlet.node;
        let cut = std::mem::take(&mut step.node_mut(id).inputs);
        for (slot, from) in cut.iter().enumerate() {
            step.node_mut(from.node).outputs[from.slot]
                .successors
                .retain(|s| !(s.node == id && s.slot == slot));
        }
        let fact = step.node(id).outputs[0].fact.clone();
        step.node_mut(id).op = step.create_source(fact);
    }
    let mut step_inputs = inputs.clone();
    step_inputs.extend(&frontier);
    step.set_input_outlets(&step_inputs)?;
    step.compact()?;
    Ok(Some(Split {
        step,
        prelude,
        reads,
    }))
}

/// Puts the fixed operand first in every product of a step value by a fixed one.
///
/// tract computes a product with its first operand as the packed "matrix" side, and swaps them
/// when the second is the longer, but cannot compare two symbolic lengths: the cross-attention
/// scores `q [.., dec, 32] x k^T [.., 32, enc]` kept the query (one row at a decoding step) on
/// the 32-row side of its kernels, computing one useful row in 32. With the keys first the
/// product is a matrix-vector one, and the keys' packing is hoisted with them. Runs on the
/// decluttered model, before tract's optimizer, which keeps an order it cannot prove wrong.
/// Returns how many products were turned.
pub fn orient_products(model: &mut TypedModel, invariant: &[bool]) -> TractResult<usize> {
    if !invariant.contains(&true) {
        return Ok(0);
    }
    let Fixed {
        nodes: fixed,
        sizes,
    } = Fixed::find(model, invariant, &[])?;
    // A length known only at run time: the encoder's (fixed) or the step's (not fixed).
    let has_length = |outlet: OutletId, of_fixed: bool| -> TractResult<bool> {
        Ok(model
            .outlet_fact(outlet)?
            .shape
            .iter()
            .any(|d| !d.symbols().is_empty() && fixed_size(&sizes, d) == of_fixed))
    };
    let mut turn = Vec::new();
    for node in model.nodes() {
        let Some(op) = node.op_as::<EinSum>() else {
            continue;
        };
        let [a, b] = node.inputs[..] else {
            continue;
        };
        if op.q_params.is_none()
            && fixed[b.node]
            && !fixed[a.node]
            && has_length(a, false)?
            && has_length(b, true)?
        {
            let mut op = op.clone();
            op.axes
                .iter_all_axes_mut()
                .for_each(|axis| axis.inputs.swap(0, 1));
            turn.push((node.id, op, [b, a]));
        }
    }
    let turned = turn.len();
    for (id, op, inputs) in turn {
        TypedModelPatch::replace_single_op(model, model.node(id), &inputs, op)?.apply(model)?;
    }
    Ok(turned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_core::ops::change_axes::AxisOp;
    use tract_onnx::tract_core::ops::math;

    /// `out = transpose(fixed * 2) + token`: the transposed product is hoisted, the sum is not.
    fn model() -> TractResult<TypedModel> {
        let mut m = TypedModel::default();
        let n = m.sym("n");
        let fixed = m.add_source("fixed", f32::fact([n.to_dim(), 3.to_dim()]))?;
        let token = m.add_source("token", f32::fact([3.to_dim(), n.to_dim()]))?;
        let two = m.add_const("two", tensor2(&[[2f32]]))?;
        let doubled = m.wire_node("doubled", math::mul(), &[fixed, two])?;
        let moved = m.wire_node("moved", AxisOp::Move(0, 1), &doubled)?;
        let out = m.wire_node("out", math::add(), &[moved[0], token])?;
        m.select_output_outlets(&out)?;
        Ok(m)
    }

    #[test]
    fn hoists_what_depends_on_fixed_inputs_only() -> TractResult<()> {
        let m = model()?;
        let fixed = tensor2(&[[1f32, 2., 3.], [4., 5., 6.]]).into_tvalue();
        let token = tensor2(&[[10f32, 20.], [30., 40.], [50., 60.]]).into_tvalue();
        let expected = m
            .clone()
            .into_runnable()?
            .run(tvec![fixed.clone(), token.clone()])?;

        let split = split(&m, &[true, false])?.expect("the transposed product is hoisted");
        assert_eq!(split.reads, vec![0]);
        let hoisted = split.prelude.into_runnable()?.run(tvec![fixed.clone()])?;
        assert_eq!(hoisted.len(), 1);
        assert_eq!(split.step.input_outlets()?.len(), 3);
        let mut inputs = tvec![fixed, token];
        inputs.extend(hoisted);
        let got = split.step.into_runnable()?.run(inputs)?;
        assert_eq!(got[0], expected[0]);
        Ok(())
    }

    #[test]
    fn products_take_the_fixed_operand_first() -> TractResult<()> {
        // scores = token [s, 3] x fixed [3, n]: s is the step's length, n the encoder's.
        let mut m = TypedModel::default();
        let (n, s) = (m.sym("n"), m.sym("s"));
        let fixed = m.add_source("fixed", f32::fact([3.to_dim(), n.to_dim()]))?;
        let token = m.add_source("token", f32::fact([s.to_dim(), 3.to_dim()]))?;
        let op = EinSum::new("sk,kn->sn".parse()?, f32::datum_type());
        let out = m.wire_node("scores", op, &[token, fixed])?;
        m.select_output_outlets(&out)?;
        let inputs = tvec![
            tensor2(&[[1f32, 2.], [3., 4.], [5., 6.]]).into_tvalue(),
            tensor2(&[[1f32, 0., 2.]]).into_tvalue(),
        ];
        let expected = m.clone().into_runnable()?.run(inputs.clone())?;

        assert_eq!(orient_products(&mut m, &[true, false])?, 1);
        let einsum = m.nodes().iter().find(|n| n.op_is::<EinSum>()).unwrap();
        assert_eq!(einsum.inputs[0], fixed);
        let got = m.into_optimized()?.into_runnable()?.run(inputs)?;
        assert_eq!(got[0], expected[0]);
        Ok(())
    }

    #[test]
    fn nothing_to_hoist_without_fixed_inputs() -> TractResult<()> {
        assert!(split(&model()?, &[false, false])?.is_none());
        Ok(())
    }

    #[test]
    fn values_with_other_sizes_stay_in_the_step() -> TractResult<()> {
        // A value shaped by a symbol only the token input carries changes from step to step.
        let mut m = TypedModel::default();
        let (n, s) = (m.sym("n"), m.sym("s"));
        let fixed = m.add_source("fixed", f32::fact([n.to_dim()]))?;
        let token = m.add_source("token", f32::fact([s.to_dim(), n.to_dim()]))?;
        let wide = m.wire_node(
            "wide",
            tract_onnx::tract_core::ops::array::MultiBroadcastTo::new(
                tvec![s.to_dim(), n.to_dim()].into(),
            ),
            &[fixed],
        )?;
        let out = m.wire_node("out", math::add(), &[wide[0], token])?;
        m.select_output_outlets(&out)?;
        assert!(split(&m, &[true, false])?.is_none());
        Ok(())
    }
}
