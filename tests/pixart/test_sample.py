"""``curate sample``: diffusers PixArt pipelines fed with our precomputed embeddings, no text encoder."""

from PIL import Image

from curation.cli import main


def sample_args(source, tiny_models, out, *options: str) -> list[str]:
    return ["sample", str(source), "--model", str(tiny_models / "pixart_sigma"), "--out", str(out), *options]


def test_sample_from_embed_prompts_output(demo_dataset, tiny_models, tmp_path):
    embeddings = tmp_path / "embeddings"
    assert main(["embed-prompts", str(demo_dataset), "--out", str(embeddings)]) == 0
    out = tmp_path / "samples"
    assert main(sample_args(embeddings, tiny_models, out, "--num", "2", "--steps", "2", "--guidance", "4.5")) == 0
    images = sorted(out.glob("0*.png"))
    assert len(images) == 2
    assert Image.open(images[0]).size == (256, 256)  # the transformer's sample_size x VAE factor
    assert Image.open(out / "grid.png").size[0] >= 2 * 256


def test_sample_from_dataset_shards_with_lcm_settings(demo_dataset, tiny_models, tmp_path):
    out = tmp_path / "samples"
    options = ("--num", "1", "--lcm", "--height", "128", "--width", "192")
    assert main(sample_args(demo_dataset, tiny_models, out, *options)) == 0  # LCM: guidance 0, no null embedding
    image = Image.open(out / "0000.png")
    assert image.size == (192, 128)


def test_guidance_without_null_embedding_is_a_clear_error(demo_dataset, tiny_models, tmp_path, capsys):
    options = ("--num", "1", "--steps", "1", "--null-embed", str(tmp_path / "missing.pth"))
    assert main(sample_args(demo_dataset, tiny_models, tmp_path, *options)) == 2
    assert "embed-prompts" in capsys.readouterr().err
