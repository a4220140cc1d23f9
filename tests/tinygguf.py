"""Write a tiny random-weight llama model (GGUF) at test time, so no test downloads a model.

It proves the plumbing (a real llama.cpp server loads it, chats, streams), never the
quality. The vocabulary is GPT-2-style byte-level BPE: every byte has a token, so any
text in any language round-trips exactly, and a few merges exercise the BPE path.
"""

from __future__ import annotations

from pathlib import Path

import numpy
from gguf import GGUFWriter, TokenType

DIMS = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
FEED_FORWARD = 128
CONTEXT = 4096

CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = (("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("e", "r"), ("i", "n"), ("Ġ", "a"))

#: A ChatML-style template in the Jinja dialect llama.cpp's server understands.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_symbols() -> list[str]:
    """Return the printable character GPT-2's byte-level BPE uses for each byte 0-255.

    Bytes that are already visible characters stand for themselves; the others (space,
    control bytes, some of Latin-1) are moved to code points from 256 up.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    symbols = {}
    shifted = 0
    for byte in range(256):
        if byte in visible:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + shifted)
            shifted += 1
    return [symbols[byte] for byte in range(256)]


def vocabulary() -> tuple[list[str], list[int], list[str]]:
    """Return the tokens, their types and the merges."""
    tokens = byte_symbols()
    for left, right in MERGES:
        tokens.append(left + right)
    types = [int(TokenType.NORMAL)] * len(tokens)
    tokens.extend(CONTROL_TOKENS)
    types.extend([int(TokenType.CONTROL)] * len(CONTROL_TOKENS))
    return tokens, types, [f"{left} {right}" for left, right in MERGES]


def write_tiny_model(
    path: Path,
    seed: int = 19,
    dims: int = DIMS,
    layers: int = LAYERS,
    heads: int = HEADS,
    kv_heads: int = KV_HEADS,
    feed_forward: int = FEED_FORWARD,
) -> Path:
    """Write the model to ``path`` (about half a megabyte) and return the path.

    Larger shapes give a model that costs what a real one of that size does to run
    (``tests/bench/chat_load.py --assist``); their weights are stored as float16.
    """
    tokens, types, merges = vocabulary()
    rng = numpy.random.default_rng(seed)
    head_dims = dims // heads
    kind = numpy.float32 if dims == DIMS else numpy.float16
    scale = 1.6 / dims**0.5  # 0.2 for the tiny shape; keeps larger ones' activations finite

    def weights(*shape: int) -> numpy.ndarray:
        return (rng.standard_normal(shape) * scale).astype(kind)

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("stillroom-tiny-test")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(dims)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dims)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index("<|im_end|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    # numpy shapes are ggml's reversed: (rows, columns) = (outputs, inputs).
    writer.add_tensor("token_embd.weight", weights(len(tokens), dims))
    for layer in range(layers):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", numpy.ones(dims, dtype=numpy.float32))
        writer.add_tensor(f"{block}.attn_q.weight", weights(heads * head_dims, dims))
        writer.add_tensor(f"{block}.attn_k.weight", weights(kv_heads * head_dims, dims))
        writer.add_tensor(f"{block}.attn_v.weight", weights(kv_heads * head_dims, dims))
        writer.add_tensor(f"{block}.attn_output.weight", weights(dims, heads * head_dims))
        writer.add_tensor(f"{block}.ffn_norm.weight", numpy.ones(dims, dtype=numpy.float32))
        writer.add_tensor(f"{block}.ffn_gate.weight", weights(feed_forward, dims))
        writer.add_tensor(f"{block}.ffn_up.weight", weights(feed_forward, dims))
        writer.add_tensor(f"{block}.ffn_down.weight", weights(dims, feed_forward))
    writer.add_tensor("output_norm.weight", numpy.ones(dims, dtype=numpy.float32))
    output = weights(len(tokens), dims)
    output[len(tokens) - len(CONTROL_TOKENS) :] = 0  # never ends by itself: drafts of full length
    writer.add_tensor("output.weight", output)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
