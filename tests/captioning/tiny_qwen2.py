"""A tiny random text-only Qwen2 (Qwen2ForCausalLM) saved as a model folder, built offline, for
`captioning synthesize`: the tiny Qwen2-VL's tokenizer and chat template, random weights; what it writes is noise."""

import torch
from tiny_qwen2vl import build_tokenizer, name_tokenizer_class
from transformers import AutoProcessor, Qwen2Config, Qwen2ForCausalLM


def build_tiny_qwen2(folder: str) -> str:
    tokenizer, ids = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    name_tokenizer_class(folder)
    AutoProcessor.from_pretrained(folder)  # fails here, not in a test, if the folder is incomplete
    return folder
