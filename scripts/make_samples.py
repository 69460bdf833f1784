#!/usr/bin/env python3
"""Render the sample images the README's first command reads (samples/*.png).

    python3 scripts/make_samples.py

Needs Pillow and the DejaVu fonts (Debian: fonts-dejavu-core). Deterministic.
"""
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf"
OUT = Path(__file__).resolve().parent.parent / "samples"

PAGE = [
    "Invoice 2024-0117, due 12 March 2024",
    "3 x Notebook A5 at 4.50 EUR = 13.50 EUR",
    "Thank you for your order!",
]
LINE = "glance reads text on a Raspberry Pi."


def render(lines, size, path):
    font = ImageFont.truetype(FONT, size)
    pad, step = size, int(size * 1.6)
    width = max(int(font.getlength(t)) for t in lines) + 2 * pad
    img = Image.new("L", (width, 2 * pad + step * len(lines)), 250)
    draw = ImageDraw.Draw(img)
    for i, t in enumerate(lines):
        draw.text((pad, pad + i * step), t, font=font, fill=25)
    img.save(path)


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    render(PAGE, 22, OUT / "invoice.png")
    render([LINE], 26, OUT / "line.png")
    print("wrote", ", ".join(p.name for p in sorted(OUT.glob("*.png"))))
