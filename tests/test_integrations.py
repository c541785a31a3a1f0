"""Real clients on tiny local models (nothing is downloaded)."""

import copy

import pytest
import torch

from dopr import DoPr
from dopr.reference import ReferenceAP
from dopr.routing import DEFAULT_AUX_PATTERNS, build_bases
from helpers import max_rel_diff

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def _tiny_lora_llama():
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config).double()
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return peft.get_peft_model(base, lora)


def _lm_step(model, ids):
    return model(input_ids=ids, labels=ids).loss


def test_peft_lora_adapters_are_preconditioned_like_the_reference():
    model = _tiny_lora_llama()
    twin = copy.deepcopy(model)
    opt = DoPr(model, base="adamw", lr=1e-2, damping=1e-2)
    lora_layers = list(opt.preconditioner.layers)
    assert lora_layers and all("lora_" in n for n in lora_layers)  # frozen base layers are left alone
    ref = ReferenceAP(twin, 1e-2, modules=lora_layers)
    ref_opts = [o for _, o in build_bases(twin, "adamw", 1e-2, {}, None, None, DEFAULT_AUX_PATTERNS)[0]]
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # lora_B starts at zero, so lora_A only gets a gradient from the second step
        ids = torch.randint(0, 64, (2, 12), generator=g)
        opt.zero_grad()
        _lm_step(model, ids).backward()
        opt.step()
        for o in ref_opts:
            o.zero_grad()
        _lm_step(twin, ids).backward()
        ref.precondition_()
        for o in ref_opts:
            o.step()
    assert max_rel_diff(model, twin) < 1e-9
    # q/k/v LoRA A matrices read the same hidden state: one Sigma per attention block
    groups = [s["layers"] for s in opt.stats().values()]
    assert any(len(g) == 3 and all(k in " ".join(g) for k in ("q_proj", "k_proj", "v_proj")) for g in groups), groups
