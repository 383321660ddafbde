"""The CKT adapter bank: adapter branches with learnable-query cross-attention, a router, sparse experts.

Shapes: `B` batch, `N` teacher tokens, `K` query tokens, `M` experts, `k` experts per sample, `d_t` teacher width,
`d_b` bottleneck width, `d_s` student (conditioning) width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .config import CKTConfig


@dataclass
class CKTContext:
    """The context the adapter bank computes from teacher features, ready to be injected into the student.

    Attributes:
        tokens (`torch.Tensor` `[B, 2K(+1), d_s]`):
            `[<SEP> ; C_g ; C_s]` for "append", `[C_g ; C_s ; <SEP>]` for "prepend" (no `<SEP>` when disabled; `K`
            tokens fewer when an ablation drops `C_g` or `C_s`).
        router_probs (`torch.Tensor` `[B, M]`, fp32): router probabilities (after noise, before top-k).
        topk_indices (`torch.Tensor` `[B, k]`): selected specialized adapters per sample.
        topk_weights (`torch.Tensor` `[B, k]`, fp32): their gates, renormalised to sum to 1 per sample (see
            [`CKTRouter`]; with `k=1` the value is 1 and the gradient flows to the router probability).
        load_balance_loss (`torch.Tensor` scalar, fp32): unweighted `L_bal = M * sum_m f_m * P_m`.
    """

    tokens: torch.Tensor
    router_probs: torch.Tensor
    topk_indices: torch.Tensor
    topk_weights: torch.Tensor
    load_balance_loss: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def expert_share(self) -> torch.Tensor:
        """`[M]` share of the batch whose top-1 specialized adapter is each expert (fp32)."""
        num_experts = self.router_probs.shape[-1]
        if num_experts == 0:  # no specialized adapters (ablation)
            return self.router_probs.new_zeros(0)
        return F.one_hot(self.topk_indices[:, 0], num_experts).float().mean(0)


class LearnableQueryCrossAttention(nn.Module):
    """K learned queries attend over N tokens: `[B, N, d] -> [B, K, d]` (residual with the queries, LayerNorm).

    Two exact ways to compute the same attention; the cheaper one for the shapes at hand is used:

    - *projected*: keys and values `[B, N, d]` are projected, then `scaled_dot_product_attention` (cost per token
      `~2 d^2`);
    - *absorbed*: the queries do not depend on the sample, so the key projection is folded into them once per call
      (`q_h . W_k,h x = (W_k,h^T q_h) . x`) and the value projection is applied after pooling
      (`softmax @ (W_v,h x + b_v,h) = W_v,h (softmax @ x) + b_v,h`, rows of the softmax sum to 1). Keys and values
      are never formed: cost per token `~2 h K d` instead of `~2 d^2`. At the paper's sizes (d=2048, 8 heads, K=32) that is 8x fewer FLOPs and no `[B, N, d]` key/value activations.

    In training, `dropout` zeroes attention weights (as `nn.MultiheadAttention(dropout=...)` does): one mask
    `[B, h, K, N]` is drawn per call and both forms apply it, so they stay equal. The dropped rows no longer sum
    to 1, so the absorbed form then adds the value bias scaled by each row's sum instead of once.

    The key projection has no bias: a key bias `b_k` adds `q_h . b_k,h` to every logit of a query, the same for all
    tokens, which the softmax cancels (its gradient is 0 up to rounding, ~1e-11). Adapters saved while it existed
    load with the same outputs: the ignored tensor is dropped on load (and by the conversion of the authors'
    checkpoints, `peft_ckt.upstream`).
    """

    def __init__(self, hidden_size: int, num_queries: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden size {hidden_size} is not divisible by num_attention_heads={num_heads}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"attention dropout must be in [0, 1), got {dropout}.")
        self.num_heads = num_heads
        self.dropout = dropout
        self.queries = nn.Parameter(torch.randn(num_queries, hidden_size) * hidden_size**-0.5)
        self.to_q = nn.Linear(hidden_size, hidden_size)
        self.to_k = nn.Linear(hidden_size, hidden_size, bias=False)  # a key bias cancels (see the docstring)
        self.to_v = nn.Linear(hidden_size, hidden_size)
        self.to_out = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size)
        self.register_load_state_dict_pre_hook(_drop_key_bias)

    def uses_absorbed_attention(self, num_tokens: int) -> bool:
        """Whether the absorbed form needs fewer FLOPs than the projected one for `num_tokens` tokens per sample."""
        num_queries, hidden = self.queries.shape
        # per sample, absorbed: logits + pooling (2 h K d per token), value projection after pooling (K d^2),
        # folding W_k into the queries (K d^2 per call, counted per sample: the batch may be 1);
        # projected: key + value projections (2 d^2 per token). Independent of the batch, so torch.compile never
        # guards on a data-dependent batch size.
        absorbed = 2 * self.num_heads * num_queries * hidden * num_tokens + 2 * num_queries * hidden**2
        return absorbed < 2 * hidden**2 * num_tokens

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`tokens [B, N, d]` -> `[B, K, d]`."""
        num_tokens = tokens.shape[1]
        # The queries do not depend on the sample: project them once per call and broadcast over the batch.
        query = self.to_q(self.queries)  # [K, d]
        keep = self.dropout_mask(tokens) if self.training and self.dropout > 0 else None
        if self.uses_absorbed_attention(num_tokens):
            attended = self._attend_absorbed(query, tokens, keep)
        else:
            attended = self._attend_projected(query, tokens, keep)
        return self.norm(self.queries + self.to_out(attended))

    def dropout_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """A fresh attention-dropout mask for `tokens [B, N, d]`: `[B, h, K, N]` bool, True where a weight is kept."""
        batch, num_tokens = tokens.shape[:2]
        shape = (batch, self.num_heads, self.queries.shape[0], num_tokens)
        return torch.rand(shape, device=tokens.device) >= self.dropout

    def _drop(self, probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Inverted dropout of attention weights with a given mask (same shape as `probs`)."""
        return probs * keep.to(probs.dtype) * (1.0 / (1.0 - self.dropout))

    def _attend_projected(
        self, query: torch.Tensor, tokens: torch.Tensor, keep: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """`query [K, d]`, `tokens [B, N, d]` -> attended values `[B, K, d]` (before `to_out`). `keep [B, h, K, N]`:
        attention-dropout mask (see [`dropout_mask`]), None for no dropout."""
        # Explicit sizes (no -1): a batch of 0 samples stays valid, and torch.compile can trace symbolic batches.
        batch, num_tokens, hidden = tokens.shape
        num_queries, heads = query.shape[0], self.num_heads
        head_dim = hidden // heads
        query = query.view(1, num_queries, heads, head_dim).transpose(1, 2)  # [1, h, K, d/h]
        key = self.to_k(tokens).view(batch, num_tokens, heads, head_dim).transpose(1, 2)  # [B, h, N, d/h]
        value = self.to_v(tokens).view(batch, num_tokens, heads, head_dim).transpose(1, 2)
        query = query.expand(batch, heads, num_queries, head_dim)
        if keep is None:
            attended = F.scaled_dot_product_attention(query, key, value)
        else:
            # SDPA's own dropout draws a mask the absorbed form could not reproduce: spell the attention out.
            logits = torch.matmul(query, key.transpose(-2, -1)) * head_dim**-0.5  # [B, h, K, N]
            probs = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(logits.dtype)
            attended = torch.matmul(self._drop(probs, keep), value)  # [B, h, K, d/h]
        return attended.transpose(1, 2).reshape(batch, num_queries, hidden)

    def _attend_absorbed(
        self, query: torch.Tensor, tokens: torch.Tensor, keep: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """Same result as [`_attend_projected`] without forming keys and values (see the class docstring)."""
        batch, num_tokens, hidden = tokens.shape
        num_queries, heads = query.shape[0], self.num_heads
        head_dim = hidden // heads
        query = query.view(num_queries, heads, head_dim).transpose(0, 1)  # [h, K, d/h]
        key_weight = self.to_k.weight.view(heads, head_dim, hidden)  # rows of W_k, per head
        scale = head_dim**-0.5
        folded = torch.matmul(query, key_weight) * scale  # [h, K, d]: W_k,h^T q_h, scaled
        folded = folded.reshape(heads * num_queries, hidden)
        # One GEMM over all B*N tokens, then [B, h*K, N] so that the softmax and the pooling run on contiguous rows.
        logits = torch.matmul(tokens, folded.t()).transpose(1, 2)  # [B, h*K, N]
        # softmax in (at least) fp32 whatever the compute dtype (bf16 autocast), like the fused attention kernels
        probs = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(logits.dtype)
        if keep is not None:
            probs = self._drop(probs, keep.reshape(batch, heads * num_queries, num_tokens))
        pooled = torch.bmm(probs, tokens)  # [B, h*K, d]: softmax @ x
        # value projection per head as one batched GEMM over heads: [h, B*K, d] @ [h, d, d/h]
        pooled = pooled.view(batch, heads, num_queries, hidden).transpose(0, 1)
        pooled = pooled.reshape(heads, batch * num_queries, hidden)
        value_weight = self.to_v.weight.view(heads, head_dim, hidden)
        attended = torch.bmm(pooled, value_weight.transpose(1, 2))  # [h, B*K, d/h]
        attended = attended.view(heads, batch, num_queries, head_dim).permute(1, 2, 0, 3)  # [B, K, h, d/h]
        value_bias = self.to_v.bias.to(attended.dtype)
        if keep is None:  # rows of the softmax sum to 1: the value bias passes through once
            return attended.reshape(batch, num_queries, hidden) + value_bias
        # dropped rows sum to anything: each (query, head) gets the value bias times its row sum
        row_sums = probs.sum(-1).view(batch, heads, num_queries).transpose(1, 2)  # [B, K, h]
        attended = attended + row_sums[..., None] * value_bias.view(heads, head_dim)
        return attended.reshape(batch, num_queries, hidden)


def _drop_key_bias(
    module: LearnableQueryCrossAttention, state_dict: dict, prefix: str, local_metadata: dict, strict: bool, *args: Any
) -> None:
    """Reads adapters saved while the key projection had a bias: that bias added the same value to every logit of
    a query, which the softmax cancels, so dropping it leaves the outputs as they were."""
    state_dict.pop(prefix + "to_k.bias", None)


class CKTBranch(nn.Module):
    """One adapter branch ("expert"): bottleneck MLP to the student width, then learnable-query cross-attention.

    `[B, N, d_t] -> [B, K, d_s]`.
    """

    def __init__(
        self,
        teacher_hidden_size: int,
        student_hidden_size: int,
        bottleneck_dim: int,
        num_context_tokens: int,
        num_attention_heads: int,
        dropout: float,
        attention_dropout: float = 0.0,
    ):
        super().__init__()
        self.down = nn.Linear(teacher_hidden_size, bottleneck_dim)
        self.up = nn.Linear(bottleneck_dim, student_hidden_size)
        self.norm = nn.LayerNorm(student_hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.cross_attention = LearnableQueryCrossAttention(
            student_hidden_size, num_context_tokens, num_attention_heads, dropout=attention_dropout
        )

    def forward(self, teacher_features: torch.Tensor) -> torch.Tensor:
        projected = self.dropout(self.norm(self.up(F.gelu(self.down(teacher_features)))))  # [B, N, d_s]
        return self.cross_attention(projected)  # [B, K, d_s]


class CKTRouter(nn.Module):
    """Routes each sample to its top-k specialized adapters from the mean-pooled teacher tokens.

    In training, Gaussian noise with a learned scale (`softplus` of a parameter of shape `[1]` initialised at 0) is
    added to the logits; with `noise=False` that parameter does not exist. Softmax, top-k and the load-balancing loss
    run in fp32 so that bf16 autocast cannot flip the routing.

    The gate of expert `m` in a sample is its top-k probability renormalised over the k selected experts,
    `g_m = p_m / sum_{j in top-k} p_j`, so the router learns from the task loss through the relative weights of the
    selected experts. With `top_k=1` that ratio is always 1 and would pass no gradient, so the gate is computed
    straight-through as `p_m / sg(p_m)` (`sg`: stop-gradient): its value stays exactly 1 (the paper's renormalised
    weight), its gradient is that of `log p_m`, as for a Switch-style gate `p_m` up to the factor `1 / p_m`.
    """

    def __init__(self, teacher_hidden_size: int, hidden_dim: int, num_experts: int, top_k: int, noise: bool):
        super().__init__()
        self.top_k = top_k
        self.noise = noise
        self.mlp = nn.Sequential(
            nn.Linear(teacher_hidden_size, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, num_experts)
        )
        # Shape [1], not a scalar: FSDP refuses 0-dim parameters.
        self.noise_scale = nn.Parameter(torch.zeros(1)) if noise else None
        self.register_load_state_dict_pre_hook(_load_noise_scale)

    def forward(self, teacher_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`[B, N, d_t]` -> `probs [B, M]` (fp32), `topk_indices [B, k]`, `topk_weights [B, k]` (fp32)."""
        logits = self.mlp(teacher_features.mean(dim=1)).float()
        if self.training and self.noise_scale is not None:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise_scale.float())
        probs = logits.softmax(dim=-1)
        topk_probs, topk_indices = probs.topk(self.top_k, dim=-1)
        if self.top_k == 1:
            topk_weights = topk_probs / topk_probs.detach()  # exactly 1, gradient of log p (see the class docstring)
        else:
            topk_weights = topk_probs / topk_probs.sum(dim=-1, keepdim=True)
        return probs, topk_indices, topk_weights


def _load_noise_scale(
    module: CKTRouter, state_dict: dict, prefix: str, local_metadata: dict, strict: bool, *args: Any
) -> None:
    """Reads checkpoints written before `noise_scale` had shape `[1]` (a 0-dim tensor then), and drops the scale of
    checkpoints saved with noise when this router has none (it never affected their outputs)."""
    key = prefix + "noise_scale"
    if key not in state_dict:
        return
    if module.noise_scale is None:
        state_dict.pop(key)
    elif state_dict[key].ndim == 0:
        state_dict[key] = state_dict[key].reshape(1)


def load_balance_loss(router_probs: torch.Tensor, topk_indices: torch.Tensor) -> torch.Tensor:
    """`L_bal = M * sum_m f_m * P_m` with `f_m` the share of samples whose top-1 expert is `m` and `P_m` the mean
    router probability of `m`. Uniform routing gives 1."""
    num_experts = router_probs.shape[-1]
    top1_share = F.one_hot(topk_indices[:, 0], num_experts).float().mean(0)  # f [M]
    mean_probs = router_probs.float().mean(0)  # P [M]
    return num_experts * (top1_share * mean_probs).sum()


class CKTAdapterBank(nn.Module):
    """Everything one CKT adapter trains: the generalized adapter, the router, M specialized adapters, `<SEP>`.

    `bank(H_T [B, N, d_t]) -> CKTContext` with `tokens [B, 2K(+1), d_s]`. The paper's ablations drop a part:
    without the generalized adapter (`use_generalized_adapter=False`) or without the router and the specialized
    adapters (`use_specialized_adapters=False`, then `router_probs` and the top-k are `[B, 0]` and `L_bal` is 0), the
    context has K tokens (+1).
    """

    def __init__(self, config: CKTConfig, teacher_hidden_size: int, student_hidden_size: int):
        super().__init__()
        self.teacher_hidden_size = teacher_hidden_size
        self.student_hidden_size = student_hidden_size
        self.injection = config.injection
        self.num_experts = config.num_experts
        self.zero_idle_expert_grads = getattr(config, "zero_idle_expert_grads", False)

        def branch() -> CKTBranch:
            return CKTBranch(
                teacher_hidden_size,
                student_hidden_size,
                config.bottleneck_dim,
                config.num_context_tokens,
                config.num_attention_heads,
                config.adapter_dropout,
                config.attention_dropout,
            )

        # Ablated parts do not exist at all (no parameters, nothing saved), rather than being skipped.
        self.generalized = branch() if config.use_generalized_adapter else None
        if config.use_specialized_adapters:
            self.router = CKTRouter(
                teacher_hidden_size, config.router_hidden_dim, config.num_experts, config.top_k, config.router_noise
            )
            self.specialized = nn.ModuleList(branch() for _ in range(config.num_experts))
        else:
            self.router = None
            self.specialized = nn.ModuleList()
        self.separator = (
            nn.Parameter(torch.randn(1, student_hidden_size) * student_hidden_size**-0.5)
            if config.use_separator
            else None
        )

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the bank's weights (the dtype teacher features are cast to)."""
        return self._first_weight().dtype

    @property
    def device(self) -> torch.device:
        """Device of the bank's weights."""
        return self._first_weight().device

    def _first_weight(self) -> torch.Tensor:
        branch = self.generalized if self.generalized is not None else self.specialized[0]
        return branch.down.weight

    def _specialized_sparse(
        self, teacher_features: torch.Tensor, topk_indices: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor:
        """Runs each specialized adapter only on the samples routed to it (grouped by expert), `[B, K, d_s]`.

        Exactly one host-device sync per call: the group sizes, which the experts' kernels need to be launched
        with the right shapes (a sync-free dispatch would have to run every expert on a fixed capacity, i.e.
        dense work, or stack all M experts' weights per call). The bank runs once per observation (not per
        denoising step); the sync drains the queued work up to the router, and costs one kernel-launch gap before
        the experts' kernels are queued again.
        Under `torch.compile` the sizes become symbolic (set `torch._dynamo.config.capture_scalar_outputs = True`
        for a single graph); experts with no sample then run on 0 rows instead of being skipped.
        """
        batch, top_k = topk_indices.shape
        flat_experts = topk_indices.reshape(-1)  # [B*k], slot i belongs to sample i // k
        order = flat_experts.argsort(stable=True)
        sample_of_slot = order // top_k  # [B*k] samples, grouped by expert
        weight_of_slot = topk_weights.reshape(-1)[order]
        # Counting by comparison (not bincount, whose output size depends on the data and syncs on CUDA).
        expert_ids = torch.arange(self.num_experts, device=flat_experts.device)
        counts = (flat_experts[:, None] == expert_ids).sum(0).tolist()  # the one host sync
        compiling = torch.compiler.is_compiling()
        outputs = []
        idle_terms = []
        start = 0
        for expert, count in zip(self.specialized, counts):
            if compiling:
                torch._check(count >= 0)
                torch._check(count <= batch)
            elif not count:
                # Idle experts do not run (and get no gradient); optionally a zero one, so that every expert's
                # `.grad` is a tensor as in the authors' dense code.
                if self.zero_idle_expert_grads and torch.is_grad_enabled():
                    idle_terms.extend(p.sum() * 0 for p in expert.parameters() if p.requires_grad)
                continue
            rows = sample_of_slot.narrow(0, start, count)
            outputs.append(expert(teacher_features.index_select(0, rows)))
            start += count
        grouped = torch.cat(outputs, dim=0)  # [B*k, K, d_s] in expert order
        grouped = grouped * weight_of_slot.to(grouped.dtype)[:, None, None]
        combined = grouped.new_zeros(batch, *grouped.shape[1:])
        combined = combined.index_add(0, sample_of_slot, grouped)
        if idle_terms:
            combined = combined + torch.stack(idle_terms).sum().to(combined.dtype)
        return combined

    def _specialized_dense(
        self, teacher_features: torch.Tensor, topk_indices: torch.Tensor, topk_weights: torch.Tensor
    ) -> torch.Tensor:
        """Reference only (benchmarks): runs all M experts on every sample, then keeps the top-k, `[B, K, d_s]`."""
        every = torch.stack([expert(teacher_features) for expert in self.specialized], dim=1)  # [B, M, K, d_s]
        picked = every.gather(1, topk_indices[:, :, None, None].expand(-1, -1, *every.shape[2:]))  # [B, k, K, d_s]
        return (picked * topk_weights.to(picked.dtype)[:, :, None, None]).sum(1)

    def forward(self, teacher_features: torch.Tensor, dense: bool = False) -> CKTContext:
        """`teacher_features [B, N, d_t]` -> [`CKTContext`]. `dense=True` is a reference mode for benchmarks."""
        if teacher_features.ndim != 3:
            raise ValueError(f"teacher features must be [B, N, d_t], got shape {tuple(teacher_features.shape)}.")
        if teacher_features.shape[-1] != self.teacher_hidden_size:
            raise ValueError(
                f"The teacher layer produced features of width {teacher_features.shape[-1]}, but the CKT adapter "
                f"bank expects teacher_hidden_size={self.teacher_hidden_size}."
            )
        parts = []
        if self.generalized is not None:
            parts.append(self.generalized(teacher_features))  # C_g [B, K, d_s]
        if self.router is not None:
            probs, topk_indices, topk_weights = self.router(teacher_features)
            specialize = self._specialized_dense if dense else self._specialized_sparse
            parts.append(specialize(teacher_features, topk_indices, topk_weights))  # C_s [B, K, d_s]
            balance = load_balance_loss(probs, topk_indices)
        else:  # generalized adapter only: no routing, nothing to balance
            batch, device = teacher_features.shape[0], teacher_features.device
            probs = topk_weights = torch.zeros(batch, 0, device=device)
            topk_indices = torch.zeros(batch, 0, dtype=torch.long, device=device)
            balance = torch.zeros((), device=device)
        dtype = parts[0].dtype
        parts = [part.to(dtype) for part in parts]
        if self.separator is not None:
            separator = self.separator.to(dtype).expand(teacher_features.shape[0], 1, -1)
            parts = [separator, *parts] if self.injection == "append" else [*parts, separator]
        return CKTContext(
            tokens=torch.cat(parts, dim=1),
            router_probs=probs,
            topk_indices=topk_indices,
            topk_weights=topk_weights,
            load_balance_loss=balance,
        )


MERGE_ERROR = (
    "CKT adds context tokens to the student's input; it has no weights to merge into the student, so `{method}` is "
    "not supported. Use `unload()` to get the untouched student back, or keep the PeftModel to run with the context."
)


class CKTLayer(nn.Module, BaseTunerLayer):
    """Holds the adapter banks of a student (one per adapter name) so that peft can list, enable, disable, switch
    and delete them like any other tuner layer. It is attached to the student as `ckt` and does not compute
    anything by itself: [`CKTModel`] calls the active bank and injects its context."""

    adapter_layer_names = ("ckt_bank",)
    other_param_names = ()

    def __init__(self) -> None:
        super().__init__()
        self.ckt_bank = nn.ModuleDict()
        self._active_adapter = []
        self._disable_adapters = False
        self.merged_adapters = []
        # Device of the student where each bank was created: banks materialised from a state dict go there.
        self._adapter_devices: dict[str, Optional[torch.device]] = {}

    def update_layer(
        self,
        adapter_name: str,
        config: CKTConfig,
        teacher_hidden_size: int,
        student_hidden_size: int,
        device: Optional[torch.device] = None,
        low_cpu_mem_usage: bool = False,
    ) -> None:
        """Creates the bank `adapter_name` in fp32 on `device`, or on the meta device with `low_cpu_mem_usage=True`
        (no memory, no initialisation: its weights come from a state dict, see
        [`~CKTLayer._move_adapter_to_device_of_base_layer`]). peft's `init_empty_weights` context has the same effect.
        """
        if low_cpu_mem_usage:
            with torch.device("meta"):
                bank = CKTAdapterBank(config, teacher_hidden_size, student_hidden_size)
        else:
            bank = CKTAdapterBank(config, teacher_hidden_size, student_hidden_size)
        on_meta = any(p.device.type == "meta" for p in bank.parameters())
        if not on_meta and device is not None and device.type != "meta":
            bank = bank.to(device)
        self.ckt_bank[adapter_name] = bank
        self._adapter_devices[adapter_name] = device
        # Like peft's other layers: adding an adapter keeps the active one (the first becomes active).
        self.set_adapter(self.active_adapters or [adapter_name])

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: Optional[torch.device] = None) -> None:
        # Called by peft after loading a state dict with `low_cpu_mem_usage=True`: the bank follows the student.
        if adapter_name not in self.ckt_bank:
            return
        bank = self.ckt_bank[adapter_name]
        device = device if device is not None else self._adapter_devices.get(adapter_name)
        if device is None or device.type == "meta" or any(p.device.type == "meta" for p in bank.parameters()):
            return
        self.ckt_bank[adapter_name] = bank.to(device)

    # peft's tuner layers expose `in_features`/`out_features` of the wrapped layer. A CKT bank maps teacher tokens to
    # context tokens for the student, so here they are the widths of the active adapter's bank (the first bank when
    # none is active): `in_features` = d_t (teacher width it reads), `out_features` = d_s (student width it writes).
    def _reference_bank(self) -> CKTAdapterBank:
        for name in [*self.active_adapters, *self.ckt_bank.keys()]:
            if name in self.ckt_bank:
                return self.ckt_bank[name]
        raise AttributeError(f"{type(self).__name__} holds no CKT adapter bank yet: it has no in/out features.")

    @property
    def in_features(self) -> int:
        """d_t: width of the teacher features the (active) adapter bank reads."""
        return self._reference_bank().teacher_hidden_size

    @property
    def out_features(self) -> int:
        """d_s: width of the context tokens the (active) adapter bank adds to the student's conditioning."""
        return self._reference_bank().student_hidden_size

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._adapter_devices.pop(adapter_name, None)

    # The layer wraps no base layer: without these, peft's `weight`/`bias` properties look for them on the layer
    # itself and recurse forever (`hasattr(layer, "weight")` must simply be False).
    @property
    def weight(self) -> torch.Tensor:
        raise AttributeError(f"{type(self).__name__} holds CKT adapter banks only; it has no `weight`.")

    @property
    def bias(self) -> torch.Tensor:
        raise AttributeError(f"{type(self).__name__} holds CKT adapter banks only; it has no `bias`.")

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        raise ValueError(MERGE_ERROR.format(method="merge"))

    def unmerge(self) -> None:
        raise ValueError(MERGE_ERROR.format(method="unmerge"))

    def forward(self, *args, **kwargs):
        raise RuntimeError("CKTLayer holds adapter weights only; the CKT model computes and injects the context.")
