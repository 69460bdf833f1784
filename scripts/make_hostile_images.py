#!/usr/bin/env python3
"""Writes the image fixtures of tests/hostile.rs that Rust cannot write itself:
a CMYK JPEG and an animated GIF (tests/fixtures/images/cmyk.jpg, animated.gif).

    python3 scripts/make_hostile_images.py

PIL's readings, which the tests compare glance's against: cmyk.jpg is one colour, CMYK
(10, 200, 30, 0), which PIL's convert("RGB") gives as (245, 55, 225); animated.gif has a red
first frame and a blue second one, and PIL's Image.open reads the first.
"""
from pathlib import Path

from PIL import Image

IMAGES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "images"

cmyk = Image.new("CMYK", (40, 24), (10, 200, 30, 0))
cmyk.save(IMAGES / "cmyk.jpg", quality=95)
assert Image.open(IMAGES / "cmyk.jpg").convert("RGB").getpixel((5, 5)) == (245, 55, 225)

frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255)]]
frames[0].save(IMAGES / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
assert Image.open(IMAGES / "animated.gif").convert("RGB").getpixel((0, 0)) == (255, 0, 0)
print("wrote", IMAGES / "cmyk.jpg", IMAGES / "animated.gif")
