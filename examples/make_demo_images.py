"""Generate ``examples/images/``: the demo input folder, from photographs that ship with scikit-image.

Not run by the tests or the demo (the generated files are committed). Re-run with an environment that
has scikit-image and Pillow installed:

    python examples/make_demo_images.py

The set covers what the filter must handle: JPEG / PNG / WEBP, tall / wide / square crops, a nested
subfolder, an EXIF-rotated JPEG, CMYK, RGBA, palette and 16-bit images, caption sidecars, one image that
is too small, one that is too elongated, and four broken files. Sources and licences: LICENSE.md.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import skimage
from PIL import Image

SKIMAGE_DATA = Path(skimage.__file__).parent / "data"
OUT = Path(__file__).parent / "images"
MAX_SIDE = 768


def load(name: str) -> Image.Image:
    image = Image.open(SKIMAGE_DATA / name)
    image.load()
    return image


def shrink(image: Image.Image, max_side: int = MAX_SIDE) -> Image.Image:
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)


def crop_to_ratio(image: Image.Image, width_over_height: float) -> Image.Image:
    """Largest centred crop with the given aspect ratio."""
    width, height = image.size
    if width / height > width_over_height:
        new_width = round(height * width_over_height)
        left = (width - new_width) // 2
        return image.crop((left, 0, left + new_width, height))
    new_height = round(width / width_over_height)
    top = (height - new_height) // 2
    return image.crop((0, top, width, top + new_height))


def save(image: Image.Image, name: str, **options: object) -> None:
    path = OUT / name
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)


def plain_images() -> None:
    save(load("astronaut.png"), "astronaut.jpg", quality=90)
    save(load("chelsea.png"), "nested/chelsea.webp", quality=85)
    save(crop_to_ratio(load("ihc.png"), 16 / 9), "ihc_16x9.jpg", quality=90)
    save(crop_to_ratio(load("rocket.jpg"), 1 / 3), "rocket_tall.jpg", quality=90)
    save(shrink(crop_to_ratio(load("hubble_deep_field.jpg"), 3)), "hubble_wide.webp", quality=85)
    save(shrink(load("retina.jpg"), 640), "retina.jpg", quality=88)
    save(load("coins.png"), "coins.png")
    save(load("clock_motion.png"), "nested/clock.jpg", quality=90)
    save(load("cell.png"), "nested/cell.webp", quality=85)
    save(load("brick.png"), "brick.jpg", quality=90)
    save(load("grass.png"), "grass.png")
    save(load("gravel.png"), "nested/deeper/gravel.webp", quality=85)
    save(load("text.png"), "text.png")
    save(crop_to_ratio(load("coffee.png"), 1), "coffee_square.webp", quality=85)
    (OUT / "rocket.jpg").write_bytes((SKIMAGE_DATA / "rocket.jpg").read_bytes())  # original bytes, untouched


def special_modes() -> None:
    coffee = load("coffee.png")  # 600x400, shown upright after a 90-degree EXIF rotation
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": store the pixels turned the other way
    save(coffee.transpose(Image.Transpose.ROTATE_90), "coffee_exif6.jpg", quality=90, exif=exif)
    hubble = shrink(crop_to_ratio(load("hubble_deep_field.jpg"), 4 / 3), 640)
    save(hubble.convert("CMYK"), "hubble_cmyk.jpg", quality=90)
    horse = load("horse.png").convert("L")  # a dark silhouette on white: make the white transparent
    horse_rgba = Image.new("RGBA", horse.size, (40, 30, 20, 0))
    horse_rgba.putalpha(horse.point(lambda value: 255 - value))
    save(horse_rgba, "horse_rgba.png")
    chelsea = crop_to_ratio(load("chelsea.png"), 1)
    save(chelsea.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "chelsea_palette.png")
    camera = np.asarray(load("camera.png")).astype(np.uint16) * 257
    save(Image.fromarray(camera), "camera_16bit.png")


def rejected_images() -> None:
    tiny = load("microaneurysms.png").resize((64, 64), Image.Resampling.LANCZOS)
    save(tiny, "microaneurysms_tiny.png")  # too small
    strip = shrink(crop_to_ratio(load("retina.jpg"), 6))
    save(strip, "retina_strip_6x1.jpg", quality=88)  # too elongated
    whole = (OUT / "astronaut.jpg").read_bytes()
    (OUT / "broken_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (OUT / "broken_zero.jpg").write_bytes(b"")
    (OUT / "not_an_image.png").write_text("This is a text file with a .png name.\n")
    (OUT / "broken_header.webp").write_bytes(random.Random(0).randbytes(2048))


def captions() -> None:
    (OUT / "astronaut.txt").write_text("Portrait of astronaut Eileen Collins in front of a US flag.\n")
    (OUT / "rocket.txt").write_text("A Falcon 9 rocket lifting off from the launch pad.\n")
    (OUT / "nested/clock.txt").write_text("A motion-blurred photograph of a wall clock.\n")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    plain_images()
    special_modes()
    rejected_images()
    captions()


if __name__ == "__main__":
    main()
