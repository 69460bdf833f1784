#!/usr/bin/env python3
"""glance vs onnxruntime on the same model directory, image, thread count and number of generated tokens.

    /work/venv/bin/python scripts/bench_vs_ort.py --model DIR [--dtype fp32|q8] [--threads 1] [--tokens 32]
        [--runs 5] [--beams 1,4] [--glance PATH] [--image PATH] [--json OUT]

What runs
---------
Both sides run as FRESH PROCESSES, alternately: for each of --runs rounds and each beam count B in --beams,
  1. `glance bench --model DIR --dtype D --decoder split --threads T --runs 1 --warmup 1 --num-beams B
      --min-new-tokens N --max-new-tokens N --json IMAGE`   (load, 1 unmeasured + 1 measured generation)
  2. this script in a child process (`--child`): import, read + preprocess the image, create the onnxruntime
     sessions, 1 unmeasured + 1 measured generation, report timings and /proc/self/status memory.
So glance, ort, glance, ort, ...; each process does exactly the same work (load + warm-up + one measured run), and
every figure in the table is a median over the --runs rounds. (One `glance bench --runs R` would amortise process
start-up but could not alternate with onnxruntime run by run; a fresh process per round also gives a fresh peak RSS.)

onnxruntime side: CPUExecutionProvider, intra_op_num_threads=T, inter_op_num_threads=1, sequential execution,
ORT_ENABLE_ALL graph optimisations. The SPLIT decoder files are used as optimum's ORTModelForVision2Seq does
(decoder_model at step 0, decoder_with_past_model afterwards, present.* -> past_key_values.*; TrOCR-style decoders keep
the step-0 cross-attention K/V, GPT-2-style decoders get encoder_hidden_states every step), with this script's own loop
on numpy arrays (plain InferenceSession.run, as optimum does on CPU without IO binding). Preprocessing: the model's
Hugging Face image processor (AutoImageProcessor, slow/PIL class) on the PIL image (EXIF-transposed, RGB).
  - greedy (B = 1): argmax with the EOS logit set to -inf until N tokens -> exactly N tokens.
  - beam (B > 1): this script's own simple beam loop (not HF's generate): step 0 on batch 1, top-B of log-softmax, then
    the past is repeated to B rows; each later step scores B x vocab candidates (log-softmax + beam score), keeps the
    best B, and reorders the self-attention K/V with np.take on the batch axis (the cross-attention K/V are the same
    for every beam and are not reordered). EOS suppressed throughout, so there are no finished hypotheses and no
    length penalty to apply: the result is the best of B beams after exactly N tokens.
  - repetition_penalty and no_repeat_ngram_size from generation_config.json are applied (glance bench applies the
    model's generation_config.json too); other generation settings there are reported and ignored.
glance side: `--decoder split` (same files as onnxruntime; --glance-decoder changes it); --glance-args adds options
(e.g. '--compute int8'). The binary is hard-linked to a temporary folder at the start (cargo replaces
target/*/glance on every build, so a rebuild during the benchmark would otherwise mix builds; --no-snapshot runs it in
place and warns when it changed). Default binary: the newer of target/release/glance and target/debug/glance -- note
that a debug build compiles glance's own code (preprocessing, logits processing, beam search) at opt-level 0 even when
the dependencies (tract) are optimised, which inflates glance's preprocess and per-token figures.

Figures (medians)
-----------------
  end-to-end ms         preprocessing of the decoded image + generation (encoder + N tokens), model loaded. This is
                        glance bench's total_ms, which decodes the image file once before its runs; the onnxruntime
                        child measures the same span. Decoding the image file itself is not in either figure (the
                        child reports it separately as image_decode_ms).
  preprocess ms         image processor / glance preprocess on the decoded image
  encoder ms            encoder run (glance: encode_ms)
  first token ms        from the start of generation (encoder included) to the first token
  decode ms/token       greedy: (generation end - first token) / (N - 1)
  beam-B ms/token       (generation - encoder) / N
  load ms               model/sessions load in a fresh process (glance: load_ms)
  RSS after load, peak RSS   /proc/self/status VmRSS right after load, VmHWM at the end (glance: rss_after_load_bytes,
                        peak_rss_bytes). The onnxruntime child is a Python process: its RSS before creating sessions
                        (interpreter, numpy, transformers' image processor, decoded image) is shown as its own row;
                        the child imports transformers with USE_TORCH=0 (torch alone would add ~600 MB).
The ratio column is glance / onnxruntime (< 1: glance is faster / smaller). On a small shared machine these numbers are
noisy (other processes, frequency scaling): read medians only, and rerun before trusting a few-percent difference.
The decoded text of both sides is compared (a sanity check that both ran the same model the same way; q8 files can
legitimately differ because onnxruntime without VNNI saturates uint8 x int8 products).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIX = {"fp32": "", "fp16": "_fp16", "q8": "_quantized", "int8": "_int8", "uint8": "_uint8"}
SPLIT = ["encoder_model", "decoder_model", "decoder_with_past_model"]
HANDLED_GEN_KEYS = {"decoder_start_token_id", "bos_token_id", "eos_token_id", "pad_token_id", "transformers_version",
                    "repetition_penalty", "no_repeat_ngram_size", "_from_model_config",
                    # overridden by the command line (--num-beams, --min/--max-new-tokens) or without effect when
                    # EOS is suppressed until exactly N tokens:
                    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "num_beams", "length_penalty",
                    "early_stopping"}


def mem(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def graphs_dir(model: Path, sfx: str) -> Path:
    """Optimum flat layout (files beside the configs) or transformers.js (under onnx/)."""
    if (model / f"encoder_model{sfx}.onnx").exists():
        return model
    if (model / "onnx" / f"encoder_model{sfx}.onnx").exists():
        return model / "onnx"
    raise SystemExit(f"no encoder_model{sfx}.onnx in {model} or {model / 'onnx'}")


# ----------------------------------------------------------------------------------------------
# onnxruntime child: load + warm-up + one measured generation
# ----------------------------------------------------------------------------------------------

class OrtModel:
    def __init__(self, model: Path, dtype: str, threads: int):
        import onnxruntime as ort
        self.np = __import__("numpy")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        g = graphs_dir(model, SUFFIX[dtype])
        self.weights_bytes = sum((g / f"{n}{SUFFIX[dtype]}.onnx").stat().st_size for n in SPLIT)
        self.sess = {n: ort.InferenceSession(str(g / f"{n}{SUFFIX[dtype]}.onnx"), so, providers=["CPUExecutionProvider"])
                     for n in SPLIT}
        enc_in = self.sess["encoder_model"].get_inputs()[0]
        self.pix_name = enc_in.name
        self.fdt = self.np.float16 if enc_in.type == "tensor(float16)" else self.np.float32
        self.in_names = {n: [i.name for i in s.get_inputs()] for n, s in self.sess.items()}
        self.out_names = {n: [o.name for o in s.get_outputs()] for n, s in self.sess.items()}

    def encode(self, pv):
        return self.sess["encoder_model"].run(None, {self.pix_name: pv.astype(self.fdt)})[0]

    def step(self, ids_last, enc, past):
        """One decoder call. ids_last: int64 [rows, k]; past None at step 0. Returns float32 logits [rows, V] of the
        last position and the new past dict (with_past files do not return the encoder K/V: the old ones are kept)."""
        np = self.np
        name = "decoder_model" if past is None else "decoder_with_past_model"
        feeds = {}
        for n in self.in_names[name]:
            if n == "input_ids":
                feeds[n] = ids_last
            elif n == "encoder_hidden_states":
                feeds[n] = enc
            elif n == "encoder_attention_mask":
                feeds[n] = np.ones(enc.shape[:2], dtype=np.int64)
            else:
                feeds[n] = past[n]
        outs = self.sess[name].run(None, feeds)
        new = dict(past or {})
        logits = None
        for n, v in zip(self.out_names[name], outs):
            if n == "logits":
                logits = v[:, -1].astype(np.float32)
            elif n.startswith("present."):
                new["past_key_values." + n[len("present."):]] = v
        return logits, new


def process_scores(np, scores, seqs, start_len, gen, eos, n_new):
    """HF-style processors on [rows, V] scores (in place): repetition_penalty, no_repeat_ngram_size, EOS suppressed
    until n_new tokens (always, here: generation stops at n_new)."""
    rp = gen.get("repetition_penalty")
    if rp and rp != 1.0:
        for r, s in enumerate(seqs):
            idx = np.unique(np.asarray(s, dtype=np.int64))
            v = scores[r, idx]
            scores[r, idx] = np.where(v < 0, v * rp, v / rp)
    ng = gen.get("no_repeat_ngram_size")
    if ng and ng > 0:
        for r, s in enumerate(seqs):
            if len(s) + 1 < ng:
                continue
            prefix = tuple(s[len(s) - ng + 1:]) if ng > 1 else ()
            banned = [s[i + ng - 1] for i in range(len(s) - ng + 1) if tuple(s[i:i + ng - 1]) == prefix]
            if banned:
                scores[r, banned] = -np.inf
    del start_len, n_new  # EOS is always suppressed below: every run stops at exactly n_new tokens
    for e in eos:
        scores[:, e] = -np.inf
    return scores


def log_softmax(np, x):
    m = x.max(axis=-1, keepdims=True)
    y = x - m
    return y - np.log(np.exp(y).sum(axis=-1, keepdims=True))


def ort_generate(m: OrtModel, pv, start: list, eos: list, gen: dict, n_new: int, beams: int) -> dict:
    np = m.np
    t0 = time.perf_counter()
    enc = m.encode(pv)
    t_enc = time.perf_counter()
    seq = list(start)
    logits, past = m.step(np.array([seq], dtype=np.int64), enc, None)
    if beams == 1:
        t_first = None
        for i in range(n_new):
            if i > 0:
                logits, past = m.step(np.array([[seq[-1]]], dtype=np.int64), enc, past)
            s = process_scores(np, logits, [seq], len(start), gen, eos, n_new)
            seq.append(int(np.argmax(s[0])))
            if t_first is None:
                t_first = time.perf_counter()
        t_end = time.perf_counter()
        tokens = seq[len(start):]
    else:
        lp = process_scores(np, log_softmax(np, logits), [seq], len(start), gen, eos, n_new)[0]
        top = np.argsort(-lp, kind="stable")[:beams]
        scores = lp[top].astype(np.float64)
        seqs = [seq + [int(t)] for t in top]
        t_first = time.perf_counter()
        # repeat every past tensor (and encoder_hidden_states for GPT-2-style decoders) to `beams` rows
        past = {k: np.repeat(v, beams, axis=0) for k, v in past.items()}
        enc_b = np.repeat(enc, beams, axis=0)
        self_keys = [k for k in past if ".encoder." not in k]
        for _ in range(n_new - 1):
            logits, past = m.step(np.array([[s[-1]] for s in seqs], dtype=np.int64), enc_b, past)
            lp = process_scores(np, log_softmax(np, logits), seqs, len(start), gen, eos, n_new)
            cand = (lp + scores[:, None]).reshape(-1)
            best = np.argpartition(-cand, beams)[:beams]
            best = best[np.argsort(-cand[best], kind="stable")]
            src, tok = best // lp.shape[1], best % lp.shape[1]
            scores = cand[best].astype(np.float64)
            seqs = [seqs[b] + [int(t)] for b, t in zip(src, tok)]
            if not np.array_equal(src, np.arange(beams)):
                for k in self_keys:
                    past[k] = np.take(past[k], src, axis=0)
        t_end = time.perf_counter()
        tokens = seqs[int(np.argmax(scores))][len(start):]
    ms = lambda a, b: (b - a) * 1000.0  # noqa: E731
    gen_ms = ms(t0, t_end)
    out = {"encode_ms": ms(t0, t_enc), "first_token_ms": ms(t0, t_first), "generate_ms": gen_ms,
           "tokens": tokens, "tokens_generated": len(tokens)}
    if beams == 1:
        out["decode_ms_per_token"] = ms(t_first, t_end) / max(1, len(tokens) - 1)
    else:
        out["beam_ms_per_token"] = (gen_ms - out["encode_ms"]) / max(1, len(tokens))
    return out


def model_ids(model: Path):
    gen_path, cfg = model / "generation_config.json", json.loads((model / "config.json").read_text())
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    start = gen.get("decoder_start_token_id", cfg.get("decoder_start_token_id"))
    if start is None:
        start = gen.get("bos_token_id", cfg.get("decoder", {}).get("bos_token_id"))
    eos = gen.get("eos_token_id", cfg.get("eos_token_id", cfg.get("decoder", {}).get("eos_token_id")))
    eos = eos if isinstance(eos, list) else [eos]
    return [int(start)], [int(e) for e in eos if e is not None], gen


def child(args) -> dict:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # transformers imports torch when it is installed (~600 MB of RSS); the slow image processors need only numpy/PIL.
    for k in ("USE_TORCH", "USE_TF", "USE_FLAX"):
        os.environ.setdefault(k, "0")
    t_start = time.perf_counter()
    import numpy as np
    from PIL import Image, ImageOps
    from transformers import AutoImageProcessor
    model = Path(args.model)
    proc = AutoImageProcessor.from_pretrained(model, use_fast=False)
    start, eos, gen = model_ids(model)
    t = time.perf_counter()
    img = ImageOps.exif_transpose(Image.open(args.image)).convert("RGB")
    image_decode_ms = (time.perf_counter() - t) * 1000.0
    import_ms = (t - t_start) * 1000.0
    rss_before = mem("VmRSS")
    t = time.perf_counter()
    m = OrtModel(model, args.dtype, args.threads)
    load_ms = (time.perf_counter() - t) * 1000.0
    rss_after_load = mem("VmRSS")
    res = None
    for _ in range(args.warmup + 1):
        t = time.perf_counter()
        pv = proc(images=img, return_tensors="np")["pixel_values"].astype(np.float32)
        pre_ms = (time.perf_counter() - t) * 1000.0
        res = ort_generate(m, pv, start, eos, gen, args.tokens, args.beams)
        res["preprocess_ms"] = pre_ms
        res["total_ms"] = pre_ms + res["generate_ms"]
    tok_path = model / "tokenizer.json"
    text = None
    if tok_path.exists():
        from tokenizers import Tokenizer
        text = Tokenizer.from_file(str(tok_path)).decode(res["tokens"], skip_special_tokens=True)
    res.update(weights_bytes=m.weights_bytes, load_ms=load_ms, import_ms=import_ms, image_decode_ms=image_decode_ms, rss_before_sessions_bytes=rss_before,
               rss_after_load_bytes=rss_after_load, peak_rss_bytes=mem("VmHWM"), text=text, beams=args.beams,
               pixel_values_shape=list(pv.shape))
    return res


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------

def run_glance(args, beams: int) -> dict:
    cmd = [args.glance, "bench", "--model", str(args.model), "--dtype", args.dtype, "--threads", str(args.threads),
           "--runs", "1", "--warmup", str(args.warmup), "--num-beams", str(beams),
           "--min-new-tokens", str(args.tokens), "--max-new-tokens", str(args.tokens), "--json", str(args.image)]
    if args.glance_decoder:
        cmd[2:2] = ["--decoder", args.glance_decoder]
    cmd[2:2] = shlex.split(args.glance_args)
    binary = glance_binary(args.glance)
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    wall = (time.perf_counter() - t) * 1000.0
    if glance_binary(args.glance) != binary:
        binary = "changed during the run"
    if r.returncode != 0:
        return {"error": f"exit {r.returncode}: {(r.stderr or r.stdout).strip()[-3000:]}", "cmd": " ".join(cmd),
                "glance_binary": binary}
    line = next((ln for ln in reversed(r.stdout.splitlines()) if ln.startswith("{")), None)
    if line is None:
        return {"error": f"no JSON in output: {r.stdout[-2000:]} {r.stderr[-2000:]}", "cmd": " ".join(cmd)}
    d = json.loads(line)
    d["process_wall_ms"] = wall
    d["glance_binary"] = binary
    n = max(1, d.get("tokens_generated") or 1)
    d["beam_ms_per_token"] = (d["total_ms"] - d["preprocess_ms"] - d["encode_ms"]) / n
    return d


def glance_binary(path: str) -> str:
    """Identity of the glance executable (it may be rebuilt while a benchmark runs)."""
    try:
        st = os.stat(shutil.which(path) or path)
        return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st.st_mtime))} {st.st_size} bytes"
    except (OSError, TypeError):
        return "?"


def run_child(args, beams: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", str(args.model), "--dtype", args.dtype,
           "--threads", str(args.threads), "--tokens", str(args.tokens), "--warmup", str(args.warmup),
           "--image", str(args.image), "--beams", str(beams)]
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(args.threads), USE_TORCH="0", USE_TF="0", USE_FLAX="0")
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    wall = (time.perf_counter() - t) * 1000.0
    if r.returncode != 0:
        return {"error": f"exit {r.returncode}: {r.stderr.strip()[-3000:]}", "cmd": " ".join(cmd)}
    d = json.loads(r.stdout.strip().splitlines()[-1])
    d["process_wall_ms"] = wall
    return d


def med(samples, key):
    v = [s[key] for s in samples if "error" not in s and s.get(key) is not None]
    return statistics.median(v) if v else None


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "MB":
        return f"{v / 1e6:.1f}"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--dtype", default="fp32", choices=list(SUFFIX))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", type=int, default=32, help="tokens generated per run (EOS suppressed until then)")
    ap.add_argument("--runs", type=int, default=5, help="alternation rounds (each: one glance, one ort process per beam count)")
    ap.add_argument("--beams", default="1,4", help="comma-separated beam counts (1 = greedy)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured generations per process before the measured one")
    built = [p for p in (ROOT / "target" / "release" / "glance", ROOT / "target" / "debug" / "glance") if p.exists()]
    default_glance = max(built, key=lambda p: p.stat().st_mtime) if built else Path("glance")
    ap.add_argument("--glance", default=str(default_glance),
                    help="glance binary (default: the newer of target/release/glance and target/debug/glance)")
    ap.add_argument("--glance-decoder", default="split", help="glance --decoder (split: the files onnxruntime runs; "
                    "'' lets glance choose)")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run --glance in place (default: a hard link taken at the start, so that a rebuild during "
                         "the benchmark does not mix builds)")
    ap.add_argument("--glance-args", default="", help="extra options for glance bench, e.g. '--compute f32'")
    ap.add_argument("--image", type=Path, default=ROOT / "tests" / "fixtures" / "images" / "rgb.png")
    ap.add_argument("--json", type=Path, help="write all samples and medians here")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per process")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        args.beams = int(args.beams)
        print(json.dumps(child(args)))
        return

    args.model = args.model.resolve()
    args.image = args.image.resolve()
    snapshot_dir = None
    if not args.no_snapshot:
        # cargo replaces target/*/glance with a new file on every build: a hard link keeps this build for the whole
        # benchmark (a copy where links are impossible).
        import tempfile
        src = Path(shutil.which(args.glance) or args.glance).resolve()
        snapshot_dir = Path(tempfile.mkdtemp(prefix="glance_bench_"))
        dst = snapshot_dir / "glance"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        args.glance_source = f"{src} [{glance_binary(str(src))}]"
        print(f"glance snapshot: {args.glance_source} -> {dst}", flush=True)
        args.glance = str(dst)
    else:
        args.glance_source = f"{args.glance} [{glance_binary(args.glance)}]"
    try:
        run(args)
    finally:
        if snapshot_dir:
            shutil.rmtree(snapshot_dir, ignore_errors=True)


def run(args):
    beams_list = [int(b) for b in args.beams.split(",") if b.strip()]
    _, _, gen = model_ids(args.model)
    ignored = sorted(k for k in gen if k not in HANDLED_GEN_KEYS)
    print(f"model {args.model} dtype {args.dtype}, image {args.image.name}, {args.threads} thread(s), "
          f"{args.tokens} tokens, {args.runs} rounds, beams {beams_list}", flush=True)
    print(f"glance: {args.glance} [{glance_binary(args.glance)}] (--decoder {args.glance_decoder or 'auto'}"
          f"{' ' + args.glance_args if args.glance_args else ''}); onnxruntime split files", flush=True)
    if ignored:
        print(f"note: generation_config.json settings applied by glance but not by the onnxruntime loop: "
              f"{ {k: gen[k] for k in ignored} }", flush=True)

    samples = {b: {"glance": [], "ort": []} for b in beams_list}
    t0 = time.time()
    for r in range(args.runs):
        for b in beams_list:
            g = run_glance(args, b)
            samples[b]["glance"].append(g)
            o = run_child(args, b)
            samples[b]["ort"].append(o)
            gs = f"glance total {g['total_ms']:.0f} ms" if "error" not in g else "glance ERROR"
            os_ = f"ort total {o['total_ms']:.0f} ms" if "error" not in o else "ort ERROR"
            print(f"  round {r + 1}/{args.runs} beams {b}: {gs}, {os_}  [{time.time() - t0:.0f}s]", flush=True)
            for name, s in (("glance", g), ("onnxruntime", o)):
                if "error" in s and r == 0:
                    print(f"    {name} failed: {s['cmd']}\n    {s['error']}", flush=True)

    rows = []  # (label, glance value, ort value, unit)
    b1 = samples.get(1)
    first_b = beams_list[0]
    base = samples[first_b]
    if b1:
        G, O = b1["glance"], b1["ort"]
        rows += [("end-to-end, greedy (preprocess + generate)", med(G, "total_ms"), med(O, "total_ms"), "ms"),
                 ("preprocess", med(G, "preprocess_ms"), med(O, "preprocess_ms"), "ms"),
                 ("encoder", med(G, "encode_ms"), med(O, "encode_ms"), "ms"),
                 ("first token (encoder included)", med(G, "first_token_ms"), med(O, "first_token_ms"), "ms"),
                 ("decode per token, greedy", med(G, "decode_ms_per_token"), med(O, "decode_ms_per_token"), "ms")]
    for b in beams_list:
        if b == 1:
            continue
        G, O = samples[b]["glance"], samples[b]["ort"]
        rows += [(f"end-to-end, beam {b}", med(G, "total_ms"), med(O, "total_ms"), "ms"),
                 (f"beam {b}: (generate - encoder) per token", med(G, "beam_ms_per_token"),
                  med(O, "beam_ms_per_token"), "ms")]
    G, O = base["glance"], base["ort"]
    rows += [("load (fresh process)", med(G, "load_ms"), med(O, "load_ms"), "ms"),
             ("RSS after load", med(G, "rss_after_load_bytes"), med(O, "rss_after_load_bytes"), "MB")]
    for b in beams_list:
        G, O = samples[b]["glance"], samples[b]["ort"]
        rows.append((f"peak RSS (load + {args.warmup + 1} {'greedy' if b == 1 else f'beam-{b}'} runs)",
                     med(G, "peak_rss_bytes"), med(O, "peak_rss_bytes"), "MB"))
    rows.append(("onnxruntime process RSS before sessions (Python, numpy, PIL, transformers w/o torch)", None,
                 med(O, "rss_before_sessions_bytes"), "MB"))
    rows.append(("graph files on disk", med(G, "weights_bytes"), med(O, "weights_bytes"), "MB"))

    print()
    print(f"**{args.model.name}** {args.dtype}, {args.threads} thread(s), {args.tokens} tokens, image "
          f"{args.image.name}, medians of {args.runs} alternating rounds; glance {args.glance_source}"
          f"{' ' + args.glance_args if args.glance_args else ''}")
    print()
    print("| metric | unit | glance | onnxruntime | glance/ort |")
    print("|---|---|---:|---:|---:|")
    for label, gv, ov, unit in rows:
        ratio = f"{gv / ov:.2f}" if gv is not None and ov else "—"
        print(f"| {label} | {unit} | {fmt(gv, unit)} | {fmt(ov, unit)} | {ratio} |")
    print()
    for b in beams_list:
        G, O = samples[b]["glance"], samples[b]["ort"]
        gt = [s.get("text") for s in G if "error" not in s]
        ot = [s.get("text") for s in O if "error" not in s]
        gn = [s.get("tokens_generated") for s in G if "error" not in s]
        on = [s.get("tokens_generated") for s in O if "error" not in s]
        if gt and ot:
            same = (gt[0] or "").strip() == (ot[0] or "").strip()
            print(f"beams {b}: tokens generated glance {sorted(set(gn))} ort {sorted(set(on))}; "
                  f"text {'identical' if same else 'DIFFERS'}" + ("" if same else f": glance {gt[0]!r} / ort {ot[0]!r}"))
        errs = [s["error"] for s in G if "error" in s]
        if errs:
            print(f"beams {b}: glance failed in {len(errs)}/{len(G)} rounds; first error:\n{errs[0]}")
        errs = [s["error"] for s in O if "error" in s]
        if errs:
            print(f"beams {b}: onnxruntime failed in {len(errs)}/{len(O)} rounds; first error:\n{errs[0]}")
    binaries = sorted({s.get("glance_binary") for v in samples.values() for s in v["glance"]})
    if len(binaries) > 1:
        print(f"WARNING: the glance binary changed during the benchmark ({binaries}): the medians mix builds; rerun.")
    print(f"(numbers on a shared machine are noisy; medians only; {time.time() - t0:.0f}s)")

    if args.json:
        out = {"model": str(args.model), "dtype": args.dtype, "threads": args.threads, "tokens": args.tokens,
               "runs": args.runs, "beams": beams_list, "image": str(args.image), "glance": args.glance_source,
               "glance_decoder": args.glance_decoder, "glance_args": args.glance_args,
               "glance_binaries": binaries, "ignored_generation_config": {k: gen[k] for k in ignored},
               "table": [{"metric": label, "unit": unit, "glance": gv, "onnxruntime": ov,
                          "ratio": (gv / ov if gv is not None and ov else None)} for label, gv, ov, unit in rows],
               "samples": {str(b): v for b, v in samples.items()}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
