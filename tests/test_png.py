"""The PNG writer: what Pillow decodes is exactly the pixels given."""
import io
import re

import numpy as np
import pytest
from PIL import Image

from web.png import encode_png


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_a_png_decodes_to_the_pixels_it_was_given(channels, mode):
    pixels = np.random.default_rng(channels).integers(0, 256, 37 * 61 * channels, dtype=np.uint8).tobytes()
    image = Image.open(io.BytesIO(encode_png(pixels, width=61, height=37, channels=channels)))
    image.load()  # checks every chunk's CRC and the zlib stream
    assert (image.mode, image.size) == (mode, (61, 37)) and image.tobytes() == pixels


@pytest.mark.parametrize("pixels, channels, problem", [(bytes(8), 2, "channels: expected 1 (grey) or 3 (RGB)"),
                                                       (bytes(7), 1, "pixels: expected 8 bytes, got 7")])
def test_pixels_that_do_not_make_the_image_are_refused(pixels, channels, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        encode_png(pixels, width=4, height=2, channels=channels)
