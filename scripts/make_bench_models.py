#!/usr/bin/env python3
"""Make benchmark models of real sizes with seeded random weights (no hub download needed).

    /work/venv/bin/python scripts/make_bench_models.py [--out scratch/bench_models] [--only NAME ...] [--force]

Models (written to OUT/NAME/, Optimum flat layout, as scripts/export.py lays them out):

  trocr-small-shape  microsoft/trocr-small-*'s shape: DeiT-small encoder (384x384, patch 16, 12 layers, hidden 384,
                     6 heads, intermediate 1536) + TrOCR decoder (6 layers, d_model 256, 8 heads, FFN 1024, ReLU,
                     vocabulary 64044, 512 learned positions, layernorm_embedding, scale_embedding, untied output
                     projection: ~61 M parameters as the real checkpoint). DeiTImageProcessor 384x384, no centre crop,
                     BICUBIC, mean/std 0.5. Byte-level BPE tokenizer with 64044 ids: <s>=0 <pad>=1 </s>=2 <unk>=3,
                     256 byte symbols, 63783 synthetic merges (two-symbol pieces), <mask>=64043.
  vitgpt2-shape      nlpconnect/vit-gpt2-image-captioning's shape: ViT-base encoder (224x224, patch 16, 12 layers,
                     hidden 768, 12 heads, intermediate 3072) + GPT-2 124M with cross-attention (12 layers, n_embd 768,
                     12 heads, vocabulary 50257, 1024 positions, tied lm_head), bos=eos=pad=decoder_start=50256.
                     ViTImageProcessor 224x224 (BILINEAR, mean/std 0.5). Byte-level BPE tokenizer: 256 byte symbols +
                     50000 synthetic merges + <|endoftext|>=50256 (GPT-2's layout).

Weights: the models' own initialisation (std 0.02 = initializer_range / init_std) after torch.manual_seed(SEED).
The outputs are meaningless; the models are for speed and memory measurements only (bench_vs_ort.py forces a fixed
number of tokens by suppressing EOS).

Export: the project's export path (scripts/export.py, imported): Optimum `image-to-text-with-past`, opset 18 ->
encoder_model, decoder_model, decoder_with_past_model, decoder_model_merged (fp32); q8 = onnxruntime
quantize_dynamic(QInt8) of the split files with the merged file re-made from them (`_quantized` suffix).

Idempotent: a model whose folder holds a bench_model.json manifest whose files all exist with the recorded sizes is
skipped (--force rebuilds it). Intermediate files (torch checkpoint, export work folder) go to OUT/_work/NAME and are
deleted after a successful build unless --keep-work. The export of vitgpt2-shape needs ~6 GB of RAM and several
minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

# optimum's merge_decoders names shared initializers in Python-set order: fix the hash seed so that re-runs give
# identical merged files (as make_fixtures.py does).
if __name__ == "__main__" and os.environ.get("PYTHONHASHSEED") != "0":
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import export as glance_export  # noqa: E402  (scripts/export.py: optimum_export, quantize, lay_out, SUFFIX)

SEED = 1234
DTYPES = ["fp32", "q8"]


# ----------------------------------------------------------------------------------------------
# Tokenizers: byte-level BPE with a synthetic merge table of the wanted size
# ----------------------------------------------------------------------------------------------

def bytes_to_unicode() -> dict:
    """GPT-2's byte -> printable character table (what tokenizers' ByteLevel pre-tokenizer uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def byte_level_bpe(front_specials: list, n_merges: int):
    """A tokenizers.Tokenizer: `front_specials` first, then the 256 byte symbols, then n_merges pieces made of two
    byte symbols (merge ranks in a fixed order: printable ASCII pairs first)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    table = bytes_to_unicode()
    alphabet = [table[b] for b in range(256)]
    order = [table[b] for b in list(range(32, 127)) + [b for b in range(256) if not 32 <= b < 127]]
    vocab = {}
    for s in front_specials:
        vocab[s] = len(vocab)
    for c in alphabet:
        vocab[c] = len(vocab)
    merges = []
    for a in order:
        for b in order:
            if len(merges) == n_merges:
                break
            merges.append((a, b))
            vocab[a + b] = len(vocab)
    assert len(merges) == n_merges, (len(merges), n_merges)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def tokenizer_trocr(vocab_size: int = 64044):
    """RoBERTa/XLM-R-like ids: <s>=0 <pad>=1 </s>=2 <unk>=3 ... <mask>=vocab_size-1."""
    from tokenizers import processors
    from transformers import RobertaTokenizerFast
    front = ["<s>", "<pad>", "</s>", "<unk>"]
    raw = byte_level_bpe(front, vocab_size - len(front) - 256 - 1)
    raw.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True,
                                                      add_prefix_space=False)
    fast = RobertaTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                model_max_length=512)
    ids = {t: fast.convert_tokens_to_ids(t) for t in front + ["<mask>"]}
    assert ids == {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": vocab_size - 1}, ids
    assert len(fast) == vocab_size, len(fast)
    return fast


def tokenizer_gpt2(vocab_size: int = 50257):
    """GPT-2's layout: 256 byte symbols, merges, <|endoftext|> last (= bos = eos = pad = decoder start)."""
    from transformers import GPT2TokenizerFast
    raw = byte_level_bpe([], vocab_size - 256 - 1)
    raw.add_special_tokens(["<|endoftext|>"])
    fast = GPT2TokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                             unk_token="<|endoftext|>", pad_token="<|endoftext|>", model_max_length=1024)
    assert fast.convert_tokens_to_ids("<|endoftext|>") == vocab_size - 1
    assert len(fast) == vocab_size, len(fast)
    return fast


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------

def trocr_small_shape():
    from transformers import DeiTConfig, DeiTImageProcessor, TrOCRConfig
    tok = tokenizer_trocr(64044)
    enc = DeiTConfig(image_size=384, patch_size=16, num_channels=3, hidden_size=384, num_hidden_layers=12,
                     num_attention_heads=6, intermediate_size=1536, hidden_act="gelu", qkv_bias=True,
                     layer_norm_eps=1e-12, initializer_range=0.02)
    dec = TrOCRConfig(vocab_size=64044, d_model=256, decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=1024,
                      activation_function="relu", max_position_embeddings=512, use_learned_position_embeddings=True,
                      layernorm_embedding=True, scale_embedding=True, cross_attention_hidden_size=384,
                      init_std=0.02, tie_word_embeddings=False,
                      pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    proc = DeiTImageProcessor(do_resize=True, size={"height": 384, "width": 384}, resample=3, do_center_crop=False,
                              crop_size={"height": 384, "width": 384}, do_rescale=True, rescale_factor=1 / 255,
                              do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    ids = dict(decoder_start_token_id=2, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    return tok, enc, dec, proc, ids


def vitgpt2_shape():
    from transformers import GPT2Config, ViTConfig, ViTImageProcessor
    tok = tokenizer_gpt2(50257)
    e = 50256
    enc = ViTConfig(image_size=224, patch_size=16, num_channels=3, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072, hidden_act="gelu", qkv_bias=True,
                    layer_norm_eps=1e-12, initializer_range=0.02)
    dec = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                     activation_function="gelu_new", add_cross_attention=True, initializer_range=0.02,
                     bos_token_id=e, eos_token_id=e, pad_token_id=e, decoder_start_token_id=e)
    proc = ViTImageProcessor(do_resize=True, size={"height": 224, "width": 224}, resample=2, do_rescale=True,
                             rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
                             image_std=[0.5, 0.5, 0.5])
    ids = dict(decoder_start_token_id=e, bos_token_id=e, eos_token_id=e, pad_token_id=e)
    return tok, enc, dec, proc, ids


MODELS = {"trocr-small-shape": trocr_small_shape, "vitgpt2-shape": vitgpt2_shape}


def save_torch(name: str, tdir: Path, seed: int) -> dict:
    import torch
    from transformers import GenerationConfig, VisionEncoderDecoderConfig, VisionEncoderDecoderModel
    tok, enc, dec, proc, ids = MODELS[name]()
    cfg = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    for k, v in ids.items():
        setattr(cfg, k, v)
    cfg.vocab_size = len(tok)
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config=cfg).eval()
    # Only the special ids: no beam/length settings that a benchmark would silently pick up.
    model.generation_config = GenerationConfig(**ids)
    n_params = sum(p.numel() for p in model.parameters())
    if tdir.exists():
        shutil.rmtree(tdir)
    model.save_pretrained(tdir)
    tok.save_pretrained(tdir, legacy_format=False)
    proc.save_pretrained(tdir)
    return {"parameters": n_params, "encoder": type(model.encoder).__name__, "decoder": type(model.decoder).__name__}


def manifest_ok(out: Path) -> bool:
    m = out / "bench_model.json"
    if not m.exists():
        return False
    try:
        files = json.loads(m.read_text())["files"]
    except Exception:
        return False
    return bool(files) and all((out / f).is_file() and (out / f).stat().st_size == s for f, s in files.items())


def build(name: str, out_root: Path, seed: int, force: bool, keep_work: bool, opset: int) -> dict:
    out = out_root / name
    if not force and manifest_ok(out):
        print(f"== {name}: up to date ({out}), skipped (--force rebuilds)", flush=True)
        return json.loads((out / "bench_model.json").read_text())
    t0 = time.time()
    work_root = out_root / "_work" / name
    tdir, edir = work_root / "torch", work_root / "export"
    print(f"== {name}: building torch model (seed {seed})", flush=True)
    info = save_torch(name, tdir, seed)
    print(f"   {info['parameters'] / 1e6:.1f} M parameters ({info['encoder']} + {info['decoder']}), "
          f"{time.time() - t0:.0f}s", flush=True)
    if edir.exists():
        shutil.rmtree(edir)
    t = time.time()
    print(f"   optimum export image-to-text-with-past, opset {opset} (export.py optimum_export)", flush=True)
    glance_export.optimum_export(str(tdir), edir, opset)
    print(f"   export {time.time() - t:.0f}s", flush=True)
    for dt in DTYPES:
        if dt == "fp32":
            continue
        t = time.time()
        glance_export.quantize(edir, dt)
        print(f"   {dt}: quantize_dynamic on split files + re-merge {time.time() - t:.0f}s", flush=True)
    if out.exists():
        shutil.rmtree(out)
    glance_export.lay_out(edir, out, DTYPES, "optimum", "both")
    files = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    manifest = {"name": name, "seed": seed, "opset": opset, "dtypes": DTYPES, **info,
                "build_seconds": round(time.time() - t0, 1), "files": files}
    (out / "bench_model.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if not keep_work:
        shutil.rmtree(work_root)
        try:
            (out_root / "_work").rmdir()
        except OSError:
            pass
    print(f"   done in {time.time() - t0:.0f}s", flush=True)
    return manifest


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "scratch" / "bench_models")
    ap.add_argument("--only", nargs="*", choices=list(MODELS), default=list(MODELS))
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--force", action="store_true", help="rebuild even if the output is complete")
    ap.add_argument("--keep-work", action="store_true", help="keep OUT/_work/NAME (torch checkpoint, export folder)")
    args = ap.parse_args()
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    manifests = [build(n, args.out, args.seed, args.force, args.keep_work, args.opset) for n in args.only]
    print()
    for m in manifests:
        total = sum(m["files"].values())
        print(f"{m['name']}: {m['parameters'] / 1e6:.1f} M parameters, {total / 1e6:.0f} MB on disk "
              f"(built in {m['build_seconds']:.0f}s)")
        for f, s in m["files"].items():
            print(f"  {f:42} {s / 1e6:9.2f} MB")
    print(f"total time {time.time() - t0:.0f}s")


if __name__ == "__main__":
    main()
