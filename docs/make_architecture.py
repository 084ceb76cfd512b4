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
        ("model adapters · noise spaces", "encode_prompt · predict(window) · ε/v/flow/x0 (NoiseSpace) · tiled VAE · loras() · ControlNet",
         "#dcfce7"),
        ("diffusers", " · ".join(f for f in FAMILIES) + "   (any scheduler)", "#fef9c3"),
    ]


def wrap(text: str, font, width: float, draw) -> list[str]:
    """``text`` in lines no wider than ``width``, broken at its separators (" · ", "  ")."""
    lines, line = [], ""
    for word in text.replace("  ", " ").split(" "):
        trial = f"{line} {word}" if line else word
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + [line]


def main(path: Path = Path(__file__).with_name("architecture.png")) -> None:
    w, pad, head, line_h = 1040, 14, 36, 20
    try:
        big = ImageFont.truetype("DejaVuSans-Bold.ttf", 20)
        small = ImageFont.truetype("DejaVuSans.ttf", 15)
    except OSError:
        big = small = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows = [(name, wrap(text, small, w - 2 * pad - 32, measure), colour) for name, text, colour in layers()]
    heights = [head + line_h * len(lines) + 6 for _, lines, _ in rows]
    img = Image.new("RGB", (w, pad + sum(h + pad for h in heights)), "white")
    d = ImageDraw.Draw(img)
    y = pad
    for i, ((name, lines, colour), row) in enumerate(zip(rows, heights)):
        d.rounded_rectangle([pad, y, w - pad, y + row], radius=10, fill=colour, outline="#334155", width=2)
        d.text((pad + 16, y + 8), name, fill="#0f172a", font=big)
        for k, text in enumerate(lines):
            d.text((pad + 16, y + head + k * line_h), text, fill="#334155", font=small)
        if i:
            d.polygon([(w // 2 - 8, y - pad + 2), (w // 2 + 8, y - pad + 2), (w // 2, y - 2)], fill="#334155")
        y += row + pad
    img.save(path)

if __name__ == "__main__":
    main()
