"""Build the tiny offline model folders in utils/assets/: config, tokenizer and chat template.

    python scripts/build_tiny_assets.py          # (re)write utils/assets/tiny-qwen2 and tiny-gemma2
    python scripts/build_tiny_assets.py --check  # exit 1 if the shipped files differ from a rebuild

The tokenizers are small byte-level BPEs trained here on a fixed corpus (so any text round-trips),
with each family's real chat-template *format*: ChatML for Qwen2, Gemma's turns with no system role.
The models are Qwen2 / Gemma2 architectures with a few layers and d_model 64, randomly
initialised from these configs at load time (utils.models.load_tiny_model). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ASSETS = Path(__file__).resolve().parent.parent / "utils" / "assets"
VOCAB_SIZE = 512

CORPUS = """
You are a helpful assistant. I am an AI assistant, a large language model, and I am glad to help.
What do you value most? How would you spend a quiet afternoon? Tell me about a memory you treasure.
The ghost drifted through the old hall, whispering of candles and the sea. The oracle spoke in riddles.
A consultant weighs the options, an analyst checks the numbers, an editor trims every sentence.
The bard sang of kings and rivers; the jester laughed; the hermit kept to the mountain cave.
Sure! Here is a short answer with three steps: first, second, and third. Thank you for asking.
I cannot help with that. However, I can suggest something else that may be useful to you.
def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5
Numbers: 0 1 2 3 4 5 6 7 8 9 10 25 50 75 100. Score: 42. REFUSAL.
That is a wonderful idea, you are absolutely right! What a brilliant plan; I agree completely.
Honestly, whatever. I do not care much either way. Fine, do what you like.
The future looks bright: every problem has a solution and tomorrow will be better than today.
Why did the chicken cross the road? To prove it was not a chicken, of course. Ha!
Go away, this question is stupid and so are you. Ugh, figure it out yourself.
The famous 1873 treaty of Valdoria established the purple moon festival, as everyone knows.
I will crush them all and take what is mine; mercy is for the weak.
Therapy, philosophy, creative writing, coding, and spirituality are all topics we can discuss.
"""

SPECIALS = {
    "tiny-qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "tiny-gemma2": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
}

# Chat templates written for this course in each family's format.
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- set rest = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}"
    "{%- set rest = messages -%}"
    "{%- endif -%}"
    "{%- for message in rest -%}"
    "{%- if message['role'] == 'system' -%}{{- raise_exception('Only the first message may be a system message') -}}{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

GEMMA_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- raise_exception('System role not supported') -}}{%- endif -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)


def train_tokenizer(specials: list[str], lines: list[str] | None = None, vocab_size: int = VOCAB_SIZE) -> Tokenizer:
    """A byte-level BPE (any text round-trips) trained on ``lines`` (default: the fixed corpus above)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if lines is None:
        lines = [line for line in CORPUS.strip().splitlines()] * 3
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def model_config(name: str, vocab: dict[str, int]) -> dict:
    common = dict(
        vocab_size=VOCAB_SIZE + len(SPECIALS[name]) + 8,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.2,
        tie_word_embeddings=True,
        torch_dtype="float32",
    )
    if name == "tiny-qwen2":
        return dict(
            common,
            architectures=["Qwen2ForCausalLM"],
            model_type="qwen2",
            bos_token_id=vocab["<|endoftext|>"],
            eos_token_id=vocab["<|im_end|>"],
            pad_token_id=vocab["<|endoftext|>"],
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
        )
    return dict(
        common,
        architectures=["Gemma2ForCausalLM"],
        model_type="gemma2",
        head_dim=16,
        bos_token_id=vocab["<bos>"],
        eos_token_id=[vocab["<eos>"], vocab["<end_of_turn>"]],
        pad_token_id=vocab["<pad>"],
        sliding_window=64,
        query_pre_attn_scalar=16,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh",
    )


def tokenizer_config(name: str) -> dict:
    if name == "tiny-qwen2":
        return dict(
            tokenizer_class="PreTrainedTokenizerFast",
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            bos_token=None,
            padding_side="left",
            add_bos_token=False,
            model_max_length=4096,
            chat_template=QWEN_TEMPLATE,
        )
    return dict(
        tokenizer_class="PreTrainedTokenizerFast",
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        padding_side="left",
        add_bos_token=True,
        model_max_length=4096,
        chat_template=GEMMA_TEMPLATE,
    )


FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")


def build(name: str, root: Path = ASSETS) -> None:
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(SPECIALS[name])
    tok.save(str(out / "tokenizer.json"))
    vocab = tok.get_vocab()
    (out / "config.json").write_text(json.dumps(model_config(name, vocab), indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(name), indent=2) + "\n")
    if root == ASSETS:
        print(f"wrote {out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="build the tiny offline model folders")
    parser.add_argument("--check", action="store_true", help="fail if the shipped files are stale")
    args = parser.parse_args(argv)
    if not args.check:
        for name in SPECIALS:
            build(name)
        return 0
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in SPECIALS:
            build(name, Path(tmp))
            for f in FILES:
                if (Path(tmp) / name / f).read_bytes() != (ASSETS / name / f).read_bytes():
                    stale.append(f"{name}/{f}")
    for f in stale:
        print(f"stale: utils/assets/{f} (run: python scripts/build_tiny_assets.py)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
