#!/usr/bin/env python3
"""Turn a Hugging Face VisionEncoderDecoder checkpoint into a glance model directory.

What a user with internet (or a local checkpoint) runs:

    python scripts/export.py microsoft/trocr-small-printed out/trocr-small \
        --dtypes fp32,q8 --layout transformers.js --check samples/line.png

Steps:
  1. Optimum export (`image-to-text-with-past`): encoder_model, decoder_model,
     decoder_with_past_model, decoder_model_merged (fp32).
  2. q8 / int8 / uint8: onnxruntime dynamic quantization of the split files (MatMulInteger,
     DynamicQuantizeLinear, ConvInteger), then the merged file is rebuilt from them (quantize_dynamic
     does not reach weights used inside the merged file's If branches).
  3. fp16: onnxruntime.transformers.float16 with fp16 inputs and outputs.
  4. The files are laid out as Optimum does (beside the configs) or as transformers.js does (under
     onnx/ with dtype suffixes); --decoders chooses which decoder files to keep.
  5. --split-visual-tokenizer (ViT/DeiT encoders): each encoder file is cut at the Add of the
     position-embedding initializer into visual_tokenizer{sfx}.onnx (pixel_values -> embeddings, the
     class/distillation token(s) concatenated with the patch embeddings), position_embeddings{sfx}.npy
     (the initializer, float32 [1, K+N0, D]) and encoder_model{sfx}.onnx (inputs_embeds = embeddings +
     position embeddings -> last_hidden_state), so that a runtime can interpolate the position embeddings
     for other input sizes (see split_visual_tokenizer()).
  6. --check IMAGE: glance's tokens (greedy) against onnxruntime's on the same files, per dtype.
     onnxruntime on x86 CPUs without VNNI saturates uint8 x int8 products (VPMADDUBSW), so q8/int8
     files may legitimately differ there; the check then also runs the ONNX reference evaluator
     (exact specification arithmetic) on the differing image when --reference is given.

Needs: torch, transformers 4.57, optimum 2.1 + optimum-onnx 0.1, onnx, onnxruntime (see
../shared/docs/fixtures.md); `cargo build --release` for the check (or --glance PATH).
"""
import argparse
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

SPLIT = ["encoder_model", "decoder_model", "decoder_with_past_model"]
ALL = SPLIT + ["decoder_model_merged"]
SUFFIX = {"fp32": "", "fp16": "_fp16", "q8": "_quantized", "int8": "_int8", "uint8": "_uint8"}
CONFIGS = ["config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json",
           "tokenizer_config.json", "special_tokens_map.json"]


def optimum_export(model: str, out: Path, opset: int):
    from optimum.exporters.onnx import main_export
    main_export(model, output=out, task="image-to-text-with-past", opset=opset, device="cpu")


def merge(decoder: Path, with_past: Path, out: Path):
    from optimum.onnx import merge_decoders
    merge_decoders(str(decoder), str(with_past), save_path=str(out), strict=False)


def quantize(work: Path, dtype: str):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    logging.getLogger().setLevel(logging.ERROR)
    weight_type = QuantType.QUInt8 if dtype == "uint8" else QuantType.QInt8
    sfx = SUFFIX[dtype]
    for n in SPLIT:
        quantize_dynamic(str(work / f"{n}.onnx"), str(work / f"{n}{sfx}.onnx"), weight_type=weight_type)
    merge(work / f"decoder_model{sfx}.onnx", work / f"decoder_with_past_model{sfx}.onnx",
          work / f"decoder_model_merged{sfx}.onnx")


def to_fp16(work: Path):
    from onnxruntime.transformers.float16 import convert_float_to_float16
    for n in SPLIT:
        m = onnx.load(str(work / f"{n}.onnx"))
        m.graph.ClearField("value_info")
        onnx.save(convert_float_to_float16(m, keep_io_types=False), str(work / f"{n}_fp16.onnx"))
    merge(work / "decoder_model_fp16.onnx", work / "decoder_with_past_model_fp16.onnx",
          work / "decoder_model_merged_fp16.onnx")


class SplitError(ValueError):
    """The encoder graph cannot be cut at a position-embedding Add."""


def _const_array(name, inits, producers):
    """The value of tensor `name` if it is an initializer, a Constant node's `value`, or an Identity of
    either; else None."""
    from onnx import numpy_helper
    for _ in range(16):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
            return None
        if node.op_type != "Identity":
            return None
        name = node.input[0]
    return None


def _is_square(n: int) -> bool:
    return n > 0 and int(round(n ** 0.5)) ** 2 == n


def find_position_add(model: onnx.ModelProto) -> dict:
    """The Add of a ViT/DeiT encoder that adds the position-embedding initializer: one input is a constant
    float tensor of shape [1, K + N0, D] with K in {1, 2} leading tokens (class; DeiT also distillation) and
    N0 a square number of patches, the other the concatenation of those tokens with the patch embeddings.
    Raises SplitError when there is none (or no unique one)."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output if o}
    found = []
    for n in g.node:
        if n.op_type != "Add" or len(n.input) != 2:
            continue
        for side in (0, 1):
            pos = _const_array(n.input[side], inits, producers)
            other = n.input[1 - side]
            if pos is None or pos.ndim != 3 or pos.shape[0] != 1 or pos.dtype.kind != "f":
                continue
            if _const_array(other, inits, producers) is not None:
                continue
            t = pos.shape[1]
            ks = [k for k in (1, 2) if _is_square(t - k)]
            src = producers.get(other)
            if src is not None and src.op_type == "Concat":
                # cls (+ dist) tokens and the patch embeddings: K = number of Concat inputs - 1
                ks = [k for k in ks if k == len(src.input) - 1] or ks
            if len(ks) != 1:
                continue
            found.append({"node": n, "embeddings": other, "position_name": n.input[side], "position": pos,
                          "k": ks[0], "concat": src is not None and src.op_type == "Concat"})
    if len(found) > 1:  # prefer the Add fed by the token Concat
        found = [f for f in found if f["concat"]] or found
    if not found:
        raise SplitError("no Add of a [1, K+N0, D] float constant (K = 1 or 2 leading tokens, N0 a square number "
                         "of patches) to a computed tensor: not a ViT/DeiT-style encoder with a position-embedding "
                         "initializer")
    if len(found) > 1:
        raise SplitError("several candidate position-embedding Adds: " + ", ".join(f["node"].name for f in found))
    return found[0]


def _node_refs(node) -> list:
    """Tensor names a node reads, including outer-scope names used inside its subgraphs (If/Loop/Scan)."""
    refs = list(node.input)
    for a in node.attribute:
        graphs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
        for sg in graphs:
            for sn in sg.node:
                refs.extend(_node_refs(sn))
    return [r for r in refs if r]


def _closure(graph, outputs, stop) -> list:
    """Indices (graph order) of the nodes needed to compute `outputs`, not looking past tensors in `stop`."""
    producers = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    keep, seen, todo = set(), set(), list(outputs)
    while todo:
        t = todo.pop()
        if t in seen or t in stop:
            continue
        seen.add(t)
        i = producers.get(t)
        if i is None or i in keep:
            continue
        keep.add(i)
        todo.extend(_node_refs(graph.node[i]))
    return sorted(keep)


def _sub_model(model, node_idx, inputs, outputs, rename: dict, doc: str):
    """A model made of some of `model`'s nodes (in the original, topological order) with tensor names
    renamed per `rename`, the initializers they read, and the given graph inputs/outputs."""
    import copy
    from onnx import helper
    g = model.graph
    nodes = []
    for i in node_idx:
        n = copy.deepcopy(g.node[i])
        for j, x in enumerate(n.input):
            n.input[j] = rename.get(x, x)
        for j, x in enumerate(n.output):
            n.output[j] = rename.get(x, x)
        nodes.append(n)
    refs = {r for n in nodes for r in _node_refs(n)}
    produced = {o for n in nodes for o in n.output}
    inits = [copy.deepcopy(i) for i in g.initializer if i.name in refs]
    free = refs - produced - {i.name for i in inits} - {i.name for i in inputs}
    if free:
        raise SplitError(f"the cut graph would still need {sorted(free)[:5]} (not an input of this part)")
    names = refs | produced
    vis = [copy.deepcopy(v) for v in g.value_info if rename.get(v.name, v.name) in names]
    for v in vis:
        v.name = rename.get(v.name, v.name)
    graph = helper.make_graph(nodes, g.name, inputs, outputs, initializer=inits, value_info=vis)
    m = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                          producer_name=model.producer_name, producer_version=model.producer_version,
                          doc_string=doc)
    m.functions.extend(model.functions)
    for p in model.metadata_props:
        m.metadata_props.add(key=p.key, value=p.value)
    onnx.checker.check_model(m, full_check=True)
    return m


def split_visual_tokenizer(encoder_onnx: Path, out_dir: Path, suffix: str = "", verify: bool = True) -> dict:
    """Cut a Hugging Face ViT/DeiT encoder graph (Optimum's encoder_model.onnx) at the Add of its
    position-embedding initializer and write to out_dir:

      visual_tokenizer{suffix}.onnx    pixel_values [batch, 3, height, width] -> embeddings [batch, K+N, D]:
                                       the class (DeiT: + distillation) token(s) concatenated with the patch
                                       embeddings, i.e. the tensor right before the Add
      position_embeddings{suffix}.npy  the initializer, float32 [1, K+N0, D] (K = 1 ViT, 2 DeiT;
                                       N0 = (image_size / patch_size)^2)
      encoder_model{suffix}.onnx       inputs_embeds [batch, K+N, D] (= embeddings + position embeddings, the
                                       Add's output) -> the original outputs (last_hidden_state)

    encoder_onnx may be out_dir/encoder_model{suffix}.onnx itself (it is read before anything is written).
    Batch, height, width and the token count stay dynamic. With verify, onnxruntime runs the parts at the
    native size (seeded random pixels, batch 2): tokenizer -> + position embeddings -> encoder must equal the
    unsplit encoder (max abs diff < 1e-5, fp16 1e-2); raises otherwise. Returns a summary dict."""
    from onnx import helper
    encoder_onnx, out_dir = Path(encoder_onnx), Path(out_dir)
    orig_bytes = encoder_onnx.read_bytes()
    model = onnx.load_from_string(orig_bytes)
    g = model.graph
    found = find_position_add(model)
    add, emb, pos, k = found["node"], found["embeddings"], found["position"], found["k"]
    added = add.output[0]
    t, d = int(pos.shape[1]), int(pos.shape[2])
    graph_inputs = [i for i in g.input if i.name not in {x.name for x in g.initializer}]
    if len(graph_inputs) != 1:
        raise SplitError(f"expected one graph input (pixel_values), got {[i.name for i in graph_inputs]}")
    pix = graph_inputs[0]
    pdims = pix.type.tensor_type.shape.dim
    batch = (pdims[0].dim_param or "batch_size") if len(pdims) else "batch_size"
    elem = pix.type.tensor_type.elem_type
    tokens = "num_tokens"

    # visual tokenizer: everything that feeds the embeddings operand of the Add
    tok_idx = _closure(g, [emb], stop=set())
    tok_out = helper.make_tensor_value_info("embeddings", elem, [batch, tokens, d])
    tok = _sub_model(model, tok_idx, [pix], [tok_out], {emb: "embeddings"},
                     f"visual tokenizer cut from {encoder_onnx.name}: pixel_values -> the {k} leading token(s) "
                     f"concatenated with the patch embeddings, before the position-embedding Add")
    # rest: everything after the Add
    outs = [o.name for o in g.output]
    rest_idx = _closure(g, outs, stop={added})
    if any(i in rest_idx for i in tok_idx if g.node[i].op_type not in ("Constant", "Identity")):
        shared = [g.node[i].name for i in tok_idx if i in rest_idx and g.node[i].op_type not in ("Constant", "Identity")]
        raise SplitError(f"the layers after the position Add also read tensors computed before it: {shared[:5]}")
    enc_in = helper.make_tensor_value_info("inputs_embeds", elem, [batch, tokens, d])
    import copy
    enc = _sub_model(model, rest_idx, [enc_in], [copy.deepcopy(o) for o in g.output], {added: "inputs_embeds"},
                     f"encoder cut from {encoder_onnx.name}: inputs_embeds (= visual tokenizer embeddings + "
                     f"position embeddings) -> {', '.join(outs)}")

    # native size from the patch Conv (ConvInteger in dynamically quantized files)
    patch = None
    for n in tok.graph.node:
        if n.op_type in ("Conv", "ConvInteger", "QLinearConv") and patch is None:
            patch = next((list(a.ints) for a in n.attribute if a.name == "strides"), None)
    grid = int(round((t - k) ** 0.5))
    info = {"k": k, "n0": t - k, "grid": [grid, grid], "hidden": d, "patch": patch,
            "native_size": [grid * patch[0], grid * patch[1]] if patch else None,
            "add_node": add.name, "position_initializer": found["position_name"],
            "tokenizer_nodes": len(tok.graph.node), "encoder_nodes": len(enc.graph.node)}

    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(tok, str(out_dir / f"visual_tokenizer{suffix}.onnx"))
    np.save(out_dir / f"position_embeddings{suffix}.npy", np.ascontiguousarray(pos.astype("<f4")))
    onnx.save(enc, str(out_dir / f"encoder_model{suffix}.onnx"))

    if verify and info["native_size"]:
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        sess = lambda b: ort.InferenceSession(b, so, providers=["CPUExecutionProvider"])  # noqa: E731
        full = sess(orig_bytes)
        s_tok = sess(str(out_dir / f"visual_tokenizer{suffix}.onnx"))
        s_enc = sess(str(out_dir / f"encoder_model{suffix}.onnx"))
        dt = np.float16 if elem == onnx.TensorProto.FLOAT16 else np.float32
        chans = pdims[1].dim_value if len(pdims) > 1 and pdims[1].dim_value else 3
        x = np.random.default_rng(0).uniform(-1, 1, (2, chans, *info["native_size"])).astype(dt)
        want = full.run(None, {pix.name: x})
        e = s_tok.run(None, {pix.name: x})[0]
        got = s_enc.run(None, {"inputs_embeds": (e + pos.astype(dt)).astype(dt)})
        diff = max(float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) for a, b in zip(want, got))
        info["verify_max_abs_diff"] = diff
        info["embeddings_shape"] = list(e.shape)
        tol = 1e-2 if dt == np.float16 else 1e-5
        if not diff < tol:
            raise SplitError(f"split check failed: tokenizer -> + position embeddings -> encoder differs from the "
                             f"unsplit encoder by {diff:.3g} (>= {tol})")
    return info


def lay_out(work: Path, out: Path, dtypes, layout: str, decoders: str):
    graphs = out / "onnx" if layout == "transformers.js" else out
    graphs.mkdir(parents=True, exist_ok=True)
    for c in CONFIGS:
        if (work / c).exists():
            shutil.copy(work / c, out / c)
    keep = ["encoder_model"]
    if decoders in ("split", "both"):
        keep += ["decoder_model", "decoder_with_past_model"]
    if decoders in ("merged", "both"):
        keep += ["decoder_model_merged"]
    for dt in dtypes:
        for n in keep:
            shutil.copy(work / f"{n}{SUFFIX[dt]}.onnx", graphs / f"{n}{SUFFIX[dt]}.onnx")


def glance_tokens(glance: str, model: Path, image: Path, dtype: str, max_new: int):
    out = subprocess.run([glance, "run", "--model", str(model), "--dtype", dtype, "--json", "--num-beams", "1",
                          "--max-new-tokens", str(max_new), "--ignore-generation-config", str(image)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.splitlines()[0])["tokens"]


def ort_greedy(work: Path, dtype: str, pixel_values: np.ndarray, start: int, eos: int, max_new: int):
    """onnxruntime greedy decoding on the split files (cross-attention K/V from the first step kept)."""
    import onnxruntime as ort
    sfx = SUFFIX[dtype]
    sess = {n: ort.InferenceSession(str(work / f"{n}{sfx}.onnx"), providers=["CPUExecutionProvider"]) for n in SPLIT}
    fdt = np.float16 if dtype == "fp16" else np.float32
    enc = sess["encoder_model"].run(None, {"pixel_values": pixel_values.astype(fdt)})[0]
    ids, past = [start], None
    for _ in range(max_new):
        s = sess["decoder_model"] if past is None else sess["decoder_with_past_model"]
        feeds = {}
        for i in s.get_inputs():
            if i.name == "input_ids":
                feeds[i.name] = np.array([ids if past is None else ids[-1:]], dtype=np.int64)
            elif i.name == "encoder_hidden_states":
                feeds[i.name] = enc
            else:
                feeds[i.name] = past[i.name]
        outs = s.run(None, feeds)
        names = [o.name for o in s.get_outputs()]
        new = dict(past or {})
        for n, v in zip(names, outs):
            if n.startswith("present."):
                new[n.replace("present.", "past_key_values.", 1)] = v
        past = new
        t = int(np.argmax(outs[names.index("logits")][0, -1]))
        ids.append(t)
        if t == eos:
            break
    return ids


def check(work: Path, out: Path, dtypes, image: Path, glance: str, max_new: int):
    from PIL import Image, ImageOps
    from transformers import AutoImageProcessor
    proc = AutoImageProcessor.from_pretrained(work, use_fast=False)
    img = ImageOps.exif_transpose(Image.open(image)).convert("RGB")
    pv = proc(images=img, return_tensors="np")["pixel_values"].astype(np.float32)
    gen = json.loads((work / "generation_config.json").read_text())
    start = gen.get("decoder_start_token_id", gen.get("bos_token_id"))
    eos = gen["eos_token_id"]
    eos = eos[0] if isinstance(eos, list) else eos
    ok = True
    for dt in dtypes:
        want = ort_greedy(work, dt, pv, start, eos, max_new)
        got = glance_tokens(glance, out, image, dt, max_new)
        same = got == want
        ok &= same or dt in ("q8", "int8")
        print(f"check {dt:6}: glance {'==' if same else '!='} onnxruntime ({len(got)} tokens)")
        if not same:
            print(f"  glance      {got}\n  onnxruntime {want}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a Hugging Face hub id or a local save_pretrained directory")
    ap.add_argument("out", type=Path)
    ap.add_argument("--dtypes", default="fp32,q8", help="comma-separated: fp32, fp16, q8, int8, uint8")
    ap.add_argument("--layout", choices=["optimum", "transformers.js"], default="optimum")
    ap.add_argument("--decoders", choices=["split", "merged", "both"], default="both",
                    help="which decoder files to keep (merged alone is smallest: one copy of the decoder weights)")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--work", type=Path, help="folder for intermediate files (default: OUT.work)")
    ap.add_argument("--check", type=Path, metavar="IMAGE", help="compare glance with onnxruntime on this image")
    ap.add_argument("--glance", default="target/release/glance")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--copy", nargs="*", default=[], help="extra files of the model directory to copy into OUT")
    ap.add_argument("--split-visual-tokenizer", action="store_true",
                    help="ViT/DeiT encoders: cut each encoder_model{sfx}.onnx into visual_tokenizer{sfx}.onnx "
                         "(pixel_values -> embeddings before the position Add), position_embeddings{sfx}.npy and "
                         "encoder_model{sfx}.onnx (inputs_embeds -> last_hidden_state), checked with onnxruntime")
    args = ap.parse_args()

    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    unknown = [d for d in dtypes if d not in SUFFIX]
    if unknown:
        sys.exit(f"unknown dtype(s): {unknown}")
    work = args.work or args.out.with_name(args.out.name + ".work")
    if work.exists():
        shutil.rmtree(work)
    optimum_export(args.model, work, args.opset)
    for dt in dtypes:
        if dt in ("q8", "int8", "uint8"):
            quantize(work, dt)
        elif dt == "fp16":
            to_fp16(work)
    if args.out.exists():
        shutil.rmtree(args.out)
    lay_out(work, args.out, dtypes, args.layout, args.decoders)
    for extra in args.copy:
        shutil.copy(Path(args.model) / extra, args.out / extra)
    if args.split_visual_tokenizer:
        graphs = args.out / "onnx" if args.layout == "transformers.js" else args.out
        for dt in dtypes:
            info = split_visual_tokenizer(graphs / f"encoder_model{SUFFIX[dt]}.onnx", graphs, SUFFIX[dt])
            print(f"split {dt}: {info['add_node']} adds {info['position_initializer']} [1, {info['k']}+{info['n0']}, "
                  f"{info['hidden']}] ({info['k']} leading token(s), grid {info['grid']}, patch {info['patch']}); "
                  f"onnxruntime at {info['native_size']}: visual_tokenizer -> + position_embeddings -> encoder_model "
                  f"vs unsplit encoder max abs diff {info.get('verify_max_abs_diff', float('nan')):.2e}")
    print(f"wrote {args.out}")
    for p in sorted(args.out.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(args.out)}  {p.stat().st_size / 1e6:.2f} MB")
    if args.check and not check(work, args.out, dtypes, args.check, args.glance, args.max_new_tokens):
        sys.exit("glance and onnxruntime disagree")


if __name__ == "__main__":
    main()
