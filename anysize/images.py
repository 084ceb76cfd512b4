"""A user's image, read and converted to 8-bit RGB: the one place every front end gets it from.

:func:`load_image` opens a file (or takes a PIL image), applies its EXIF orientation and converts
every mode Pillow opens to 8-bit RGB with a defined meaning, or refuses it with one clear message.
The models take 8-bit sRGB pixels, and anysize writes 8-bit RGB PNGs, so deeper images are
rounded to 8 bits here (to the nearest level) rather than later or by accident:

==========================  ==================================================================
mode                        conversion
==========================  ==================================================================
``RGB``                     unchanged (the same pixels, bit for bit, as ``convert("RGB")``)
``1``, ``L``                grey replicated to R, G and B (``1``: 0 or 255)
``P``                       the palette expanded; with a transparent index, as ``PA`` below
``LA``, ``PA``, ``RGBA``,   alpha composited over **white** (:data:`ALPHA_BACKGROUND`):
``RGBa``                    ``round((c * a + 255 * (255 - a)) / 255)``; the alpha is not carried
                            through (the models and the output are RGB). ``RGBa`` (premultiplied)
                            is un-premultiplied by Pillow first.
``RGBX``                    the padding byte dropped
``CMYK``                    Pillow's naive conversion, ``(255 - c)(255 - k) / 255`` (no ICC)
``YCbCr``                   Pillow's JPEG (full-range BT.601) conversion
``HSV``                     Pillow's conversion
``I;16``, ``I;16L/B/N``     16-bit grey: ``round(v * 255 / 65535)``, replicated
``I`` (32-bit integers)     read as 16-bit (how Pillow has decoded 16-bit PNGs): values must lie in
                            0-65535 and are scaled as ``I;16``; anything else has no defined range
                            and is refused
``F`` (32-bit floats)       values must lie in [0, 1] (NaN and infinities refused): ``round(v * 255)``
anything else (``LAB``,     refused, naming the modes that are read: Pillow's ``LAB`` to RGB keeps
``La``, ...)                the lightness only, which would be a silently wrong image
==========================  ==================================================================

Colour-key transparency of ``1``/``L``/``RGB``/``I;16`` images (a PNG ``tRNS`` colour) is ignored;
embedded ICC profiles are not applied (pixel values are taken as sRGB). Multi-frame files give
their first frame. This module imports neither torch nor diffusers.
"""

from __future__ import annotations

import os

from .errors import InvalidArgumentError

__all__ = ["ALPHA_BACKGROUND", "READ_MODES", "load_image", "to_rgb"]

#: the colour transparent pixels are composited over (alpha is not carried through)
ALPHA_BACKGROUND = (255, 255, 255)

_GREY16 = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("LA", "PA", "RGBA", "RGBa")
_PILLOW_RGB = ("1", "L", "RGBX", "CMYK", "YCbCr", "HSV")
#: every mode :func:`to_rgb` converts (the rest are refused)
READ_MODES = ("RGB", *_PILLOW_RGB, "P", *_ALPHA, *_GREY16, "I", "F")


def _name(image, source) -> str:
    if source is not None:
        return f"image {os.fspath(source)}"
    filename = getattr(image, "filename", "") or ""
    return f"image {filename}" if filename else "the image"


def _from_array(rgb):
    from PIL import Image

    return Image.fromarray(rgb)  # (H, W, 3) uint8 -> RGB


def _grey_to_rgb(grey_u8):
    import numpy as np

    return _from_array(np.ascontiguousarray(np.repeat(grey_u8[..., None], 3, axis=-1)))


def _scale16(values):
    """Integer grey levels 0-65535 -> the nearest of 0-255 (exact integer rounding, halves up)."""
    import numpy as np

    v = values.astype(np.int64)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _composite(rgba):
    """(H, W, 4) uint8 RGBA over :data:`ALPHA_BACKGROUND` -> (H, W, 3) uint8, rounded to nearest."""
    import numpy as np

    a = rgba[..., 3:4].astype(np.int32)
    rgb = rgba[..., :3].astype(np.int32)
    bg = np.asarray(ALPHA_BACKGROUND, dtype=np.int32)
    return ((rgb * a + bg * (255 - a) + 127) // 255).astype(np.uint8)


def to_rgb(image, source=None):
    """``image`` (a PIL image) as an 8-bit RGB PIL image, converted as the module docstring says.

    ``source`` (its file, if any) names it in messages. EXIF orientation is applied first.
    """
    import numpy as np
    from PIL import ImageOps

    what = _name(image, source)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as e:  # SyntaxError: how some Pillow decoders report corrupt data
        raise InvalidArgumentError(f"cannot read {what}: {e}") from None
    mode = image.mode
    if mode == "RGB":
        return image.convert("RGB")  # a copy: exactly the pixels anysize has always used
    if mode in _PILLOW_RGB:
        return image.convert("RGB")
    if mode == "P":
        if "transparency" not in image.info:
            return image.convert("RGB")
        mode, image = "RGBA", image.convert("RGBA")
    if mode in _ALPHA:
        return _from_array(_composite(np.asarray(image.convert("RGBA"))))
    if mode in _GREY16:
        return _grey_to_rgb(_scale16(np.asarray(image)))
    if mode == "I":
        v = np.asarray(image)
        lo, hi = (int(v.min()), int(v.max())) if v.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise InvalidArgumentError(
                f"{what} is a 32-bit integer image (mode I) with values {lo} to {hi}: anysize reads mode I as "
                "16-bit levels 0-65535 and has no defined range for these; save it as an 8- or 16-bit image"
            )
        return _grey_to_rgb(_scale16(v))
    if mode == "F":
        v = np.asarray(image, dtype=np.float64)
        if not np.isfinite(v).all():
            raise InvalidArgumentError(f"{what} is a floating-point image (mode F) with NaN or infinite values; "
                                       "anysize reads mode F as levels in [0, 1]")
        lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise InvalidArgumentError(
                f"{what} is a floating-point image (mode F) with values {lo:g} to {hi:g}: anysize reads mode F as "
                "levels in [0, 1] and has no defined range for these; scale it to [0, 1] or save it as 8- or 16-bit"
            )
        return _grey_to_rgb(np.floor(v * 255.0 + 0.5).astype(np.uint8))
    raise InvalidArgumentError(
        f"{what} has mode {mode}, which anysize does not convert to RGB; readable modes: {', '.join(READ_MODES)}"
    )


def load_image(image):
    """An 8-bit RGB PIL image from a PIL image or a file path (:func:`to_rgb`); every image that
    cannot be read or converted is an :class:`~anysize.errors.InvalidArgumentError` naming it."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return to_rgb(image)
    if not isinstance(image, (str, os.PathLike)):
        raise InvalidArgumentError(f"image must be a PIL image or a file path, got {type(image).__name__}")
    path = os.fspath(image)
    if os.path.isdir(path):
        raise InvalidArgumentError(f"image {path} is a directory, not an image file")
    try:
        with Image.open(path) as im:
            return to_rgb(im, path)
    except InvalidArgumentError:
        raise
    except FileNotFoundError:
        raise InvalidArgumentError(f"image {path} does not exist") from None
    except Image.DecompressionBombError as e:
        raise InvalidArgumentError(
            f"cannot read image {path}: {e} (Pillow's limit against decompression bombs; raise "
            "PIL.Image.MAX_IMAGE_PIXELS in Python if the image is trusted)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InvalidArgumentError(f"cannot read image {path}: {e}") from None
