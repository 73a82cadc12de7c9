"""The audio-conditioned diffusion transformer of DiT-Head (paper 3.3).

Input: the noisy ground-truth latent z_t, the masked-frame latent and the
reference-frame latent, concatenated channel-wise and cut into patches
(diffusers ``PatchEmbed``, fixed 2-D sin-cos positions as in DiT). Condition:
the 11-frame audio window becomes 11 tokens (one linear map per frame, plus a
learned position per window slot so attention knows which frame is which) and
the timestep embedding one more token; the image tokens attend to these 12
tokens by cross-attention in every block (diffusers ``BasicTransformerBlock``).
That is the paper's form: the timestep reaches the network only through
cross-attention. With ``adaln=True`` each block is also modulated by the
timestep, as DiT and PixArt-alpha do (``norm_type="ada_norm_single"``: one
shared projection of the timestep embedding, a learned table per block).
``audio_adaln=True`` adds an embedding of the whole audio window to that
timestep embedding, as DiT adds its class embedding: every block is then
scaled and shifted by the audio directly, which a small model trained for a
few thousand steps picks up much sooner than cross-attention alone.

Output: the predicted noise, same shape as z_t.

Sizes follow facebookresearch/DiT (``DIT_PRESETS``); the paper uses DiT-L/2.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin, BasicTransformerBlock
from diffusers.models.embeddings import PatchEmbed, TimestepEmbedding, Timesteps
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

# facebookresearch/DiT models.py: DiT_models (depth, hidden size, heads) x patch 2/4/8.
_DIT_SIZES = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}
DIT_PRESETS: dict[str, dict[str, int]] = {
    f"DiT-{size}/{patch}": {**dims, "patch_size": patch}
    for size, dims in _DIT_SIZES.items() for patch in (2, 4, 8)
}

TIMESTEP_FREQUENCIES = 256  # sinusoidal features fed to the timestep MLP, as in DiT


def dit_config(preset: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments of ``DiTHead`` for a preset name, with ``overrides``
    (None values are ignored, so optional params can pass straight through)."""
    if preset not in DIT_PRESETS:
        raise ValueError(f"unknown DiT preset {preset!r}; known: {', '.join(DIT_PRESETS)}")
    return {**DIT_PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}


class DiTHead(ModelMixin, AttentionMixin, ConfigMixin):
    """Noise predictor ``model(sample=z_t, masked=..., reference=..., audio=..., timestep=...).sample``.

    Args (all saved in ``config.json``):
        sample_size: latent height = width the model is built for (other sizes
            work: positions are recomputed, at some cost in quality).
        latent_channels: channels of each of the three latents.
        patch_size, hidden_size, depth, num_heads, mlp_ratio: transformer size (see ``DIT_PRESETS``).
        audio_dim: features per audio frame (33 for wav2vec2 CTC logits).
        audio_window: audio frames per window (11: the frame and 5 either side).
        adaln: also modulate every block by the timestep (DiT/PixArt); False is the paper's form.
        audio_adaln: with ``adaln``, modulate by the timestep plus an embedding of the audio window.
        dropout: dropout after every attention and in every feed-forward while training (0: the paper's, DiT's).

    Latents are VQGAN encoder outputs (before quantisation) times that
    VQModel's ``config.scaling_factor`` (see ``dithead.models.latents.encode_latents``).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "PatchEmbed"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        latent_channels: int = 3,
        patch_size: int = 2,
        hidden_size: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        audio_dim: int = 33,
        audio_window: int = 11,
        adaln: bool = False,
        audio_adaln: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if sample_size % patch_size:
            raise ValueError(f"sample_size {sample_size} is not divisible by patch_size {patch_size}")
        if audio_adaln and not adaln:
            raise ValueError("audio_adaln needs adaln: the audio embedding joins the adaLN modulation")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {dropout}")
        self.gradient_checkpointing = False

        self.patch_embed = PatchEmbed(
            height=sample_size, width=sample_size, patch_size=patch_size,
            in_channels=3 * latent_channels, embed_dim=hidden_size, pos_embed_type="sincos",
        )
        self.time_proj = Timesteps(TIMESTEP_FREQUENCIES, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.timestep_embedder = TimestepEmbedding(TIMESTEP_FREQUENCIES, hidden_size)
        # Per-feature standardisation of the audio, set from the training data (``set_audio_statistics``)
        # and saved with the weights: raw log-mel sits near -7 with a spread of 3.5, which a linear map
        # turns into nearly the same token for every frame.
        self.register_buffer("audio_mean", torch.zeros(audio_dim))
        self.register_buffer("audio_std", torch.ones(audio_dim))
        self.audio_proj = nn.Linear(audio_dim, hidden_size)
        self.audio_pos = nn.Parameter(torch.zeros(1, audio_window, hidden_size))

        norm_type = "ada_norm_single" if adaln else "layer_norm"
        self.blocks = nn.ModuleList([
            BasicTransformerBlock(
                hidden_size, num_heads, hidden_size // num_heads,
                dropout=dropout,
                cross_attention_dim=hidden_size,
                activation_fn="gelu-approximate",
                attention_bias=True,
                norm_type=norm_type,
                # adaLN supplies scale and shift; a learned affine on top would be redundant (DiT, PixArt).
                norm_elementwise_affine=not adaln,
                norm_eps=1e-6,
                ff_inner_dim=int(hidden_size * mlp_ratio),
            )
            for _ in range(depth)
        ])
        if adaln:
            # PixArt-alpha's AdaLayerNormSingle projection, fed by the same timestep
            # embedding as the timestep token: 6 modulation vectors per block.
            self.timestep_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
            self.final_modulation = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        if audio_adaln:
            self.audio_embedder = nn.Sequential(
                nn.Linear(audio_window * audio_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(hidden_size, patch_size * patch_size * latent_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: xavier linears, small timestep MLP, zero output
        layer (the untrained model predicts zero noise, a stable start)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        conv = self.patch_embed.proj
        nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        nn.init.zeros_(conv.bias)
        nn.init.normal_(self.timestep_embedder.linear_1.weight, std=0.02)
        nn.init.normal_(self.timestep_embedder.linear_2.weight, std=0.02)
        nn.init.normal_(self.audio_pos, std=0.02)
        if self.config.audio_adaln:
            nn.init.normal_(self.audio_embedder[0].weight, std=0.02)
            nn.init.normal_(self.audio_embedder[2].weight, std=0.02)
        if self.config.adaln:
            nn.init.zeros_(self.timestep_modulation[1].weight)
        nn.init.zeros_(self.proj_out.weight)

    def condition_tokens(self, audio: torch.Tensor, timestep_embedding: torch.Tensor) -> torch.Tensor:
        """(B, audio_window + 1, hidden): one token per audio frame, then the timestep token."""
        window = self.config.audio_window
        if audio.ndim != 3 or audio.shape[1:] != (window, self.config.audio_dim):
            raise ValueError(f"audio must be (batch, {window}, {self.config.audio_dim}), got {tuple(audio.shape)}")
        audio_tokens = self.audio_proj(self.standardise_audio(audio)) + self.audio_pos
        return torch.cat([audio_tokens, timestep_embedding[:, None].to(audio_tokens.dtype)], dim=1)

    def audio_parameters(self) -> list[nn.Parameter]:
        """The weights only the audio passes through: its token map and positions, and its adaLN embedder."""
        modules = [self.audio_proj] + ([self.audio_embedder] if self.config.audio_adaln else [])
        return [self.audio_pos] + [p for module in modules for p in module.parameters()]

    def standardise_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, audio_window, audio_dim) raw features -> standardised, in the model's dtype."""
        audio = (audio.to(self.audio_mean.dtype) - self.audio_mean) / self.audio_std
        return audio.to(self.audio_proj.weight.dtype)

    def modulation_embedding(self, audio: torch.Tensor, timestep_embedding: torch.Tensor) -> torch.Tensor:
        """(B, hidden): what adaLN scales and shifts by; the timestep's, plus the audio window's with ``audio_adaln``."""
        if not self.config.audio_adaln:
            return timestep_embedding
        return timestep_embedding + self.audio_embedder(self.standardise_audio(audio).flatten(1))

    @torch.no_grad()
    def set_audio_statistics(self, features: torch.Tensor) -> None:
        """Standardise audio inputs by the mean and std of ``features`` (M, audio_dim), e.g. the training frames'."""
        features = features.reshape(-1, self.config.audio_dim).double()
        self.audio_mean.copy_(features.mean(0))
        self.audio_std.copy_(features.std(0).clamp_min(1e-3) if len(features) > 1 else torch.ones_like(self.audio_std))

    def unpatchify(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, h*w, p*p*C) -> (B, C, h*p, w*p)."""
        p, c = self.config.patch_size, self.config.latent_channels
        b = tokens.shape[0]
        x = tokens.reshape(b, height, width, p, p, c)
        return torch.einsum("bhwpqc->bchpwq", x).reshape(b, c, height * p, width * p)

    def forward(
        self,
        sample: torch.Tensor,
        masked: torch.Tensor,
        reference: torch.Tensor,
        audio: torch.Tensor,
        timestep: torch.Tensor | float | int,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predicted noise for z_t = ``sample``.

        sample, masked, reference: (B, latent_channels, H, W), H and W multiples of patch_size.
        audio: (B, audio_window, audio_dim). timestep: scalar or (B,).
        """
        if not (sample.shape == masked.shape == reference.shape):
            raise ValueError(f"sample, masked and reference latents differ in shape: "
                             f"{tuple(sample.shape)}, {tuple(masked.shape)}, {tuple(reference.shape)}")
        batch, _, height, width = sample.shape
        p = self.config.patch_size
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)

        hidden = self.patch_embed(torch.cat([sample, masked, reference], dim=1).to(self.dtype))
        t_emb = self.timestep_embedder(self.time_proj(timestep).to(hidden.dtype))
        context = self.condition_tokens(audio, t_emb)
        if self.config.adaln:
            c_emb = self.modulation_embedding(audio, t_emb)
            modulation = self.timestep_modulation(c_emb)
        else:
            modulation = None

        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden = self._gradient_checkpointing_func(block, hidden, None, context, None, modulation)
            else:
                hidden = block(hidden, encoder_hidden_states=context, timestep=modulation)

        hidden = self.norm_out(hidden)
        if self.config.adaln:
            shift, scale = (self.final_modulation[None] + c_emb[:, None]).chunk(2, dim=1)
            hidden = hidden * (1 + scale) + shift
        noise = self.unpatchify(self.proj_out(hidden), height // p, width // p)
        if not return_dict:
            return (noise,)
        return Transformer2DModelOutput(sample=noise)


def make_noise_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """ADM's diffusion (paper 3.6): linear betas from 1e-4 to 0.02 at 1000 steps,
    rescaled by 1000 / steps as ADM does for other lengths; epsilon prediction."""
    scale = 1000 / num_train_timesteps
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="linear",
                         beta_start=scale * 1e-4, beta_end=scale * 0.02,
                         prediction_type="epsilon", clip_sample=False)


def diffusion_loss(model: nn.Module, scheduler: DDPMScheduler, latents: torch.Tensor, masked: torch.Tensor,
                   reference: torch.Tensor, audio: torch.Tensor, *, noise: torch.Tensor | None = None,
                   timesteps: torch.Tensor | None = None, generator: torch.Generator | None = None,
                   snr_gamma: float | None = None, region_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's objective (eq. 7): MSE between the noise added to ``latents``
    at a uniformly drawn step and the model's prediction of it.

    ``noise`` and ``timesteps`` fix the draw (validation compares like with like);
    otherwise they come from ``generator`` (on the latents' device).
    ``snr_gamma``: Min-SNR-gamma weighting (Hang et al. 2023), each sample's
    loss times min(SNR, gamma) / SNR: the many nearly clean steps, where the
    answer is the input, stop dominating the gradient. None: the paper's plain MSE.
    ``region_weight``: (B, 1, h, w) weights of each latent position (``masked_region_weight``);
    each sample's loss is then the weighted mean over positions. None: every position counts alike.
    """
    batch = latents.shape[0]
    if noise is None:
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,),
                                  generator=generator, device=latents.device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = model(sample=noisy, masked=masked, reference=reference, audio=audio, timestep=timesteps).sample
    if not snr_gamma and region_weight is None:
        return F.mse_loss(prediction.float(), noise.float())
    squared = F.mse_loss(prediction.float(), noise.float(), reduction="none")
    if region_weight is None:
        per_sample = squared.flatten(1).mean(1)
    else:
        region_weight = region_weight.float().expand_as(squared)
        per_sample = (squared * region_weight).flatten(1).sum(1) / region_weight.flatten(1).sum(1)
    if not snr_gamma:
        return per_sample.mean()
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, timesteps).float()
    return (snr.clamp(max=snr_gamma) / snr * per_sample).mean()


def masked_region_weight(mask: torch.Tensor, latent_size: tuple[int, int], weight: float) -> torch.Tensor:
    """(B, 1, h, w) loss weights from pixel masks (B, 1, H, W), 1 over a region (the hidden one, or the
    mouth box): ``weight`` there, 1 elsewhere, blended by the share of each latent position the mask covers.

    Outside the mask the answer is in the masked-frame input; only the hidden region, where the
    mouth is, depends on the audio, and at 1 it is a small part of the loss.
    """
    covered = F.adaptive_avg_pool2d(mask.float(), latent_size)
    return 1 + (weight - 1) * covered


def forward_flops(config: Mapping[str, Any], batch: int = 1, height: int | None = None,
                  width: int | None = None) -> int:
    """Floating-point operations (multiply and add counted separately) of one
    forward pass, from the model's config: every matmul and the attention
    products; norms, activations and softmax (a few percent) are left out."""
    h = height or config["sample_size"]
    w = width or config["sample_size"]
    p, d, c = config["patch_size"], config["hidden_size"], config["latent_channels"]
    tokens = (h // p) * (w // p)
    context = config.get("audio_window", 11) + 1
    mlp = int(d * config.get("mlp_ratio", 4.0))

    macs = tokens * (3 * c * p * p) * d                      # patch embedding
    macs += TIMESTEP_FREQUENCIES * d + d * d                 # timestep MLP
    macs += config.get("audio_window", 11) * config.get("audio_dim", 33) * d
    per_block = (
        4 * tokens * d * d                                   # self-attention q, k, v, out
        + 2 * tokens * tokens * d                            # q k^T and attention x v
        + 2 * tokens * d * d + 2 * context * d * d           # cross-attention q, out; k, v of the context
        + 2 * tokens * context * d                           # cross-attention products
        + 2 * tokens * d * mlp                               # feed-forward
    )
    macs += config["depth"] * per_block
    if config.get("adaln", False):
        macs += d * 6 * d
    macs += tokens * d * (p * p * c)                         # output projection
    return 2 * batch * macs
