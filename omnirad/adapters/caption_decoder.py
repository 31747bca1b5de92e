"""A small transformer text decoder that writes a caption from the frozen encoder's patch tokens.

It reads what the segmentation decoder reads (the patch tokens of a few blocks, ``model.decoder-
layers``, concatenated on channels), so the feature cache serves both: the tokens are projected to
the decoder's width and become the memory that PyTorch's ``nn.TransformerDecoder`` cross-attends
to. Training is teacher-forced (``forward(tokens, captions)``: logits of each next word); without
captions it decodes greedily, which is what evaluation and prediction call. Only this module's
tensors are trained, so only they leave a site.
"""

from __future__ import annotations

import torch
from torch import nn

from omnirad.adapters.decoder import token_layers
from omnirad.adapters.registry import ADAPTERS, TOKENS, AdapterSpec, ModelRecipe
from omnirad.captions import BOS_ID, EOS_ID
from omnirad.tasks import PAD_ID


class CaptionDecoder(nn.Module):
    """Tokens (B, num_layers * token_dim, h, w) in; next-word logits (B, T-1, V) with captions
    (B, T), else greedily decoded token ids (B, ``max_length``), BOS first, padded after EOS."""

    def __init__(self, token_dim: int, num_layers: int, num_patches: int, vocab_size: int, max_length: int, *,
                 width: int = 128, depth: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.max_length = max_length
        self.memory = nn.Sequential(nn.LayerNorm(token_dim * num_layers), nn.Linear(token_dim * num_layers, width))
        self.memory_position = nn.Parameter(0.02 * torch.randn(1, num_patches, width))
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD_ID)
        self.position = nn.Parameter(0.02 * torch.randn(1, max_length, width))
        layer = nn.TransformerDecoderLayer(width, heads, dim_feedforward=2 * width, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, depth, norm=nn.LayerNorm(width))
        self.output = nn.Linear(width, vocab_size)

    def encode_memory(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) token maps as a sequence (B, h*w, width) with learned positions."""
        sequence = tokens.flatten(2).transpose(1, 2)
        if sequence.shape[1] != self.memory_position.shape[1]:
            raise ValueError(f"caption decoder expects {self.memory_position.shape[1]} patches, got {sequence.shape[1]}")
        return torch.as_tensor(self.memory(sequence)) + self.memory_position

    def next_word_logits(self, memory: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the word after each of ``words`` (B, T), each seeing only those before it."""
        length = words.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=words.device).triu(1)  # True: not seen
        hidden = self.decoder(self.embed(words) + self.position[:, :length], memory, tgt_mask=causal,
                              tgt_is_causal=True, tgt_key_padding_mask=words == PAD_ID)
        return torch.as_tensor(self.output(hidden))

    def forward(self, tokens: torch.Tensor, captions: torch.Tensor | None = None) -> torch.Tensor:
        memory = self.encode_memory(tokens)
        if captions is not None:  # cut to the positions the decoder has
            return self.next_word_logits(memory, captions[:, : min(captions.shape[1] - 1, self.max_length)])
        return self.greedy(memory)

    @torch.no_grad()
    def greedy(self, memory: torch.Tensor) -> torch.Tensor:
        """The most likely next word at every step, until every caption has ended or ``max_length``."""
        words = torch.full((len(memory), 1), BOS_ID, dtype=torch.long, device=memory.device)
        ended = torch.zeros(len(memory), dtype=torch.bool, device=memory.device)
        while words.shape[1] < self.max_length and not bool(ended.all()):
            choice = self.next_word_logits(memory, words)[:, -1].argmax(dim=-1)
            choice = choice.masked_fill(ended, PAD_ID)
            words = torch.cat([words, choice[:, None]], dim=1)
            ended |= choice == EOS_ID
        return nn.functional.pad(words, (0, self.max_length - words.shape[1]), value=PAD_ID)


def new_caption_decoder(recipe: ModelRecipe) -> CaptionDecoder:
    """The caption decoder for the configured encoder blocks, vocabulary and caption length."""
    layers = token_layers(recipe.model, recipe.encoder.depth)
    grid = recipe.encoder.input_size // recipe.encoder.patch_size
    m = recipe.model
    return CaptionDecoder(recipe.encoder.num_features, len(layers), grid * grid, recipe.task.num_outputs,
                          m.caption_length, width=m.caption_width, depth=m.caption_depth, heads=m.caption_heads)


ADAPTERS.add("caption-decoder", AdapterSpec(TOKENS, segmentation=False, captioning=True, build=new_caption_decoder))
