"""Draws docs/architecture.png, the layer diagram in the README, from the code: python docs/make_architecture.py"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def layers() -> list[tuple[str, str, str]]:
    """(layer, what is in it, colour), the names read from the code: the registry, the commands, the patches."""
    from anysize import cli, methods
    from anysize.models import FAMILIES
    from anysize.patches import PATCHES

    commands = " / ".join(cli.COMMANDS)
    return [
        ("front ends", f"anysize {commands}  ·  anysize.generate / upscale / patch  ·  PNG metadata", "#dbeafe"),
        ("sampling", "one loop: timesteps · seeds · progress · callbacks · cancel · current_step() for patches", "#e0e7ff"),
        ("methods", " · ".join(methods.names()) + "   (options: anysize.options; state: the Request)", "#ede9fe"),
        ("patches / tiling grids", " · ".join(PATCHES) + " (told the step)   |   tile grids · fusion weights", "#fce7f3"),
        ("model adapters · noise spaces", "encode_prompt · predict(window) · ε/v/flow/x0 (NoiseSpace) · tiled VAE · lora()",
         "#dcfce7"),
        ("diffusers", " · ".join(f for f in FAMILIES) + "   (any scheduler)", "#fef9c3"),
    ]


def main(path: Path = Path(__file__).with_name("architecture.png")) -> None:
    rows = layers()
    w, row, pad = 1040, 62, 14
    img = Image.new("RGB", (w, pad + len(rows) * (row + pad)), "white")
    d = ImageDraw.Draw(img)
    try:
        big = ImageFont.truetype("DejaVuSans-Bold.ttf", 20)
        small = ImageFont.truetype("DejaVuSans.ttf", 15)
    except OSError:
        big = small = ImageFont.load_default()
    for i, (name, text, colour) in enumerate(rows):
        y = pad + i * (row + pad)
        d.rounded_rectangle([pad, y, w - pad, y + row], radius=10, fill=colour, outline="#334155", width=2)
        d.text((pad + 16, y + 8), name, fill="#0f172a", font=big)
        d.text((pad + 16, y + 36), text, fill="#334155", font=small)
        if i:
            d.polygon([(w // 2 - 8, y - pad + 2), (w // 2 + 8, y - pad + 2), (w // 2, y - 2)], fill="#334155")
    img.save(path)


if __name__ == "__main__":
    main()
