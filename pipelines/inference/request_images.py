"""Images sent in requests: decoded off the event loop, a bounded number at a time, under byte and pixel limits.

An image is base64 in the JSON body. It is decoded in a small thread pool (PIL releases the GIL while decoding),
never on the event loop; its pixel count is read from the header first (pipelines/ingest/images.py: a 169-megapixel
PNG of a few kilobytes is refused before it costs 0.5 GB); and once decoded it is kept only as the image encoder's
input tensor (a few hundred kB), not as a full-size bitmap. At most `max_images_in_flight` prepared images wait for
stage 2 at any time: beyond that the request gets 503 rather than the process growing without bound.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
from concurrent.futures import ThreadPoolExecutor

from pipelines.inference.guards import Admission, RequestRefused, ServiceLimits
from pipelines.inference.vector_cache import PreparedImage


def prepare_image(b64: str, field: str, limits: ServiceLimits, preprocess) -> PreparedImage:
    """base64 -> checked, decoded image -> the encoder's input tensor (None when stage 2 reads no images; the
    image is still checked, so a bad image is refused whichever stage would have answered)."""
    from pipelines.features.store import sha
    from pipelines.ingest.images import ImageRefused, decode_image

    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRefused(422, f"{field} is not valid base64") from None
    if len(data) > limits.max_image_bytes:
        raise RequestRefused(413, f"{field}: image is {len(data)} bytes; limit {limits.max_image_bytes}")
    try:
        image = decode_image(data, limits.max_image_pixels)
    except ImageRefused as e:
        raise RequestRefused(422, f"{field} is not a usable image: {e}") from None
    try:
        tensor = preprocess(image) if preprocess is not None else None
    except Exception as e:  # the encoder's preprocessing on an odd image (mode, palette): this image's fault
        raise RequestRefused(422, f"{field} is not a usable image: {type(e).__name__}") from None
    finally:
        image.close()
    return PreparedImage(sha(data), tensor)


class ImageDecoder:
    """The decoding pool and the bound on prepared images held in memory."""

    def __init__(self, limits: ServiceLimits, preprocess):
        self.limits, self.preprocess = limits, preprocess
        self.pool = ThreadPoolExecutor(max(1, limits.image_decoders), thread_name_prefix="prodcat-image")
        self.admitted = Admission(limits.max_images_in_flight, "images waiting")  # take before prepare, give after

    async def prepare(self, products, batch: bool) -> list:
        """PreparedImage or None per product; the caller took the images from `admitted` and gives them back when
        done."""
        loop = asyncio.get_running_loop()

        def field(i):
            return f"products[{i}].image_base64" if batch else "image_base64"

        jobs = {i: loop.run_in_executor(self.pool, prepare_image, p.image_base64, field(i), self.limits,
                                        self.preprocess)
                for i, p in enumerate(products) if p.image_base64}
        if jobs:
            await asyncio.wait(jobs.values())  # every decode finishes before an error is raised: none left running
        return [jobs[i].result() if i in jobs else None for i in range(len(products))]

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
