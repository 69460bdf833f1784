#!/usr/bin/env bash
# Pack what scripts/train_ocr.py needs from Debian packages into one folder, so that a machine
# without them (e.g. the GPU machine, no network) can train with `--font-dir DIR`:
#   DIR/fonts/            the usable training + held-out font files (at most 40 MB in all)
#   DIR/fonts_index.json  family, style, design group, missing optional glyphs of each file
#   DIR/words/<lang>.txt  word lists (en de fr it es pt), up to 60,000 words each
#   DIR/real/             phototest / eurotext .png + .txt (page CER printed during training)
#
# usage: scripts/pack_fonts.sh [DIR]            (default DIR: scratch/ocr_data)
#        INSTALL=1 scripts/pack_fonts.sh [DIR]  (apt-get install the packages first)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-scratch/ocr_data}

PACKAGES="fonts-dejavu fonts-dejavu-extra fonts-liberation fonts-liberation2 fonts-freefont-ttf
 fonts-urw-base35 fonts-noto-core fonts-noto-mono fonts-croscore fonts-crosextra-carlito
 fonts-crosextra-caladea fonts-linuxlibertine fonts-texgyre fonts-open-sans fonts-roboto fonts-lato
 fonts-ebgaramond fonts-cantarell fonts-firacode fonts-inconsolata fonts-go fonts-hack
 fonts-sil-gentiumplus fonts-sil-charis fonts-sil-andika fonts-courier-prime fonts-comic-neue
 fonts-paratype fonts-anonymous-pro fonts-oldstandard fonts-play fonts-cabin fonts-karla fonts-stix
 fonts-gfs-didot fonts-lmodern fonts-cmu fonts-mononoki fonts-adf-accanthis fonts-adf-gillius
 fonts-quattrocento fonts-jura fonts-league-spartan
 wamerican wngerman wfrench witalian wspanish wportuguese"

if [ "${INSTALL:-0}" = 1 ]; then
    apt-get update -q
    # one by one: a package missing from the mirror must not stop the rest
    for p in $PACKAGES; do
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$p" >/dev/null \
            || echo "warning: could not install $p" >&2
    done
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x /work/venv/bin/python ]; then PY=/work/venv/bin/python; else PY=python3; fi
fi

rm -rf "$DIR"
"$PY" scripts/ocr_fonts.py pack "$DIR" --max-mb 40
du -sh "$DIR"
