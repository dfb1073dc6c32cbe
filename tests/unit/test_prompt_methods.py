"""Prompt and prefix tuning on packed rows (``ftscale.train.prompt_methods``): each document of
a packed row gets exactly the logits plain peft gives it alone; only the virtual tokens train;
the saved adapter loads in plain peft; the config and export refusals."""

from __future__ import annotations

import pytest
import torch

from ftscale.config import TrainConfig, build
from ftscale.errors import ConfigError
from ftscale.train.adapters import apply_method, attn_implementation_for, is_adapter_key, peft_config
from ftscale.train.attention import forward_kwargs
from ftscale.train.model import keep_logits
from ftscale.train.prompt_methods import PackedPromptModel, widen_mask

VOCAB = 97
N_VIRTUAL = 5
TINY = {"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "tie_word_embeddings": False}
DOCS = [[5, 7, 4], [9], [3, 3, 6]]  # document lengths per packed row; padding fills each row
ROW_LEN = 24


def train_config(method: str, **fields) -> TrainConfig:
    data = {"data": {"path": "data"}, "model": {"config": TINY}, "method": method,
            "peft": {"num_virtual_tokens": N_VIRTUAL}, **fields}
    return build(TrainConfig, data)


def _base(attn: str = "sdpa", seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{k: v for k, v in TINY.items() if k != "model_type"}, attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


def _packed_model(method: str, attn: str = "sdpa") -> PackedPromptModel:
    model = apply_method(_base(attn), train_config(method))
    torch.manual_seed(1)  # virtual tokens far from peft's init, so that a misplaced one shows
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 1.0)
    return model.eval()


def _batch() -> tuple[dict, list[list[torch.Tensor]]]:
    """A loader-shaped batch and, per row, the token ids of its documents."""
    g = torch.Generator().manual_seed(3)
    rows, positions, segments, docs = [], [], [], []
    for lengths in DOCS:
        ids, pos, row_docs = [], [], []
        for n in lengths:
            doc = torch.randint(1, VOCAB, (n,), generator=g)
            ids += doc.tolist()
            pos += list(range(n))
            row_docs.append(doc)
            segments.append(n)
        pad = ROW_LEN - len(ids)
        ids += [0] * pad
        pos += list(range(pad))
        segments.append(pad)
        rows.append(ids)
        positions.append(pos)
        docs.append(row_docs)
    cu = torch.tensor([0, *torch.tensor(segments).cumsum(0).tolist()], dtype=torch.int32)
    batch = {"input_ids": torch.tensor(rows), "position_ids": torch.tensor(positions), "cu_seqlens": cu,
             "max_seqlen": max(segments)}
    return batch, docs


def _alone(model: PackedPromptModel | torch.nn.Module, doc: torch.Tensor) -> torch.Tensor:
    """Plain peft's logits ``[len, V]`` for one unpacked document."""
    peft_model = model.peft_model if isinstance(model, PackedPromptModel) else model
    logits = peft_model(input_ids=doc[None]).logits[0]
    return logits[-len(doc):]  # prompt tuning returns the virtual positions too


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_every_packed_document_sees_the_virtual_tokens_as_alone(method, attn) -> None:
    model = _packed_model(method, attn)
    batch, docs = _batch()
    with torch.no_grad():
        logits = model(**forward_kwargs(batch, attn)).logits
        assert logits.shape == (len(DOCS), ROW_LEN, VOCAB)
        for r, row_docs in enumerate(docs):
            at = 0
            for doc in row_docs:
                torch.testing.assert_close(logits[r, at:at + len(doc)], _alone(model, doc), atol=1e-5, rtol=0)
                at += len(doc)
        # the virtual tokens matter: without them a document's logits differ
        base = model.peft_model.get_base_model()
        plain = base(input_ids=docs[0][1][None]).logits[0]
        assert (plain - logits[0, 5:12]).abs().max() > 1e-2


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_only_the_virtual_tokens_train_and_get_gradients(method) -> None:
    model = _packed_model(method)
    model.train()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("prompt_encoder" in n and is_adapter_key(n) for n in names)
    batch, _ = _batch()
    keep = torch.zeros(len(DOCS), ROW_LEN, dtype=torch.bool)
    keep[:, :4] = True
    with keep_logits(model, keep):  # the recipe's call shape: logits only where the loss is
        logits = model(**forward_kwargs(batch, "sdpa")).logits
    assert logits.shape == (int(keep.sum()), VOCAB)
    torch.nn.functional.cross_entropy(logits, batch["input_ids"][:, 1:5][keep[:, :4]]).backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_saved_adapter_loads_in_plain_peft(method, tmp_path) -> None:
    import json

    from peft import PeftModel

    model = _packed_model(method)
    model.save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == method.upper() and config["num_virtual_tokens"] == N_VIRTUAL
    loaded = PeftModel.from_pretrained(_base(), str(tmp_path)).eval()
    batch, docs = _batch()
    with torch.no_grad():
        logits = model(**forward_kwargs(batch, "sdpa")).logits
        at = 0
        for doc in docs[0]:
            torch.testing.assert_close(_alone(loaded, doc), logits[0, at:at + len(doc)], atol=1e-5, rtol=0)
            at += len(doc)


def test_widen_mask_bool_and_additive() -> None:
    cu = torch.tensor([0, 2, 3], dtype=torch.int32)
    from ftscale.train.attention import block_causal_mask

    mask = block_causal_mask(cu, 1, 3)
    wide = widen_mask(mask, 2, virtual_rows=True)[0, 0]
    assert wide.tolist() == [[True, False, False, False, False],
                             [True, True, False, False, False],
                             [True, True, True, False, False],
                             [True, True, True, True, False],
                             [True, True, False, False, True]]
    assert widen_mask(mask, 2, virtual_rows=False)[0, 0].tolist() == wide[2:].tolist()
    additive = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
    assert torch.equal(widen_mask(additive, 2, virtual_rows=True)[0, 0] == 0, wide)


def test_config_attention_options_and_refusals() -> None:
    cfg = train_config("prompt_tuning", model={"config": TINY, "attn_implementation": "flash_attention_2"})
    assert attn_implementation_for(cfg) == "sdpa"
    assert attn_implementation_for(train_config("prefix_tuning", model={"config": TINY,
                                                                        "attn_implementation": "eager"})) == "eager"
    assert attn_implementation_for(train_config("lora")) == "auto"
    assert build(TrainConfig, {"data": {"path": "d"}, "model": {"config": TINY},
                               "method": "prompt_tuning"}).peft.num_virtual_tokens == 20
    prompt = peft_config(train_config("prefix_tuning", peft={"num_virtual_tokens": 3,
                                                             "options": {"prefix_projection": True}}))
    assert prompt.num_virtual_tokens == 3 and prompt.prefix_projection is True
    with pytest.raises(ConfigError, match="peft.options: .*tokenizer_name_or_path"):
        peft_config(train_config("prompt_tuning", peft={"options": {"prompt_tuning_init": "TEXT",
                                                                    "prompt_tuning_init_text": "Answer:"}}))
    with pytest.raises(ConfigError, match="peft.num_virtual_tokens: must be >= 1"):
        train_config("prompt_tuning", peft={"num_virtual_tokens": 0})
    with pytest.raises(ConfigError, match="model.gradient_checkpointing: prefix_tuning"):
        train_config("prefix_tuning", model={"config": TINY, "gradient_checkpointing": True})
    assert train_config("prompt_tuning", model={"config": TINY, "gradient_checkpointing": True})
    with pytest.raises(ConfigError, match="eval.tasks: .*prefix_tuning"):
        train_config("prefix_tuning", eval_every=5, eval={"tasks": "tasks.yaml"})
    with pytest.raises(ConfigError, match="preference.reference"):
        train_config("prompt_tuning", preference={"reference": "adapters"})
    with pytest.raises(ConfigError, match="nothing to merge"):
        _packed_model("prompt_tuning").merge_and_unload()
