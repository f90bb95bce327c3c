"""``curate tiny-models DIR``: small random-weight models of the real architectures.

They are saved with ``save_pretrained`` in the layouts the real checkpoints use (the LLaVAs' weights under the
llava-hf hub names, which vLLM needs) and loaded back by the pipeline through exactly the code that loads the
real ones:

- ``DIR/llava``: ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama LM) with a
  ``LlavaProcessor`` (PIL CLIP image processor, BPE tokenizer with ``<image>`` and llava-hf's chat
  template), like ``llava-hf/llava-1.5-7b-hf``.
- ``DIR/llava_next``: ``LlavaNextForConditionalGeneration`` + ``LlavaNextProcessor`` (PIL AnyRes image
  processor), like ``llava-hf/llava-v1.6-vicuna-7b-hf``.
- ``DIR/llava_onevision`` (only where torchvision is installed): ``LlavaOnevisionForConditionalGeneration``
  (SigLIP + Qwen2) + ``LlavaOnevisionProcessor`` with a Qwen chat template, like
  ``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``.
- ``DIR/pixart_sigma`` and ``DIR/pixart_alpha``: diffusers pipeline folders like
  ``PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers`` / ``PixArt-alpha/PixArt-XL-2-1024-MS``:
  ``tokenizer/`` (a SentencePiece model loaded as ``T5Tokenizer``, as PixArt's repos ship it),
  ``text_encoder/`` (``T5EncoderModel``), ``vae/`` (``AutoencoderKL``), ``transformer/``
  (``PixArtTransformer2DModel``), ``scheduler/``.

Weights are random: captions are gibberish and samples are noise. The point is that every code path,
shape and file format is the real one.
"""

from __future__ import annotations

import io
import itertools
import random
import shutil
from pathlib import Path

import torch

T5_DIM = 32
_SEED = 0
MODEL_FOLDERS = ("llava", "llava_next", "llava_onevision", "pixart_sigma", "pixart_alpha")
# Written into the completion marker: bump it whenever the models change, so stale caches are rebuilt.
TINY_MODELS_VERSION = "3: LM head_dim 32, llava-hf hub key layout, scorers (CLIP, aesthetic MLP, ViT classifiers)"

_WORDS = (  # noqa: SIM905 (one readable pool of words)
    "a an the this that of in on at with and or by from to under over near behind beside above below "
    "photo photograph image picture painting drawing illustration render portrait landscape close-up view "
    "man woman child person people dog cat horse bird fish coffee cup table chair window door house street "
    "city tree forest mountain river lake sea sky cloud sun moon star night day light shadow color colour "
    "red green blue yellow black white gray brown orange purple pink golden silver bright dark soft sharp "
    "detailed highly realistic cinematic vintage modern old new small large tall wide round square "
    "wooden metal glass stone paper fabric rocket astronaut space planet galaxy telescope coin coins camera "
    "motorcycle bicycle car road building bridge text page book letter number style texture pattern "
    "background foreground center left right top bottom edge corner describe caption given very manner "
    "its and style is are was has have two three several many one single group pair sitting standing lying "
    "holding wearing looking smiling walking flying floating shining reflecting surrounded covered filled"
).split()


def _corpus(lines: int = 3000) -> list[str]:
    rng = random.Random(_SEED)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 24))) for _ in range(lines)]


def _t5_tokenizer(directory: Path):
    """Train a small unigram SentencePiece model with T5's special ids and load it as ``T5Tokenizer``."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=model,
        vocab_size=200,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    directory.mkdir(parents=True, exist_ok=True)
    spiece = directory / "spiece.model"
    spiece.write_bytes(model.getvalue())
    # Loading from the folder (not ``T5Tokenizer(vocab_file=...)``) runs the real spiece conversion.
    tokenizer = T5Tokenizer.from_pretrained(directory, extra_ids=100)
    tokenizer.save_pretrained(directory)
    return tokenizer


def _t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size,
        d_model=T5_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu",
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
    )
    return T5EncoderModel(config)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=4,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=256,
        scaling_factor=0.13025,
    )


def _transformer(sample_size: int):
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        sample_size=sample_size,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=4,
        out_channels=8,
        caption_channels=T5_DIM,
        cross_attention_dim=16,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        interpolation_scale=None,
        use_additional_conditions=False,
    )


def write_pixart_pipeline(directory: Path, flavor: str) -> Path:
    """A diffusers PixArt pipeline folder (tokenizer, text_encoder, vae, transformer, scheduler)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline

    torch.manual_seed(_SEED)
    tokenizer = _t5_tokenizer(directory / "tokenizer")
    pipeline_class = PixArtSigmaPipeline if flavor == "sigma" else PixArtAlphaPipeline
    pipeline = pipeline_class(
        tokenizer=tokenizer,
        text_encoder=_t5_encoder(len(tokenizer)),
        vae=_vae(),
        transformer=_transformer(sample_size=32),
        scheduler=DPMSolverMultistepScheduler(),
    )
    pipeline.save_pretrained(directory)
    return directory


def _llava_tokenizer(bos_token: str | None = "<s>", eos_token: str = "</s>"):
    """Byte-level BPE with the special tokens of llava-hf's Llama (bos ``<s>``) and Qwen2 (eos ``<|im_end|>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "<video>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False)
    chat_words = "USER: ASSISTANT: user assistant \" , . ' \n"
    backend.train_from_iterator(itertools.chain(_corpus(), [chat_words]), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>", "video_token": "<video>"},
        padding_side="left",
        add_bos_token=bos_token is not None,
    )


# llava-hf's chat template of llava-1.5 and llava-v1.6-vicuna: "USER: <image>\n{text} ASSISTANT:"
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# llava-hf's OneVision (Qwen2) template: "<|im_start|>user <image>\n{text}<|im_end|><|im_start|>assistant\n"
ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{{ '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

IMAGE_SIZE, PATCH = 32, 8  # 4x4 patches per tile (llava-hf: 336 / 14 = 24x24; OneVision: 384 / 14 = 27x27)
SQUARE = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
GRID_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]  # AnyRes (height, width): 1x1, 1x2, 2x1, 2x2 tiles


def _vision_config(kind: str):
    """A 2-layer CLIP (llava-1.5 / 1.6) or SigLIP without pooling head (OneVision) vision tower."""
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    dims = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    if kind == "siglip":
        return SiglipVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, vision_use_head=False, **dims)
    return CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=16, **dims)


def _text_config(config_class, tokenizer):
    """A 2-layer Llama (llava-1.5 / 1.6) or Qwen2 (OneVision) language model over the tiny vocabulary.

    head_dim 32 (64 / 2 heads): vLLM's CPU attention supports head sizes 32, 64, 80, 96, 112, 128, ... only.
    """
    dims = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1
    )
    ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    return config_class(vocab_size=len(tokenizer), max_position_embeddings=512, **dims, **ids)


# transformers-5 module prefix -> llava-hf hub prefix (a name already in the hub layout maps to itself).
_HUB_PREFIXES = (
    ("language_model.model.", "language_model.model."),
    ("language_model.lm_head.", "language_model.lm_head."),
    ("language_model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("vision_tower.vision_model.", "vision_tower.vision_model."),
    ("vision_tower.", "vision_tower.vision_model."),
)


def llava_hf_key(name: str) -> str:
    """A LLaVA weight name in the llava-hf hub layout, from the layout any transformers version saves.

    The hub checkpoints (``llava-hf/*``) name weights ``language_model.model.*``, ``language_model.lm_head.*``,
    ``vision_tower.vision_model.*``, ``multi_modal_projector.*``, ``image_newline``. transformers 5 keeps other
    names in memory (``model.`` prefixes, no ``vision_model.``) and converts hub names on load; vLLM loads the
    hub names only.
    """
    name = name.removeprefix("model.")
    for module_prefix, hub_prefix in _HUB_PREFIXES:
        if name.startswith(module_prefix):
            return hub_prefix + name.removeprefix(module_prefix)
    return name


def _rewrite_in_llava_hf_layout(directory: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights_file = directory / "model.safetensors"  # tiny models are never sharded
    weights = {llava_hf_key(name): tensor for name, tensor in load_file(weights_file).items()}
    save_file(weights, weights_file, metadata={"format": "pt"})


def _save_vlm(directory: Path, model_class, config, processor) -> Path:
    torch.manual_seed(_SEED)
    model = model_class(config)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.save_pretrained(directory)
    _rewrite_in_llava_hf_layout(directory)
    processor.save_pretrained(directory)
    return directory


def _write_clip_llava(directory: Path, model_class, processor_class, image_processor, **config) -> Path:
    """llava-1.5 / 1.6 as llava-hf ships them: CLIP + Llama, CLS dropped ("default"), features of layer -2."""
    from transformers import LlamaConfig

    tokenizer = _llava_tokenizer()
    processor = processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLS
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    model_config = model_class.config_class(
        vision_config=_vision_config("clip"),
        text_config=_text_config(LlamaConfig, tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        **config,
    )
    return _save_vlm(directory, model_class, model_config, processor)


def write_llava(directory: Path) -> Path:
    from transformers import LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=SQUARE)
    return _write_clip_llava(directory, LlavaForConditionalGeneration, LlavaProcessor, image_processor)


def write_llava_next(directory: Path) -> Path:
    """Like ``llava-hf/llava-v1.6-vicuna-7b-hf``: AnyRes tiles of the image plus a downscaled base tile."""
    from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size=SQUARE, image_grid_pinpoints=GRID_PINPOINTS
    )
    config = {"image_grid_pinpoints": GRID_PINPOINTS}  # the model unpads the tiles with the same grid
    return _write_clip_llava(
        directory, LlavaNextForConditionalGeneration, LlavaNextProcessor, image_processor, **config
    )


def write_llava_onevision(directory: Path) -> Path:
    """Like ``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``: SigLIP + Qwen2, AnyRes, all patch features ("full").

    Needs torchvision: ``LlavaOnevisionProcessor`` requires a ``LlavaOnevisionVideoProcessor`` (torchvision only,
    no PIL variant) both to be built and to be loaded by ``AutoProcessor``, even for image-only inputs.
    """
    from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor, Qwen2Config
    from transformers.models.llava_onevision import image_processing_pil_llava_onevision as pil
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    tokenizer = _llava_tokenizer(bos_token=None, eos_token="<|im_end|>")
    processor = LlavaOnevisionProcessor(
        image_processor=pil.LlavaOnevisionImageProcessorPil(size=SQUARE, image_grid_pinpoints=GRID_PINPOINTS),
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size=SQUARE),
        num_image_tokens=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_select_strategy="full",
        chat_template=ONEVISION_CHAT_TEMPLATE,
    )
    config = LlavaOnevisionForConditionalGeneration.config_class(
        vision_config=_vision_config("siglip"),
        text_config=_text_config(Qwen2Config, tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    return _save_vlm(directory, LlavaOnevisionForConditionalGeneration, config, processor)


def write_tiny_models(directory: str | Path) -> dict[str, Path]:
    """Write every tiny model under ``directory``; returns {name: path} (OneVision only where torchvision is)."""
    from transformers.utils import is_torchvision_available

    root = Path(directory)
    writers = {"llava": write_llava, "llava_next": write_llava_next}
    if is_torchvision_available():
        writers["llava_onevision"] = write_llava_onevision
    paths = {name: write(root / name) for name, write in writers.items()}
    for flavor in ("sigma", "alpha"):
        paths[f"pixart_{flavor}"] = write_pixart_pipeline(root / f"pixart_{flavor}", flavor)
    from curation.models.tiny_scorers import write_tiny_scorers

    # DIR/scorers/{clip, aesthetic/sac+logos+ava1-l14-linearMSE.pth, nsfw, watermark}
    paths.update({f"scorer_{name}": path for name, path in write_tiny_scorers(root / "scorers").items()})
    return paths


def ensure_tiny_models(directory: str | Path) -> Path:
    """Create the tiny models once; a marker holding ``TINY_MODELS_VERSION`` says they are complete and current.

    A folder written by an older version is rewritten. OneVision is added when torchvision is installed but the
    folder was written without it (another venv), and left in place otherwise.
    """
    from transformers.utils import is_torchvision_available

    root = Path(directory)
    marker = root / ".complete"
    if not marker.exists() or marker.read_text().strip() != TINY_MODELS_VERSION:
        marker.unlink(missing_ok=True)
        for name in MODEL_FOLDERS:  # OneVision too, which this venv may not rewrite
            shutil.rmtree(root / name, ignore_errors=True)
        write_tiny_models(root)
        marker.write_text(TINY_MODELS_VERSION + "\n")
    elif is_torchvision_available() and not (root / "llava_onevision" / "model.safetensors").is_file():
        write_llava_onevision(root / "llava_onevision")
    return root
