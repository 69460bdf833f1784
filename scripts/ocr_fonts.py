#!/usr/bin/env python3
"""Font (and word list) collection for the synthetic OCR training data.

Used by scripts/train_ocr.py; also a small command line tool:

    python3 scripts/ocr_fonts.py list [--font-dir DIR]      # what would be used
    python3 scripts/ocr_fonts.py pack OUT_DIR [--max-mb 40]  # copy fonts+words for another machine

What it does
------------
* Finds .ttf/.otf files (system font folders of Debian's fonts-* packages, or
  one folder given with --font-dir, searched recursively).
* Drops symbol / dingbat / math / music / small-caps / initials / script faces by
  name, and every face that does not render the *required* characters (ASCII
  letters, digits and punctuation, the Latin-1 letters) with a real glyph:
  a character counts as missing when its rendered mask is empty or identical to
  the face's .notdef glyph (that is how the many non-Latin Noto faces go).
  Characters of the *optional* set (typographic quotes, dashes, euro, ...) that a
  face lacks are recorded per face; the trainer leaves them out of text it
  renders with that face.
* Groups faces into *design groups*: metric clones and near clones of one design
  are one group (Times = Nimbus Roman, TeX Gyre Termes, FreeSerif, Liberation
  Serif, Tinos, STIX; Helvetica = Nimbus Sans, TeX Gyre Heros, FreeSans,
  Liberation Sans, Arimo; ...), so that a held-out group really is unseen.
* Holds out a fixed list of design groups (HELDOUT_GROUPS) for evaluation.

Only PIL is needed (no fontTools), so this runs on machines where nothing can
be installed.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import string
import sys

from PIL import ImageFont

SYSTEM_FONT_DIRS = ["/usr/share/fonts", "/usr/share/texmf/fonts/opentype", "/usr/local/share/fonts"]
DICT_DIR = "/usr/share/dict"
# language -> Debian word list file (packages wamerican, wngerman, wfrench, witalian, wspanish, wportuguese)
WORD_LISTS = {
    "en": "american-english",
    "de": "ngerman",
    "fr": "french",
    "it": "italian",
    "es": "spanish",
    "pt": "portuguese",
}
INDEX_NAME = "fonts_index.json"

# ---------------------------------------------------------------------------
# Character set.  Kept here (not in train_ocr.py) because font checks need it.
# The order defines token ids (after the 4 special tokens): never reorder,
# only append, or trained models stop matching.
# ---------------------------------------------------------------------------
ASCII = "".join(chr(c) for c in range(32, 127))  # space .. ~
LATIN1_LETTERS = "".join(chr(c) for c in range(0xC0, 0x100) if chr(c) not in "×÷")
LATIN1_SYMBOLS = "¡¢£¥§©«®°±²³µ¶·ªº»¼½¾¿×÷¬"
EXTRA = "ŒœŸ€„“”‘’‚‹›–—…•™"
CHARSET = ASCII + LATIN1_SYMBOLS + LATIN1_LETTERS + EXTRA
assert len(set(CHARSET)) == len(CHARSET), "duplicate characters in CHARSET"

# a face must render all of these
REQUIRED = (string.ascii_letters + string.digits + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
            + LATIN1_LETTERS)
# these are left out of the text when a face lacks them
OPTIONAL = "".join(c for c in CHARSET if c not in REQUIRED and c != " ")

# names (family, style or file name; case-insensitive) of faces never used
EXCLUDE_RE = re.compile(
    r"symbol|dingbat|d050000l|math|music|emoji|z003|chorus|smallcaps|caps|\bsc\b|initials|keyboard|"
    r"hairline|thin|stixsize|stixintegrals|stixnonunicode|stixvariants|unicase|"
    r"ornament|fallback|kufi|naskh|nastaliq|rashi",
    re.I)

# design groups: first matching pattern (on the family name, case-insensitive) wins;
# families that match nothing form a group of their own (their family name
# without weight / width words).
GROUP_PATTERNS = [
    ("times", r"^(nimbus roman|tex ?gyre termes|freeserif|liberation serif|tinos|stix)"),
    ("helvetica", r"^(nimbus sans|tex ?gyre heros|freesans|liberation sans|arimo)"),
    ("courier", r"^(nimbus mono|tex ?gyre cursor|freemono)"),
    ("cousine", r"^(cousine|liberation mono)"),
    ("palatino", r"^(p052|tex ?gyre pagella)"),
    ("bookman", r"^(urw bookman|tex ?gyre bonum)"),
    ("schoolbook", r"^(c059|tex ?gyre schola)"),
    ("avantgarde", r"^(urw gothic|tex ?gyre adventor)"),
    ("dejavu-sans-mono", r"^(dejavu sans mono|hack)"),
    ("dejavu-sans", r"^dejavu sans"),
    ("dejavu-serif", r"^dejavu serif"),
    ("noto-sans", r"^(noto sans(?! mono)|open sans)"),
    ("noto-mono", r"^(noto sans mono|noto mono)"),
    ("noto-serif", r"^noto serif"),
    ("computer-modern-serif", r"^(cmu serif|cmu classical|lm ?roman|latin modern roman)"),
    ("computer-modern-sans", r"^(cmu sans|lm ?sans|latin modern sans)"),
    ("computer-modern-mono", r"^(cmu typewriter|lm ?mono|latin modern mono)"),
    ("roboto", r"^roboto"),
    ("gentium", r"^gentium"),
    ("go", r"^go\b"),
    ("pt-serif", r"^pt serif"),
    ("pt-sans", r"^pt sans"),
    ("karla", r"^karla"),
    ("linux-libertine", r"^linux libertine"),
    ("linux-biolinum", r"^linux biolinum"),
    ("courier-prime", r"^courier prime"),
    ("anonymous-pro", r"^anonymous pro"),
    ("accanthis", r"^accanthis"),
    ("gillius", r"^gillius"),
    ("eb-garamond", r"^eb garamond"),
]

# Design groups held out of training and used for the held-out-font CER.
# Fixed list (about 12% of the ~55 groups): serif, sans and monospaced designs.
# Times and Helvetica clones stay in training on purpose: they are the most
# common document faces (and the faces of the real test pages).
HELDOUT_GROUPS = ["palatino", "charis-sil", "lato", "cabin", "go", "pt-serif", "mononoki"]

# sampling weight of a design group in training (others 1.0)
GROUP_WEIGHTS = {"times": 4.0, "helvetica": 4.0, "courier": 1.5, "cousine": 1.5,
                 "dejavu-sans": 1.5, "dejavu-serif": 1.5, "noto-sans": 1.5, "noto-serif": 1.5,
                 "computer-modern-serif": 1.5}

STYLE_WORDS = re.compile(
    r"\b(regular|bold|italic|oblique|light|medium|semibold|demibold|extrabold|black|heavy|book|"
    r"condensed|cond|narrow|display|caption|text|extra|demi|no\d|std|ps|[ot]$)\b", re.I)


def slug(s):
    return re.sub(r"[^a-z0-9]+", "-", s.lower()).strip("-")


def group_of(family):
    fam = family.lower()
    for name, pat in GROUP_PATTERNS:
        if re.search(pat, fam):
            return name
    base = STYLE_WORDS.sub(" ", fam)
    return slug(base) or slug(fam)


def find_font_files(dirs):
    out = []
    for d in dirs:
        if not os.path.isdir(d):
            continue
        for root, _dirs, files in os.walk(d, followlinks=True):
            for f in files:
                if f.lower().endswith((".ttf", ".otf")):
                    out.append(os.path.join(root, f))
    return sorted(out)


def _sig(font, ch):
    m = font.getmask(ch)
    return (m.size, bytes(m))


def check_face(path, size=28):
    """Return (family, style, missing_optional) or None when the face is unusable."""
    try:
        font = ImageFont.truetype(path, size)
        family, style = font.getname()
    except Exception:
        return None
    family = family or os.path.basename(path)
    style = style or "Regular"
    if EXCLUDE_RE.search(family) or EXCLUDE_RE.search(style) or EXCLUDE_RE.search(os.path.basename(path)):
        return None
    try:
        notdef = _sig(font, "\U0010FFFD")
        missing = []
        for ch in REQUIRED + OPTIONAL:
            s = _sig(font, ch)
            if s == notdef or s[0][0] == 0 or s[0][1] == 0 or not any(s[1]):
                missing.append(ch)
    except Exception:
        return None
    if any(c in REQUIRED for c in missing):
        return None
    # caps-only faces: lowercase identical to uppercase
    if _sig(font, "abcdefg") == _sig(font, "ABCDEFG"):
        return None
    return family, style, "".join(missing)


def file_digest(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def scan(font_dir=None, verbose=False):
    """List of usable faces: dicts {path, family, style, group, missing, heldout}."""
    dirs = [font_dir] if font_dir else SYSTEM_FONT_DIRS
    faces, seen = [], set()
    for path in find_font_files(dirs):
        r = check_face(path)
        if r is None:
            if verbose:
                print("skip", path, file=sys.stderr)
            continue
        family, style, missing = r
        # same face installed twice (Liberation 1 and 2 share file names)
        key = (family.lower(), style.lower(), os.path.basename(path).lower())
        if key in seen or "[" in os.path.basename(path):  # skip variable fonts (static ones exist)
            continue
        seen.add(key)
        g = group_of(family)
        faces.append(dict(path=path, family=family, style=style, group=g,
                          missing=missing, heldout=g in HELDOUT_GROUPS))
    return faces


def load_faces(font_dir=None, cache_path=None, verbose=False):
    """Faces from DIR/fonts_index.json when present (written by `pack`), else a scan.

    Paths in the index are relative to the font folder.
    """
    if font_dir:
        idx = os.path.join(font_dir, INDEX_NAME)
        if os.path.exists(idx):
            with open(idx) as f:
                data = json.load(f)
            faces = data["faces"]
            for fc in faces:
                fc["path"] = os.path.join(font_dir, fc["path"])
                fc["heldout"] = fc["group"] in HELDOUT_GROUPS
            faces = [fc for fc in faces if os.path.exists(fc["path"])]
            if faces:
                return faces
    if cache_path and os.path.exists(cache_path):
        with open(cache_path) as f:
            faces = json.load(f)
        if faces and all(os.path.exists(fc["path"]) for fc in faces):
            return faces
    faces = scan(font_dir, verbose=verbose)
    if cache_path:
        os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
        with open(cache_path, "w") as f:
            json.dump(faces, f)
    return faces


def summary(faces):
    groups = {}
    for fc in faces:
        groups.setdefault(fc["group"], []).append(fc)
    lines = []
    for g in sorted(groups):
        fams = sorted({fc["family"] for fc in groups[g]})
        tag = "HELD-OUT" if g in HELDOUT_GROUPS else "train"
        lines.append(f"{tag:8s} {g:28s} {len(groups[g]):3d} faces  {', '.join(fams)}")
    n_ho = sum(fc["heldout"] for fc in faces)
    lines.append(f"{len(faces)} faces in {len(groups)} design groups; "
                 f"{len(faces) - n_ho} train faces, {n_ho} held-out faces "
                 f"({sum(1 for g in groups if g in HELDOUT_GROUPS)} groups: {', '.join(HELDOUT_GROUPS)})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# word lists
# ---------------------------------------------------------------------------
def read_word_file(path):
    opener = open
    if path.endswith(".gz"):
        import gzip
        opener = gzip.open
    with opener(path, "rt", encoding="utf-8", errors="ignore") as f:
        return [w.strip() for w in f if w.strip()]


def load_words(font_dir=None, charset=CHARSET):
    """{lang: [words]} from FONT_DIR/words/<lang>.txt or /usr/share/dict; words with
    characters outside the charset are dropped."""
    cs = set(charset)
    out = {}
    for lang, fname in WORD_LISTS.items():
        cands = []
        if font_dir:
            cands.append(os.path.join(font_dir, "words", lang + ".txt"))
        cands.append(os.path.join(DICT_DIR, fname))
        for p in cands:
            if os.path.exists(p):
                ws = [w for w in read_word_file(p) if len(w) <= 24 and all(c in cs for c in w)]
                if ws:
                    out[lang] = ws
                break
    return out


# ---------------------------------------------------------------------------
# packing for another machine
# ---------------------------------------------------------------------------
STYLE_PREF = ["regular", "roman", "book", "bold", "italic", "bold italic", "oblique", "bold oblique",
              "medium", "semibold", "light"]


def _style_rank(style):
    s = style.lower()
    return STYLE_PREF.index(s) if s in STYLE_PREF else len(STYLE_PREF)


def subset_font(src, dst):
    """Copy a font keeping only the glyphs of CHARSET (+ what its layout features reach: ligatures,
    kerning), names and hinting. Needs fontTools; returns False when it is missing or fails."""
    try:
        from fontTools import subset
    except ImportError:
        return False
    try:
        opts = subset.Options()
        opts.name_IDs = ["*"]
        opts.name_languages = ["*"]
        opts.notdef_outline = True
        opts.hinting = True
        opts.layout_features = ["kern", "liga", "clig", "calt", "ccmp", "locl", "mark", "mkmk", "rlig"]
        opts.drop_tables += ["DSIG"]
        font = subset.load_font(src, opts)
        sub = subset.Subsetter(opts)
        sub.populate(unicodes=[ord(c) for c in CHARSET] + [0xFB01, 0xFB02, 0x00A0])
        sub.subset(font)
        subset.save_font(font, dst, opts)
        return True
    except Exception as e:
        print(f"subset failed for {src}: {e}", file=sys.stderr)
        return False


def pack(out_dir, max_mb=40.0, real_dir=None, words_per_lang=60000):
    import random
    faces = scan()
    try:
        import fontTools  # noqa: F401
        can_subset = True
    except ImportError:
        can_subset = False
        print("fontTools not installed: copying whole font files (fewer fit in the size limit)", file=sys.stderr)
    fams = {}
    for fc in faces:
        fams.setdefault(fc["family"], []).append(fc)
    words = load_words(None)
    words_bytes = 0
    rnd = random.Random(1234)
    sampled = {}
    for lang, ws in words.items():
        ws = sorted(set(ws))
        if len(ws) > words_per_lang:
            ws = sorted(rnd.sample(ws, words_per_lang))
        sampled[lang] = ws
        words_bytes += sum(len(w.encode()) + 1 for w in ws)
    budget = max_mb * 1e6 - words_bytes - 2e6  # real pages, index
    if can_subset:  # subset files are ~10x smaller: try everything, trim below if needed
        budget *= 8.0
    chosen = None
    for per_family in (100, 8, 6, 5, 4, 3, 2, 1):
        sel = []
        for fam, fcs in fams.items():
            fcs = sorted(fcs, key=lambda f: (_style_rank(f["style"]), f["style"]))
            sel.extend(fcs[:per_family])
        size = sum(os.path.getsize(f["path"]) for f in sel)
        chosen = sel
        if size <= budget:
            break
    # still too big: drop the largest files of train groups that have many faces
    chosen = sorted(chosen, key=lambda f: os.path.getsize(f["path"]))
    while sum(os.path.getsize(f["path"]) for f in chosen) > budget:
        chosen.pop()
    os.makedirs(os.path.join(out_dir, "fonts"), exist_ok=True)
    index = []
    used = set()
    total_fonts = 0
    real_budget = max_mb * 1e6 - words_bytes - 2e6
    # smallest files first, so that a tight budget drops a few big ones rather than many small ones
    for fc in sorted(chosen, key=lambda f: (f["heldout"] is False, os.path.getsize(f["path"]))):
        base = os.path.basename(fc["path"]).replace(" ", "_")
        name = base
        i = 1
        while name in used:
            name = f"{i}_{base}"
            i += 1
        dst = os.path.join(out_dir, "fonts", name)
        if not (can_subset and subset_font(fc["path"], dst)):
            shutil.copy2(fc["path"], dst)
        if total_fonts + os.path.getsize(dst) > real_budget:
            os.remove(dst)
            continue
        total_fonts += os.path.getsize(dst)
        used.add(name)
        d = dict(fc)
        d["path"] = "fonts/" + name
        index.append(d)
    with open(os.path.join(out_dir, INDEX_NAME), "w") as f:
        json.dump({"faces": index, "heldout_groups": HELDOUT_GROUPS}, f, indent=0)
    os.makedirs(os.path.join(out_dir, "words"), exist_ok=True)
    for lang, ws in sampled.items():
        with open(os.path.join(out_dir, "words", lang + ".txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(ws) + "\n")
    if real_dir and os.path.isdir(real_dir):
        os.makedirs(os.path.join(out_dir, "real"), exist_ok=True)
        for n in ("phototest", "eurotext"):
            for ext in (".png", ".txt"):
                p = os.path.join(real_dir, n + ext)
                if os.path.exists(p):
                    shutil.copy2(p, os.path.join(out_dir, "real", n + ext))
    total = 0
    nfiles = 0
    for root, _d, files in os.walk(out_dir):
        for fn in files:
            total += os.path.getsize(os.path.join(root, fn))
            nfiles += 1
    print(summary([dict(fc, path=os.path.join(out_dir, fc["path"])) for fc in index]))
    print(f"packed {len(index)} font files + word lists into {out_dir}: {nfiles} files, {total / 1e6:.1f} MB")
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("list")
    a.add_argument("--font-dir")
    a.add_argument("-v", action="store_true")
    b = sub.add_parser("pack")
    b.add_argument("out_dir")
    b.add_argument("--max-mb", type=float, default=40.0)
    b.add_argument("--real-dir", default="/work/shared/data/real-ocr",
                   help="copy phototest/eurotext (+ .txt) here too, for the page check during training")
    args = ap.parse_args()
    if args.cmd == "list":
        faces = load_faces(args.font_dir, verbose=args.v)
        print(summary(faces))
        if args.v:
            for fc in faces:
                print(fc["group"], "|", fc["family"], "|", fc["style"], "|", fc["path"], "| missing:", fc["missing"])
    else:
        pack(args.out_dir, args.max_mb, args.real_dir)


if __name__ == "__main__":
    main()
