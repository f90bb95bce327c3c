"""PixArt-Σ's ``InternalDataMSSigma`` and ``InternalDataSigma`` as far as they read precomputed files.

A statement-by-statement restatement of ``S:diffusion/data/datasets/InternalData_ms.py`` and
``InternalData.py`` (PixArt-alpha/PixArt-sigma) for ``load_vae_feat=True, load_t5_feat=True`` (the mode the
export's ``pixart_config`` sets), without torchvision and mmcv: the same JSON filter, path rules, assert,
random branch, padding and dtypes. The only addition is ``opened``: the npz paths ``getdata`` loaded, so a
test can tell which branch ran. Written from PixArt's code, not from the exporter. Tests call ``getdata``:
PixArt's ``__getitem__`` retries a failing sample with another one, which would hide a missing file.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import torch


def replace_img_ext_ms(item: dict, dst_ext: str) -> str:
    """``InternalData_ms.replace_img_ext``: dir_stem, then a plain replace of three extensions."""
    return (
        "_".join(item["path"].rsplit("/", 1))
        .replace(".png", dst_ext)
        .replace(".jpg", dst_ext)
        .replace(".webp", dst_ext)
    )


def basename_png(item: dict, dst_ext: str) -> str:
    """``InternalDataSigma``: basename, ``.png`` only."""
    return item["path"].rsplit("/", 1)[-1].replace(".png", dst_ext)


class SigmaFeatureReader:
    def __init__(
        self,
        root: str,
        image_list_json: list[str],
        resolution: int,
        real_prompt_ratio: float,
        max_length: int = 300,
        multi_scale: bool = True,
    ) -> None:
        self.root = root
        self.real_prompt_ratio = real_prompt_ratio
        self.max_lenth = max_length
        self.weight_dtype = torch.float16 if self.real_prompt_ratio > 0 else torch.float32
        name = replace_img_ext_ms if multi_scale else basename_png
        vae_dir = f"img_sdxl_vae_features_{resolution}resolution_ms_new" if multi_scale else None
        vae_dir = vae_dir or f"img_sdxl_vae_features_{resolution}resolution_new"
        self.meta_data_clean: list[dict] = []
        self.img_samples: list[str] = []
        self.txt_samples: list[str] = []
        self.sharegpt4v_txt_samples: list[str] = []
        self.txt_feat_samples: list[str] = []
        self.gpt4v_txt_feat_samples: list[str] = []
        self.vae_feat_samples: list[str] = []
        self.opened: list[str] = []
        for json_file in image_list_json:
            with open(os.path.join(self.root, json_file)) as file:
                meta_data = json.load(file)
            meta_data_clean = [item for item in meta_data if item["ratio"] <= 4.5]
            self.meta_data_clean.extend(meta_data_clean)
            self.img_samples.extend(
                os.path.join(self.root.replace("InternData", "InternImgs"), item["path"]) for item in meta_data_clean
            )
            self.txt_samples.extend(item["prompt"] for item in meta_data_clean)
            sharegpt4v = [item["sharegpt4v"] if "sharegpt4v" in item else "" for item in meta_data_clean]  # noqa: SIM401
            self.sharegpt4v_txt_samples.extend(sharegpt4v)
            self.txt_feat_samples.extend(
                os.path.join(self.root, "caption_features_new", name(item, ".npz")) for item in meta_data_clean
            )
            self.gpt4v_txt_feat_samples.extend(
                os.path.join(self.root, "sharegpt4v_caption_features_new", name(item, ".npz"))
                for item in meta_data_clean
            )
            self.vae_feat_samples.extend(
                os.path.join(self.root, vae_dir, name(item, ".npy")) for item in meta_data_clean
            )
        if self.real_prompt_ratio < 1:
            assert len(self.sharegpt4v_txt_samples[0]) != 0

    def __len__(self) -> int:
        return len(self.img_samples)

    @staticmethod
    def vae_feat_loader(path: str) -> torch.Tensor:
        mean, std = torch.from_numpy(np.load(path)).chunk(2)
        return mean + std * torch.randn(mean.shape, dtype=mean.dtype)

    def getdata(self, index: int):
        real_prompt = random.random() < self.real_prompt_ratio
        npz_path = self.txt_feat_samples[index] if real_prompt else self.gpt4v_txt_feat_samples[index]
        npy_path = self.vae_feat_samples[index]
        ori_h, ori_w = self.meta_data_clean[index]["height"], self.meta_data_clean[index]["width"]
        img = self.vae_feat_loader(npy_path)
        data_info = {"img_hw": torch.tensor([ori_h, ori_w], dtype=torch.float32)}
        attention_mask = torch.ones(1, 1, self.max_lenth)
        txt_info = np.load(npz_path)
        self.opened.append(npz_path)
        txt_fea = torch.from_numpy(txt_info["caption_feature"])
        if "attention_mask" in txt_info.keys():  # noqa: SIM118
            attention_mask = torch.from_numpy(txt_info["attention_mask"])[None]
        if txt_fea.shape[1] != self.max_lenth:
            pad = txt_fea[:, -1:].repeat(1, self.max_lenth - txt_fea.shape[1], 1)
            txt_fea = torch.cat([txt_fea, pad], dim=1).to(self.weight_dtype)
            extra = torch.zeros(1, 1, self.max_lenth - attention_mask.shape[-1])
            attention_mask = torch.cat([attention_mask, extra], dim=-1)
        return img, txt_fea, attention_mask.to(torch.int16), data_info
