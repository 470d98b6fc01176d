"""Parity: for the same image file, upstream's pipeline + upstream's model and our image processor + the
converted model give the same next-patch predictions and embeddings (fp32, within 1e-4).

References: the PyPI `astropt` package (2.0.x) for the v2 layout; for the v3 layout (current upstream
`main`, not on PyPI) the same astropt model with its modules renamed as v3 names them (v3's forward is
v2's with `transformer.wte/wpe` and `lm_head` moved to `encoders/embedders/decoders`); for v1 a v1-layout
model written here from the v1 description. Upstream's input pipeline is reproduced here step by step.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import AutoImageProcessor, AutoModel, AutoModelForPreTraining

from astropt_hf import spiral_order
from astropt_hf.conversion import convert_upstream_checkpoint
from astropt_hf.conversion.reference_forward import upstream_spiral_order

REPO_ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4


# --- upstream's input pipeline, reproduced step for step ------------------------------------------------
def upstream_spiral_rank(n):
    """`GalaxyImageDataset._spiral`: rank of each raster cell in the spiral."""
    a = np.arange(n * n)
    b = a.reshape((n, n))
    m = None
    for _ in range(n, 0, -2):
        m = np.r_[m, b[0, :], b[1:, -1], b[-1, :-1][::-1], b[1:-1, 0][::-1]]
        b = b[1:-1, 1:-1]
    a[list(m[1:])] = list(a)
    a = abs(a - n * n + 1)
    return a.reshape((n, n))


def upstream_spiralise(galaxy):
    """`GalaxyImageDataset.spiralise`: sort the raster-ordered patches by their spiral rank."""
    indices = upstream_spiral_rank(int(np.sqrt(len(galaxy)))).reshape(-1)
    return torch.stack([patch for _, patch in sorted(zip(indices, galaxy), key=lambda pair: pair[0])])


def upstream_patchify(raw, patch_size):
    """einops "c (h p1) (w p2) -> (h w) (p1 p2 c)" on a (C, W, H) array."""
    c, rows, cols = raw.shape[0], raw.shape[1] // patch_size, raw.shape[2] // patch_size
    return raw.reshape(c, rows, patch_size, cols, patch_size).transpose(1, 3, 2, 4, 0).reshape(rows * cols, -1)


def upstream_model_input(png_path, patch_size):
    """What upstream feeds its model for one image file: (1, T-1, P) patches and their positions."""
    raw = np.array(Image.open(png_path)).swapaxes(0, 2)  # (C, W, H), as upstream's process_galaxy_wrapper
    patches = torch.from_numpy(upstream_patchify(raw, patch_size).astype(np.float32))
    std, mean = torch.std_mean(patches, dim=1, keepdim=True)  # upstream's `normalise`
    sequence = upstream_spiralise((patches - mean) / (std + 1e-8))
    inputs, positions = sequence[:-1], torch.arange(0, len(sequence) - 1)  # process_modes drops the last patch
    return inputs[None], positions[None]


def test_upstream_patchify_matches_einops_pattern():
    einops = pytest.importorskip("einops")
    raw = np.random.default_rng(0).integers(0, 255, size=(3, 8, 12))
    expected = einops.rearrange(raw, "c (h p1) (w p2) -> (h w) (p1 p2 c)", p1=4, p2=4)
    np.testing.assert_array_equal(upstream_patchify(raw, 4), expected)


@pytest.mark.parametrize("grid", [1, 2, 3, 4, 5, 8, 9, 16])
def test_spiral_orders_match_upstreams_spiralise(grid):
    rank = upstream_spiral_rank(grid).reshape(-1)
    # upstream's spiralise sorts patches by rank: sequence position k holds the raster cell of rank k
    upstream_order = [raster for _, raster in sorted(zip(rank, range(grid * grid)))]
    assert upstream_spiral_order(grid).tolist() == upstream_order
    assert spiral_order(grid).tolist() == upstream_order


def write_galaxy_png(path, size, seed=0):
    """An off-centre, asymmetric blob with noise, so transposing or mis-ordering patches shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    blob = 200 * np.exp(-((xx - 0.62 * size) ** 2 + (yy - 0.35 * size) ** 2) / (2 * (size / 5) ** 2))
    image = blob[..., None] * np.array([1.0, 0.8, 0.6]) + rng.normal(30, 15, (size, size, 3))
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB").save(path)
    return path


def scramble(module, generator):
    """Weights large enough that a wrong mapping shows, with LayerNorm gains near 1."""
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if "ln" in name.split(".")[-2] and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                parameter.copy_(0.05 * noise)
            else:
                parameter.copy_(0.15 * noise)


def converted_outputs(output_dir, png_path):
    """Our side, loaded as users load it: remote code, image processor, then the two models."""
    processor = AutoImageProcessor.from_pretrained(output_dir, trust_remote_code=True)
    pretraining = AutoModelForPreTraining.from_pretrained(output_dir, trust_remote_code=True).eval()
    backbone = AutoModel.from_pretrained(output_dir, trust_remote_code=True).eval()
    pixel_values = processor(Image.open(png_path), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        predictions = pretraining(pixel_values=pixel_values).predictions
        embedding = backbone.get_image_embeddings(pixel_values)
        pooled = backbone(pixel_values=pixel_values).pooler_output
    return pixel_values, pretraining, predictions, embedding, pooled


def assert_parity(predictions, embedding, pooled, upstream_predictions, upstream_embedding):
    assert predictions.shape[1] == upstream_predictions.shape[1] + 1  # ours also predicts past the last patch
    assert upstream_predictions.std() > 0.05, "reference outputs too small to make the comparison meaningful"
    torch.testing.assert_close(predictions[:, :-1], upstream_predictions, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(embedding, upstream_embedding, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(pooled, upstream_embedding, atol=TOLERANCE, rtol=0)


# --- v1: a v1-layout model written from the v1 description ----------------------------------------------
def new_gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class V1LayerNorm(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class V1Attention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.c_attn, self.c_proj, self.heads = nn.Linear(width, 3 * width, bias=False), nn.Linear(width, width, bias=False), heads

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in self.c_attn(x).split(c, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class V1Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = V1LayerNorm(width), V1Attention(width, heads), V1LayerNorm(width)
        self.mlp = nn.ModuleDict({"c_fc": nn.Linear(width, 4 * width, bias=False), "c_proj": nn.Linear(4 * width, width, bias=False)})

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp["c_proj"](new_gelu(self.mlp["c_fc"](self.ln_2(x))))


class V1GPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, n_chan, block_size, patch_size):
        super().__init__()
        patch_dim = patch_size * patch_size * n_chan
        self.transformer = nn.ModuleDict({
            "wte": nn.Sequential(nn.Linear(patch_dim, n_embd), nn.ReLU(), nn.Linear(n_embd, n_embd), nn.ReLU()),
            "wpe": nn.Embedding(block_size, n_embd),
            "h": nn.ModuleList([V1Block(n_embd, n_head) for _ in range(n_layer)]),
            "ln_f": V1LayerNorm(n_embd),
        })
        self.lm_head = nn.Sequential(nn.Linear(n_embd, 2 * n_embd), nn.ReLU(), nn.Linear(2 * n_embd, n_embd), nn.ReLU(),
                                     nn.Linear(n_embd, patch_dim))

    def blocks(self, idx):
        x = self.transformer["wte"](idx) + self.transformer["wpe"](torch.arange(idx.shape[1]))
        for block in self.transformer["h"]:
            x = block(x)
        return x

    def forward(self, idx):  # with targets, upstream v1 predicts every position
        return self.lm_head(self.transformer["ln_f"](self.blocks(idx)))

    def generate_embeddings(self, idx):  # v1 get_embeddings: last block, no final LayerNorm; mean
        return self.blocks(idx).mean(dim=1)


@pytest.mark.parametrize(
    "geometry,prefix",
    [
        (dict(patch_size=16, block_size=1024, image_size=512), True),  # the v1 release geometry, default size
        (dict(patch_size=4, block_size=64, image_size=32), False),
    ],
)
def test_v1_parity(tmp_path, geometry, prefix):
    model_args = dict(n_layer=2, n_head=2, n_embd=32, n_chan=3, block_size=geometry["block_size"], dropout=0.0,
                      patch_size=geometry["patch_size"])
    upstream = V1GPT(**{k: v for k, v in model_args.items() if k != "dropout"}).eval()
    scramble(upstream, torch.Generator().manual_seed(1))
    state = {("_orig_mod." if prefix else "") + k: v for k, v in upstream.state_dict().items()}
    torch.save({"model": state, "model_args": model_args, "config": {"image_size": 224}, "iter_num": 1,
                "best_val_loss": torch.tensor(1.0)}, tmp_path / "ckpt.pt")

    report = convert_upstream_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")

    assert report.detected_format == "v1" and report.had_compile_prefix is prefix
    assert report.image_size == geometry["image_size"]  # 512 is the release default, not config's 224
    assert report.parity_passed
    png = write_galaxy_png(tmp_path / "galaxy.png", geometry["image_size"])
    pixel_values, pretraining, predictions, embedding, pooled = converted_outputs(tmp_path / "out", png)
    inputs, _ = upstream_model_input(png, geometry["patch_size"])
    with torch.no_grad():
        assert_parity(predictions, embedding, pooled, upstream(inputs), upstream.generate_embeddings(inputs))
        # the comparison is sharp: reading the image untransposed (as a plain ViT would) breaks it
        untransposed = pretraining(pixel_values=pixel_values.transpose(-1, -2).contiguous()).predictions[:, :-1]
    assert (untransposed - upstream(inputs)).abs().max() > 100 * TOLERANCE


# --- v2 / v3: the PyPI astropt model as the reference ------------------------------------------------------
def build_astropt_v2(tokeniser, bias, patch_size=4, n_chan=3, block_size=64, extra_modalities=()):
    astropt_model = pytest.importorskip("astropt.model", exc_type=ImportError)
    modalities = [astropt_model.ModalityConfig(name="images", input_size=patch_size**2 * n_chan, pos_input_size=1,
                                               patch_size=patch_size, embed_pos=True)]
    modalities += list(extra_modalities)
    registry = astropt_model.ModalityRegistry(modalities)
    model_args = dict(n_layer=3, n_head=2, n_embd=32, n_chan=n_chan, block_size=block_size, dropout=0.0, bias=bias,
                      modalities=modalities, attn_type="causal", tokeniser=tokeniser)
    model = astropt_model.GPT(astropt_model.GPTConfig(**model_args), registry, master_process=False).eval()
    scramble(model, torch.Generator().manual_seed(2))
    return model, model_args, registry


def v3_names(state):
    renames = {"transformer.wte.": "encoders.", "transformer.wpe.": "embedders.", "lm_head.": "decoders."}
    out = {}
    for key, value in state.items():
        for old, new in renames.items():
            key = new + key[len(old):] if key.startswith(old) else key
        out[key] = value
    return out


@pytest.mark.parametrize(
    "fmt,tokeniser,bias,prefix",
    [("v2", "aim", False, True), ("v2", "affine", True, False), ("v3", "aim", True, False), ("v3", "affine", False, True)],
)
def test_v2_v3_parity_against_pypi_astropt(tmp_path, fmt, tokeniser, bias, prefix):
    upstream, model_args, registry = build_astropt_v2(tokeniser, bias)
    state = upstream.state_dict()
    state = v3_names(state) if fmt == "v3" else state
    state = {("_orig_mod." if prefix else "") + k: v for k, v in state.items()}
    torch.save({"model": state, "model_args": model_args, "modality_registry": registry,
                "config": {"image_size": 32, "spiral": True}, "iter_num": 5, "best_val_loss": torch.tensor(0.3)},
               tmp_path / "ckpt.pt")

    report = convert_upstream_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")

    assert (report.detected_format, report.had_compile_prefix, report.image_size) == (fmt, prefix, 32)
    assert report.parity_passed and report.prediction_max_abs_diff < TOLERANCE
    png = write_galaxy_png(tmp_path / "galaxy.png", 32, seed=3)
    _, _, predictions, embedding, pooled = converted_outputs(tmp_path / "out", png)
    inputs, positions = upstream_model_input(png, 4)
    with torch.no_grad():
        outputs, _ = upstream({"images": inputs, "images_positions": positions})
        embeddings = upstream.generate_embeddings({"images": inputs, "images_positions": positions})
    assert_parity(predictions, embedding, pooled, outputs["images"], embeddings["images"])


def test_multi_modality_checkpoint_is_refused(tmp_path):
    astropt_model = pytest.importorskip("astropt.model", exc_type=ImportError)
    photometry = astropt_model.ModalityConfig(name="photometry", input_size=8, pos_input_size=1, patch_size=8,
                                              embed_pos=True)
    upstream, model_args, registry = build_astropt_v2("aim", False, extra_modalities=[photometry])
    torch.save({"model": upstream.state_dict(), "model_args": model_args, "modality_registry": registry},
               tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"not supported: modalities \['images', 'photometry'\]"):
        convert_upstream_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- the command-line script, end to end -------------------------------------------------------------------
def upstream_like_v2_checkpoint(path, modality_classes):
    """A tiny v2 checkpoint pickled with astropt's own classes, or look-alikes under the same names."""
    try:
        upstream, model_args, registry = build_astropt_v2("aim", False)
        state = upstream.state_dict()
    except pytest.skip.Exception:
        ModalityConfig, ModalityRegistry = modality_classes()
        images = ModalityConfig("images", 48, 1, 4, True)
        registry = ModalityRegistry([images])
        model_args = dict(n_layer=3, n_head=2, n_embd=32, n_chan=3, block_size=64, dropout=0.0, modalities=[images],
                          attn_type="causal", tokeniser="aim")
        shapes = {"transformer.wte.images.c_fc.weight": (128, 48), "transformer.wte.images.c_proj.weight": (32, 128),
                  "transformer.wpe.images.wpe.weight": (64, 32), "transformer.ln_f.weight": (32,),
                  "lm_head.images.c_fc.weight": (128, 32), "lm_head.images.c_proj.weight": (48, 128)}
        for i in range(3):
            shapes.update({f"transformer.h.{i}.ln_1.weight": (32,), f"transformer.h.{i}.attn.c_attn.weight": (96, 32),
                           f"transformer.h.{i}.attn.c_proj.weight": (32, 32), f"transformer.h.{i}.ln_2.weight": (32,),
                           f"transformer.h.{i}.mlp.c_fc.weight": (128, 32), f"transformer.h.{i}.mlp.c_proj.weight": (32, 128)})
        state = {key: 0.2 * torch.randn(shape) for key, shape in shapes.items()}
    torch.save({"model": state, "model_args": model_args, "modality_registry": registry, "iter_num": 9,
                "config": {"image_size": 32, "spiral": True}, "best_val_loss": torch.tensor(0.5)}, path)


def test_convert_script_end_to_end(tmp_path, upstream_modality_classes):
    checkpoint, output_dir = tmp_path / "ckpt.pt", tmp_path / "converted"
    upstream_like_v2_checkpoint(checkpoint, upstream_modality_classes)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "convert_astropt_checkpoint.py"),
         "--checkpoint", str(checkpoint), "--output_dir", str(output_dir)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "format:      v2.x" in run.stdout and "parameters:  " in run.stdout
    assert "parity:      passed" in run.stdout and "reload:      AutoModel" in run.stdout
    card = (output_dir / "README.md").read_text()
    assert "ckpt.pt" in card and "| parity check | passed" in card and "$" not in card
    assert json.loads((output_dir / "conversion_report.json").read_text())["source"] == "ckpt.pt"

    # a fresh interpreter that only has transformers' remote-code path to go on
    load = (
        "import sys; from transformers import AutoModel, AutoModelForPreTraining, AutoImageProcessor\n"
        f"d = {str(output_dir)!r}\n"
        "m = AutoModel.from_pretrained(d, trust_remote_code=True)\n"
        "p = AutoModelForPreTraining.from_pretrained(d, trust_remote_code=True)\n"
        "i = AutoImageProcessor.from_pretrained(d, trust_remote_code=True)\n"
        "assert 'astropt_hf' not in sys.modules, 'loading needed the astropt_hf package'\n"
        "print(type(m).__name__, type(p).__name__, type(i).__name__, i.image_size, p.config.transpose_patch_grid)\n"
    )
    loaded = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["AstroPTModel", "AstroPTForPreTraining", "AstroPTImageProcessor", "32", "True"]


def load_script():
    spec = importlib.util.spec_from_file_location("convert_script", REPO_ROOT / "scripts" / "convert_astropt_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_script_reports_refusals(tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "model_args": {}, "evil": _Evil(tmp_path / "pwned")}, path)
    script = load_script()
    assert script.main(["--checkpoint", str(path), "--output_dir", str(tmp_path / "out")]) == 1
    assert f"refusing to load ckpt.pt: its pickle asks for {os.system.__module__}.system" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()
    with pytest.raises(SystemExit):
        script.parse_args(["--checkpoint", str(path), "--output_dir", "x", "--push_to_hub"])  # needs --hub_model_id


class _Evil:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)
