"""A small world action model (WAM) shaped like the paper's: a video diffusion transformer that jointly denoises an
action chunk and a future camera frame, conditioned on the current observation and on the instruction.

Everything is a latent *frame* `[C, h, w]` of one video `[B, C, T=5, h, w]`, the way Cosmos-Policy feeds actions
and proprioception to Cosmos-Predict2 as extra latent frames:

    frame 0  agent-view image at t           (condition: clean, timestep 0)
    frame 1  wrist image at t                (condition)
    frame 2  robot state at t                (condition)
    frame 3  action chunk a[t : t + chunk]   (generated)
    frame 4  agent-view image at t + chunk   (generated: the future observation, at 1 / future_pool resolution)

Image latents are downsampled pixels: an `[3, S, S]` image (normalised per colour) is space-to-depth folded by
`pixel_block` into `[C = 3 * pixel_block^2, S / pixel_block, S / pixel_block]` (no autoencoder to train or
download). A state or an action frame repeats its values over the channels of each of the `(S / pixel_block)^2`
tokens; an action frame holds one chunk step per token, so `chunk_size` equals the number of tokens of a frame.

The generated frames live in a smaller space than their `C` channels: per token, the 7 action values and the
future view at `1 / future_pool` of the resolution (`3 * (pixel_block / future_pool)^2` values): the *generated
tokens* `[B, n_tokens, 7 + future_dim]`. Noise is drawn there and tiled over the channels like the values, so a
noisy frame stays a tiled frame, and the backbone's output frames are read back by averaging the repeats (a fixed
linear read-out). The flow then has 7 + 48 dimensions per token instead of 2 x 192, which a 64-96 wide transformer
can carry through its residual stream; with independent noise on every channel the velocity target holds 192
independent noise values per token and these widths cannot represent it (measured: docs/wam.md).

The instruction enters through cross-attention over text embeddings `encoder_hidden_states [B, L, text_dim]`
(a learned word embedding, see `tokenizer.py`): the conditioning CKT appends its context to.

The backbone is a diffusers video transformer built from config: `WanTransformer3DModel` (DreamZero's backbone,
the teacher here) or `CosmosTransformer3DModel` (Cosmos-Policy's, the student). Training is flow matching
(rectified flow: `x_t = (1 - t) x_0 + t e`, the model predicts `e - x_0`), sampling is Euler over
`num_inference_steps`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Optional

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .tokenizer import InstructionTokenizer

NUM_FRAMES = 5
CONDITION_FRAMES = (0, 1, 2)
ACTION_FRAME, FUTURE_FRAME = 3, 4
ACTION_DIM, STATE_DIM = 7, 8
TIMESTEP_SCALE = 1000.0  # diffusers transformers embed timesteps in [0, 1000]


class WorldActionModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="peft-ckt",
    tags=["world-action-model", "robotics", "libero", "flow-matching"],
    repo_url="https://github.com/peft-ckt/peft-ckt",
):
    """A flow-matching world action model on a diffusers Wan or Cosmos video transformer.

    Saved as `config.json` (these arguments) + `model.safetensors` by `save_pretrained`; `from_pretrained` and
    `push_to_hub` come from `huggingface_hub.PyTorchModelHubMixin`.

    Args:
        backbone: `"wan"` (`WanTransformer3DModel`, blocks at `backbone.blocks.N`) or `"cosmos"`
            (`CosmosTransformer3DModel`, blocks at `backbone.transformer_blocks.N`).
        vocabulary: instruction words (`tokenizer.build_vocabulary`).
        image_size: side `S` of the square camera images (both cameras).
        pixel_block: space-to-depth factor of the image latents; `(S / pixel_block)^2` tokens per frame.
        chunk_size: actions per predicted chunk; must equal `(S / pixel_block)^2`.
        num_layers, num_attention_heads, attention_head_dim: transformer depth and width (`heads * head_dim`).
        ffn_mult: feed-forward width over the transformer width.
        text_dim: width of the text embeddings `encoder_hidden_states` (the CKT student width `d_s`).
        max_text_length: instruction length `L` in words (padded / cut).
        state_mean, state_std, action_mean, action_std: normalisation of the 8-d state and the 7-d action (the
            gripper action stays in {-1, 1}: give mean 0 / std 1 there).
        image_mean, image_std: per-colour normalisation of the pixels in [0, 1], so that image latents have unit
            variance like the noise they are mixed with (the role of a VAE's scaling factor).
        future_pool: the generated future view is the agent view average-pooled by this factor (`pixel_block` must be
            a multiple of it): `future_dim = 3 * (pixel_block / future_pool)^2` values per token.
        future_residual: generate the future view as its change from the current agent view (both pooled), so
            that a model which learned nothing about motion predicts the current view rather than noise: at these
            widths the view itself does not fit through the residual stream beside the actions (docs/wam.md).
        future_loss_weight: weight of the future-frame denoising loss beside the action loss.
        num_inference_steps: Euler steps of `sample`.
        prediction_type: what the backbone outputs: `"velocity"` (`e - x_0`, the default) or `"sample"` (the clean
            frames `x_0`), both on the generated tokens (see the module docstring). Sampling and the loss are the
            same rectified flow either way.
    """

    def __init__(
        self,
        backbone: str = "cosmos",
        vocabulary: Optional[list[str]] = None,
        image_size: int = 32,
        pixel_block: int = 8,
        chunk_size: int = 16,
        num_layers: int = 4,
        num_attention_heads: int = 2,
        attention_head_dim: int = 32,
        ffn_mult: float = 2.0,
        text_dim: int = 32,
        max_text_length: int = 16,
        state_mean: Optional[list[float]] = None,
        state_std: Optional[list[float]] = None,
        action_mean: Optional[list[float]] = None,
        action_std: Optional[list[float]] = None,
        image_mean: Optional[list[float]] = None,
        image_std: Optional[list[float]] = None,
        future_pool: int = 2,
        future_residual: bool = True,
        future_loss_weight: float = 0.25,
        num_inference_steps: int = 5,
        prediction_type: str = "velocity",
    ) -> None:
        super().__init__()
        if backbone not in ("wan", "cosmos"):
            raise ValueError(f"backbone must be 'wan' or 'cosmos'; got {backbone!r}")
        if image_size % pixel_block:
            raise ValueError(f"image_size ({image_size}) must be a multiple of pixel_block ({pixel_block})")
        self.latent_side = image_size // pixel_block
        self.tokens_per_frame = self.latent_side**2
        if chunk_size != self.tokens_per_frame:
            raise ValueError(
                f"chunk_size ({chunk_size}) must equal the tokens per frame (image_size / pixel_block)^2 = "
                f"{self.tokens_per_frame}: an action frame holds one chunk step per token"
            )
        self.backbone_type = backbone
        self.image_size, self.pixel_block, self.chunk_size = image_size, pixel_block, chunk_size
        self.latent_channels = 3 * pixel_block**2
        if self.latent_channels < max(ACTION_DIM, STATE_DIM):
            raise ValueError(f"pixel_block={pixel_block} gives {self.latent_channels} channels, fewer than 8")
        if prediction_type not in ("sample", "velocity"):
            raise ValueError(f"prediction_type must be 'sample' or 'velocity'; got {prediction_type!r}")
        if future_pool < 1 or pixel_block % future_pool:
            raise ValueError(f"pixel_block ({pixel_block}) must be a multiple of future_pool ({future_pool})")
        self.future_pool = future_pool
        self.future_size = image_size // future_pool
        self.future_dim = 3 * (pixel_block // future_pool) ** 2
        self.generated_dim = ACTION_DIM + self.future_dim
        self.future_residual = future_residual
        self.future_loss_weight = future_loss_weight
        self.num_inference_steps = num_inference_steps
        self.prediction_type = prediction_type
        self.tokenizer = InstructionTokenizer(vocabulary or ["<pad>", "<unk>"], max_length=max_text_length)
        self.text_embedding = nn.Embedding(len(self.tokenizer), text_dim, padding_idx=0)
        self.text_position = nn.Parameter(torch.randn(max_text_length, text_dim) * 0.02)
        self.text_norm = nn.LayerNorm(text_dim)
        for name, values, size in (
            ("state_mean", state_mean, STATE_DIM),
            ("state_std", state_std, STATE_DIM),
            ("action_mean", action_mean, ACTION_DIM),
            ("action_std", action_std, ACTION_DIM),
            ("image_mean", image_mean, 3),
            ("image_std", image_std, 3),
        ):
            default = {"image_mean": 0.5, "image_std": 0.5}.get(name, 0.0 if name.endswith("mean") else 1.0)
            tensor = torch.tensor(values if values is not None else [default] * size, dtype=torch.float32)
            if tensor.shape != (size,):
                raise ValueError(f"{name} must have {size} values; got {tuple(tensor.shape)}")
            self.register_buffer(name, tensor, persistent=False)  # in config.json already
        width = num_attention_heads * attention_head_dim
        channels = self.latent_channels
        if backbone == "wan":
            from diffusers import WanTransformer3DModel

            self.backbone = WanTransformer3DModel(
                patch_size=(1, 1, 1),
                num_attention_heads=num_attention_heads,
                attention_head_dim=attention_head_dim,
                in_channels=channels,
                out_channels=channels,
                text_dim=text_dim,
                freq_dim=64,
                ffn_dim=int(ffn_mult * width),
                num_layers=num_layers,
                cross_attn_norm=True,
                qk_norm="rms_norm_across_heads",
                eps=1e-6,
                image_dim=None,
                added_kv_proj_dim=None,
                rope_max_seq_len=32,
            )
        else:
            from diffusers import CosmosTransformer3DModel

            self.backbone = CosmosTransformer3DModel(
                in_channels=channels,
                out_channels=channels,
                num_attention_heads=num_attention_heads,
                attention_head_dim=attention_head_dim,
                num_layers=num_layers,
                mlp_ratio=ffn_mult,
                text_embed_dim=text_dim,
                adaln_lora_dim=16,
                max_size=(NUM_FRAMES + 3, self.latent_side + 4, self.latent_side + 4),
                patch_size=(1, 1, 1),
                rope_scale=(1.0, 1.0, 1.0),
                concat_padding_mask=False,
                extra_pos_embed_type=None,
            )
        self.width = width
        self.text_dim = text_dim

    # ------------------------------------------------------------------ saving and loading
    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> Any:
        """`config.json` (the constructor arguments, plus `"type": "wam"` so that `peft-ckt eval-libero --policy`
        recognises the folder) and `model.safetensors`."""
        kwargs.setdefault("config", {**self._hub_mixin_config, "type": "wam"})
        result = super().save_pretrained(save_directory, **kwargs)
        _remember_path(self, save_directory)
        return result

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> WorldActionModel:
        """Loads a saved model (folder or Hub id) and remembers where from (peft's `base_model_name_or_path`)."""
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        return _remember_path(model.eval(), pretrained_model_name_or_path)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str = "cpu", **kwargs: Any) -> WorldActionModel:
        # Every weight must be in the file (strict), read from safetensors only (never a pickle).
        hub_kwargs = {
            k: kwargs.pop(k)
            for k in ("revision", "cache_dir", "force_download", "local_files_only", "token", "strict")
            if k in kwargs
        }
        model = cls(**kwargs)
        if os.path.isdir(model_id):
            model_file = os.path.join(model_id, "model.safetensors")
            if not os.path.isfile(model_file):
                raise FileNotFoundError(f"{model_file} not found: not a saved WorldActionModel folder")
        else:
            from huggingface_hub import hf_hub_download

            hub_kwargs.pop("strict", None)
            model_file = hf_hub_download(repo_id=model_id, filename="model.safetensors", **hub_kwargs)
        return cls._load_as_safetensor(model, model_file, map_location, True)

    # ------------------------------------------------------------------ names CKT needs
    @property
    def block_prefix(self) -> str:
        return "backbone.blocks" if self.backbone_type == "wan" else "backbone.transformer_blocks"

    @property
    def num_layers(self) -> int:
        return len(self.backbone.blocks if self.backbone_type == "wan" else self.backbone.transformer_blocks)

    def middle_layer(self) -> str:
        """Dotted path of the middle block (the paper's teacher layer l* = L/2)."""
        return f"{self.block_prefix}.{self.num_layers // 2 - 1}"

    @property
    def device(self) -> torch.device:
        return self.text_position.device

    # ------------------------------------------------------------------ encoding
    def embed_instruction(self, instruction_ids: torch.Tensor) -> torch.Tensor:
        """`[B, L]` word ids -> text embeddings `encoder_hidden_states [B, L, text_dim]`."""
        return self.text_norm(self.text_embedding(instruction_ids) + self.text_position[: instruction_ids.shape[1]])

    def tokenize(self, instructions: list[str]) -> torch.Tensor:
        return self.tokenizer(instructions).to(self.device)

    def _normalised(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, 3, S, S]` in [0, 1] (or uint8 `[B, S, S, 3]`) -> `[B, 3, S, S]` normalised per colour."""
        if images.dtype == torch.uint8:
            images = images.permute(0, 3, 1, 2).float().div(255.0)
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="area")
        return (images - self.image_mean.view(1, 3, 1, 1)) / self.image_std.view(1, 3, 1, 1)

    def image_latent(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, 3, S, S]` in [0, 1] (or uint8 `[B, S, S, 3]`) -> normalised `[B, C, h, w]`."""
        return F.pixel_unshuffle(self._normalised(images), self.pixel_block)

    def image_from_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Inverse of `image_latent`: `[B, C, h, w]` -> `[B, 3, S, S]` in [0, 1]."""
        return self._pixels(F.pixel_shuffle(latent, self.pixel_block))

    def _pixels(self, normalised: torch.Tensor) -> torch.Tensor:
        return (normalised * self.image_std.view(1, 3, 1, 1) + self.image_mean.view(1, 3, 1, 1)).clamp(0.0, 1.0)

    def future_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The generated future view: `[B, 3, S, S]` in [0, 1] (or uint8 `[B, S, S, 3]`) -> `[B, n_tokens,
        future_dim]`, the image latent average-pooled by `future_pool` (its space-to-depth by
        `pixel_block / future_pool`)."""
        pooled = F.avg_pool2d(self._normalised(images), self.future_pool)
        folded = F.pixel_unshuffle(pooled, self.pixel_block // self.future_pool)
        return folded.flatten(2).transpose(1, 2)

    def future_image(self, tokens: torch.Tensor, current: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Inverse of `future_tokens`: `[B, n_tokens, future_dim]` -> `[B, 3, S', S']` in [0, 1], `S' = S /
        future_pool`. With `current` (the current agent view, as `future_tokens` takes it) the tokens are read as
        the change from it (`future_residual`)."""
        if current is not None:
            tokens = tokens + self.future_tokens(current)
        folded = tokens.transpose(1, 2).reshape(tokens.shape[0], self.future_dim, self.latent_side, self.latent_side)
        return self._pixels(F.pixel_shuffle(folded, self.pixel_block // self.future_pool))

    def _tile(self, values: torch.Tensor) -> torch.Tensor:
        """`[B, n_tokens, D]` -> `[B, C, h, w]`: each token's D values repeated over its C channels."""
        batch, tokens, dim = values.shape
        repeats = math.ceil(self.latent_channels / dim)
        channels = values.repeat(1, 1, repeats)[..., : self.latent_channels]
        return channels.transpose(1, 2).reshape(batch, self.latent_channels, self.latent_side, self.latent_side)

    def _untile(self, frame: torch.Tensor, dim: int) -> torch.Tensor:
        """Inverse of `_tile`: the mean over the repeats of each value, `[B, n_tokens, D]`."""
        batch = frame.shape[0]
        tokens = frame.reshape(batch, self.latent_channels, -1).transpose(1, 2)
        repeats = self.latent_channels // dim
        return tokens[..., : repeats * dim].reshape(batch, -1, repeats, dim).mean(dim=2)

    def state_frame(self, state: torch.Tensor) -> torch.Tensor:
        """`[B, 8]` -> `[B, C, h, w]` (normalised, the same on every token)."""
        normalised = (state - self.state_mean) / self.state_std
        return self._tile(normalised[:, None].expand(-1, self.tokens_per_frame, -1))

    def _normalised_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def action_frame(self, actions: torch.Tensor) -> torch.Tensor:
        """`[B, chunk, 7]` -> `[B, C, h, w]` (normalised; step i on token i)."""
        return self._tile(self._normalised_actions(actions))

    def actions_from_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """`[B, C, h, w]` -> `[B, chunk, 7]` actions in [-1, 1], the gripper snapped to {-1, 1}."""
        return self._actions(self._untile(frame, ACTION_DIM))

    def _actions(self, normalised: torch.Tensor) -> torch.Tensor:
        actions = (normalised * self.action_std + self.action_mean).clamp(-1.0, 1.0)
        gripper = torch.where(actions[..., 6:] >= 0, 1.0, -1.0)
        return torch.cat([actions[..., :6], gripper], dim=-1)

    def condition_latents(self, batch: dict[str, Any]) -> torch.Tensor:
        """Frames 0-2 from a batch: `[B, C, 3, h, w]`."""
        frames = [
            self.image_latent(batch["observation.images.image"]),
            self.image_latent(batch["observation.images.wrist_image"]),
            self.state_frame(batch["observation.state"]),
        ]
        return torch.stack(frames, dim=2)

    # ------------------------------------------------------------------ generated tokens <-> frames
    def generated_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """What is generated, from a training batch: `[B, n_tokens, 7 + future_dim]` (the normalised action chunk,
        one step per token, beside the pooled future view, or its change from the current view with
        `future_residual`)."""
        actions = self._normalised_actions(batch["action"])
        future = self.future_tokens(batch["future.images.image"])
        if self.future_residual:
            future = future - self.future_tokens(batch["observation.images.image"])
        return torch.cat([actions, future], dim=-1)

    def generated_frames(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, n_tokens, 7 + future_dim]` -> frames 3-4 `[B, C, 2, h, w]` (each part tiled over the channels)."""
        return torch.stack([self._tile(tokens[..., :ACTION_DIM]), self._tile(tokens[..., ACTION_DIM:])], dim=2)

    def read_generated(self, frames: torch.Tensor) -> torch.Tensor:
        """Inverse of `generated_frames` on the backbone's output: `[B, C, T, h, w]` (its frames 3-4) ->
        `[B, n_tokens, 7 + future_dim]`, the mean over each value's repeats."""
        return torch.cat(
            [
                self._untile(frames[:, :, ACTION_FRAME], ACTION_DIM),
                self._untile(frames[:, :, FUTURE_FRAME], self.future_dim),
            ],
            dim=-1,
        )

    def noise_shape(self, batch_size: int) -> tuple[int, int, int]:
        """Shape of the noise `sample` starts from: `(B, n_tokens, 7 + future_dim)`."""
        return batch_size, self.tokens_per_frame, self.generated_dim

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        instruction_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Velocity of every frame.

        Args:
            hidden_states: `[B, C, T=5, h, w]` latent video (condition frames clean, generated frames noisy).
            timestep: `[B]` noise level in [0, 1] of the generated frames (the condition frames are clean; the
                model tells them apart by their position).
            encoder_hidden_states: `[B, L, text_dim]` text embeddings (`embed_instruction`), or
            instruction_ids: `[B, L]` word ids, embedded here.

        Returns:
            `[B, C, T, h, w]` the predicted clean frames `x_0`, or the velocity `e - x_0` with
            `prediction_type="velocity"` (only the generated frames are trained).
        """
        if encoder_hidden_states is None:
            if instruction_ids is None:
                raise ValueError("Pass encoder_hidden_states [B, L, text_dim] or instruction_ids [B, L]")
            encoder_hidden_states = self.embed_instruction(instruction_ids)
        # One noise level per sample: per-frame levels (Cosmos' [B, 1, T, 1, 1], Wan2.2's per-token form) cost
        # 1.5x more on CPU here, for adaptive norms computed per token instead of per sample.
        return self.backbone(hidden_states, timestep * TIMESTEP_SCALE, encoder_hidden_states, return_dict=False)[0]

    def teacher_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Forward kwargs when this model serves as a CKT teacher: the observation, the generated frames at the
        noise mean (zeros) and noise level 1, the instruction as word ids. Deterministic, one call per observation.
        """
        condition = self.condition_latents(batch)
        zeros = torch.zeros_like(condition[:, :, :2])
        batch_size = condition.shape[0]
        return {
            "hidden_states": torch.cat([condition, zeros], dim=2),
            "timestep": torch.ones(batch_size, device=condition.device),
            "instruction_ids": self.tokenize(list(batch["task"])),
        }

    def student_inputs(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Condition frames and text embeddings of a batch (what `loss` and `sample` need besides the noise)."""
        return {
            "condition": self.condition_latents(batch),
            "encoder_hidden_states": self.embed_instruction(self.tokenize(list(batch["task"]))),
        }


def flow_matching_loss(
    model: nn.Module, wam: WorldActionModel, batch: dict[str, Any], generator: Optional[torch.Generator] = None, **ckt
) -> dict[str, torch.Tensor]:
    """Rectified-flow loss of the generated frames; `model` is the WAM itself or a peft model around it.

    Returns `{"loss", "action_loss", "future_loss"}` (the loss adds `future_loss_weight * future_loss`).
    """
    inputs = wam.student_inputs(batch)
    condition = inputs["condition"]
    target = wam.generated_tokens(batch)
    batch_size = condition.shape[0]
    noise = torch.randn(target.shape, generator=generator, device=target.device)
    # Logit-normal noise levels (as in SD3 / Cosmos): more weight on the middle of the path.
    t = torch.sigmoid(torch.randn(batch_size, generator=generator, device=target.device)).view(-1, 1, 1)
    noisy = (1 - t) * target + t * noise
    out = model(
        hidden_states=torch.cat([condition, wam.generated_frames(noisy)], dim=2),
        timestep=t.view(-1),
        encoder_hidden_states=inputs["encoder_hidden_states"],
        **ckt,
    )
    # Rectified flow either way; with `prediction_type="sample"` the error is measured on x_0, which is the velocity
    # error weighted by t^2 (finite as t -> 0, where a velocity derived from x_0 would divide by t).
    truth = target if wam.prediction_type == "sample" else noise - target
    errors = (wam.read_generated(out.float()) - truth.float()).pow(2)
    action_loss, future_loss = errors[..., :ACTION_DIM].mean(), errors[..., ACTION_DIM:].mean()
    return {
        "loss": action_loss + wam.future_loss_weight * future_loss,
        "action_loss": action_loss,
        "future_loss": future_loss,
    }


@torch.no_grad()
def sample(
    model: nn.Module,
    wam: WorldActionModel,
    batch: dict[str, Any],
    num_steps: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    initial_noise: Optional[torch.Tensor] = None,
    **ckt,
) -> dict[str, torch.Tensor]:
    """Euler sampling of the generated tokens from noise (t = 1) to data (t = 0).

    `ckt` is passed to every step, e.g. `ckt_context=peft_model.encode_teacher(...)`: computed once, reused for
    every denoising step. `initial_noise` has `wam.noise_shape(B)`. Returns `{"actions" [B, chunk, 7],
    "future_image" [B, 3, S', S'], "latents" [B, n_tokens, 7 + future_dim]}` (`S' = S / future_pool`).
    """
    inputs = wam.student_inputs(batch)
    condition = inputs["condition"]
    shape = wam.noise_shape(condition.shape[0])
    x = initial_noise if initial_noise is not None else torch.randn(shape, generator=generator)
    x = x.to(condition.device)
    steps = num_steps or wam.num_inference_steps
    levels = torch.linspace(1.0, 0.0, steps + 1, device=condition.device)
    for i in range(steps):
        t = levels[i].expand(shape[0])
        out = model(
            hidden_states=torch.cat([condition, wam.generated_frames(x)], dim=2),
            timestep=t,
            encoder_hidden_states=inputs["encoder_hidden_states"],
            **ckt,
        )
        predicted = wam.read_generated(out)
        if wam.prediction_type == "sample":
            # The velocity the predicted x_0 implies at x_t: (x_t - x_0) / t (t > 0 at every step taken).
            predicted = (x - predicted) / levels[i]
        x = x + (levels[i + 1] - levels[i]) * predicted
    return {
        "actions": wam._actions(x[..., :ACTION_DIM]),
        "future_image": wam.future_image(
            x[..., ACTION_DIM:], batch["observation.images.image"] if wam.future_residual else None
        ),
        "latents": x,
    }


def _remember_path(model: WorldActionModel, path: Any) -> WorldActionModel:
    # peft records `name_or_path` as the adapter's base model, and CKT as the teacher reference.
    if os.path.isdir(str(path)):
        path = os.path.abspath(str(path))
    model.name_or_path = str(path)
    return model
