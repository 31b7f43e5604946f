"""Tiny vision projectors and test images, made on the spot for the image tests and benches.

No real vision projector (mmproj) is reachable where the tests run: no network, and a real
one is hundreds of megabytes. :func:`write_projector` writes one that llama.cpp's libmtmd
loads and runs like a real one: projector type ``gemma3`` (a SigLIP encoder, average pooling,
an RMS norm and a projection to the text model's width), laid out as llama.cpp's
``convert_hf_to_gguf.py --mmproj`` writes a Gemma 3 projector, only small: a 64x64 image in
8x8 patches, one 64-wide block, pooled 2x2, gives 16 image tokens. Its weights are random
(small, from the seed), so the text model reads nonsense, but finite nonsense that differs
from one image to the next: enough to test the plumbing, the token counts and the caches.

Key names, key types (``clip.cpp`` reads u32 with ``gguf_get_val_u32``, which asserts the type)
and tensor shapes follow ``tools/mtmd/clip.cpp`` and ``clip-impl.h`` of the llama.cpp that
llama-cpp-python 0.3.36 vendors. ``gguf`` takes numpy shapes, which are ggml's reversed.

:func:`image_bytes` and :func:`data_url` make the images: random pixels from a seed, encoded
by Pillow.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import gguf
import numpy as np
from PIL import Image

IMAGE_SIZE = 64
PATCH_SIZE = 8
VISION_WIDTH = 64
HEAD_COUNT = 4
FEED_FORWARD = 128
BLOCK_COUNT = 1
SCALE_FACTOR = 2  # average pooling, per side: (64 / 8 / 2) ** 2 = 16 image tokens
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE // SCALE_FACTOR) ** 2


def write_projector(path: Path, n_embd: int = 576, seed: int = 0) -> Path:
    """Write a ``gemma3`` vision projector whose output width is the text model's ``n_embd``.

    576 fits SmolLM2-135M, 640 Gemma 3 270M. Norms are 1, biases 0, other weights
    ``normal * 0.02`` from ``numpy.random.default_rng(seed)``. Returns ``path``.
    """
    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "clip")  # general.architecture = "clip"
    writer.add_type(gguf.GGUFType.MMPROJ)  # general.type = "mmproj", as the converter writes
    writer.add_name("lmserve test projector")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_clip_projector_type(gguf.VisionProjectorType.GEMMA3)
    writer.add_clip_has_vision_encoder(True)
    writer.add_vision_projection_dim(n_embd)
    writer.add_vision_image_size(IMAGE_SIZE)
    writer.add_vision_patch_size(PATCH_SIZE)
    writer.add_vision_embedding_length(VISION_WIDTH)
    writer.add_vision_feed_forward_length(FEED_FORWARD)
    writer.add_vision_block_count(BLOCK_COUNT)
    writer.add_vision_head_count(HEAD_COUNT)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])
    writer.add_vision_use_gelu(True)
    writer.add_vision_projector_scale_factor(SCALE_FACTOR)

    n_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
    tensors: dict[str, np.ndarray] = {
        # ggml [patch, patch, 3, width]: the kernel of the patchifying convolution
        "v.patch_embd.weight": rand(VISION_WIDTH, 3, PATCH_SIZE, PATCH_SIZE),
        "v.patch_embd.bias": zeros(VISION_WIDTH),
        "v.position_embd.weight": rand(n_patches, VISION_WIDTH),
    }
    for i in range(BLOCK_COUNT):
        blk = f"v.blk.{i}"
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensors[f"{blk}.{name}.weight"] = rand(VISION_WIDTH, VISION_WIDTH)
            tensors[f"{blk}.{name}.bias"] = zeros(VISION_WIDTH)
        for name in ("ln1", "ln2"):
            tensors[f"{blk}.{name}.weight"] = ones(VISION_WIDTH)
            tensors[f"{blk}.{name}.bias"] = zeros(VISION_WIDTH)
        # ggml ffn_up [width, ff], ffn_down [ff, width] (clip.cpp swaps them when down's
        # first dimension is the width, for old conversions)
        tensors[f"{blk}.ffn_up.weight"] = rand(FEED_FORWARD, VISION_WIDTH)
        tensors[f"{blk}.ffn_up.bias"] = zeros(FEED_FORWARD)
        tensors[f"{blk}.ffn_down.weight"] = rand(VISION_WIDTH, FEED_FORWARD)
        tensors[f"{blk}.ffn_down.bias"] = zeros(VISION_WIDTH)
    tensors["v.post_ln.weight"] = ones(VISION_WIDTH)
    tensors["v.post_ln.bias"] = zeros(VISION_WIDTH)
    # ggml [n_embd, width]: clip_n_mmproj_embd reads ne[0] as the output width
    tensors["mm.input_projection.weight"] = rand(VISION_WIDTH, n_embd)
    tensors["mm.soft_emb_norm.weight"] = ones(VISION_WIDTH)
    for name, data in tensors.items():
        writer.add_tensor(name, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 64), seed: int = 0) -> bytes:
    """A deterministic image of random pixels from ``seed``, encoded by Pillow as ``fmt``.

    ``fmt`` is one of PNG, JPEG, WEBP, GIF, BMP; ``size`` is (width, height). Different seeds
    give clearly different images.
    """
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt.upper())
    return buffer.getvalue()


def data_url(data: bytes, media_type: str = "image/png") -> str:
    """``data:`` URL of ``data``, base64, as OpenAI's ``image_url`` parts carry images."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
