from pathlib import Path

import pytest

from curation.config import (
    DENSE_PROMPT,
    SHORT_PROMPT,
    ConfigError,
    apply_override,
    fingerprint,
    load_config,
    parse_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _minimal() -> dict:
    model = {"path": "some/model"}
    return {"caption": {"model": model}, "t5": {"model": model}, "vae": {"model": model}}


@pytest.mark.parametrize("name", ["demo", "pixart_alpha_1024", "pixart_sigma_1024", "pixart_sigma_2k"])
def test_every_bundled_recipe_validates(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.caption.model.path
    assert config.t5.max_length in (120, 300)


def test_presets_carry_the_flavor_rules():
    alpha = load_config(CONFIGS / "pixart_alpha_1024.yaml")
    sigma = load_config(CONFIGS / "pixart_sigma_1024.yaml")
    sigma2k = load_config(CONFIGS / "pixart_sigma_2k.yaml")
    assert (alpha.t5.max_length, alpha.t5.caption_cleaning, alpha.vae.scale_factor) == (120, "alpha", 0.18215)
    assert alpha.vae.model.path == "stabilityai/sd-vae-ft-ema" and alpha.filter.max_aspect_ratio == 4.0
    assert (sigma.t5.max_length, sigma.t5.caption_cleaning, sigma.vae.scale_factor) == (300, "none", 0.13025)
    assert sigma.vae.model.subfolder == "vae" and sigma.filter.max_aspect_ratio == 4.5
    assert (sigma.vae.aspect_ratios, sigma2k.vae.aspect_ratios, sigma2k.vae.interpolation) == (1024, 2048, "lanczos")


def test_unknown_key_is_reported_with_its_path():
    data = _minimal()
    data["caption"]["max_new_tokenz"] = 5
    with pytest.raises(ConfigError, match=r"caption\.max_new_tokenz: unknown key"):
        parse_config(data)


def test_nested_unknown_key_in_resources():
    data = _minimal()
    data["vae"]["resources"] = {"gpus": 1}
    with pytest.raises(ConfigError, match=r"vae\.resources\.gpus: unknown key"):
        parse_config(data)


def test_set_overrides_parse_yaml_values():
    data = _minimal()
    apply_override(data, "caption.jobs.dense.max_new_tokens=77")
    apply_override(data, "input=[a, b]")
    apply_override(data, "vae.resources.num_gpus=0.5")
    config = parse_config(data)
    assert config.caption.jobs["dense"].max_new_tokens == 77
    assert config.input == ["a", "b"]
    assert config.vae.resources.num_gpus == 0.5


def test_bad_override_and_bad_gpu_fraction():
    with pytest.raises(ConfigError):
        apply_override(_minimal(), "no-equals-sign")
    data = _minimal()
    apply_override(data, "t5.resources.num_gpus=1.5")
    with pytest.raises(ConfigError, match="num_gpus"):
        parse_config(data)


def test_fingerprint_ignores_sizing_but_not_output_shaping_settings():
    base = parse_config(_minimal())
    resized = _minimal()
    resized["caption"]["resources"] = {"num_workers": 7, "batch_size": 3}
    resized["output"] = "elsewhere"
    resized["dedup"] = {"band_key_blocks": 1}  # another way to find the same pairs
    assert fingerprint(parse_config(resized)) == fingerprint(base)
    wider = _minimal()
    wider["dedup"] = {"near_duplicate_radius": 8}
    assert fingerprint(parse_config(wider)) != fingerprint(base)
    longer = _minimal()
    longer["t5"]["max_length"] = 120
    assert fingerprint(parse_config(longer)) != fingerprint(base)


def test_caption_jobs_default_by_flavor_and_merge_partial_overrides():
    sigma = parse_config(_minimal())
    assert list(sigma.caption.jobs) == ["dense", "short"]
    assert sigma.caption.jobs["dense"].prompt == DENSE_PROMPT and sigma.caption.jobs["short"].prompt == SHORT_PROMPT
    alpha = parse_config({**_minimal(), "flavor": "alpha"})
    assert list(alpha.caption.jobs) == ["dense"]
    data = _minimal()
    apply_override(data, "caption.jobs.short.max_new_tokens=20")
    apply_override(data, "caption.jobs.tags.prompt=List the objects.")
    config = parse_config(data)
    assert list(config.caption.jobs) == ["dense", "short", "tags"]
    short = config.caption.jobs["short"]
    assert (short.max_new_tokens, short.prompt) == (20, SHORT_PROMPT)
    assert config.caption.jobs["tags"].prompt == "List the objects."
    removed = _minimal()
    apply_override(removed, "caption.jobs.short=null")
    assert list(parse_config(removed).caption.jobs) == ["dense"]


@pytest.mark.parametrize("key", ["max_new_tokens", "prompt", "prompt_with_alt", "do_sample", "temperature", "name"])
def test_old_flat_caption_keys_are_refused_naming_the_new_key(key):
    data = _minimal()
    apply_override(data, f"caption.{key}=1")
    with pytest.raises(ConfigError, match=rf"caption\.jobs\.<name>\.{key}"):
        parse_config(data)


@pytest.mark.parametrize("jobs", [{"short": {}}, {"dense": {}, "alt": {}}, {"dense": {}, "Bad.Name": {}}])
def test_caption_jobs_need_the_primary_and_file_safe_names(jobs):
    data = _minimal()
    data["caption"]["jobs"] = {**jobs, **({"dense": None} if "dense" not in jobs else {})}
    with pytest.raises(ConfigError):
        parse_config(data)


def test_unknown_key_lists_the_valid_keys_of_its_section():
    data = _minimal()
    data["caption"]["max_new_tokenz"] = 5
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    assert str(error.value) == (
        "invalid config: caption.max_new_tokenz: unknown key "
        "(valid: model, backend, resources, jobs, quality, max_image_side)"
    )
    job = _minimal()
    apply_override(job, "caption.jobs.dense.prompts=x")
    with pytest.raises(
        ConfigError, match=r"caption\.jobs\.dense\.prompts: unknown key \(valid: prompt, prompt_with_alt"
    ):
        parse_config(job)


DEMO_FLAVOR = {
    "alpha": (120, "alpha", 0.18215, 4.0, ["dense"]),
    "sigma": (300, "none", 0.13025, 4.5, ["dense", "short"]),
}


@pytest.mark.parametrize("flavor", ["alpha", "sigma"])
def test_one_flag_switches_the_demo_recipe(flavor):
    config = load_config(CONFIGS / "demo.yaml", [f"flavor={flavor}"])
    resolved = (
        config.t5.max_length,
        config.t5.caption_cleaning,
        config.vae.scale_factor,
        config.filter.max_aspect_ratio,
        list(config.caption.jobs),
    )
    assert resolved == DEMO_FLAVOR[flavor]
    tiny = ".cache/tiny-models"
    assert config.caption.model.path == f"{tiny}/llava"
    assert config.t5.model.path == config.vae.model.path == f"{tiny}/pixart_{flavor}"
    assert (config.vae.model.subfolder, config.t5.tokenizer_subfolder) == ("vae", "tokenizer")
    assert config.caption.jobs["dense"].max_new_tokens == 24  # the demo's deliberate settings stay
    assert config.vae.aspect_ratios == 256 and config.filter.min_side == 128


def test_explicit_keys_win_over_the_flavor():
    config = load_config(
        CONFIGS / "demo.yaml",
        ["flavor=alpha", "t5.max_length=200", "vae.model.subfolder=null", "vae.model.path=/models/sd-vae"],
    )
    assert (config.t5.max_length, config.t5.caption_cleaning) == (200, "alpha")
    assert (config.vae.model.path, config.vae.model.subfolder) == ("/models/sd-vae", None)


def test_presets_switch_to_the_other_flavors_hub_models():
    alpha = load_config(CONFIGS / "pixart_sigma_1024.yaml", ["flavor=alpha"])
    assert (alpha.caption.model.path, alpha.t5.model.path) == (
        "llava-hf/llava-1.5-7b-hf",
        "PixArt-alpha/PixArt-XL-2-1024-MS",
    )
    assert (alpha.vae.model.path, alpha.vae.model.subfolder, alpha.vae.model.dtype) == (
        "stabilityai/sd-vae-ft-ema",
        None,
        "bfloat16",
    )
    sigma = load_config(CONFIGS / "pixart_alpha_1024.yaml", ["flavor=sigma"])
    repo = "PixArt-alpha/pixart_sigma_sdxlvae_T5_diffusers"
    assert (sigma.t5.model.path, sigma.vae.model.path, sigma.vae.model.subfolder) == (repo, repo, "vae")
    assert sigma.caption.model.path == "llava-hf/llava-v1.6-mistral-7b-hf"
    assert (sigma.t5.max_length, sigma.vae.scale_factor, list(sigma.caption.jobs)) == (
        300,
        0.13025,
        ["dense", "short"],
    )


FLAVOR_KEYS = ("max_length", "caption_cleaning", "scale_factor", "max_aspect_ratio", "path:", "subfolder")


@pytest.mark.parametrize("name", ["demo", "pixart_alpha_1024", "pixart_sigma_1024", "pixart_sigma_2k"])
def test_recipes_leave_flavor_values_to_the_flavor(name):
    text = (CONFIGS / f"{name}.yaml").read_text()
    recipe = "\n".join(line.split("#")[0] for line in text.splitlines())  # comments may name them
    assert not [key for key in FLAVOR_KEYS if key in recipe]


def test_a_recipe_with_only_a_flavor_is_complete():
    config = parse_config({"flavor": "alpha"})
    assert config.t5.model.path == "PixArt-alpha/PixArt-XL-2-1024-MS" and config.t5.max_length == 120
