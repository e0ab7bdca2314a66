"""The Needle model: a pretrained MiniLM encoder and a small pointer decoder (PyTorch).

Only training and export import this module; the engine runs the exported ONNX graphs.

The encoder (all-MiniLM-L6-v2 architecture, 6 layers, d=384) reads the rendered request and
tools (`needle_core.callformat`). The decoder is a stack of pre-norm transformer layers with
causal self-attention over earlier actions and cross-attention to the encoder. Its input at each
step is the previous action (a structural action embedding, or the encoder state of the position
it pointed at) plus the step *kind* the state machine expects. Its output scores the structural
actions and every input position: ``[N_STRUCT + L]`` logits, pointers scored by a bilinear form
``(W_q h) . (W_k e_i) / sqrt(d)``. No vocabulary softmax: that is what made the generative
design slow and bad at copying values (FIELD-NOTES sections 9 and 10).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, BertConfig, BertModel, PretrainedConfig, PreTrainedModel

from needle_core.callformat import (KIND_POS_ALLOWED, KIND_STRUCT_ALLOWED, N_KINDS, N_POS_TYPES, N_STRUCT)


class NeedleConfig(PretrainedConfig):
    model_type = "needle"

    def __init__(self, encoder: dict | None = None, decoder_layers: int = 2, decoder_heads: int = 6,
                 decoder_ffn: int = 1536, max_steps: int = 256, dropout: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder or BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                             intermediate_size=1536).to_dict()
        self.decoder_layers, self.decoder_heads, self.decoder_ffn = decoder_layers, decoder_heads, decoder_ffn
        self.max_steps, self.dropout = max_steps, dropout
        self.n_struct, self.n_kinds = N_STRUCT, N_KINDS

    @property
    def d_model(self) -> int:
        return self.encoder["hidden_size"]


def split_heads(x: torch.Tensor, heads: int, head_dim: int) -> torch.Tensor:
    """(B, T, heads * head_dim) -> (B, heads, T, head_dim)."""
    return x.unflatten(-1, (heads, head_dim)).transpose(1, 2)


def causal_mask(new: int, total: int, device=None) -> torch.Tensor:
    """[new, total] bool: new step i (after ``total - new`` cached ones) sees the cache and the new
    steps up to itself."""
    return torch.arange(total, device=device) <= (torch.arange(new, device=device) + (total - new))[:, None]


class Attention(nn.Module):
    """Multi-head attention with separate projections, so keys/values can be cached and exported."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.scale = self.dh ** -0.5  # a constant, not sqrt(shape): fewer nodes in the exported step graph
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, d) -> (B, h, T, dh)
        return split_heads(x, self.heads, self.dh)

    def kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.k(x)), self.split(self.v(x))

    def forward(self, x, k, v, mask=None, causal=False):
        q = self.split(self.q(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.scale)
        return self.o(out.transpose(1, 2).flatten(2))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn, self.cross_attn = Attention(d, heads), Attention(d, heads)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cross_k, cross_v, cross_mask, past_k=None, past_v=None, self_mask=None):
        """One layer over new steps ``x``; with ``past_k/v`` (cached steps) and ``self_mask`` (which
        of cached + new steps each new step sees) it decodes incrementally."""
        h = self.norm1(x)
        k, v = self.self_attn.kv(h)
        if past_k is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        x = x + self.drop(self.self_attn(h, k, v, mask=self_mask, causal=past_k is None and x.shape[1] > 1))
        x = x + self.drop(self.cross_attn(self.norm2(x), cross_k, cross_v, mask=cross_mask))
        x = x + self.drop(self.ffn(self.norm3(x)))
        return x, k, v


class NeedleForToolCalling(PreTrainedModel):
    config_class = NeedleConfig
    base_model_prefix = "needle"
    main_input_name = "input_ids"

    def __init__(self, config: NeedleConfig):
        super().__init__(config)
        d = config.d_model
        self.encoder = BertModel(BertConfig(**config.encoder), add_pooling_layer=False)
        self.action_embed = nn.Embedding(N_STRUCT + 1, d)  # + BOS
        self.kind_embed = nn.Embedding(N_KINDS, d)
        self.step_embed = nn.Embedding(config.max_steps, d)
        self.pointer_in = nn.Linear(d, d)
        self.layers = nn.ModuleList(DecoderLayer(d, config.decoder_heads, config.decoder_ffn, config.dropout)
                                    for _ in range(config.decoder_layers))
        self.norm = nn.LayerNorm(d)
        self.struct_head = nn.Linear(d, N_STRUCT)
        self.ptr_query, self.ptr_key = nn.Linear(d, d), nn.Linear(d, d)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, BertModel):
            return  # keep pretrained / BERT's own init
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, 0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    # -- pieces shared by training and the exported graphs --
    def encode(self, input_ids, attention_mask):
        """Encoder states and what every decoder step reuses (`decoder_memory`)."""
        enc = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return (enc, *self.decoder_memory(enc))

    def decoder_memory(self, enc):
        """What every decoder step reuses from the encoder states: cross K/V per layer, pointer keys."""
        return [layer.cross_attn.kv(enc) for layer in self.layers], self.ptr_key(enc)

    def step_inputs(self, enc, prev_actions, kinds, steps):
        """Decoder input embeddings: previous action (structural or pointed-at state) + kind + step."""
        is_ptr = prev_actions > N_STRUCT  # BOS == N_STRUCT is structural
        ptr = (prev_actions - N_STRUCT - 1).clamp(min=0)
        gathered = torch.gather(enc, 1, ptr.unsqueeze(-1).expand(-1, -1, self.config.d_model))
        struct = self.action_embed(prev_actions.clamp(max=N_STRUCT))
        x = torch.where(is_ptr.unsqueeze(-1), self.pointer_in(gathered), struct)
        return x + self.kind_embed(kinds) + self.step_embed(steps.clamp(max=self.config.max_steps - 1))

    def scores(self, h, ptr_keys, attention_mask):
        """Logits [B, T, N_STRUCT + L]: structural actions, then input positions (padding masked)."""
        h = self.norm(h)
        struct = self.struct_head(h)
        ptr = torch.matmul(self.ptr_query(h), ptr_keys.transpose(1, 2)) * self.config.d_model ** -0.5
        ptr = ptr.masked_fill(~attention_mask.bool().unsqueeze(1), -1e4)
        return torch.cat([struct, ptr], dim=-1)

    def forward(self, input_ids, attention_mask, prev_actions, kinds, labels=None, pos_type=None):
        """Teacher-forced decoding of whole action sequences.

        ``prev_actions`` are decoder inputs in *input space*: BOS (== N_STRUCT) or a structural
        id, or ``N_STRUCT + 1 + position`` for a pointer; ``labels`` are output actions
        (``< N_STRUCT`` structural, else ``N_STRUCT + position``), -100 for padding. With
        ``pos_type``, logits outside the coarse per-kind masks are removed before the loss.
        """
        enc, cross, ptr_keys = self.encode(input_ids, attention_mask)
        return self.decode_actions(enc, cross, ptr_keys, attention_mask, prev_actions, kinds, labels, pos_type)

    def decode_actions(self, enc, cross, ptr_keys, attention_mask, prev_actions, kinds, labels=None, pos_type=None):
        """Teacher-forced decoder over encoder outputs (`encode`'s, or the ONNX encoder's in finetuning)."""
        steps = torch.arange(prev_actions.shape[1], device=enc.device).expand_as(prev_actions)
        x = self.step_inputs(enc, prev_actions, kinds, steps)
        cross_mask = attention_mask.bool()[:, None, None, :]
        for layer, (ck, cv) in zip(self.layers, cross):
            x, _, _ = layer(x, ck, cv, cross_mask)
        logits = self.scores(x, ptr_keys, attention_mask)
        if pos_type is not None:
            logits = logits.masked_fill(~coarse_mask(kinds, pos_type), -1e4)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return {"loss": loss, "logits": logits}

    def decode_step(self, enc, cross_mask, cross_k, cross_v, ptr_keys, attention_mask, prev_action, kind, step,
                    past_k, past_v):
        """``n`` new steps on top of a KV cache, for a batch; logits of the last step only.

        Inputs are [B, n]: feeding several steps at once lets the engine skip the model for
        actions the state machine forces (one call per real decision). ``cross_k/v`` and
        ``past_k/v`` hold one [B, h, T, dh] tensor per layer (separate graph inputs, so a step
        never copies a stacked cache apart); the new caches come back the same way.
        """
        x = self.step_inputs(enc, prev_action, kind, step)
        n = prev_action.shape[1]
        self_mask = causal_mask(n, past_k[0].shape[2] + n, x.device)
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, cross_k[i], cross_v[i], cross_mask, past_k[i], past_v[i], self_mask)
            new_k.append(k)
            new_v.append(v)
        logits = self.scores(x[:, -1:], ptr_keys, attention_mask)[:, 0]
        return logits, new_k, new_v


def coarse_mask(kinds: torch.Tensor, pos_type: torch.Tensor) -> torch.Tensor:
    """[B, T, N_STRUCT + L] bool: what each step's kind may point at, by position type."""
    struct_ok = torch.as_tensor(KIND_STRUCT_ALLOWED, device=kinds.device)[kinds]
    pos_table = torch.as_tensor(KIND_POS_ALLOWED, device=kinds.device)  # [N_KINDS, N_POS_TYPES]
    pos_ok = pos_table[kinds.unsqueeze(-1), pos_type.unsqueeze(1)]  # [B, T, L]
    return torch.cat([struct_ok, pos_ok], dim=-1)


AutoConfig.register("needle", NeedleConfig)
AutoModel.register(NeedleConfig, NeedleForToolCalling)

__all__ = ["NeedleConfig", "NeedleForToolCalling", "coarse_mask", "N_POS_TYPES"]
