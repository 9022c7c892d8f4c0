"""On a CUDA machine: bf16 weights keep float32 RoPE, the chunked loss matches transformers', and a
64k-token SmolLM2 window fits in a few GB. Skipped where CUDA is absent (CI)."""

from __future__ import annotations

import math
import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ropext.evaluate.nll import summed_nll
from ropext.methods import METHODS
from ropext.model.apply import apply_scaling, verify_scaling
from ropext.model.layout import read_layout

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _tiny_model(dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    return LlamaForCausalLM(config).to("cuda", dtype=dtype).eval()


def test_bf16_model_keeps_float32_rope_on_the_gpu() -> None:
    model = _tiny_model(torch.bfloat16)
    scaling = METHODS.get("yarn")(read_layout(model.config), 8192)
    apply_scaling(model, scaling)
    inv_freq = model.model.rotary_emb.inv_freq
    assert inv_freq.dtype == torch.float32 and inv_freq.is_cuda
    torch.testing.assert_close(inv_freq.cpu(), scaling.inv_freq(), rtol=1e-6, atol=0)
    verify_scaling(model, scaling)


def test_chunked_loss_matches_transformers_on_the_gpu() -> None:
    model = _tiny_model(torch.float32)
    ids = torch.randint(0, 512, (1, 3000), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    total, count = summed_nll(model, ids, chunk_tokens=700)
    with torch.no_grad():
        reference = model(ids, labels=ids).loss.double() * count
    assert math.isclose(float(total), float(reference), rel_tol=1e-5)


@pytest.mark.skipif(not os.environ.get("ROPEXT_CACHE_DIR"), reason="needs the SmolLM2 file in ROPEXT_CACHE_DIR")
def test_smollm2_64k_window_fits_in_a_few_gigabytes() -> None:
    from ropext.model.prepared import prepare_model

    prepared = prepare_model("smollm2-135m", METHODS.get("yarn")(read_layout_of("smollm2-135m"), 65536), "cuda")
    ids = torch.randint(0, 49152, (1, 65536), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    total, count = summed_nll(prepared.model, ids)
    assert count == 65535 and math.isfinite(float(total))
    assert torch.cuda.max_memory_allocated() < 4 * 2**30


def read_layout_of(spec: str):
    from ropext.model.loading import load_layout

    return load_layout(spec)[1]
