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


def test_hugging_face_trainer_with_dopr_and_gradient_accumulation(tmp_path):
    datasets = pytest.importorskip("datasets")
    model = _tiny_lora_llama().float()
    opt = DoPr(model, base="adamw", lr=5e-3, damping=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 64, (16, 12), generator=g).tolist()
    data = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=4,
        logging_steps=1, save_steps=2, report_to=[], use_cpu=True, seed=0, disable_tqdm=True,
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, sched))
    trainer.train()
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n]) for n in before if "lora_A" in n)
    # one refresh per optimizer step: the two micro-batches of each step feed one Sigma
    assert {s["refreshes"] for s in opt.stats().values()} == {4}
    # a checkpoint the Trainer wrote loads back into a fresh DoPr (weights_only)
    state = torch.load(tmp_path / "checkpoint-2" / "optimizer.pt", weights_only=True)
    DoPr(_tiny_lora_llama().float(), base="adamw", lr=5e-3).load_state_dict(state)


def test_torch_compile_model_trains_like_eager():
    from helpers import mlp

    torch.manual_seed(0)
    eager = mlp()
    compiled_src = copy.deepcopy(eager)
    compiled = torch.compile(compiled_src, backend="aot_eager")
    o1, o2 = DoPr(eager, lr=1e-2), DoPr(compiled_src, lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)
        for m, o in ((eager, o1), (compiled, o2)):
            o.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            o.step()
    assert max_rel_diff(eager, compiled_src) < 1e-5
    assert {s["refreshes"] for s in o2.stats().values()} == {3}


def test_lightning_automatic_optimization_with_a_closure(tmp_path):
    lightning = pytest.importorskip("lightning")
    from helpers import mlp

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def training_step(self, batch, _):
            x, y = batch
            return ((self.net(x) - y) ** 2).mean()

        def configure_optimizers(self):
            return DoPr(self, base="adamw", lr=1e-2)

    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(32, 5, generator=g), torch.randn(32, 3, generator=g))
    module = Module()
    before = copy.deepcopy(module.net.state_dict())
    trainer = lightning.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    assert not torch.equal(before["0.weight"], module.net[0].weight)
    opt = trainer.optimizers[0]
    assert isinstance(opt, DoPr) and {s["refreshes"] for s in opt.stats().values()} == {4}
