"""A model folder with a published architecture's shape and no weights, for throughput runs of
`ropext finetune --init random` (a 7B model's checkpoint is not needed to measure how fast it trains).

    python bench/model_shape.py llama2-7b --tokenizer-from smollm2-135m --out /tmp/llama2-7b-shape

The folder holds config.json and the tokenizer of ``--tokenizer-from``; the vocabulary size is that
tokenizer's (SmolLM2's 49,152 instead of Llama 2's 32,000: 6.87B instead of 6.74B parameters), so every
token id of the training text exists in the embedding.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHAPES = {
    # Llama 2 7B (meta-llama/Llama-2-7b-hf's config.json)
    "llama2-7b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("--tokenizer-from", default="smollm2-135m", help="model whose tokenizer the folder gets")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from transformers import AutoConfig

    from ropext.model.loading import load_layout, load_tokenizer, materialize

    source, _ = load_layout(args.tokenizer_from)
    tokenizer = load_tokenizer(materialize(source))
    values = dict(SHAPES[args.shape])
    model_type = values.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        **values,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"wrote {args.out}: {args.shape} shape, vocabulary {len(tokenizer)}, no weights")


if __name__ == "__main__":
    main()
