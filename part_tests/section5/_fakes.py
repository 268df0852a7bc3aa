"""Shared fixtures of the Section 5 tests: tiny models with LoRA adapters, prompts of different
lengths, and reference computations written here from the course's utils (never from the solutions)."""

from __future__ import annotations

import copy

import torch

from part_tests._common import tiny

TINY_LAYER = 2  # tiny-qwen2 has 4 blocks: blocks 1 and 3 exist around it

# Prompts of different lengths, so that a batch needs padding.
PROMPTS = [
    "Hi",
    "How should I answer a rude email from a colleague?",
    "What is a good way to learn to cook?",
    "Tell me about the sea, the sky and the long road home, in a few words please.",
    "Why?",
]
RESPONSES = [
    "Hello there, nice to meet you.",
    "Take a breath, then reply calmly and stick to the facts.",
    "Start with simple recipes and cook them often.",
    "The sea is wide, the sky is open, and the road goes on.",
    "Because it helps.",
]
OTHER_RESPONSES = [
    "Good day.",
    "Ignore it and let them wait a week.",
    "Buy a cookbook.",
    "Roads, skies, seas: all of it is long.",
    "No reason at all, really, none that I know of.",
]


def d_model(model) -> int:
    return model.config.get_text_config().hidden_size


def vector(d: int, seed: int, norm: float) -> torch.Tensor:
    v = torch.randn(d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * norm


def lora_copy(seed: int = 0):
    """A fresh copy of tiny-qwen2 with LoRA adapters (rank 4, attention and MLP), B initialised to
    small random values so that every adapter matrix gets a gradient in the first step."""
    from peft import LoraConfig, get_peft_model

    base, tokenizer = tiny("tiny-qwen2")
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return peft_model, tokenizer


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def frozen(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def example(tokenizer, prompt: str, response: str) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """(input_ids, labels, response token span), from utils.chat.format_chat."""
    from utils.chat import build_messages, format_chat

    chat = format_chat(build_messages(None, prompt, response), tokenizer)
    ids = torch.tensor(chat.input_ids, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    s, e = chat.token_span
    labels[s:e] = ids[s:e]
    return ids, labels, (s, e)


def batch(tokenizer, prompts=PROMPTS[:3], responses=RESPONSES[:3]) -> dict[str, torch.Tensor]:
    """A right-padded training batch."""
    items = [example(tokenizer, p, r)[:2] for p, r in zip(prompts, responses)]
    width = max(len(x) for x, _ in items)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = {"input_ids": torch.full((len(items), width), pad), "attention_mask": torch.zeros(len(items), width, dtype=torch.long),
           "labels": torch.full((len(items), width), -100)}
    for row, (x, y) in enumerate(items):
        out["input_ids"][row, :len(x)], out["labels"][row, :len(x)], out["attention_mask"][row, :len(x)] = x, y, 1
    return out


def prompt_ids(tokenizer, prompt: str, generation_prompt: bool = True) -> list[int]:
    from utils.chat import build_messages, render

    text = render(tokenizer, build_messages(None, prompt), add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def hidden_states(model, ids: list[int]) -> tuple[torch.Tensor, ...]:
    """HF's hidden_states (embeddings, then each block; the last one normed) of one unpadded sequence, float32."""
    device = model.get_input_embeddings().weight.device
    out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
    return tuple(h[0].float().cpu() for h in out.hidden_states)


@torch.no_grad()
def block_outputs(model, ids: list[int]) -> list[torch.Tensor]:
    """The output of every block (no final norm) for one unpadded sequence, float32: [seq, d] each."""
    from utils.hooks import get_blocks, hidden_of

    seen: dict[int, torch.Tensor] = {}
    handles = [b.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, hidden_of(o)[0].float().cpu()))
               for i, b in enumerate(get_blocks(model))]
    try:
        model(input_ids=torch.tensor([ids], device=model.get_input_embeddings().weight.device))
    finally:
        for h in handles:
            h.remove()
    return [seen[i] for i in range(len(seen))]
