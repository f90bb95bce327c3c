"""VAE latents per aspect-ratio bucket: posterior mean ‖ std, unscaled, float16 [8, h/8, w/8].

The pixels arrive prepared (``vae_pixels``: the bucket crop as uint8, made by the filter stage on CPUs, see
``curation.stages.prepare``); this stage only converts them to PixArt's [-1, 1] tensors, ideally on the
device, and runs the encoder on batches of one bucket shape.
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar

import numpy as np
import torch

from curation.config import VAEConfig
from curation.io.layout import npy_bytes
from curation.models.winograd import use_winograd_convolutions
from curation.models.wrappers import load_pretrained
from curation.records import Row, drop_pixels, get_pixels, is_ok
from curation.stages.base import Stage
from curation.stages.prepare import bucket_crop, center_crop_box, cover_size  # noqa: F401  (re-exported)


def normalise(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B, h, w, 3] → float32 [B, 3, h, w] in [-1, 1]: ToTensor + Normalize([.5], [.5]) as PixArt.

    The arithmetic runs in place on the contiguous NHWC copy (the same operations in the same order, so the
    same values), then one permute gives the NCHW view with channels_last strides: ~4x less CPU than four
    passes over a permuted tensor."""
    return pixels.to(torch.float32, copy=True).div_(255).sub_(0.5).div_(0.5).permute(0, 3, 1, 2)


def bucket_pixels(image, bucket_hw: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """float32 [3, h, w] in [-1, 1] for one PIL image: PixArt's whole transform (tests and baselines)."""
    return normalise(torch.from_numpy(bucket_crop(image, bucket_hw, interpolation).copy())[None])[0]


def group_by_bucket(rows: list[Row]) -> dict[tuple[int, int], list[Row]]:
    groups: dict[tuple[int, int], list[Row]] = defaultdict(list)
    for row in rows:
        groups[(row["bucket_h"], row["bucket_w"])].append(row)
    return groups


class VAEStage(Stage):
    name = "vae"
    uses_model: ClassVar[bool] = True
    default_rows_per_block: ClassVar[int] = 32

    def __init__(self, config: VAEConfig) -> None:
        super().__init__(config.resources)
        self.config = config
        self.vae = None
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.channels_last = config.channels_last
        self.image_threads: ThreadPoolExecutor | None = None
        self.winograd_layers = 0

    def setup(self) -> None:
        from diffusers import AutoencoderKL

        # "auto" is bf16 on CUDA: the SDXL VAE overflows in fp16 unless the user picks an fp16-fixed one.
        self.vae, self.device, self.dtype = load_pretrained(AutoencoderKL, self.config.model)
        if self.device.type == "cpu" and self.dtype == torch.float32 and self.config.cpu_winograd:
            self.winograd_layers = use_winograd_convolutions(self.vae.encoder)
        self.channels_last = self.config.channels_last and not self.winograd_layers  # NNPACK reads NCHW
        if self.channels_last:
            self.vae.to(memory_format=torch.channels_last)
        if self.config.compile:
            self.vae.encoder = torch.compile(self.vae.encoder, dynamic=True)
        self.image_threads = self._cpu_image_threads()

    def _cpu_image_threads(self) -> ThreadPoolExecutor | None:
        """On CPU, one single-threaded encode per torch thread: a 2-core actor then encodes 2 images at once.

        Splitting every convolution over the cores costs a barrier (and spinning) after each operator; whole
        images per core do not (measured in ``benchmarks/vae.py``). ``torch.set_num_threads`` in each pool
        thread sets that thread's OpenMP team size to 1; the calling thread keeps its own."""
        threads = torch.get_num_threads()
        if self.device.type != "cpu" or not self.config.cpu_image_parallel or threads < 2:
            return None
        return ThreadPoolExecutor(
            threads, thread_name_prefix="vae-image", initializer=torch.set_num_threads, initargs=(1,)
        )

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """[B, 3, h, w] in [-1, 1] → float16 [B, 8, h/8, w/8]: posterior mean (0-3) ‖ std (4-7), unscaled."""
        if self.vae is None:
            self.setup()
        pixels = pixels.to(self.device, self.dtype)
        return self._encode(pixels)

    def encode_uint8(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [B, h, w, 3] → moments; the uint8 batch (4x smaller than float) is what crosses to the device."""
        if self.vae is None:
            self.setup()
        return self._encode(self._normalised_on_device(pixels))

    def _normalised_on_device(self, pixels: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(pixels)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return normalise(batch).to(self.dtype)

    def _encode(self, pixels: torch.Tensor) -> np.ndarray:
        started = time.perf_counter()
        moments = self._moments(pixels)
        self.metrics.add_model_time(time.perf_counter() - started, self._flops(pixels.shape))
        return moments

    @torch.inference_mode()
    def _moments(self, pixels: torch.Tensor) -> np.ndarray:
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        posterior = self.vae.encode(pixels.contiguous(memory_format=layout)).latent_dist
        return torch.cat([posterior.mean, posterior.std], dim=1).float().cpu().numpy().astype(np.float16)

    def _flops(self, shape: tuple[int, ...]) -> float | None:
        return self.metrics.count_flops(lambda: vae_flops(self.vae.config, shape))

    def process_rows(self, rows: list[Row]) -> None:
        if self.vae is None:
            self.setup()
        if self.image_threads is None:
            self._encode_batches(rows)
        else:
            self._encode_images_in_parallel(rows)
        for row in rows:
            drop_pixels(row, "vae")

    def _encode_batches(self, rows: list[Row]) -> None:
        batch_size = self.resources.batch_size
        for same_shape in group_by_bucket(rows).values():
            for start in range(0, len(same_shape), batch_size):
                self.isolate_failures(same_shape[start : start + batch_size], self._encode_rows)

    def _encode_images_in_parallel(self, rows: list[Row]) -> None:
        """The CPU path: images spread over the pool's threads; one model-time record for the whole pass."""
        started = time.perf_counter()
        list(self.image_threads.map(self.run_isolated, rows))
        seconds = time.perf_counter() - started
        flops = [self._flops((1, 3, row["bucket_h"], row["bucket_w"])) for row in rows if is_ok(row)]
        self.metrics.add_model_time(seconds, None if None in flops else sum(flops))

    def process_row(self, row: Row) -> None:
        """One image alone (the CPU path, on a pool thread); ``run_isolated`` marks a failure on the row."""
        pixels = self._normalised_on_device(np.stack([self._bucket_input(row)]))
        row["vae"] = npy_bytes(self._moments(pixels)[0])

    def _encode_rows(self, rows: list[Row]) -> None:
        """One ``vae.encode`` call for rows that all share a bucket."""
        pixels = np.stack([self._bucket_input(row) for row in rows])
        for row, moments in zip(rows, self.encode_uint8(pixels), strict=True):
            row["vae"] = npy_bytes(moments)

    @staticmethod
    def _bucket_input(row: Row) -> np.ndarray:
        pixels = get_pixels(row, "vae")
        if tuple(pixels.shape[:2]) != (row["bucket_h"], row["bucket_w"]):
            bucket = f"{row['bucket_h']}x{row['bucket_w']}"
            raise ValueError(f"prepared VAE pixels are {pixels.shape[0]}x{pixels.shape[1]}, bucket is {bucket}")
        return pixels


def vae_flops(config, shape: torch.Size) -> float:
    from curation.models.flops import vae_encoder_flops

    return vae_encoder_flops(config, shape[-2], shape[-1]) * shape[0]
