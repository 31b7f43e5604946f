"""A vision model's projector: images into the text model's embeddings, through libmtmd.

The projector (an ``mmproj`` GGUF) loads beside its text model in the model's worker.  A
rendered prompt marks each image with the server's media marker; :meth:`Projector.tokenize`
splits it into text tokens and image chunks, and gives each image ``n_pos`` placeholder
tokens in the prompt's token list, so the engine's slots, prefix cache and prompt cache treat
an image as a run of tokens that only the same image matches (:func:`placeholders`).  When
a slot's prompt reaches an image, :meth:`Projector.evaluate` encodes it and decodes its
embeddings into that slot's sequence alone, outside the shared batch: a Gemma 3-type
projector switches the whole context to non-causal attention while it does.

libmtmd's own image reader falls back to ffmpeg in a subprocess for bytes it does not know;
it is never used: images arrive decoded (RGB, by Pillow in the server) as bitmaps.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Any

import llama_cpp.llama_cpp as C

from lmserve.engine.llama import LlamaContext, LlamaModel, drop_doubled_bos
from lmserve.engine.types import ImageError, ImageInput, PromptImage, TokenizedPrompt

logger = logging.getLogger("lmserve.engine")

# Image chunks kept after tokenizing, ready to encode when their request reaches them (one
# holds the image resized for the projector: about 10 MB for Gemma 3's 896x896); one dropped
# meanwhile is made again from the request's image.
_KEPT_CHUNKS = 8


def placeholders(image_id: str, count: int) -> list[int]:
    """The ``count`` tokens that stand for an image in a prompt's token list.

    Negative, so never a vocabulary's token, and different at every position of the image
    and for every image (32 bits of its hash each), so that a prefix matches an image only
    where it holds the same image.
    """
    data = hashlib.shake_128(bytes.fromhex(image_id)).digest(4 * count)
    return [
        -2 - (int.from_bytes(data[i : i + 4], "little") & 0x7FFFFFFD)
        for i in range(0, 4 * count, 4)
    ]


def _mtmd() -> Any:
    # libmtmd loads on import: only in a worker whose model has a projector.
    from llama_cpp import mtmd_cpp

    return mtmd_cpp


class Projector:
    """libmtmd's context for one text model: tokenizing prompts with images, and encoding
    and decoding an image into a sequence of the model's context."""

    def __init__(
        self, path: str, model: LlamaModel, *, marker: str, n_threads: int, use_gpu: bool
    ) -> None:
        """Raises :class:`ImageError` if libmtmd refuses the file (not a projector, or one
        for a text model of another width)."""
        mtmd = _mtmd()
        self._mtmd = mtmd
        self.model = model
        self.marker = marker
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.print_timings = False
        params.n_threads = n_threads
        params.media_marker = marker.encode()
        params.warmup = False  # the first image pays for it; no decode on this thread
        handle = mtmd.mtmd_init_from_file(path.encode(), model.handle, params)
        if not handle:
            raise ImageError(
                f"llama.cpp could not load the projector {path} for this model (not a "
                "projector, or one made for another model: the server log says which)"
            )
        self._ctx = handle
        if not mtmd.mtmd_support_vision(handle):
            mtmd.mtmd_free(handle)
            raise ImageError(f"the projector {path} does not take images")
        self.mrope = bool(mtmd.mtmd_decode_use_mrope(handle))
        self._chunks: OrderedDict[str, Any] = OrderedDict()  # image id -> chunk copy
        self._lock = threading.Lock()

    # -- tokenizing (the worker's call thread) ---------------------------------------------
    def tokenize(
        self, text: str, images: list[ImageInput], max_image_tokens: int
    ) -> TokenizedPrompt:
        """A rendered prompt's tokens (BOS as :meth:`LlamaModel.tokenize_prompt` adds it),
        each marker replaced by its image's placeholders; :class:`ImageError` if the
        markers and the images disagree or an image does not fit ``max_image_tokens``."""
        mtmd = self._mtmd
        found = text.count(self.marker)
        if found != len(images):
            raise ImageError(f"the prompt marks {found} images but {len(images)} were given")
        bitmaps = [self._bitmap(image) for image in images]
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            data = text.encode("utf-8")
            source = mtmd.mtmd_input_text(data, len(data), self.model.add_bos, True)
            array = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            status = mtmd.mtmd_tokenize(
                self._ctx, chunks, ctypes.byref(source), array, len(bitmaps)
            )
            if status != 0:
                raise ImageError(
                    "llama.cpp could not prepare the images for the model"
                    + (" (it could not preprocess one)" if status == 2 else "")
                )
            return self._collect(chunks, images, max_image_tokens)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)

    def _bitmap(self, image: ImageInput) -> Any:
        mtmd = self._mtmd
        if len(image.rgb) != image.width * image.height * 3:
            raise ImageError("an image's pixels do not match its size")
        pixels = (ctypes.c_uint8 * len(image.rgb)).from_buffer_copy(image.rgb)
        bitmap = mtmd.mtmd_bitmap_init(image.width, image.height, pixels)
        if not bitmap:
            raise ImageError("llama.cpp could not take an image")
        mtmd.mtmd_bitmap_set_id(bitmap, image.id.encode())
        return bitmap

    def _collect(
        self, chunks: Any, images: list[ImageInput], max_image_tokens: int
    ) -> TokenizedPrompt:
        mtmd = self._mtmd
        tokens: list[int] = []
        placed: list[tuple[ImageInput, int, int, int]] = []
        pending = iter(images)
        for index in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, index)
            kind = mtmd.mtmd_input_chunk_get_type(chunk)
            if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                count = ctypes.c_size_t()
                pointer = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                tokens.extend(pointer[: count.value])
                continue
            if kind != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                raise ImageError("the projector made a chunk that is not an image")
            image = next(pending)
            n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            n_pos = mtmd.mtmd_input_chunk_get_n_pos(chunk)
            non_causal = mtmd.mtmd_decode_use_non_causal(self._ctx, chunk)
            if non_causal and n_tokens > max_image_tokens:
                # llama.cpp aborts the process on a non-causal batch larger than its ubatch.
                raise ImageError(
                    f"an image takes {n_tokens} tokens, more than this model's batch of "
                    f"{max_image_tokens}: load it with a larger batch"
                )
            self._keep(image.id, chunk)
            placed.append((image, len(tokens), n_pos, n_tokens))
            tokens.extend(placeholders(image.id, n_pos))
        if placed and placed[-1][1] + placed[-1][2] == len(tokens):
            raise ImageError("a prompt must not end with an image: text follows it")
        shift = 0
        if self.model.add_bos:
            shift = len(tokens) - len(drop_doubled_bos(tokens, self.model.bos_id))
        return TokenizedPrompt(
            tokens[shift:],
            tuple(
                PromptImage(image, start - shift, n_pos, n_tokens)
                for image, start, n_pos, n_tokens in placed
            ),
        )

    def _keep(self, image_id: str, chunk: Any) -> None:
        mtmd = self._mtmd
        with self._lock:
            if image_id in self._chunks:
                self._chunks.move_to_end(image_id)
                return
            self._chunks[image_id] = mtmd.mtmd_input_chunk_copy(chunk)
            while len(self._chunks) > _KEPT_CHUNKS:
                _, old = self._chunks.popitem(last=False)
                mtmd.mtmd_input_chunk_free(old)

    def _chunk(self, image: ImageInput) -> Any:
        """The image's chunk: kept from tokenizing, or made again (the image as its own
        prompt) if it has been dropped since."""
        with self._lock:
            chunk = self._chunks.get(image.id)
            if chunk is not None:
                self._chunks.move_to_end(image.id)
                return chunk
        self.tokenize(self.marker, [image], max_image_tokens=1 << 30)
        with self._lock:
            return self._chunks[image.id]

    # -- evaluating (the engine thread) ------------------------------------------------------
    def evaluate(self, context: LlamaContext, image: PromptImage, seq: int) -> None:
        """Encode ``image`` and decode it into sequence ``seq`` at its place in the prompt
        (its ``start``); :class:`ImageError` if llama.cpp fails."""
        mtmd = self._mtmd
        chunk = self._chunk(image.image)
        new_n_past = C.llama_pos(0)
        status = mtmd.mtmd_helper_eval_chunk_single(
            self._ctx,
            context.handle,
            chunk,
            image.start,
            seq,
            context.n_batch,
            False,
            ctypes.byref(new_n_past),
        )
        if status != 0:
            raise ImageError(f"llama.cpp could not read an image (status {status})")
        if new_n_past.value != image.end:
            logger.warning(
                "an image ended at position %d, not %d as planned", new_n_past.value, image.end
            )

    def close(self) -> None:
        mtmd = self._mtmd
        with self._lock:
            for chunk in self._chunks.values():
                mtmd.mtmd_input_chunk_free(chunk)
            self._chunks.clear()
        if self._ctx:
            mtmd.mtmd_free(self._ctx)
            self._ctx = None
