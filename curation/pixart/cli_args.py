"""Arguments of ``curate export pixart``, ``embed-prompts`` and ``sample`` (kept apart so ``--help`` stays fast)."""

from __future__ import annotations

import argparse


def add_export_pixart_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="a built dataset (local path or fsspec URL)")
    parser.add_argument("dest", help="output folder (its path must not contain 'InternData')")
    parser.add_argument("--flavor", choices=["alpha", "sigma"], required=True)
    parser.add_argument("--resolution", type=int, default=None, help="bucket table (default: the dataset's)")
    parser.add_argument(
        "--single-scale", action="store_true", help="square-bucket samples for the single-scale loaders"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data_info.json shuffle")
    parser.add_argument(
        "--prompt-caption",
        default="short",
        metavar="NAME",
        help="Σ: the caption written as 'prompt' (default short; or alt, the input's alt text); 'sharegpt4v' is "
        "the dense caption. A sample without it gets the dense caption in both",
    )
    parser.add_argument(
        "--skip-embeddings",
        action="store_true",
        help="do not compute the null and validation-prompt embeddings with the dataset's T5 when it has none",
    )
    parser.add_argument(
        "--t5-model",
        metavar="PATH",
        help="the dataset's T5 (hub id or folder) when the manifest's path is not valid on this machine",
    )
    parser.add_argument(
        "--no-second-captions",
        action="store_true",
        help="Σ, datasets built before per-caption T5 features: do not encode their alt text as 'sharegpt4v' "
        "(then set real_prompt_ratio=1.0)",
    )


def add_embed_prompts_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dataset",
        nargs="?",
        help="dataset whose manifest names the T5 model and length; output goes to DATASET/embeddings",
    )
    parser.add_argument("--config", help="a build recipe to take the T5 model and length from (instead of a dataset)")
    parser.add_argument(
        "--prompts", help="text file, one validation prompt per line (default: PixArt's 5 validation prompts)"
    )
    parser.add_argument("--out", help="output folder (default DATASET/embeddings)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override recipe keys, e.g. t5.model.path=…"
    )


def add_sample_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", help="a built dataset (its own captions' T5 features) or an embed-prompts output folder"
    )
    parser.add_argument(
        "--model",
        required=True,
        help="diffusers PixArt pipeline: hub id or local folder (transformer, vae, scheduler)",
    )
    parser.add_argument("--out", required=True, help="folder for the PNGs and grid.png")
    parser.add_argument(
        "--flavor", choices=["alpha", "sigma"], help="pipeline class (default: from the source's manifest)"
    )
    parser.add_argument("--null-embed", help="null_embed_diffusers_{T}token.pth (default: found in the source)")
    parser.add_argument("--num", type=int, default=8, help="number of images")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.5)
    parser.add_argument(
        "--lcm", action="store_true", help="LCM checkpoint settings: LCMScheduler, 4 steps, guidance 0"
    )
    parser.add_argument("--height", type=int, help="default: the transformer's sample_size x 8")
    parser.add_argument("--width", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
