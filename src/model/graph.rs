//! One ONNX graph: read from a memory map, optimized once by tract, run many times.

use std::borrow::Cow;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use prost::Message;
use tract_onnx::pb::{tensor_proto::DataLocation, GraphProto, ModelProto, TensorProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::optim::Optimizer;

use super::{external, hoist};
use crate::error::{Error, Result};

/// An input or output of a graph, as tract typed it.
#[derive(Debug, Clone)]
pub struct Port {
    pub name: String,
    pub dt: DatumType,
    /// Concrete dimensions, `None` where the graph keeps a symbol (batch, sequence lengths).
    pub shape: Vec<Option<usize>>,
    /// Every dimension as tract writes it: a number, a symbol (`batch_size`), or an expression.
    pub dims: Vec<String>,
}

impl Port {
    pub fn describe(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
            .collect();
        format!("{} {:?}[{}]", self.name, self.dt, dims.join(","))
    }
}

/// The values of an f32 or f16 tensor whose data (`raw_data`, inline or read from its file by
/// [`tensor_bytes`]) is `raw`, in f32; `None` for other element types.
pub fn floats(t: &TensorProto, raw: &[u8]) -> Option<Vec<f32>> {
    use tract_onnx::pb::tensor_proto::DataType;
    let f16 = |bits: u16| half::f16::from_bits(bits).to_f32();
    match DataType::try_from(t.data_type).ok()? {
        DataType::Float if raw.is_empty() => Some(t.float_data.clone()),
        DataType::Float => Some(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        // f16 values outside raw_data sit in int32_data, one per element.
        DataType::Float16 if raw.is_empty() => {
            Some(t.int32_data.iter().map(|&v| f16(v as u16)).collect())
        }
        DataType::Float16 => Some(
            raw.chunks_exact(2)
                .map(|b| f16(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
        ),
        _ => None,
    }
}

/// An ONNX graph input declaring `name` with the type of `port` (symbolic dimensions keep
/// their symbol where it is a plain name, so that tract identifies them with the graph's own).
pub fn value_info(name: &str, port: &Port) -> tract_onnx::pb::ValueInfoProto {
    use tract_onnx::pb::tensor_shape_proto::{dimension::Value as Dim, Dimension};
    use tract_onnx::pb::{tensor_proto::DataType, type_proto, TensorShapeProto, TypeProto};
    let elem_type = match port.dt {
        DatumType::F16 => DataType::Float16,
        DatumType::F64 => DataType::Double,
        DatumType::I64 => DataType::Int64,
        DatumType::I32 => DataType::Int32,
        DatumType::Bool => DataType::Bool,
        _ => DataType::Float,
    } as i32;
    let dim = |(axis, (size, text)): (usize, (&Option<usize>, &String))| Dimension {
        value: Some(match size {
            Some(n) => Dim::DimValue(*n as i64),
            None if text.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                Dim::DimParam(text.clone())
            }
            None => Dim::DimParam(format!("{name}_{axis}")),
        }),
        ..Default::default()
    };
    tract_onnx::pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: port
                        .shape
                        .iter()
                        .zip(&port.dims)
                        .enumerate()
                        .map(dim)
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A graph ready to run: one optimized tract plan, shared by every call.
#[derive(Debug, Clone)]
pub struct Graph {
    pub path: PathBuf,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    plan: Arc<TypedRunnableModel>,
    prelude: Option<Prelude>,
}

/// The part of a step graph that depends only on inputs fixed for a whole generation
/// ([`super::hoist`]): `plan` takes the graph's inputs at `reads` and gives the values the main
/// plan takes after the graph's own inputs.
#[derive(Debug, Clone)]
struct Prelude {
    plan: Arc<TypedRunnableModel>,
    reads: Vec<usize>,
}

/// What a graph's prelude computed from the fixed inputs ([`Graph::hoist`]): valid for as long
/// as those inputs stay the same. Empty for a graph without a prelude.
#[derive(Debug, Clone, Default)]
pub struct Hoisted(TVec<TValue>);

/// Reads an ONNX file through a memory map and decodes its protobuf, leaving the weights in the
/// file: large initializers become references that tract resolves when it builds each tensor
/// ([`super::external`]), so the weights are never held twice.
pub fn read_proto(path: &Path) -> Result<ModelProto> {
    let (dir, name) = canonical(path)?;
    let file = std::fs::File::open(dir.join(&name)).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and dropped before this function returns; a file truncated
    // by another process meanwhile would fault, which is the usual contract of mapping files.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let small = external::externalize(&map[..], &name)
        .map_err(|e| Error::graph(path, format!("not a valid ONNX file ({e})")))?;
    let proto = ModelProto::decode(&small[..])
        .map_err(|e| Error::graph(path, format!("not a valid ONNX file ({e})")))?;
    if proto.graph.is_none() {
        return Err(Error::graph(
            path,
            "not a valid ONNX file (it holds no graph)",
        ));
    }
    Ok(proto)
}

/// The directory and file name of a graph file, symbolic links resolved: tract only reads
/// external data from inside the directory it is given, and a model directory may link to its
/// graphs.
fn canonical(path: &Path) -> Result<(PathBuf, String)> {
    let real = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    let name = real
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::graph(path, "the file name is not valid UTF-8"))?
        .to_string();
    let dir = real.parent().unwrap_or(Path::new("/")).to_path_buf();
    Ok((dir, name))
}

/// The bytes of an initializer of the graph in `path`, inline or external.
pub fn tensor_bytes<'a>(t: &'a TensorProto, path: &Path) -> Result<Cow<'a, [u8]>> {
    if !t.raw_data.is_empty() || t.data_location != Some(DataLocation::External as i32) {
        return Ok(Cow::Borrowed(&t.raw_data));
    }
    let get = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let bad = |msg: &str| Error::graph(path, format!("initializer {}: {msg}", t.name));
    let location = get("location").ok_or_else(|| bad("external data without a location"))?;
    let number = |key: &str| -> Result<Option<u64>> {
        get(key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| bad(&format!("bad external {key} {v:?}")))
            })
            .transpose()
    };
    let offset = number("offset")?.unwrap_or(0);
    let (dir, _) = canonical(path)?;
    let data = std::fs::canonicalize(dir.join(location)).map_err(|e| Error::io(path, e))?;
    if !data.starts_with(&dir) {
        return Err(bad("external data outside the model directory"));
    }
    let mut file = std::fs::File::open(&data).map_err(|e| Error::io(&data, e))?;
    let size = file.metadata().map_err(|e| Error::io(&data, e))?.len();
    let length = number("length")?.unwrap_or(size.saturating_sub(offset));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(bad("external data runs past the end of its file"));
    }
    let mut bytes = vec![0u8; length as usize];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut bytes))
        .map_err(|e| Error::io(&data, e))?;
    Ok(Cow::Owned(bytes))
}

/// How to pin the shape of a graph before optimizing it.
#[derive(Debug, Default, Clone)]
pub struct Shapes {
    /// `(input name, axis, size)`: dimensions that must be concrete for tract to type the graph
    /// (a ViT's height and width) or that work around a tract limitation (a batch of 1).
    pub fixed: Vec<(String, usize, usize)>,
    /// Pin axis 0 of every input to 1.
    pub batch_of_one: bool,
}

impl Graph {
    /// Parses, types and optimizes `proto` (already edited by [`crate::model::surgery`]).
    pub fn prepare(
        path: &Path,
        proto: &ModelProto,
        shapes: &Shapes,
        threads: usize,
    ) -> Result<Graph> {
        Self::prepare_step(path, proto, shapes, threads, |_| false)
    }

    /// Like [`Graph::prepare`], for a graph run at every decoder step: the work that depends
    /// only on the inputs for which `fixed` is true (and on constants) is cut into a prelude,
    /// run once through [`Graph::hoist`].
    pub fn prepare_step(
        path: &Path,
        proto: &ModelProto,
        shapes: &Shapes,
        threads: usize,
        fixed: fn(&str) -> bool,
    ) -> Result<Graph> {
        // tract's analysis indexes with what the file says (an Unsqueeze axis past the rank
        // panicked in tract-hir's shape inference, found by fuzzing): a damaged file is an error.
        in_tract(path, "analysing", || {
            Self::prepare_unguarded(path, proto, shapes, threads, fixed)
        })
    }

    fn prepare_unguarded(
        path: &Path,
        proto: &ModelProto,
        shapes: &Shapes,
        threads: usize,
        fixed: fn(&str) -> bool,
    ) -> Result<Graph> {
        let fail = |e: TractError| Error::graph(path, e);
        // Exporters' value_info annotations sometimes contradict what tract infers
        // (tract-hf-recipes.md, item 5); tract's own inference is enough.
        let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
        super::qmatmul::register(&mut onnx);
        super::matmul::register(&mut onnx);
        super::attention::register(&mut onnx);
        // External references in the proto (see `read_proto`) are resolved against this; a
        // graph made in memory has none.
        let dir = canonical(path).ok().map(|(dir, _)| dir);
        let parsed = onnx
            .parse(proto, dir.as_deref().and_then(Path::to_str))
            .map_err(fail)?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(Error::graph(
                path,
                format!(
                    "the graph reads values it never defines: {}",
                    parsed.unresolved_inputs.join(", ")
                ),
            ));
        }
        let mut model = parsed.model;
        unsupported_ops(path, &model)?;
        warn_qdq(path, proto);

        let input_names: Vec<String> = model
            .input_outlets()
            .map_err(fail)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let output_names: Vec<String> = model
            .output_outlets()
            .map_err(fail)?
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(String::from)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();

        for (ix, name) in input_names.iter().enumerate() {
            let mut fact = model.input_fact(ix).map_err(fail)?.clone();
            if shapes.batch_of_one {
                fact.shape.set_dim(0, 1.to_dim());
            }
            for (_, axis, size) in shapes.fixed.iter().filter(|(n, _, _)| n == name) {
                fact.shape.set_dim(*axis, size.to_dim());
            }
            model.set_input_fact(ix, fact).map_err(fail)?;
        }

        let mut typed = model.into_typed().map_err(fail)?;
        declutter(&mut typed).map_err(fail)?;
        let flags: Vec<bool> = input_names.iter().map(|n| fixed(n)).collect();
        let turned = hoist::orient_products(&mut typed, &flags).map_err(fail)?;
        if turned > 0 {
            log::debug!(
                "{}: {turned} products turned to keep their fixed operand packed",
                path.display()
            );
        }
        typed.optimize().map_err(fail)?;

        let port = |name: &String, fact: &TypedFact| Port {
            name: name.clone(),
            dt: fact.datum_type,
            shape: fact
                .shape
                .iter()
                .map(|d| d.as_i64().map(|v| v as usize))
                .collect(),
            dims: fact.shape.iter().map(|d| d.to_string()).collect(),
        };
        let inputs = input_names
            .iter()
            .enumerate()
            .map(|(ix, name)| Ok(port(name, typed.input_fact(ix)?)))
            .collect::<TractResult<Vec<_>>>()
            .map_err(fail)?;
        let outputs = output_names
            .iter()
            .enumerate()
            .map(|(ix, name)| Ok(port(name, typed.output_fact(ix)?)))
            .collect::<TractResult<Vec<_>>>()
            .map_err(fail)?;

        let options = RunOptions {
            executor: (threads > 1).then(|| multithread::Executor::multithread(threads)),
            ..Default::default()
        };
        let (typed, prelude) = match hoist::split(&typed, &flags).map_err(fail)? {
            Some(split) => {
                log::debug!(
                    "{}: {} values computed once per image, not at every step",
                    path.display(),
                    split.prelude.outputs.len()
                );
                let prelude = Prelude {
                    plan: split
                        .prelude
                        .into_runnable_with_options(&options)
                        .map_err(fail)?,
                    reads: split.reads,
                };
                (split.step, Some(prelude))
            }
            None => (typed, None),
        };
        let plan = typed.into_runnable_with_options(&options).map_err(fail)?;
        Ok(Graph {
            path: path.to_path_buf(),
            inputs,
            outputs,
            plan,
            prelude,
        })
    }

    /// How many values the graph's prelude computes from its fixed inputs (0 without one).
    pub fn hoisted_values(&self) -> usize {
        self.prelude
            .as_ref()
            .map_or(0, |p| p.plan.model().outputs.len())
    }

    /// How many nodes of the plan run the op named `op` (glance's own are named by their ONNX op
    /// type): tests check that a model runs on glance's kernels.
    pub fn count_ops(&self, op: &str) -> usize {
        let plans = std::iter::once(&self.plan).chain(self.prelude.as_ref().map(|p| &p.plan));
        plans
            .flat_map(|p| p.model().nodes())
            .filter(|n| n.op.name() == op)
            .count()
    }

    pub fn input(&self, name: &str) -> Option<&Port> {
        self.inputs.iter().find(|p| p.name == name)
    }

    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|p| p.name == name)
    }

    /// Runs the graph; `feed` gives the value of each input port in turn. Values whose float
    /// type differs from the port's (f32 given to an fp16 graph) are converted here, at the
    /// boundary, so the rest of glance works in f32.
    pub fn run<V: Into<TValue>>(
        &self,
        feed: impl FnMut(&Port) -> Result<V>,
    ) -> Result<TVec<TValue>> {
        let values = self.input_values(self.inputs.iter(), feed)?;
        let hoisted = self.hoist_from(&values)?;
        self.run_values(values, &hoisted)
    }

    /// The values of the graph's prelude, from the inputs fixed for a generation (`feed` is
    /// asked for those only): what [`Graph::run_hoisted`] then takes at every step.
    pub fn hoist<V: Into<TValue>>(&self, feed: impl FnMut(&Port) -> Result<V>) -> Result<Hoisted> {
        let Some(prelude) = &self.prelude else {
            return Ok(Hoisted::default());
        };
        let ports = prelude.reads.iter().map(|&ix| &self.inputs[ix]);
        let values = self.input_values(ports, feed)?;
        self.run_prelude(prelude, values)
    }

    /// Runs the graph with the values [`Graph::hoist`] computed for the current fixed inputs.
    pub fn run_hoisted<V: Into<TValue>>(
        &self,
        feed: impl FnMut(&Port) -> Result<V>,
        hoisted: &Hoisted,
    ) -> Result<TVec<TValue>> {
        let values = self.input_values(self.inputs.iter(), feed)?;
        self.run_values(values, hoisted)
    }

    /// [`Graph::hoist`] from the values of all inputs.
    fn hoist_from(&self, values: &[TValue]) -> Result<Hoisted> {
        match &self.prelude {
            Some(prelude) => {
                let reads = prelude.reads.iter().map(|&ix| values[ix].clone()).collect();
                self.run_prelude(prelude, reads)
            }
            None => Ok(Hoisted::default()),
        }
    }

    fn run_prelude(&self, prelude: &Prelude, values: TVec<TValue>) -> Result<Hoisted> {
        let outputs = in_tract(&self.path, "running", || {
            prelude
                .plan
                .run(values)
                .map_err(|e| Error::graph(&self.path, e))
        })?;
        Ok(Hoisted(outputs))
    }

    fn run_values(&self, mut values: TVec<TValue>, hoisted: &Hoisted) -> Result<TVec<TValue>> {
        values.extend(hoisted.0.iter().cloned());
        // tract's kernels index with slices and panic on inputs the graph does not expect (a
        // position past the end of a table, say); the caller gets an error, not a crash.
        in_tract(&self.path, "running", || {
            self.plan
                .run(values)
                .map_err(|e| Error::graph(&self.path, e))
        })
    }

    /// The value of each of `ports` from `feed`, in the port's type. A value already of that
    /// type is passed on as it is, shared, not copied (a KV cache).
    fn input_values<'p, V: Into<TValue>>(
        &self,
        ports: impl Iterator<Item = &'p Port>,
        mut feed: impl FnMut(&Port) -> Result<V>,
    ) -> Result<TVec<TValue>> {
        let mut values = TVec::with_capacity(self.inputs.len());
        for port in ports {
            let v: TValue = feed(port)?.into();
            let v = if v.datum_type() != port.dt {
                v.cast_to_dt(port.dt)
                    .map_err(|e| Error::graph(&self.path, e))?
                    .into_owned()
                    .into_tvalue()
            } else {
                v
            };
            values.push(v);
        }
        Ok(values)
    }
}

/// `f`, a call into tract on the graph at `path`, with a panic inside it made an error that
/// says what tract was `doing`.
fn in_tract<T>(path: &Path, doing: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::error::guarded(f).unwrap_or_else(|what| {
        Err(Error::graph(
            path,
            format!("tract failed {doing} the graph: {what}"),
        ))
    })
}

/// Time spent in one node of a graph, from [`Graph::profile`].
#[derive(Debug, Clone)]
pub struct NodeTime {
    pub node: String,
    pub op: String,
    pub seconds: f64,
}

impl Graph {
    /// Runs the graph once like [`Graph::run`], timing every node (tract's plan, evaluated node
    /// by node): where a graph spends its time, for benchmarks and profiling.
    /// A prelude runs untimed first: the times are those of what runs at every step.
    pub fn profile<V: Into<TValue>>(
        &self,
        feed: impl FnMut(&Port) -> Result<V>,
    ) -> Result<Vec<NodeTime>> {
        let fail = |e: TractError| Error::graph(&self.path, e);
        let mut values = self.input_values(self.inputs.iter(), feed)?;
        let hoisted = self.hoist_from(&values)?;
        values.extend(hoisted.0);
        let mut times = Vec::new();
        in_tract(&self.path, "profiling", || {
            let mut state = self.plan.spawn().map_err(fail)?;
            state
                .run_plan_with_eval(values, |ctx, op_state, node, inputs| {
                    let start = std::time::Instant::now();
                    let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
                    times.push(NodeTime {
                        node: node.name.clone(),
                        op: node.op().name().to_string(),
                        seconds: start.elapsed().as_secs_f64(),
                    });
                    out
                })
                .map_err(fail)?;
            Ok(())
        })?;
        Ok(times)
    }
}

/// tract parses unknown operators into placeholders and only fails when typing them, with a
/// message that does not name the operator plainly. Say it first.
fn unsupported_ops(path: &Path, model: &InferenceModel) -> Result<()> {
    let mut missing: Vec<String> = model
        .nodes()
        .iter()
        .filter_map(|n| {
            let name = n.op.name();
            let op = name.strip_prefix("Unimplemented(")?.strip_suffix(')')?;
            Some(format!("{op} (node {})", n.name))
        })
        .collect();
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::graph(
            path,
            format!("operator not supported by tract: {}", missing.join(", ")),
        ))
    }
}

/// Weights stored as QDQ (`DequantizeLinear` of an int8 initializer) are expanded to f32 by
/// tract when it folds constants: four times their size in memory and f32 speed. Say so once
/// per file, with the cost.
fn warn_qdq(path: &Path, proto: &ModelProto) {
    static WARNED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    let Some((count, bytes)) = proto.graph.as_ref().and_then(qdq_weights) else {
        return;
    };
    let mut warned = WARNED.lock().unwrap_or_else(|e| e.into_inner());
    if warned.iter().any(|p| p == path) {
        return;
    }
    warned.push(path.to_path_buf());
    log::warn!(
        "{}: {count} weights are QDQ-quantized (DequantizeLinear of {:.1} MB of 8-bit data); tract expands them to f32 ({:.1} MB) and runs them at f32 speed. A dynamically quantized export (MatMulInteger, as scripts/export.py makes) keeps them 8-bit.",
        path.display(),
        bytes as f64 / 1e6,
        bytes as f64 * 4.0 / 1e6
    );
}

/// The number of QDQ weights in a graph and their 8-bit size, if any.
fn qdq_weights(graph: &GraphProto) -> Option<(usize, u64)> {
    let sizes: Vec<u64> = graph
        .node
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear")
        .filter_map(|n| {
            let init = graph
                .initializer
                .iter()
                .find(|t| Some(&t.name) == n.input.first())?;
            Some(init.dims.iter().map(|&d| d.max(0) as u64).product())
        })
        .collect();
    (!sizes.is_empty()).then(|| (sizes.len(), sizes.iter().sum()))
}

/// tract's declutter, without `FoldUniformMask`: on GPT-2 graphs that pass turns the causal
/// mask into a wrong constant, which gives wrong logits with no error for short prefixes
/// (tract-hf-recipes.md, item 4).
fn declutter(model: &mut TypedModel) -> TractResult<()> {
    let mut optimizer = Optimizer::declutter();
    optimizer
        .passes
        .retain(|pass| !format!("{pass:?}").starts_with("FoldUniformMask"));
    optimizer.optimize(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::NodeProto;

    #[test]
    fn qdq_weights_are_found() {
        let mut graph = GraphProto {
            initializer: vec![TensorProto {
                name: "w_q".into(),
                dims: vec![64, 32],
                data_type: 3,
                ..Default::default()
            }],
            node: vec![NodeProto {
                op_type: "DequantizeLinear".into(),
                input: vec!["w_q".into(), "scale".into(), "zero".into()],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(qdq_weights(&graph), Some((1, 64 * 32)));
        // Activations quantized at run time are not weights.
        graph.node[0].input[0] = "activations".into();
        assert_eq!(qdq_weights(&graph), None);
    }
}
