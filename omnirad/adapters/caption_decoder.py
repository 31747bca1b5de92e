"""A small transformer text decoder that writes a caption from the frozen encoder's patch tokens.

It reads what the segmentation decoder reads (the patch tokens of a few blocks, ``model.decoder-
layers``, concatenated on channels), so the feature cache serves both: the tokens are projected to
the decoder's width and become the memory that PyTorch's ``nn.TransformerDecoder`` cross-attends
to. Training is teacher-forced (``forward(tokens, captions)``: logits of each next word); without
captions it decodes, greedily or with a beam search (``model.caption-beams``), which is what
evaluation and prediction call. Only this module's
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
                 width: int = 128, depth: int = 2, heads: int = 4, dropout: float = 0.1, beams: int = 1) -> None:
        super().__init__()
        self.max_length, self.beams = max_length, beams
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
        return self.greedy(memory) if self.beams == 1 else self.beam_search(memory, self.beams)

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


    @torch.no_grad()
    def beam_search(self, memory: torch.Tensor, beams: int) -> torch.Tensor:
        """The ``beams`` likeliest captions so far kept at every step; of the finished ones, the one
        with the highest mean log-probability per word (a plain sum would favour short captions)."""
        count = len(memory)
        memory = memory.repeat_interleave(beams, dim=0)
        words = torch.full((count * beams, 1), BOS_ID, dtype=torch.long, device=memory.device)
        scores = torch.full((count, beams), float("-inf"), device=memory.device)
        scores[:, 0] = 0.0  # one live beam to start with, so the first step does not pick one word k times
        ended = torch.zeros(count * beams, dtype=torch.bool, device=memory.device)
        lengths = torch.zeros(count * beams, device=memory.device)
        while words.shape[1] < self.max_length and not bool(ended.all()):
            step = self.next_word_logits(memory, words)[:, -1].float().log_softmax(dim=-1)
            step[ended] = float("-inf")
            step[ended, PAD_ID] = 0.0  # a finished caption only pads, at no cost
            vocab = step.shape[1]
            scores, choice = (scores.reshape(-1, 1) + step).reshape(count, beams * vocab).topk(beams, dim=1)
            rows = (torch.arange(count, device=memory.device)[:, None] * beams + choice // vocab).reshape(-1)
            word = (choice % vocab).reshape(-1)
            words = torch.cat([words[rows], word[:, None]], dim=1)
            lengths = lengths[rows] + (~ended[rows]).float()
            ended = ended[rows] | (word == EOS_ID)
        best = (scores / lengths.reshape(count, beams).clamp(min=1)).argmax(dim=1)
        chosen = words.reshape(count, beams, -1)[torch.arange(count, device=memory.device), best]
        return nn.functional.pad(chosen, (0, self.max_length - chosen.shape[1]), value=PAD_ID)


def new_caption_decoder(recipe: ModelRecipe) -> CaptionDecoder:
    """The caption decoder for the configured encoder blocks, vocabulary and caption length."""
    layers = token_layers(recipe.model, recipe.encoder.depth)
    grid = recipe.encoder.input_size // recipe.encoder.patch_size
    m = recipe.model
    return CaptionDecoder(recipe.encoder.num_features, len(layers), grid * grid, recipe.task.num_outputs,
                          m.caption_length, width=m.caption_width, depth=m.caption_depth, heads=m.caption_heads,
                          beams=m.caption_beams)


ADAPTERS.add("caption-decoder", AdapterSpec(TOKENS, segmentation=False, captioning=True, build=new_caption_decoder))
