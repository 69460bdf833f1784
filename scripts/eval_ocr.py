#!/usr/bin/env python3
"""OCR accuracy and speed of glance, beside tesseract 5, on held-out fonts and real pages.

    python3 scripts/eval_ocr.py [--glance target/release/glance] [--model models/glance-ocr]
                                [--lines 200] [--font-dir scratch/ocr_data] [--no-tesseract]
                                [--num-beams 1]

1. Held-out fonts: --lines synthetic lines rendered by scripts/train_ocr.py's generator (same text
   distribution as training) with the font design groups held out of training only, read by
   `glance ocr --line` (each line is its own image) and by tesseract (`--psm 7`, the line image
   upscaled 2x: tesseract wants larger glyphs than the 32 px canvas).
2. Real pages from ../shared/data/real-ocr (phototest, eurotext, HelloGoogle, page): `glance ocr`
   page mode and tesseract's default page segmentation.
CER = character edit distance / reference length, after collapsing runs of spaces and dropping
empty lines; word accuracy = 1 - word edit distance / reference words. Times are per image, wall
clock, one process per tool run (tesseract with OMP_THREAD_LIMIT=1; glance with --threads 1).
Prints a Markdown table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ocr_fonts  # noqa: E402
import train_ocr  # noqa: E402
from train_ocr import edit_distance, norm_page as norm  # noqa: E402


def scores(hyps, refs):
    chars = sum(len(r) for r in refs)
    words = sum(len(r.split()) for r in refs)
    ce = sum(edit_distance(h, r) for h, r in zip(hyps, refs))
    we = sum(edit_distance(h.split(), r.split()) for h, r in zip(hyps, refs))
    return ce / max(chars, 1), 1 - we / max(words, 1)


def glance_read(glance, model, images, line, beams):
    """One glance process for all images; per-image times from its own timings."""
    cmd = [glance, "ocr", "--json", "--threads", "1", "--num-beams", str(beams), "--model", str(model)]
    cmd += ["--line"] if line else []
    out = subprocess.run(cmd + [str(p) for p in images], check=True, capture_output=True, text=True).stdout
    res = {}
    for ln in out.splitlines():
        v = json.loads(ln)
        t = v["timings_ms"]
        res[v["image"]] = (v["text"], (t["preprocess"] + t["encode"] + t["decode"]) / 1000)
    return [res[str(p)] for p in images]


def tesseract_read(path, psm=None, upscale=False):
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    src = path
    if upscale:
        from PIL import Image
        img = Image.open(path)
        src = Path(tempfile.mkdtemp()) / "up.png"
        img.resize((img.width * 2, img.height * 2), Image.Resampling.BICUBIC).save(src)
    cmd = ["tesseract", str(src), "stdout"] + (["--psm", str(psm)] if psm else [])
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return out, time.perf_counter() - start


def heldout_lines(n, font_dir, out_dir):
    import numpy as np
    from PIL import Image
    faces = ocr_fonts.load_faces(font_dir)
    words = ocr_fonts.load_words(font_dir)
    imgs, texts = train_ocr.make_eval_set([f for f in faces if f["heldout"]], words, n)
    paths = []
    for i, (img, text) in enumerate(zip(imgs.numpy().astype(np.uint8), texts)):
        p = out_dir / f"line{i:04d}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths, texts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glance", default="target/release/glance")
    ap.add_argument("--model", default="models/glance-ocr")
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--font-dir", default="scratch/ocr_data")
    ap.add_argument("--real-dir", default=str(HERE.parent.parent / "shared" / "data" / "real-ocr"))
    ap.add_argument("--no-tesseract", action="store_true")
    ap.add_argument("--num-beams", type=int, default=1, help="glance's beam width")
    args = ap.parse_args()
    tess = not args.no_tesseract
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths, refs = heldout_lines(args.lines, args.font_dir, Path(tmp))
        got = glance_read(args.glance, args.model, paths, line=True, beams=args.num_beams)
        cer, wacc = scores([norm(t) for t, _ in got], [norm(r) for r in refs])
        row = {"test": f"held-out fonts, {len(refs)} lines", "glance_cer": cer, "glance_wacc": wacc,
               "glance_s": sum(s for _, s in got) / len(got)}
        if tess:
            tr = [tesseract_read(p, psm=7, upscale=True) for p in paths]
            row["tess_cer"], row["tess_wacc"] = scores([norm(t) for t, _ in tr], [norm(r) for r in refs])
            row["tess_s"] = sum(s for _, s in tr) / len(tr)
        rows.append(row)
    for name in ["phototest", "eurotext", "HelloGoogle", "page"]:
        img, txt = Path(args.real_dir) / f"{name}.png", Path(args.real_dir) / f"{name}.txt"
        if not img.exists():
            continue
        ref = norm(txt.read_text())
        (text, secs), = glance_read(args.glance, args.model, [img], line=False, beams=args.num_beams)
        cer, wacc = scores([norm(text)], [ref])
        row = {"test": name, "glance_cer": cer, "glance_wacc": wacc, "glance_s": secs}
        if tess:
            t, s = tesseract_read(img)
            row["tess_cer"], row["tess_wacc"] = scores([norm(t)], [ref])
            row["tess_s"] = s
        rows.append(row)
    print("| test | glance CER | glance word acc. | glance s/image | tesseract CER | tesseract word acc. | tesseract s/image |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        pct = lambda k, digits: f"{r[k] * 100:.{digits}f}%" if k in r else "-"  # noqa: E731
        secs = lambda k: f"{r[k]:.2f}" if k in r else "-"  # noqa: E731
        print(f"| {r['test']} | {pct('glance_cer', 2)} | {pct('glance_wacc', 1)} | {secs('glance_s')} | "
              f"{pct('tess_cer', 2)} | {pct('tess_wacc', 1)} | {secs('tess_s')} |")


if __name__ == "__main__":
    main()
