"""Position embeddings that build their positions themselves: Sigma counts the positions actually read.

BART/mBART add an offset of 2 to the positions, OPT/BioGPT derive them from the attention mask, Whisper's decoder
slices its table by position. Each used to be hooked as an ``nn.Embedding`` called with its first argument taken as
the ids (token ids, a float slice, the mask), which crashed or counted the wrong rows. Read where the weight is read,
the diagonal Sigma is the float64 count of the positions each forward looked up.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from dopr import DoPr

transformers = pytest.importorskip("transformers")

BATCH, LENGTH, SMALL = 2, 7, dict(vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1,
                                  encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                                  decoder_ffn_dim=32, max_position_embeddings=32)


def _bart():
    return transformers.BartForConditionalGeneration(transformers.BartConfig(**SMALL))


def _opt():
    return transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16,
        max_position_embeddings=32))


def _whisper():
    return transformers.WhisperForConditionalGeneration(transformers.WhisperConfig(
        **SMALL, num_mel_bins=8, max_source_positions=16, max_target_positions=32, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, decoder_start_token_id=3))


def _batch(name: str) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 64, (BATCH, LENGTH), generator=g)
    if name == "whisper":
        return dict(input_features=torch.randn(BATCH, 8, 32, generator=g), labels=ids)
    return dict(input_ids=ids, labels=ids)


# layer -> (the first position read: BART and OPT add an offset of 2, how many times each position is looked up: the
# BART decoder looks up one row of positions for the whole batch, the others one row per sequence)
CASES = {
    "bart": (_bart, {"model.encoder.embed_positions": (2, BATCH), "model.decoder.embed_positions": (2, 1)}),
    "opt": (_opt, {"model.decoder.embed_positions": (2, BATCH)}),
    "whisper": (_whisper, {"model.decoder.embed_positions": (0, BATCH)}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_position_embeddings_count_the_positions_read(name):
    build, layers = CASES[name]
    torch.manual_seed(0)
    model = build()
    opt = DoPr(model, lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "recorded no input"
        for step in range(2):
            opt.zero_grad()
            model(**_batch(name)).loss.backward()
            if step == 0:
                ap = opt.preconditioner
                for layer, (offset, lookups) in layers.items():
                    group = ap.groups[ap.layers[layer].group]
                    want = torch.zeros(group.dim, dtype=torch.float64)
                    want[offset : offset + LENGTH] = lookups
                    assert group.rows == lookups * LENGTH
                    torch.testing.assert_close(group.total.double(), want, rtol=0, atol=0)
            opt.step()
    assert all(g["missing_statistics"] == 0 for g in opt.stats().values())
