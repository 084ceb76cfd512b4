"""Draws docs/architecture.png, the layer diagram in the README: python docs/make_architecture.py"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LAYERS = [
    ("front ends", "anysize generate / upscale / demo  ·  anysize.generate()  ·  PNG + metadata", "#dbeafe"),
    ("sampling", "one loop: scheduler timesteps · progress · callbacks · cancel", "#e0e7ff"),
    ("methods", "direct · multidiffusion · fstd · asd · hidiffusion · elastic · scalediff", "#ede9fe"),
    ("patches / tiling grids", "MSW-MSA · RAU-Net · NPA   |   tile grids · fusion weights", "#fce7f3"),
    ("model adapters", "encode_prompt · predict(window) · to_x0 · encode/decode (tiled VAE above a size)", "#dcfce7"),
    ("diffusers", "SD 1.x · SD 2.x · SDXL · SD3 · FLUX.1   (any scheduler)", "#fef9c3"),
]


def main(path: Path = Path(__file__).with_name("architecture.png")) -> None:
    w, row, pad = 900, 62, 14
    img = Image.new("RGB", (w, pad + len(LAYERS) * (row + pad)), "white")
    d = ImageDraw.Draw(img)
    try:
        big = ImageFont.truetype("DejaVuSans-Bold.ttf", 20)
        small = ImageFont.truetype("DejaVuSans.ttf", 15)
    except OSError:
        big = small = ImageFont.load_default()
    for i, (name, text, colour) in enumerate(LAYERS):
        y = pad + i * (row + pad)
        d.rounded_rectangle([pad, y, w - pad, y + row], radius=10, fill=colour, outline="#334155", width=2)
        d.text((pad + 16, y + 8), name, fill="#0f172a", font=big)
        d.text((pad + 16, y + 36), text, fill="#334155", font=small)
        if i:
            d.polygon([(w // 2 - 8, y - pad + 2), (w // 2 + 8, y - pad + 2), (w // 2, y - 2)], fill="#334155")
    img.save(path)


if __name__ == "__main__":
    main()
