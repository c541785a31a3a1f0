"""Test-time-feedback bench II: language models judged by what they generate.

``dopr-bench run lm`` fine-tunes a causal LM per arm (adamw, dopr-adamw, muon, dopr-muon, ...; full or LoRA; a
learning-rate sweep; several seeds) and reports validation NLL (teacher-forced) beside the exact-match accuracy of
greedy generations. Without ``--model`` it runs the built-in synthetic task (:mod:`dopr_bench.lm.synth`).

Modules: ``answers`` (final-answer extraction), ``train`` (one run), ``data`` (the Source; datasets by hub name or
local path), ``synth`` (generated problems, tokenizer, pretrained base), ``bench`` (the Spec and a sweep's data),
``report``.
"""
