"""Tiny random models with locally trained tokenizers: the smoke profile's "models".

Built with ``from_config`` and a few-hundred-token BPE trained on a fixed corpus, so the whole
pipeline (data -> GKD -> GRPO -> cross-tokenizer -> report) runs in minutes with no download.
Names: ``tiny-qwen2-student`` / ``tiny-qwen2-teacher`` (one shared ByteLevel tokenizer),
``tiny-llama-cross`` (a different ByteLevel tokenizer) and ``tiny-llama-sp`` (SentencePiece-style
Metaspace tokenizer without chat template). Their scores are noise: they test plumbing only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import SentencePieceBPETokenizer, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from atlas_lib.core.paths import cache_root

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "Solve the problem step by step. End with a line of the form 'Final Answer: <number>'.",
    "Tom has 3 apples and buys 5 more. How many apples does he have? 3 + 5 = 8. Final Answer: 8",
    "A shop sells 12 pens at $2 each. 12 * 2 = 24. The answer is: 24",
    "What is 7 times 6? 7 * 6 = 42 #### 42",
    "Anna reads 15 pages a day for 4 days, so 15 * 4 = 60 pages. Final Answer: 60",
    "You are a careful math tutor. Solve the problem step by step, briefly.",
    "Question: Sam had 100 marbles and gave away 1,250 / 25 = 50. Answer: 50",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 -3 0.5 1/2 \\boxed{12} total combined each more fewer",
] * 20


def _bpe_tokenizer(vocab_size: int, seed_text: list[str]):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(seed_text, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        bos_token=None, unk_token=None,
    )
    fast.chat_template = CHATML
    return fast


def _sp_tokenizer(vocab_size: int):
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(CORPUS, vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=sp._tokenizer, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>")
    return fast  # no chat template: like a base SentencePiece model


def _save_model(path, arch: str, tokenizer, hidden: int, layers: int, seed: int):
    torch.manual_seed(seed)
    cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    cfg = cls(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)



_SPECS = {
    "tiny-qwen2-student": ("qwen2", "shared", 32, 0),
    "tiny-qwen2-teacher": ("qwen2", "shared", 48, 1),
    "tiny-llama-cross": ("llama", "other", 32, 2),
    "tiny-llama-sp": ("llama", "sp", 32, 3),
}
TINY_NAMES = tuple(_SPECS)


def _tokenizer(kind: str):
    if kind == "shared":
        return _bpe_tokenizer(400, CORPUS)
    if kind == "other":
        return _bpe_tokenizer(330, [c.lower() for c in CORPUS])
    return _sp_tokenizer(300)


def build(name: str, path: Path) -> str:
    """Write the tiny model ``name`` to ``path`` (save_pretrained layout)."""
    arch, kind, hidden, seed = _SPECS[name]
    return _save_model(path, arch, _tokenizer(kind), hidden, 2, seed)


def ensure(name: str) -> Path:
    """The cached directory of tiny model ``name``, built on first use (atomically)."""
    if name not in _SPECS:
        raise KeyError(f"unknown tiny model {name!r}; known: {', '.join(_SPECS)}")
    target = cache_root() / "tiny" / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}."))
    build(name, tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race; keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target
