#!/usr/bin/env python3
"""Train a small TrOCR-design OCR model on synthetic text lines; export it.

Model: transformers VisionEncoderDecoderModel(encoder=ViTModel, decoder=TrOCRForCausalLM),
standard classes only, so Optimum's `image-to-text-with-past` ONNX export works unchanged.
Input: one text line on the 32x384 "line canvas" (see line_canvas()).  Output: characters
(character-level tokenizer, tokenizer.json of the `tokenizers` library).

Data: synthetic lines rendered on the fly with PIL from the fonts that
scripts/ocr_fonts.py finds (system fonts, or a folder packed with
scripts/pack_fonts.sh and given with --font-dir), with augmentation (blur, noise,
JPEG, contrast/brightness, rotation, shear, binarisation, paper texture, letter
and word spacing, neighbouring-line fragments, stroke weight).  Text: words from
the Debian word lists (en, de, fr, it, es, pt), common words, numbers, prices,
dates, times, codes, e-mails, URLs, punctuation.  Some design groups of fonts are
held out (ocr_fonts.HELDOUT_GROUPS) and used only for the evaluation CER.

Works with transformers 4.57 and 5.x, torch >= 2.1, on CPU or CUDA.

Train (resumes from OUT/ckpt when present; --minutes is the total budget over all resumes):
    python3 scripts/train_ocr.py --out scratch/ocr_run --minutes 120 --device cpu
Export a save_pretrained folder (for optimum-cli export onnx --task image-to-text-with-past):
    python3 scripts/train_ocr.py --export scratch/ocr_run scratch/ocr_hf
Other tools:
    --bench-render N        render N lines in this process and print lines/s
    --dump-samples N DIR    write N training canvases as PNG with their text (DIR/labels.tsv)

Outputs in --out DIR: log.txt; ckpt/ (model + optimizer shards as safetensors, each
< 15 MB, state.json) for resuming; final/ (fp32 weight shards + train_meta.json), the
only thing --export needs.  Weight files always use the transformers-4 parameter names
(transformers 5 renamed the ViT modules), so a model trained under 5.x exports with 4.57.
The learning-rate schedule (warm-up, cosine) runs on the time budget, not on steps.

The periodic "phototest / eurotext CER" in the log comes from a crude stand-in for the Rust
page mode (page_chunks(): deskew, row profile, chunks at word gaps); it tracks progress on
real pages, it is not the acceptance number.
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import time
import unicodedata

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ocr_fonts  # noqa: E402

IMG_H = 32
IMG_W = 384
MAX_CHARS = 80          # longest label (characters) used in training
GEN_MAX_LENGTH = 96     # generation_config.max_length (decoder tokens incl. start)
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
CHARSET = ocr_fonts.CHARSET
CHARSET_SET = set(CHARSET)
SHARD_BYTES = 14_000_000  # every checkpoint / weight file stays below 15 MB


# ---------------------------------------------------------------------------
# line canvas (the Rust side reimplements exactly this)
# ---------------------------------------------------------------------------
def line_canvas(img):
    """Normalise one text-line image to the model input canvas (RGB, 384 wide, 32 high).

    1. Convert to grayscale ("L", PIL's ITU-R 601-2 luma: L = R*299/1000 + G*587/1000 + B*114/1000)
       and back to RGB at the end (three equal channels).
    2. Scale to height 32 keeping the aspect ratio: new_w = floor(w * 32 / h + 0.5), at least 1;
       if new_w > 384 it becomes 384 (long lines are squashed horizontally, never cut).
       Resampling is PIL's Image.resize(..., Image.Resampling.BILINEAR) (a triangle filter whose support
       grows with the down-scaling factor, i.e. area-aware when shrinking).
    3. Paste at the left (x=0, y=0) of a 384x32 white (255) canvas: padding is on the right only.

    The ViTImageProcessor in preprocessor_config.json (size 32x384, BILINEAR, rescale 1/255,
    mean = std = 0.5) then only rescales and normalises: pixel -> (pixel/255 - 0.5) / 0.5.
    """
    g = img.convert("L")
    w, h = g.size
    new_w = max(1, int(w * IMG_H / h + 0.5))
    new_w = min(new_w, IMG_W)
    if (new_w, IMG_H) != (w, h):
        g = g.resize((new_w, IMG_H), Image.Resampling.BILINEAR)
    canvas = Image.new("L", (IMG_W, IMG_H), 255)
    canvas.paste(g, (0, 0))
    return canvas.convert("RGB")


def canvas_array(img):
    """line_canvas() as a 32x384 uint8 array (one channel; the three RGB channels are equal)."""
    return np.asarray(line_canvas(img).convert("L"), dtype=np.uint8)


# ---------------------------------------------------------------------------
# tokenizer: one token per character
# ---------------------------------------------------------------------------
def vocab():
    v = {t: i for i, t in enumerate(SPECIALS)}
    for ch in CHARSET:
        v[ch] = len(v)
    return v


VOCAB = vocab()
ID2CH = {i: c for c, i in VOCAB.items()}


def encode(text):
    text = unicodedata.normalize("NFC", text)
    return [VOCAB.get(c, UNK_ID) for c in text]


def decode(ids):
    out = []
    for i in ids:
        i = int(i)
        if i == EOS_ID:
            break
        if i < len(SPECIALS):
            continue
        out.append(ID2CH.get(i, ""))
    return "".join(out)


def build_tokenizer():
    """A `tokenizers` Tokenizer: NFC, split into single characters, WordLevel over characters,
    Fuse decoder (concatenate, no spaces added); spaces are ordinary tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    tok = Tokenizer(models.WordLevel(vocab=dict(VOCAB), unk_token="<unk>"))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIALS))
    return tok


def check_tokenizer(tok):
    samples = ["The (quick) [brown] {fox} jumps!", "  two  spaces ", "über «rapide» „schnelle” 12,50 €",
               "aspammer@website.com is spam.", "ÀÿŒœ€…–—"]
    for s in samples:
        ids = tok.encode(s).ids
        assert ids == encode(s), (s, ids, encode(s))
        back = tok.decode([BOS_ID] + ids + [EOS_ID], skip_special_tokens=True)
        assert back == s, (s, back)
    return True


# ---------------------------------------------------------------------------
# text generation
# ---------------------------------------------------------------------------
COMMON = {
    "en": ("the of and to a in is it you that he was for on are with as I his they be at one have this from "
           "or had by not word but what some we can out other were all there when up use your how said an each "
           "she which do their time if will way about many then them write would like so these her long make "
           "thing see him two has look more day could go come did number no most people my over know water than "
           "call first who may down side been now find any new work part take get place made live where after "
           "back little only round man year came show every good me give our under name very through just form "
           "great think say help low line turn cause much mean before move right old too same tell does set "
           "three want well also play small end put home read hand large even land here must big high such "
           "why ask men change went light kind off need house try again point world near build earth total "
           "page price date order invoice amount due paid customer account number report table figure section"),
    "de": ("der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als auch es an werden "
           "aus er hat dass sie nach wird bei einer um am sind noch wie einem über einen so zum war haben nur "
           "oder aber vor zur bis mehr durch man sein wurde sei hatte kann gegen vom können schon wenn habe "
           "seine ihre dann unter wir soll ich eines Jahr zwei Jahren diese dieser wieder keine Uhr seiner "
           "worden Frau Herr Straße Größe Rechnung Betrag Datum Seite Preis Menge Summe gemäß täglich"),
    "fr": ("de la le et les des en un du une que est pour qui dans par plus pas au sur ne se ce il sont ou "
           "avec son aux cette ont ses mais comme on tout nous sa elle été aussi fait leur être très où même "
           "après déjà à ça là prix facture date numéro page montant total à côté français élève être"),
    "it": ("di e il la che a per un in è del non una da le si con i dei al sono alla più come ma anche delle "
           "ha nel lo gli della questo se ci o sua suo essere tra era nella loro stato perché cosa fatto "
           "quando già molto anni sulla può due città però"),
    "es": ("de la que el en y a los se del las un por con no una su para es al lo como más o pero sus le ha "
           "me si sin sobre este ya entre cuando todo esta ser son dos también fue había era muy años hasta "
           "desde está mi porque qué sólo han yo hay vez puede todos así nos ni parte tiene él uno donde bien "
           "tiempo mismo ese ahora cada vida otro después año niño señor"),
    "pt": ("de a o que e do da em um para é com não uma os no se na por mais as dos como mas foi ao ele das "
           "tem à seu sua ou ser quando muito há nos já está eu também só pelo pela até isso ela entre era "
           "depois sem mesmo aos ter seus quem nas esse eles estão você tinha foram essa num nem suas meu "
           "às minha têm numa pelos elas coração ação não são"),
}
LANG_WEIGHTS = {"en": 0.42, "de": 0.2, "fr": 0.16, "es": 0.08, "it": 0.07, "pt": 0.07}
MONTHS = {
    "en": "January February March April May June July August September October November December",
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
    "es": "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre",
}
WEEKDAYS = "Mon Tue Wed Thu Fri Sat Sun Monday Friday Mo Di Mi Do Fr Sa So lundi mardi".split()
UNITS = "kg g mg km m cm mm ml l h min s MB GB kB % °C °F € $ £ pcs Stk. St. x m² m³ km/h".split()
TLDS = "com org net de fr it es pt eu io co.uk info edu gov".split()
CURRENCY = ["$", "€", "£", "¥", "USD ", "EUR ", "CHF ", "GBP "]
BRACKETS = [("(", ")"), ("[", "]"), ("{", "}"), ("<", ">"), ('"', '"'), ("'", "'"), ("“", "”"), ("„", "“"),
            ("„", "”"), ("«", "»"), ("« ", " »"), ("‘", "’"), ("‚", "‘"), ("»", "«"), ("‹", "›")]
END_PUNCT = [".", ".", ".", ".", "!", "?", ":", ";", "…", "...", ".\"", ".”", "?”", "!)", ").", ""]
MID_PUNCT = [",", ",", ",", ";", ":", " -", " –", " —", "/", ""]
SYMBOLS = "&@#%*+=/\\|_~^`$€£¥§°±×÷•·¶©®™¢¡¿ªº¼½¾²³µ¬"


class TextGen:
    """Random text lines: words, sentences, numbers, prices, dates, codes, punctuation."""

    def __init__(self, words, rng):
        self.rng = rng
        self.words = {k: v for k, v in words.items() if v}
        self.langs = [lang for lang in LANG_WEIGHTS if lang in self.words or lang in COMMON]
        self.lang_w = [LANG_WEIGHTS[lang] for lang in self.langs]
        self.common = {k: v.split() for k, v in COMMON.items()}
        self.chars = [c for c in CHARSET if c != " "]

    # -- small tokens -----------------------------------------------------
    def word(self, lang=None):
        r = self.rng
        lang = lang or r.choices(self.langs, self.lang_w)[0]
        if lang in self.words and r.random() < 0.6:
            w = r.choice(self.words[lang])
        else:
            w = r.choice(self.common.get(lang) or self.common["en"])
        return w

    def number(self):
        r = self.rng
        k = r.random()
        if k < 0.3:
            return str(r.randint(0, 100 if r.random() < 0.6 else 99999))
        if k < 0.5:
            n = r.randint(1000, 9999999)
            sep = r.choice([",", ".", " ", "'", ""])
            s = f"{n:,}".replace(",", sep)
            return s
        if k < 0.7:
            d = r.choice([1, 2, 2, 3])
            s = f"{r.uniform(0, 10 ** r.randint(1, 4)):.{d}f}"
            return s.replace(".", ",") if r.random() < 0.3 else s
        if k < 0.8:
            return f"{r.uniform(0, 100):.{r.choice([0, 1, 2])}f}{r.choice(['%', ' %'])}"
        if k < 0.88:
            return r.choice(["-", "+", "−", "±", "~"]).replace("−", "-") + str(r.randint(1, 999))
        if k < 0.94:
            n = r.randint(1, 31)
            return r.choice([f"{n}.", f"{n}th", f"{n}st", f"{n}nd", f"{n}rd", f"{n}e", f"{n}er", f"{n}º", f"{n}ª"])
        return f"{r.randint(1, 999)} {r.choice(UNITS)}" if r.random() < 0.7 else f"{r.randint(1, 99)}{r.choice(UNITS)}"

    def price(self):
        r = self.rng
        v = r.choice([r.uniform(0, 100), r.uniform(0, 10000), r.uniform(0, 1e6)])
        s = f"{v:,.2f}"
        if r.random() < 0.35:  # European 1.234,56
            s = s.replace(",", "X").replace(".", ",").replace("X", ".")
        if r.random() < 0.15:
            s = s.split(".")[0] if "," in s[-3:] else s
        c = r.choice(CURRENCY)
        k = r.random()
        if k < 0.55:
            s = c + s
        elif k < 0.85:
            s = s + " " + c.strip()
        else:
            s = s + c.strip()
        if r.random() < 0.08:
            s = "-" + s
        return s

    def date(self):
        r = self.rng
        y, m, d = r.randint(1950, 2035), r.randint(1, 12), r.randint(1, 28)
        k = r.random()
        if k < 0.2:
            return f"{y}-{m:02d}-{d:02d}"
        if k < 0.35:
            return f"{d:02d}/{m:02d}/{y}" if r.random() < 0.6 else f"{m}/{d}/{y % 100:02d}"
        if k < 0.5:
            return f"{d:02d}.{m:02d}.{y}" if r.random() < 0.7 else f"{d}.{m}.{y % 100:02d}"
        lang = r.choice(list(MONTHS))
        mon = MONTHS[lang].split()[m - 1]
        if r.random() < 0.3:
            mon = mon[:3] + ("." if r.random() < 0.5 else "")
        if lang == "en":
            return r.choice([f"{mon} {d}, {y}", f"{d} {mon} {y}", f"{r.choice(WEEKDAYS)}, {d} {mon}"])
        if lang == "de":
            return f"{d}. {mon} {y}"
        return f"{d} {mon} {y}"

    def time_(self):
        r = self.rng
        h, m, s = r.randint(0, 23), r.randint(0, 59), r.randint(0, 59)
        return r.choice([f"{h:02d}:{m:02d}", f"{h}:{m:02d}", f"{h:02d}:{m:02d}:{s:02d}",
                         f"{h % 12 or 12}:{m:02d} {r.choice(['am', 'pm', 'AM', 'PM', 'a.m.', 'p.m.'])}",
                         f"{h}h{m:02d}", f"{h}.{m:02d} Uhr"])

    def code(self):
        r = self.rng
        up, dg = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789"
        k = r.random()
        if k < 0.35:
            parts = []
            for _ in range(r.randint(2, 4)):
                alpha = r.choice([up, dg, dg, up + dg])
                parts.append("".join(r.choice(alpha) for _ in range(r.randint(1, 5))))
            return r.choice(["-", "-", "/", ".", "_", " "]).join(parts)
        if k < 0.5:
            pre = r.choice(["#", "No. ", "Nr. ", "N° ", "Ref. ", "ID: ", "Invoice #", "Art.-Nr. ", "SKU ", "Order "])
            return pre + "".join(r.choice(up + dg) for _ in range(r.randint(3, 9)))
        if k < 0.62:
            return r.choice(["+49 ", "+33 ", "+1 ", "+44 ", "0", "(0"]) + " ".join(
                "".join(r.choice(dg) for _ in range(r.randint(2, 4))) for _ in range(r.randint(2, 4)))
        if k < 0.7:
            return "ISBN " + "-".join("".join(r.choice(dg) for _ in range(n)) for n in (3, 1, 2, 6, 1))
        if k < 0.78:
            return "0x" + "".join(r.choice("0123456789ABCDEF" if r.random() < 0.5 else "0123456789abcdef")
                                  for _ in range(r.randint(2, 8)))
        if k < 0.88:
            return "".join(r.choice(up) for _ in range(2)) + "".join(r.choice(dg) for _ in range(r.randint(2, 20)))
        if r.random() < 0.5:
            return f"{r.randint(1, 999)}/{r.randint(1, 99)}"
        return f"v{r.randint(0, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)}"

    def ascii_word(self):
        for _ in range(10):
            w = self.word("en").lower()
            if w.isascii() and w.isalpha():
                return w
        return "info"

    def email(self):
        r = self.rng
        u = self.ascii_word() + r.choice(["", ".", "_", "-", ""])
        u += self.ascii_word() if r.random() < 0.5 else str(r.randint(1, 99))
        return f"{u}@{self.ascii_word()}.{r.choice(TLDS)}"

    def url(self):
        r = self.rng
        s = r.choice(["https://", "http://", "www.", "https://www.", ""]) + self.ascii_word() + "." + r.choice(TLDS)
        if r.random() < 0.6:
            s += "/" + "/".join(self.ascii_word() for _ in range(r.randint(1, 2)))
        if r.random() < 0.2:
            s += f"?id={r.randint(1, 9999)}"
        return s

    def misc(self):
        r = self.rng
        k = r.random()
        if k < 0.3:
            a, b = r.randint(1, 99), r.randint(1, 99)
            op = r.choice(["+", "-", "×", "÷", "*", "/", "=", "<", ">", "±"])
            return f"{a} {op} {b}" + (f" = {r.randint(1, 999)}" if r.random() < 0.4 else "")
        if k < 0.5:
            return f"{r.randint(-30, 45)}{r.choice(['°C', '°F', '°', ' °C'])}"
        if k < 0.7:
            return r.choice(SYMBOLS) + (self.word() if r.random() < 0.5 else str(r.randint(1, 99)))
        if k < 0.85:
            return r.choice(["§ ", "§", "Art. ", "Abs. ", "p. ", "S. ", "Fig. ", "Tab. "]) + str(r.randint(1, 300))
        return r.choice(["½", "¼", "¾", "²", "³", "©", "®", "™", "µm", "•", "·", "¶"]) if r.random() < 0.5 \
            else f"{r.randint(1, 9)}{r.choice(['½', '¼', '¾', '²', '³'])}"

    def token(self):
        r = self.rng
        k = r.random()
        if k < 0.3:
            return self.number()
        if k < 0.45:
            return self.price()
        if k < 0.58:
            return self.date()
        if k < 0.66:
            return self.time_()
        if k < 0.8:
            return self.code()
        if k < 0.85:
            return self.email()
        if k < 0.9:
            return self.url()
        return self.misc()

    def decorate(self, w):
        r = self.rng
        k = r.random()
        if k < 0.07:
            a, b = r.choice(BRACKETS)
            w = a + w + b
        elif k < 0.1:
            w = w + r.choice(["'s", "’s", "’", "'"])
        k = r.random()
        if k < 0.12:
            w += r.choice(MID_PUNCT)
        return w

    # -- lines ------------------------------------------------------------
    def target_len(self):
        r = self.rng.random()
        if r < 0.1:
            return self.rng.randint(1, 8)
        if r < 0.9:
            return self.rng.randint(9, 40)
        return self.rng.randint(41, 62)

    def prose(self, n, tokens_p=0.08):
        r = self.rng
        lang = r.choices(self.langs, self.lang_w)[0]
        out, ln, cap = [], 0, r.random() < 0.7
        while ln < n:
            w = self.token() if r.random() < tokens_p else self.word(lang if r.random() < 0.9 else None)
            if cap and w[:1].isalpha():
                w = w[:1].upper() + w[1:]
            cap = False
            w = self.decorate(w)
            if r.random() < 0.06 and ln + len(w) < n:
                w += r.choice([". ", "! ", "? ", ": "]).strip()
                cap = r.random() < 0.8
            out.append(w)
            ln += len(w) + 1
        s = " ".join(out)
        if r.random() < 0.45:
            s += r.choice(END_PUNCT)
        elif r.random() < 0.05:
            s += "-"  # hyphenated line end
        return s

    def tokens_line(self, n, fn):
        out, ln = [], 0
        while ln < n:
            t = fn()
            out.append(t)
            ln += len(t) + 1
        sep = self.rng.choice([" ", " ", " ", "  ", " | ", ", ", "; ", " - ", " / "])
        return sep.join(out)

    def random_line(self, n):
        r = self.rng
        out, ln = [], 0
        while ln < n:
            w = "".join(r.choice(self.chars) for _ in range(r.randint(1, 8)))
            out.append(w)
            ln += len(w) + 1
        return " ".join(out)

    def line(self):
        r = self.rng
        n = self.target_len()
        k = r.random()
        if k < 0.5:
            s = self.prose(n)
        elif k < 0.64:
            s = self.prose(n, tokens_p=0.45)
        elif k < 0.74:
            s = self.tokens_line(n, lambda: r.choice([self.number, self.price, self.date, self.time_])())
        elif k < 0.81:
            s = self.tokens_line(n, lambda: r.choice([self.code, self.email, self.url, self.misc, self.word])())
        elif k < 0.86:  # headings: ALL CAPS / Title Case
            s = self.prose(n)
            s = s.upper() if r.random() < 0.6 else " ".join(w[:1].upper() + w[1:] for w in s.split(" "))
        elif k < 0.91:  # one to three words
            s = " ".join(self.decorate(self.word()) if r.random() < 0.8 else self.token()
                         for _ in range(r.randint(1, 3)))
        elif k < 0.96:
            s = self.random_line(n)
        else:  # punctuation heavy
            s = " ".join(self.decorate(self.decorate(self.word())) for _ in range(max(1, n // 7)))
            a, b = r.choice(BRACKETS)
            s = a + s + b + r.choice(END_PUNCT)
        if r.random() < 0.04:
            s = s.upper()
        s = "".join(c for c in s if c in CHARSET_SET)  # e.g. "ß".upper() is fine, stray symbols are not
        s = " ".join(s.split())  # single spaces, no leading/trailing space
        if len(s) > MAX_CHARS:
            cut = s.rfind(" ", 0, MAX_CHARS)
            s = s[:cut if cut > MAX_CHARS // 2 else MAX_CHARS].rstrip()
        return s


# ---------------------------------------------------------------------------
# rendering and augmentation
# ---------------------------------------------------------------------------
def seed_int(seed):
    """Deterministic 63-bit seed from any repr-able value (Python's hash() is salted per process)."""
    import hashlib
    return int(hashlib.sha256(repr(seed).encode()).hexdigest()[:15], 16)


# a few font sizes only (glyph caches stay warm); the scale still varies continuously through the
# random crop margins and the resize to height 32
SMALL_SIZES = [13]
MID_SIZES = [17, 22, 28]
LARGE_SIZES = [36]
ALL_SIZES = SMALL_SIZES + MID_SIZES + LARGE_SIZES


class GlyphFont:
    """A PIL font plus a cache of rendered glyph bitmaps, advances and kerning pairs.

    PIL re-rasterises every glyph on every draw; composing lines from cached glyph bitmaps is
    several times faster (no ligatures, integer glyph positions; a share of the lines is still
    drawn by FreeType/raqm as a whole, see Synth.render)."""

    def __init__(self, path, size):
        self.path, self.size = path, size
        self._font = None
        self.basic = ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)
        self.asc, self.desc = self.basic.getmetrics()
        self.glyphs = {}
        self.adv = {}
        self.kerns = {}

    @property
    def font(self):
        """Same face with the default (raqm when available) layout: kerning, ligatures."""
        if self._font is None:
            self._font = ImageFont.truetype(self.path, self.size)
        return self._font

    def advance(self, ch):
        a = self.adv.get(ch)
        if a is None:
            a = self.adv[ch] = self.basic.getlength(ch)
        return a

    def kern(self, a, b):
        k = self.kerns.get(a + b)
        if k is None:
            k = self.kerns[a + b] = self.basic.getlength(a + b) - self.advance(a) - self.advance(b)
        return k

    def glyph(self, ch):
        g = self.glyphs.get(ch)
        if g is None:
            g = None
            try:
                core, (x0, y0) = self.basic.getmask2(ch, mode="L", anchor="ls")
                arr = np.asarray(Image.Image()._new(core))
                g = (x0, y0, arr if arr.size and arr.any() else None)
            except Exception:  # private PIL API changed: draw it
                x0, y0, x1, y1 = self.basic.getbbox(ch, anchor="ls")
                if x1 <= x0 or y1 <= y0:
                    g = (0, 0, None)
                else:
                    im = Image.new("L", (x1 - x0, y1 - y0), 0)
                    ImageDraw.Draw(im).text((-x0, -y0), ch, font=self.basic, fill=255, anchor="ls")
                    g = (x0, y0, np.asarray(im))
            self.glyphs[ch] = g
        return g

    def draw(self, m, pos, ox, base):
        """Max-composite glyphs at [(x, dy, ch)] into uint8 array m (origin ox, baseline base)."""
        H, W = m.shape
        for x, dy, ch in pos:
            x0, y0, arr = self.glyph(ch)
            if arr is None:
                continue
            gx = int(ox + x + 0.5) + x0
            gy = base + dy + y0
            h, w = arr.shape
            if gx >= 0 and gy >= 0 and gx + w <= W and gy + h <= H:
                reg = m[gy:gy + h, gx:gx + w]
                np.maximum(reg, arr, out=reg)
            else:  # clipped (fragments of neighbouring lines)
                ax0, ay0 = max(0, -gx), max(0, -gy)
                ax1, ay1 = min(w, W - gx), min(h, H - gy)
                if ax1 > ax0 and ay1 > ay0:
                    reg = m[gy + ay0:gy + ay1, gx + ax0:gx + ax1]
                    np.maximum(reg, arr[ay0:ay1, ax0:ax1], out=reg)


class Synth:
    """Renders (text, 32x384 canvas) samples. One per worker process; all randomness from `seed`."""

    def __init__(self, faces, words, seed, augment=True):
        self.rng = random.Random(seed_int(seed))
        self.nrng = np.random.default_rng(seed_int(("np", seed)))
        self.text = TextGen(words, self.rng)
        self.augment = augment
        # sampling: design group (weighted) -> family -> face
        groups = {}
        for fc in faces:
            groups.setdefault(fc["group"], {}).setdefault(fc["family"], []).append(fc)
        self.groups = sorted(groups)
        self.group_w = [ocr_fonts.GROUP_WEIGHTS.get(g, 1.0) for g in self.groups]
        self.families = {g: [groups[g][f] for f in sorted(groups[g])] for g in self.groups}
        self.font_cache = {}
        self.missing = {fc["path"]: set(fc.get("missing", "")) for fc in faces}
        # pre-generated noise / paper textures (cropped at random offsets)
        self.noise = self.nrng.standard_normal((192, 2048)).astype(np.float32)
        small = self.nrng.standard_normal((12, 128)).astype(np.float32)
        tex = np.asarray(Image.fromarray(small).resize((2048, 192), Image.Resampling.BICUBIC), dtype=np.float32)
        self.texture = tex / (tex.std() + 1e-6)

    def font(self, path, size):
        key = (path, size)
        f = self.font_cache.get(key)
        if f is None:
            if len(self.font_cache) > 6000:
                self.font_cache.clear()
            f = GlyphFont(path, size)
            self.font_cache[key] = f
        return f

    def pick_face(self):
        g = self.rng.choices(self.groups, self.group_w)[0]
        return self.rng.choice(self.rng.choice(self.families[g]))

    def _crop_field(self, bank, h, w):
        bh, bw = bank.shape
        if h > bh or w > bw:
            return self.nrng.standard_normal((h, w)).astype(np.float32)
        y = self.rng.randint(0, bh - h)
        x = self.rng.randint(0, bw - w)
        return bank[y:y + h, x:x + w]

    def sample(self):
        err = None
        for _ in range(20):
            face = self.pick_face()
            text = self.text.line()
            miss = self.missing.get(face["path"])
            if miss:
                text = " ".join("".join(c for c in text if c not in miss).split())
            if text:
                try:
                    img = self.render(text, face)
                except Exception as e:  # a rare bad glyph / font: try another sample
                    err = e
                    continue
                return text, img
        raise RuntimeError(f"could not render a sample: {err!r}") from err

    def layout(self, gf, text, mode, size):
        """Glyph positions [(x, dy, ch)] and the advance width, for glyph-cache rendering
        (no kerning: the "native" mode of render() has it)."""
        r = self.rng
        pos = []
        x = 0.0
        track = size * r.uniform(0.03, 0.3) if mode == "track" else 0.0
        jit = mode == "words" and r.random() < 0.4
        dy = 0
        for ch in text:
            if ch == " ":
                x += gf.advance(" ") * (r.uniform(0.7, 2.2) if mode == "words" else 1.0) + track
                if jit:
                    dy = r.randint(-1, 1)
                continue
            pos.append((x, dy, ch))
            x += gf.advance(ch) + track
        return pos, x - track

    def render(self, text, face):
        """PIL 'L' image of one line (dark text on light background, mostly), before line_canvas()."""
        r = self.rng
        aug = self.augment
        k = r.random()
        if k < 0.12:
            size = r.choice(SMALL_SIZES)   # small: up-scaled later (blurry, blocky)
        elif k < 0.9:
            size = r.choice(MID_SIZES)
        else:
            size = r.choice(LARGE_SIZES)
        while size > SMALL_SIZES[0] and 0.55 * size * len(text) > 1100:
            size = ALL_SIZES[ALL_SIZES.index(size) - 1]
        gf = self.font(face["path"], size)
        asc, desc = gf.asc, gf.desc
        k = r.random() if aug else 1.0
        mode = "track" if k < 0.10 else "words" if k < 0.22 else "native" if k < 0.32 else "plain"
        if mode == "native":
            width = gf.font.getlength(text)
        else:
            pos, width = self.layout(gf, text, mode, size)
        pad_x = int(size * 0.7) + 4
        pad_y = int(size * 0.6) + 4
        W = int(width) + 2 * pad_x + 2
        H = asc + desc + 2 * pad_y
        base = pad_y + asc
        if mode == "native":  # FreeType/raqm layout of the whole string: kerning, ligatures
            im = Image.new("L", (W, H), 0)
            ImageDraw.Draw(im).text((pad_x, base), text, font=gf.font, fill=255, anchor="ls")
            m = np.array(im)
        else:
            m = np.zeros((H, W), dtype=np.uint8)
            gf.draw(m, pos, pad_x, base)
        frag = None
        if aug:
            if r.random() < 0.08:  # fragments of the lines above / below (not part of the crop box)
                other = self.text.line()
                off = int((asc + desc) * r.uniform(0.95, 1.3)) * (-1 if r.random() < 0.5 else 1)
                opos, _w = self.layout(gf, other, "plain", size)
                frag = np.zeros_like(m)
                gf.draw(frag, opos, pad_x + r.randint(-size, size), base + off)
            if r.random() < 0.03:  # underline / rule
                y = base + max(1, desc // 2) if r.random() < 0.7 else base + desc + r.randint(1, 3)
                y = min(max(y, 0), H - 1)
                m[y:y + max(1, size // 14), max(0, pad_x - r.randint(0, 5)):pad_x + int(width) + r.randint(0, 5)] = 255
            if r.random() < 0.12 and size >= 16:       # bolder strokes
                m2 = m.copy()
                np.maximum(m2[:, 1:], m[:, :-1], out=m2[:, 1:])
                if r.random() < 0.5:
                    np.maximum(m2[1:, :], m[:-1, :], out=m2[1:, :])
                m = m2
            elif r.random() < 0.06 and size >= 24:     # thinner strokes
                m2 = m.copy()
                np.minimum(m2[:, 1:], m[:, :-1], out=m2[:, 1:])
                m = m2
        mask = Image.fromarray(m)
        if aug and r.random() < 0.35:  # small rotation and shear (about the centre)
            ang = math.radians(r.uniform(-2.0, 2.0) if r.random() < 0.7 else r.uniform(-0.6, 0.6))
            sh = r.uniform(-0.25, 0.25) if r.random() < 0.4 else 0.0
            c, s_ = math.cos(ang), math.sin(ang)
            cx, cy = W / 2, H / 2
            a, b = c, s_ + sh            # inverse map: output (x, y) -> input
            dd, e = -s_, c
            mat = (a, b, cx - a * cx - b * cy, dd, e, cy - dd * cx - e * cy)
            mask = mask.transform((W, H), Image.Transform.AFFINE, mat, resample=Image.Resampling.BILINEAR,
                                  fillcolor=0)
            if frag is not None:
                frag = np.asarray(Image.fromarray(frag).transform(
                    (W, H), Image.Transform.AFFINE, mat, resample=Image.Resampling.BILINEAR, fillcolor=0))
        # crop: ink box or line box (ascent/descent), plus random margins
        bbox = mask.getbbox() or (pad_x, pad_y, W - pad_x, H - pad_y)
        if frag is not None:
            mask = Image.fromarray(np.maximum(np.asarray(mask), frag))
        l, t, rr, b = bbox
        if aug:
            if r.random() < 0.6:  # line box, as a page segmenter cuts it
                t = min(t, base - int(asc * r.uniform(0.75, 1.0)))
                b = max(b, base + int(desc * r.uniform(0.4, 1.0)))
            t -= int(size * r.uniform(0.0, 0.3))
            b += int(size * r.uniform(0.0, 0.3))
            l -= int(size * r.uniform(0.0, 0.8)) if r.random() < 0.8 else 0
            rr += int(size * r.uniform(0.0, 0.8)) if r.random() < 0.8 else 0
        else:
            t = min(t, base - asc)
            b = max(b, base + desc)
            l -= size // 4
            rr += size // 4
        mask = mask.crop((l, t, rr, b))
        if aug and r.random() < 0.12:  # low resolution source
            f = r.uniform(1.3, 2.5)
            mask = mask.resize((max(1, int(mask.width / f)), max(1, int(mask.height / f))), Image.Resampling.BILINEAR)
        # compose: background / ink levels, paper, light, blur, noise, binarisation, JPEG
        ink = np.asarray(mask, dtype=np.float32) * (1.0 / 255.0)
        h, w = ink.shape
        if not aug:
            return Image.fromarray((255.0 - 235.0 * ink).astype(np.uint8))
        bg = r.uniform(185, 255) if r.random() < 0.8 else r.uniform(140, 255)
        fg = r.uniform(0, min(90.0, bg - 110))
        if r.random() < 0.04:
            bg, fg = 255 - bg, 255 - fg  # light text on dark ground
        bgmap = np.full((h, w), bg, dtype=np.float32)
        if r.random() < 0.3:
            bgmap += self._crop_field(self.texture, h, w) * r.uniform(2, 18)
        if r.random() < 0.15:
            gx = np.linspace(0, 1, w, dtype=np.float32)[None, :] * r.uniform(-50, 50)
            gy = np.linspace(0, 1, h, dtype=np.float32)[:, None] * r.uniform(-25, 25)
            bgmap += gx + gy
        img = bgmap + (fg - bgmap) * ink
        if r.random() < 0.3:
            rad = r.uniform(0.3, 1.1) * max(size, 14) / 24
            img = np.asarray(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
                             .filter(ImageFilter.GaussianBlur(rad)), dtype=np.float32)
        if r.random() < 0.35:
            img = img + self._crop_field(self.noise, h, w) * r.uniform(2, 16)
        if r.random() < 0.2:  # binarised (1-bit scans, thresholded pages); threshold between the
            # background and the darkest ink actually present, so thin / blurred strokes survive
            dark = float(np.percentile(img, 2)) if img.size > 50 else fg
            thr = bg - (bg - min(dark, bg - 40)) * r.uniform(0.35, 0.6)
            img = np.where(img < thr, 0.0, 255.0).astype(np.float32)
        if r.random() < 0.03:
            sp = self.nrng.random((h, w), dtype=np.float32)
            img[sp < 0.004] = 0
            img[sp > 0.996] = 255
        if r.random() < 0.15:
            if r.random() < 0.5:  # contrast / brightness
                a = r.uniform(0.6, 1.2)
                img = (img - 128) * a + 128 + r.uniform(-30, 30)
        out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        if r.random() < 0.15:
            import io
            buf = io.BytesIO()
            out.save(buf, "JPEG", quality=r.randint(25, 90))
            buf.seek(0)
            out = Image.open(buf).convert("L")
        return out


# ---------------------------------------------------------------------------
# data loading (torch)
# ---------------------------------------------------------------------------
def make_batch(synth, n):
    imgs = np.empty((n, IMG_H, IMG_W), dtype=np.uint8)
    texts = []
    for i in range(n):
        t, im = synth.sample()
        imgs[i] = canvas_array(im)
        texts.append(t)
    return imgs, texts


def labels_tensor(texts):
    import torch
    ids = [encode(t)[:MAX_CHARS] + [EOS_ID] for t in texts]
    L = max(len(x) for x in ids)
    lab = torch.full((len(ids), L), -100, dtype=torch.long)
    for i, x in enumerate(ids):
        lab[i, :len(x)] = torch.tensor(x, dtype=torch.long)
    return lab


def _dataset_class():
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    class SynthBatches(IterableDataset):
        def __init__(self, faces, words, batch_size, seed):
            self.faces, self.words, self.bs, self.seed = faces, words, batch_size, seed

        def __iter__(self):
            info = get_worker_info()
            wid = info.id if info is not None else 0
            torch.set_num_threads(1)
            if info is not None:  # a stop signal to the process group is handled by the main process,
                import signal     # which then shuts the workers down (they also exit when it dies)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            synth = Synth(self.faces, self.words, seed=(self.seed, wid))
            while True:
                imgs, texts = make_batch(synth, self.bs)
                lab = labels_tensor(texts).numpy().astype(np.int16)
                # plain bytes travel through the worker pipe, not /dev/shm (small in containers)
                yield imgs.tobytes(), lab.tobytes(), lab.shape[1]

    return SynthBatches


def unpack_batch(item):
    """(image bytes, label bytes, label length) from a data worker -> uint8 [B,32,384], int64 [B,L]."""
    import torch
    ib, lb, L = item
    imgs = torch.frombuffer(bytearray(ib), dtype=torch.uint8).view(-1, IMG_H, IMG_W)
    labels = torch.frombuffer(bytearray(lb), dtype=torch.int16).view(-1, L).long()
    return imgs, labels



# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------
def parse_patch(s):
    s = str(s).lower()
    if "x" in s:
        h, w = s.split("x")
        return [int(h), int(w)]
    return int(s)


PRESETS = {
    "base": dict(width=256, enc_layers=6, dec_layers=3, heads=4, patch="8x4"),
    "small": dict(width=192, enc_layers=4, dec_layers=2, heads=4, patch="8"),
}


def apply_preset(args, device_type):
    name = args.preset if args.preset != "auto" else ("base" if device_type == "cuda" else "small")
    for k, v in PRESETS[name].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.enc_ffn = args.enc_ffn or 4 * args.width
    args.dec_ffn = args.dec_ffn or 4 * args.width
    return name


def model_spec(args):
    return dict(width=args.width, enc_layers=args.enc_layers, dec_layers=args.dec_layers, heads=args.heads,
                patch=args.patch, vocab_size=len(VOCAB), image_size=[IMG_H, IMG_W], max_chars=MAX_CHARS,
                dec_ffn=args.dec_ffn or 4 * args.width, enc_ffn=args.enc_ffn or 4 * args.width)


def build_model(spec):
    from transformers import (GenerationConfig, TrOCRConfig, TrOCRForCausalLM, ViTConfig, ViTModel,
                              VisionEncoderDecoderModel)
    patch = parse_patch(spec["patch"])
    enc_cfg = ViTConfig(image_size=list(spec["image_size"]), patch_size=patch, num_channels=3,
                        hidden_size=spec["width"], num_hidden_layers=spec["enc_layers"],
                        num_attention_heads=spec["heads"], intermediate_size=spec["enc_ffn"],
                        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        qkv_bias=True, layer_norm_eps=1e-12,
                        encoder_stride=patch if isinstance(patch, int) else patch[0])
    dec_cfg = TrOCRConfig(vocab_size=spec["vocab_size"], d_model=spec["width"], decoder_layers=spec["dec_layers"],
                          decoder_attention_heads=spec["heads"], decoder_ffn_dim=spec["dec_ffn"],
                          activation_function="gelu", max_position_embeddings=128, dropout=0.0,
                          attention_dropout=0.0, activation_dropout=0.0, init_std=0.02, decoder_layerdrop=0.0,
                          use_cache=True, scale_embedding=True, use_learned_position_embeddings=True,
                          layernorm_embedding=True, pad_token_id=PAD_ID, bos_token_id=BOS_ID,
                          eos_token_id=EOS_ID, decoder_start_token_id=BOS_ID, is_decoder=True,
                          add_cross_attention=True, tie_word_embeddings=True)
    encoder = ViTModel(enc_cfg)
    decoder = TrOCRForCausalLM(dec_cfg)
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
    c = model.config
    c.decoder_start_token_id = BOS_ID
    c.pad_token_id = PAD_ID
    c.eos_token_id = EOS_ID
    c.bos_token_id = BOS_ID
    c.vocab_size = spec["vocab_size"]
    model.generation_config = GenerationConfig(
        decoder_start_token_id=BOS_ID, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        max_length=GEN_MAX_LENGTH, num_beams=1, do_sample=False)
    return model


def n_params(model):
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


# ---------------------------------------------------------------------------
# sharded safetensors (every file < 15 MB)
# ---------------------------------------------------------------------------
def save_sharded(tensors, directory, prefix):
    from safetensors.torch import save_file
    os.makedirs(directory, exist_ok=True)
    shards, cur, cur_b = [], {}, 0
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous().clone()
        nb = t.numel() * t.element_size()
        if cur and cur_b + nb > SHARD_BYTES:
            shards.append(cur)
            cur, cur_b = {}, 0
        cur[k] = t
        cur_b += nb
    if cur or not shards:
        shards.append(cur)
    names = []
    for i, sh in enumerate(shards):
        name = f"{prefix}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, os.path.join(directory, name))
        names.append(name)
    return names


def load_sharded(directory, names):
    from safetensors.torch import load_file
    out = {}
    for n in names:
        out.update(load_file(os.path.join(directory, n)))
    return out


# transformers 5 renamed the ViT encoder's modules; files always use the transformers 4 names
# ("canonical"), so weights trained under 5.x load into 4.x (export) and the other way round.
import re  # noqa: E402

V5_TO_V4 = [
    (r"^encoder\.layers\.(\d+)\.attention\.q_proj\.", r"encoder.encoder.layer.\1.attention.attention.query."),
    (r"^encoder\.layers\.(\d+)\.attention\.k_proj\.", r"encoder.encoder.layer.\1.attention.attention.key."),
    (r"^encoder\.layers\.(\d+)\.attention\.v_proj\.", r"encoder.encoder.layer.\1.attention.attention.value."),
    (r"^encoder\.layers\.(\d+)\.attention\.o_proj\.", r"encoder.encoder.layer.\1.attention.output.dense."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc1\.", r"encoder.encoder.layer.\1.intermediate.dense."),
    (r"^encoder\.layers\.(\d+)\.mlp\.fc2\.", r"encoder.encoder.layer.\1.output.dense."),
    (r"^encoder\.layers\.(\d+)\.", r"encoder.encoder.layer.\1."),
]


def canonical_key(k):
    for pat, rep in V5_TO_V4:
        k2 = re.sub(pat, rep, k)
        if k2 != k:
            return k2
    return k


def model_tensors(model):
    """State dict with canonical (transformers 4) names, fp32."""
    return {canonical_key(k): v.float() for k, v in model.state_dict().items()}


def load_model_tensors(model, sd, strict=True):
    """Load a canonical-name state dict into a model of either transformers version."""
    canon = {canonical_key(k): k for k in model.state_dict().keys()}
    conv = {canon.get(k, k): v for k, v in sd.items()}
    return model.load_state_dict(conv, strict=strict)


def param_names(model):
    """[(canonical name, parameter)] without repeats (tied weights)."""
    seen, out = set(), []
    for n, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            out.append((canonical_key(n), p))
    return out


def save_checkpoint(out_dir, model, opt, state):
    import torch
    tmp = os.path.join(out_dir, "ckpt.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    state = dict(state)
    state["model_files"] = save_sharded(model_tensors(model), tmp, "model")
    # optimizer state keyed by parameter name (parameter order differs between transformers versions)
    name_of = {id(p): n for n, p in param_names(model)}
    flat = {}
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v):
                flat[f"{name_of[id(p)]}::{k}"] = v
    state["optim_groups"] = [
        {"names": [name_of[id(p)] for p in g["params"]], **{k: v for k, v in g.items() if k != "params"}}
        for g in opt.param_groups]
    flat["torch_rng"] = torch.get_rng_state()
    if torch.cuda.is_available():
        try:
            flat["cuda_rng"] = torch.cuda.get_rng_state()
        except Exception:
            pass
    state["optim_files"] = save_sharded(flat, tmp, "optim")
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(state, f, indent=1)
    final = os.path.join(out_dir, "ckpt")
    old = os.path.join(out_dir, "ckpt.old")
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(final):
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(out_dir):
    for name in ("ckpt", "ckpt.old"):
        p = os.path.join(out_dir, name, "state.json")
        if os.path.exists(p):
            return os.path.join(out_dir, name)
    return None


def load_checkpoint(ck, model, opt, device):
    import torch
    with open(os.path.join(ck, "state.json")) as f:
        state = json.load(f)
    load_model_tensors(model, load_sharded(ck, state["model_files"]), strict=True)
    flat = load_sharded(ck, state["optim_files"])
    if "torch_rng" in flat:
        torch.set_rng_state(flat.pop("torch_rng"))
    cuda_rng = flat.pop("cuda_rng", None)
    if cuda_rng is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda_rng)
    by_name = dict(param_names(model))
    for k, v in flat.items():
        name, key = k.split("::", 1)
        p = by_name[name]
        opt.state[p][key] = v
    for g, sg in zip(opt.param_groups, state["optim_groups"]):
        for k, v in sg.items():
            if k not in ("names", "params"):
                g[k] = v
    return state


def save_final(out_dir, model, meta, copy_to=None):
    """OUT/final/: fp32 weight shards (< 15 MB each) + train_meta.json: all that --export needs.
    copy_to: also put these files there (e.g. $OUT of the GPU machine)."""
    fin = os.path.join(out_dir, "final")
    tmp = fin + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    meta = dict(meta)
    meta["model_files"] = save_sharded(model_tensors(model), tmp, "model")
    with open(os.path.join(tmp, "train_meta.json"), "w") as f:
        json.dump(meta, f, indent=1, ensure_ascii=False)
    shutil.rmtree(fin, ignore_errors=True)
    os.rename(tmp, fin)
    if copy_to:
        os.makedirs(copy_to, exist_ok=True)
        for fn in os.listdir(copy_to):
            if fn.startswith("model-") and fn.endswith(".safetensors"):
                os.remove(os.path.join(copy_to, fn))
        for fn in os.listdir(fin):
            shutil.copy2(os.path.join(fin, fn), os.path.join(copy_to, fn + ".tmp"))
            os.replace(os.path.join(copy_to, fn + ".tmp"), os.path.join(copy_to, fn))
    return fin


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------
def edit_distance(a, b):
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def cer(preds, refs):
    e = sum(edit_distance(p, r) for p, r in zip(preds, refs))
    n = sum(len(r) for r in refs)
    return e / max(n, 1)


def to_pixels(imgs_u8, device, dtype=None):
    """uint8 [B, 32, 384] -> normalised float [B, 3, 32, 384] as the ViTImageProcessor makes it."""
    import torch
    x = imgs_u8.to(device, non_blocking=True).float().unsqueeze(1)
    x = x * (2.0 / 255.0) - 1.0
    x = x.expand(-1, 3, -1, -1)
    return x.to(dtype) if dtype is not None else x


def recognise(model, imgs_u8, device, batch=128, amp=False):
    import torch
    out = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(imgs_u8), batch):
            x = to_pixels(imgs_u8[i:i + batch], device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                ids = model.generate(pixel_values=x, max_length=GEN_MAX_LENGTH, do_sample=False, num_beams=1)
            for row in ids.tolist():
                out.append(decode(row))
    return out


def make_eval_set(faces, words, n, seed=20240601):
    import torch
    synth = Synth(faces, words, seed=("eval", seed))
    imgs, texts = make_batch(synth, n)
    return torch.from_numpy(imgs), texts


def page_chunks(path):
    """Crude stand-in for the Rust page mode (for progress numbers only): threshold, cut the page
    into lines by the row profile, cut lines that would be squashed into chunks at word gaps.
    Returns a list of lines, each a list of PIL chunk images."""
    page = Image.open(path).convert("L")
    # deskew: the angle (-3..3 degrees) whose row profile is the most peaked
    best = (-1.0, 0.0)
    small = page.resize((page.width // 2, page.height // 2), Image.Resampling.BILINEAR)
    for ang in np.arange(-3.0, 3.01, 0.25):
        prof = (np.asarray(small.rotate(ang, resample=Image.Resampling.BILINEAR, fillcolor=255)) < 128).sum(1)
        score = float((prof.astype(np.float64) ** 2).sum())
        if score > best[0]:
            best = (score, float(ang))
    if best[1] != 0.0:
        page = page.rotate(best[1], resample=Image.Resampling.BILINEAR, fillcolor=255)
    a = np.asarray(page)
    ink = a < 128
    counts = ink.sum(1)
    rows = counts > max(1, 0.03 * counts.max())  # thin touching strokes between lines are not text rows
    bands, y = [], 0
    H, W = ink.shape
    while y < H:
        if rows[y]:
            y0 = y
            while y < H and rows[y]:
                y += 1
            bands.append([y0, y])
        y += 1
    merged = []
    for b in bands:  # merge dots/accents (short bands) into the nearest line
        if merged and (b[1] - b[0] < 0.35 * (merged[-1][1] - merged[-1][0])) and b[0] - merged[-1][1] <= 6:
            merged[-1][1] = b[1]
        elif merged and (merged[-1][1] - merged[-1][0] < 0.35 * (b[1] - b[0])) and b[0] - merged[-1][1] <= 6:
            merged[-1][1] = b[1]
        else:
            merged.append(b)
    lines = []
    for t, b in merged:
        h = b - t
        if h < 6:
            continue
        # extend into the faint rows next to the band (thin parts of ascenders / descenders)
        t0, b0 = t, b
        while t > 0 and counts[t - 1] > 0 and t0 - t < 0.3 * h:
            t -= 1
        while b < H and counts[b] > 0 and b - b0 < 0.3 * h:
            b += 1
        h = b - t
        cols = ink[t:b].any(0)
        xs = np.nonzero(cols)[0]
        pad = max(2, int(0.15 * h))
        l, r = max(0, xs[0] - pad), min(W, xs[-1] + 1 + pad)
        t2, b2 = max(0, t - pad), min(H, b + pad)
        # word gaps: runs of empty columns wider than 0.25 * line height
        gaps, x = [], xs[0]
        while x <= xs[-1]:
            if not cols[x]:
                x0 = x
                while x <= xs[-1] and not cols[x]:
                    x += 1
                if x - x0 >= max(3, int(0.25 * h)):
                    gaps.append((x0 + x) // 2)
            x += 1
        scale = IMG_H / (b2 - t2)
        chunks, start = [], l
        cuts = gaps + [r]
        last_ok = None
        for c in cuts:
            if (c - start) * scale <= IMG_W:
                last_ok = c
                continue
            if last_ok is None or last_ok == start:
                last_ok = c
            chunks.append((start, last_ok))
            start = last_ok
            last_ok = c if (c - start) * scale <= IMG_W else None
            if last_ok is None:
                chunks.append((start, c))
                start = c
        if start < r:
            chunks.append((start, r))
        img = Image.fromarray(a)
        lines.append([img.crop((x0, t2, x1, b2)) for x0, x1 in chunks if x1 - x0 > 2])
    return lines


def norm_page(s):
    return "\n".join(" ".join(ln.split()) for ln in s.splitlines() if ln.strip())


def real_page_cer(model, real_dir, device, amp=False):
    import torch
    res = {}
    for name in ("phototest", "eurotext"):
        png, txt = os.path.join(real_dir, name + ".png"), os.path.join(real_dir, name + ".txt")
        if not (os.path.exists(png) and os.path.exists(txt)):
            continue
        lines = page_chunks(png)
        flat = [c for ln in lines for c in ln]
        if not flat:
            continue
        imgs = torch.from_numpy(np.stack([canvas_array(c) for c in flat]))
        preds = recognise(model, imgs, device, amp=amp)
        k, out = 0, []
        for ln in lines:
            out.append(" ".join(preds[k:k + len(ln)]))
            k += len(ln)
        pred = norm_page("\n".join(out))
        with open(txt, encoding="utf-8") as f:
            ref = norm_page(f.read())
        res[name] = (cer([pred], [ref]), pred)
    return res


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------
class Logger:
    def __init__(self, *paths):
        self.paths = [p for p in paths if p]

    def __call__(self, *a):
        s = " ".join(str(x) for x in a)
        print(s, flush=True)
        for p in self.paths:
            with open(p, "a", encoding="utf-8") as f:
                f.write(s + "\n")


def lr_at(args, frac, step):
    warm = min(1.0, frac / max(args.warmup, 1e-9), (step + 1) / max(args.warmup_steps, 1))
    if frac < args.warmup or step < args.warmup_steps:
        return args.lr * warm
    p = min(1.0, (frac - args.warmup) / max(1e-9, 1 - args.warmup))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def train(args):
    import torch
    from torch.utils.data import DataLoader

    os.makedirs(args.out, exist_ok=True)
    if args.final_dir:
        os.makedirs(args.final_dir, exist_ok=True)
    log = Logger(os.path.join(args.out, "log.txt"), args.final_dir and os.path.join(args.final_dir, "log.txt"))
    import transformers
    log(f"=== train_ocr start {time.strftime('%Y-%m-%d %H:%M:%S')} torch {torch.__version__} "
        f"transformers {transformers.__version__} python {sys.version.split()[0]}")
    log("args:", json.dumps(vars(args)))

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    amp = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.threads:
        torch.set_num_threads(args.threads)

    faces = ocr_fonts.load_faces(args.font_dir, cache_path=os.path.join(args.out, "fonts_cache.json"))
    train_faces = [f for f in faces if not f["heldout"]]
    eval_faces = [f for f in faces if f["heldout"]]
    words = ocr_fonts.load_words(args.font_dir)
    log(f"fonts: {len(train_faces)} train faces, {len(eval_faces)} held-out faces "
        f"(held-out groups: {', '.join(sorted({f['group'] for f in eval_faces}))}); "
        f"words: {', '.join(f'{k}={len(v)}' for k, v in words.items())}")
    if not train_faces or not eval_faces:
        raise SystemExit("no fonts found (train or held-out); use --font-dir or install the fonts-* packages")

    ck = find_checkpoint(args.out)
    state = None
    if ck:
        with open(os.path.join(ck, "state.json")) as f:
            spec = json.load(f)["spec"]
        log(f"resuming from {ck} (model spec from the checkpoint: {spec})")
    elif args.init_weights:
        init_meta, init_dir = read_final(args.init_weights)
        spec = init_meta["spec"]
        log(f"starting from the weights in {init_dir} (step {init_meta.get('step')}); new optimizer and schedule")
    else:
        log(f"model preset: {apply_preset(args, device.type)}")
        spec = model_spec(args)
    torch.manual_seed(args.seed)
    model = build_model(spec)
    if not ck and args.init_weights:
        load_model_tensors(model, load_sharded(init_dir, init_meta["model_files"]), strict=True)
    log(f"model: {json.dumps(spec)}  parameters: {n_params(model):,}")

    decay, no_decay = [], []
    for n, p in param_names(model):
        (decay if p.ndim >= 2 and "embed" not in n and "position" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    step, samples, elapsed_prev, history = 0, 0, 0.0, []
    if ck:
        state = load_checkpoint(ck, model, opt, torch.device("cpu"))
        step, samples = state["step"], state["samples"]
        elapsed_prev = state["elapsed_s"]
        history = state.get("history", [])
        log(f"resumed at step {step}, {samples:,} samples, {elapsed_prev / 60:.1f} of {args.minutes} min used")
    start_step = step
    budget = args.minutes * 60.0
    if elapsed_prev >= budget:
        log("time budget already used; writing final weights only (raise --minutes to train more)")

    # data workers are forked before CUDA is initialised
    nw = args.workers if args.workers >= 0 else max(1, (os.cpu_count() or 2) - 1)
    ds = _dataset_class()(train_faces, words, args.batch_size, seed=(args.seed, step))
    kw = dict(batch_size=None, num_workers=nw)
    if nw > 0:
        kw.update(prefetch_factor=args.prefetch, persistent_workers=False)
        import multiprocessing as mp
        if "fork" in mp.get_all_start_methods():
            kw["multiprocessing_context"] = "fork"
    loader = DataLoader(ds, **kw)
    it = iter(loader)

    eval_imgs, eval_texts = make_eval_set(eval_faces, words, args.eval_lines)
    real_dir = args.real_dir
    if not real_dir and args.font_dir and os.path.isdir(os.path.join(args.font_dir, "real")):
        real_dir = os.path.join(args.font_dir, "real")

    model.to(device)
    for st in opt.state.values():  # optimizer state to the device
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                st[k] = v.to(device)

    def evaluate(tag):
        t0 = time.time()
        preds = recognise(model, eval_imgs, device, amp=amp)
        c = cer(preds, eval_texts)
        exact = sum(p == t for p, t in zip(preds, eval_texts)) / len(eval_texts)
        rec = {"step": step, "samples": samples, "minutes": round(elapsed() / 60, 2), "heldout_cer": round(c, 5),
               "heldout_line_acc": round(exact, 4)}
        msg = (f"[eval {tag}] step {step} held-out-font CER {c * 100:.2f}% "
               f"(lines exact {exact * 100:.1f}%, n={len(eval_texts)})")
        if real_dir:
            try:
                rp = real_page_cer(model, real_dir, device, amp=amp)
                for k2, (c2, _p) in rp.items():
                    rec[f"{k2}_cer"] = round(c2, 5)
                    msg += f"  {k2} CER {c2 * 100:.1f}%"
            except Exception as e:  # never let the progress check kill training
                msg += f"  (real pages failed: {e})"
        log(msg + f"  [{time.time() - t0:.1f}s]")
        for p, t in list(zip(preds, eval_texts))[:args.show]:
            log(f"    ref: {t!r}\n    hyp: {p!r}")
        history.append(rec)
        model.train()
        return rec

    t_start = time.time()

    def elapsed():
        return elapsed_prev + (time.time() - t_start)

    def meta():
        return {"spec": spec, "charset": CHARSET, "specials": SPECIALS, "step": step, "samples": samples,
                "minutes": round(elapsed() / 60, 2), "final_eval": history[-1] if history else None,
                "history": history,
                "heldout_groups": sorted({f["group"] for f in eval_faces}),
                "heldout_families": sorted({f["family"] for f in eval_faces}),
                "train_groups": sorted({f["group"] for f in train_faces}),
                "n_train_faces": len(train_faces), "n_heldout_faces": len(eval_faces),
                "command": " ".join(sys.argv), "torch": torch.__version__,
                "transformers": transformers.__version__, "device": str(device), "params": n_params(model)}

    def checkpoint():
        t0 = time.time()
        save_checkpoint(args.out, model, opt, {
            "step": step, "samples": samples, "elapsed_s": elapsed(), "spec": spec, "args": vars(args),
            "history": history})
        fin = save_final(args.out, model, meta(), args.final_dir)
        log(f"checkpoint saved at step {step} ({time.time() - t0:.1f}s); weights for export in {fin}"
            + (f" and {args.final_dir}" if args.final_dir else ""))

    stop = {"signal": None}

    def on_signal(signum, _frame):  # SIGTERM / SIGINT: leave the loop, save, exit
        stop["signal"] = signum

    import signal
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    model.train()
    last_log = last_ck = last_eval = time.time()
    run_loss, run_n, wait_t, comp_t = 0.0, 0, 0.0, 0.0
    t_log = time.time()
    samples_log = samples
    ce = torch.nn.CrossEntropyLoss(ignore_index=-100, label_smoothing=args.label_smoothing)
    while elapsed() < budget and stop["signal"] is None:
        t0 = time.time()
        try:
            imgs, labels = unpack_batch(next(it))
        except Exception as e:  # a data worker died (e.g. killed with the process group)
            log(f"data loader failed: {e!r}; saving and stopping")
            stop["signal"] = stop["signal"] or "loader"
            break
        t1 = time.time()
        wait_t += t1 - t0
        lr = lr_at(args, elapsed() / budget, step)
        for g in opt.param_groups:
            g["lr"] = lr
        x = to_pixels(imgs, device)
        labels = labels.to(device, non_blocking=True)
        dec_in = torch.full_like(labels, PAD_ID)
        dec_in[:, 0] = BOS_ID
        dec_in[:, 1:] = labels[:, :-1].clamp(min=0)
        dec_in[:, 1:][labels[:, :-1] == -100] = PAD_ID
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            logits = model(pixel_values=x, decoder_input_ids=dec_in).logits
        loss = ce(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        step += 1
        samples += imgs.shape[0]
        if step % 10 == 0 or device.type == "cpu":
            run_loss += loss.item()
            run_n += 1
        comp_t += time.time() - t1
        now = time.time()
        if now - last_log >= args.log_seconds:
            rate = (samples - samples_log) / (now - t_log)
            log(f"step {step} samples {samples:,} loss {run_loss / max(run_n, 1):.4f} lr {lr:.2e} "
                f"{rate:.0f} lines/s  data-wait {100 * wait_t / max(wait_t + comp_t, 1e-9):.0f}%  "
                f"{elapsed() / 60:.1f}/{args.minutes} min")
            run_loss, run_n, wait_t, comp_t = 0.0, 0, 0.0, 0.0
            last_log, t_log, samples_log = now, now, samples
        if args.eval_minutes > 0 and now - last_eval >= args.eval_minutes * 60:
            evaluate("periodic")
            last_eval = time.time()
        if args.ckpt_minutes > 0 and now - last_ck >= args.ckpt_minutes * 60:
            checkpoint()
            last_ck = time.time()
    del it
    if stop["signal"] is not None:
        log(f"signal {stop['signal']}: saving and stopping")
        checkpoint()
        return
    rec = evaluate("final") if (step > start_step or not history) else history[-1]
    checkpoint()
    log(f"=== done: step {step}, {samples:,} samples, {elapsed() / 60:.1f} min, "
        f"held-out CER {rec.get('heldout_cer', float('nan')) * 100:.2f}%")


# ---------------------------------------------------------------------------
# export
# ---------------------------------------------------------------------------
def read_final(dir_in):
    """(meta, folder) of trained weights: DIR (a final/ folder or the GPU run's $OUT), DIR/final
    or DIR/ckpt."""
    for c in (dir_in, os.path.join(dir_in, "final")):
        p = os.path.join(c, "train_meta.json")
        if os.path.exists(p):
            with open(p) as f:
                return json.load(f), c
    ck = find_checkpoint(dir_in)
    if not ck:
        raise SystemExit(f"no final/ or ckpt/ weights in {dir_in}")
    with open(os.path.join(ck, "state.json")) as f:
        st = json.load(f)
    return {"spec": st["spec"], "model_files": st["model_files"], "step": st["step"],
            "samples": st["samples"], "history": st.get("history", [])}, ck


def export(dir_in, dir_out, check=True, font_dir=None):
    import torch
    from transformers import PreTrainedTokenizerFast, ViTImageProcessor
    meta, src = read_final(dir_in)
    if meta.get("charset", CHARSET) != CHARSET:
        raise SystemExit("charset of the trained model differs from this script's CHARSET")
    spec = meta["spec"]
    model = build_model(spec)
    sd = load_sharded(src, meta["model_files"])
    missing, unexpected = load_model_tensors(model, sd, strict=False)
    missing = [m for m in missing if "pooler" not in m]
    if missing or unexpected:
        raise SystemExit(f"weights do not match the model: missing {missing[:8]} unexpected {unexpected[:8]}")
    model.eval()
    os.makedirs(dir_out, exist_ok=True)
    model.save_pretrained(dir_out)
    tok = build_tokenizer()
    check_tokenizer(tok)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                     unk_token="<unk>", clean_up_tokenization_spaces=False,
                                     model_max_length=GEN_MAX_LENGTH)
    hf_tok.save_pretrained(dir_out)
    proc = ViTImageProcessor(do_resize=True, size={"height": IMG_H, "width": IMG_W}, resample=2,
                             do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                             image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    proc.save_pretrained(dir_out)
    info = {k: meta.get(k) for k in ("spec", "step", "samples", "minutes", "final_eval", "heldout_groups",
                                     "heldout_families", "n_train_faces", "n_heldout_faces", "command",
                                     "torch", "transformers", "device", "params")}
    info["charset"] = CHARSET
    info["line_canvas"] = {"height": IMG_H, "width": IMG_W, "grayscale": True, "resample": "PIL BILINEAR",
                           "pad": "right, white (255)", "squash_if_wider": True}
    with open(os.path.join(dir_out, "ocr_train_meta.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1, ensure_ascii=False)
    print(f"exported to {dir_out}: {', '.join(sorted(os.listdir(dir_out)))}")
    print(f"parameters: {n_params(model):,}")
    if check:
        from transformers import AutoTokenizer, VisionEncoderDecoderModel
        m2 = VisionEncoderDecoderModel.from_pretrained(dir_out).eval()
        t2 = AutoTokenizer.from_pretrained(dir_out)
        p2 = ViTImageProcessor.from_pretrained(dir_out)
        if not font_dir and os.path.exists(os.path.join("scratch", "ocr_data", ocr_fonts.INDEX_NAME)):
            font_dir = os.path.join("scratch", "ocr_data")
        faces = ocr_fonts.load_faces(font_dir, cache_path=os.path.join("/tmp", "ocr_fonts_cache.json"))
        ev = [f for f in faces if f["heldout"]] or faces
        synth = Synth(ev, ocr_fonts.load_words(font_dir), seed=("export-check", 1))
        texts, imgs = [], []
        for _ in range(8):
            t, im = synth.sample()
            texts.append(t)
            imgs.append(line_canvas(im))
        px = p2(images=imgs, return_tensors="pt").pixel_values
        ref = to_pixels(torch.from_numpy(np.stack([np.asarray(i.convert("L")) for i in imgs])), "cpu")
        assert torch.allclose(px, ref, atol=1e-5), "HF image processor differs from the training input"
        with torch.no_grad():
            a = m2.generate(pixel_values=px)
            b = model.generate(pixel_values=px)
        assert a.tolist() == b.tolist(), "reloaded model generates differently"
        hyps = t2.batch_decode(a, skip_special_tokens=True)
        assert hyps == [decode(row) for row in a.tolist()], "tokenizer.json decodes differently"
        print(f"check: processor == training input; reloaded model == trained model; "
              f"sample CER {cer(hyps, texts) * 100:.1f}% on {len(texts)} held-out-font lines")
        for t, h in list(zip(texts, hyps))[:3]:
            print(f"  ref {t!r}\n  hyp {h!r}")


# ---------------------------------------------------------------------------
# tools
# ---------------------------------------------------------------------------
def bench_render(args):
    faces = ocr_fonts.load_faces(args.font_dir, cache_path=os.path.join("/tmp", "ocr_fonts_cache.json"))
    faces = [f for f in faces if not f["heldout"]]
    words = ocr_fonts.load_words(args.font_dir)
    synth = Synth(faces, words, seed=("bench", 0))
    n = args.bench_render
    for rnd in range(3):  # glyph caches fill up over the rounds
        t0, c0 = time.time(), time.process_time()
        make_batch(synth, n)
        dt, dc = time.time() - t0, time.process_time() - c0
        print(f"round {rnd}: {n} lines (incl. augmentation and line canvas) in {dt:.2f}s wall, {dc:.2f}s CPU: "
              f"{n / dt:.0f} lines/s wall, {n / dc:.0f} lines/s per CPU-second; cached faces x sizes: "
              f"{len(synth.font_cache)}", flush=True)


def dump_samples(args):
    n, d = args.dump_samples
    n = int(n)
    os.makedirs(d, exist_ok=True)
    faces = ocr_fonts.load_faces(args.font_dir, cache_path=os.path.join("/tmp", "ocr_fonts_cache.json"))
    words = ocr_fonts.load_words(args.font_dir)
    synth = Synth([f for f in faces if not f["heldout"]], words, seed=("dump", args.seed))
    rows = []
    grid = Image.new("L", (IMG_W, (IMG_H + 2) * n), 128)
    for i in range(n):
        fc = synth.pick_face()
        t = synth.text.line()
        miss = synth.missing.get(fc["path"])
        if miss:
            t = " ".join("".join(c for c in t if c not in miss).split()) or "x"
        im = synth.render(t, fc)
        cv = line_canvas(im).convert("L")
        cv.save(os.path.join(d, f"{i:04d}.png"))
        grid.paste(cv, (0, i * (IMG_H + 2)))
        rows.append(f"{i:04d}.png\t{fc['family']} {fc['style']}\t{t}")
    grid.save(os.path.join(d, "grid.png"))
    with open(os.path.join(d, "labels.tsv"), "w", encoding="utf-8") as f:
        f.write("\n".join(rows) + "\n")
    print(f"wrote {n} samples and grid.png to {d}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="scratch/ocr_run", help="run folder (log, checkpoints, final weights)")
    ap.add_argument("--minutes", type=float, default=120.0, help="total training time budget (over resumes)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--min-lr-ratio", type=float, default=0.05)
    ap.add_argument("--warmup", type=float, default=0.04, help="warm-up, fraction of the time budget")
    ap.add_argument("--warmup-steps", type=int, default=200, help="and at least this many steps")
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=-1, help="data worker processes (default: cores - 1)")
    ap.add_argument("--prefetch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the main process (0: default)")
    ap.add_argument("--font-dir", help="folder made by scripts/pack_fonts.sh (default: system fonts)")
    ap.add_argument("--real-dir", help="folder with phototest/eurotext .png+.txt for a page CER estimate "
                                       "(default: FONT_DIR/real when present)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--preset", default="auto", choices=["auto"] + sorted(PRESETS),
                    help="model size: base (8.2 M parameters, patches 8x4; for a GPU), small (3.1 M, patches "
                         "8x8; for a 2-core CPU); auto: base on CUDA, small on CPU. The options below override it; "
                         "a resumed run keeps the size of its checkpoint")
    ap.add_argument("--width", type=int)
    ap.add_argument("--enc-layers", type=int)
    ap.add_argument("--dec-layers", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--enc-ffn", type=int, help="default 4 x width")
    ap.add_argument("--dec-ffn", type=int, help="default 4 x width")
    ap.add_argument("--patch", help="patch size HxW (e.g. 8x4) or one number")
    ap.add_argument("--eval-lines", type=int, default=200)
    ap.add_argument("--init-weights", metavar="DIR",
                    help="start a new run (no checkpoint in --out yet) from trained weights (a final/ folder "
                         "or the files returned by the GPU run); new optimizer and LR schedule")
    ap.add_argument("--final-dir", help="also write the final weights, train_meta.json and log.txt here "
                                        "(refreshed at every checkpoint)")
    ap.add_argument("--eval-minutes", type=float, default=15.0)
    ap.add_argument("--ckpt-minutes", type=float, default=5.0)
    ap.add_argument("--log-seconds", type=float, default=30.0)
    ap.add_argument("--show", type=int, default=3, help="example predictions printed per eval")
    ap.add_argument("--export", nargs=2, metavar=("DIR_IN", "DIR_OUT"),
                    help="write a save_pretrained folder from a run folder (or its final/)")
    ap.add_argument("--no-check", action="store_true", help="with --export: skip the reload check")
    ap.add_argument("--bench-render", type=int, default=0, metavar="N")
    ap.add_argument("--dump-samples", nargs=2, metavar=("N", "DIR"))
    args = ap.parse_args()
    if args.export:
        export(args.export[0], args.export[1], check=not args.no_check, font_dir=args.font_dir)
    elif args.bench_render:
        bench_render(args)
    elif args.dump_samples:
        dump_samples(args)
    else:
        train(args)


if __name__ == "__main__":
    main()
