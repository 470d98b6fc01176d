"""Model shapes shared by ours and upstream, and their FLOP counts."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..configuration_astropt import ASTROPT_PRESETS, AstroPTConfig


@dataclass(frozen=True)
class ModelShape:
    """One transformer shape, built identically as ours and as upstream's GPT (gelu_mlp / "aim" tokeniser)."""

    num_hidden_layers: int
    num_attention_heads: int
    hidden_size: int
    image_size: int = 512
    patch_size: int = 16
    num_channels: int = 3

    @classmethod
    def preset(cls, name: str, **overrides) -> ModelShape:
        """An upstream size by preset name, e.g. "astropt-005M", on 512x512x3 images in 16x16 patches."""
        sizes = {k: v for k, v in ASTROPT_PRESETS[name].items() if k != "learning_rate"}
        return cls(**{**sizes, **overrides})

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.num_channels

    def config(self, **overrides) -> AstroPTConfig:
        """Our config for this shape (upstream v2 defaults: gelu_mlp tokeniser, no biases, spiral order)."""
        return AstroPTConfig(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            hidden_size=self.hidden_size,
            patch_embedding="gelu_mlp",
            **overrides,
        )

    def describe(self) -> str:
        return (
            f"{self.num_hidden_layers}L/{self.num_attention_heads}H/{self.hidden_size}D, "
            f"{self.image_size}px/{self.patch_size}px x{self.num_channels} = {self.num_patches} tokens"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def forward_flops_per_token(
    shape: ModelShape, sequence_length: int, num_blocks: int | None = None, include_head: bool = True
) -> float:
    """Matmul FLOPs (2 per multiply-add) of one token's forward pass through the tokeniser, `num_blocks`
    blocks (all by default) and, with `include_head`, the next-patch head.

    Attention counts the full T x T score and value products, the convention of PaLM's and nanoGPT's MFU
    (causal kernels skip about half of it, so MFU is slightly conservative).
    """
    width, patch = shape.hidden_size, shape.patch_dim
    blocks = shape.num_hidden_layers if num_blocks is None else num_blocks
    tokeniser = patch * 4 * width + 4 * width * width
    head = width * 4 * width + 4 * width * patch if include_head else 0
    per_block = 12 * width * width + 2 * sequence_length * width
    return 2.0 * (tokeniser + head + blocks * per_block)


def train_flops_per_token(shape: ModelShape, sequence_length: int) -> float:
    """Forward + backward: backward costs twice the forward's matmuls."""
    return 3.0 * forward_flops_per_token(shape, sequence_length)
