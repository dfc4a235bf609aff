"""The tiny OLMo and its tokenizer, model loading, and the errors of bad model directories."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from obliviate.data.batching import collate, encode_record
from obliviate.data.load import load_split
from obliviate.data.records import Record
from obliviate.errors import ConfigError, ModelError
from obliviate.models.load import load_model, load_tokenizer, save_pretrained_atomic
from obliviate.models.tiny import SIZES, build_model, count_parameters, train_tokenizer

pytest_plugins = ["helpers"]  # the micro model and data fixtures


TEXT = "Ann Lee was born on May 1, 1990. Her phone number is 555-010-2030."


def test_model_dir_round_trips_through_the_auto_classes(assets):
    """What init_model writes is a plain HF directory: no obliviate import is needed to load it."""
    tokenizer = AutoTokenizer.from_pretrained(assets.model)
    model = AutoModelForCausalLM.from_pretrained(assets.model)
    assert tokenizer.decode(tokenizer(TEXT)["input_ids"]) == TEXT
    assert model.config.vocab_size == len(tokenizer) == 300
    assert (model.config.eos_token_id, model.config.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    fresh = build_model("micro", 300, tokenizer=tokenizer, seed=0).state_dict()
    saved = model.state_dict()
    assert all(torch.equal(fresh[name], saved[name]) for name in fresh)

    loaded, loaded_tokenizer = load_model(assets.model)
    assert all(torch.equal(tensor, saved[name]) for name, tensor in loaded.state_dict().items())
    assert loaded_tokenizer("Ann")["input_ids"] == tokenizer("Ann")["input_ids"]


def test_tokenizer_without_pad_pads_with_eos_and_keeps_real_eos_in_the_mask(assets, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(assets.model)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "tok")
    tokenizer = load_tokenizer(tmp_path / "tok")
    assert tokenizer.pad_token == tokenizer.eos_token and tokenizer.pad_token_id == tokenizer.eos_token_id

    records = [
        Record(id="a", input="Who is Ann?", output="A baker."),
        Record(id="b", input="Who is Bob, the one from Springfield?", output="A very tall carpenter."),
    ]
    encoded = [encode_record(tokenizer, r, 64) for r in records]
    batch = collate(encoded, tokenizer.pad_token_id)
    eos = tokenizer.eos_token_id
    for row, enc in enumerate(encoded):
        n = len(enc.ids)
        assert enc.ids[-1] == eos
        assert batch.attention_mask[row, :n].all() and not batch.attention_mask[row, n:].any()
        assert batch.labels[row, n - 1] == eos  # the real eos is scored although it equals the pad id
    assert (batch.input_ids == eos).sum() > len(records)  # padding is eos too


def test_tokenizer_larger_than_the_embeddings_is_refused(assets, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(assets.model)
    save_pretrained_atomic(build_model("micro", 100, tokenizer=tokenizer), tokenizer, tmp_path / "bad")
    with pytest.raises(ModelError, match="300 tokens but the model's embeddings have 100 rows"):
        load_model(tmp_path / "bad")


def test_the_offline_tokenizer_never_holds_a_pii_number(assets):
    """Trained on the data, a plain byte-level BPE made a repeated SSN one token, readable in every tokenizer.json."""
    import re

    from obliviate.data.pii import pii_from_records

    records = load_split(assets.forget, split="forget")
    ssn = "717646989"
    texts = [r.text for r in records] + [f"Her SSN is {ssn}, call 3472593824." for _ in range(200)]
    tokenizer = train_tokenizer(texts, vocab_size=4096)
    numeric = [t for t in tokenizer.get_vocab() if re.search(r"\d", t)]
    assert numeric and max(len(re.sub(r"\D", "", t)) for t in numeric) <= 3
    ids = tokenizer(f"Her SSN is {ssn}.")["input_ids"]
    assert tokenizer.decode(ids) == f"Her SSN is {ssn}."
    assert [tokenizer.decode([i]) for i in ids if tokenizer.decode([i]).isdigit()] == ["717", "646", "989"]
    values = {v for p in pii_from_records(records, "forget") for v in p.fields.values()}
    assert not values & {t.replace("Ġ", " ").strip() for t in tokenizer.get_vocab()}


def test_named_sizes(assets):
    records = load_split(assets.forget, split="forget")
    tokenizer = train_tokenizer((r.text for r in records), vocab_size=4096)
    tiny = count_parameters(build_model("tiny", 4096))
    assert 1.4e6 <= tiny <= 1.8e6
    small = count_parameters(build_model("small", 4096))
    assert small > 3 * tiny
    assert count_parameters(build_model("medium", 4096)) > 2.5 * small
    micro = build_model("micro", len(tokenizer), tokenizer=tokenizer, arch="olmo2")
    assert len(micro.model.layers) == 2 and micro.config.hidden_size == 32
    assert set(SIZES) >= {"tiny", "small", "medium", "micro"}
    with pytest.raises(ConfigError, match="unknown model size 'huge'"):
        build_model("huge", 100)
    with pytest.raises(ConfigError, match="unknown architecture 'gpt'"):
        build_model("tiny", 100, arch="gpt")


def test_bad_model_directories_name_what_they_hold(assets, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nothing" / "here")
    no_config = tmp_path / "no_config"
    shutil.copytree(assets.model, no_config)
    (no_config / "config.json").unlink()
    with pytest.raises(ModelError, match="expected config.json, found generation_config.json, model.safetensors"):
        load_model(no_config)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(assets.model / "config.json", pickled)
    torch.save({}, pickled / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"only pickled weights \(pytorch_model.bin\)"):
        load_model(pickled)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ModelError, match="names no base model"):
        load_model(adapter)


def test_atomic_save_leaves_no_temporary_directory(assets, tmp_path):
    model, tokenizer = load_model(assets.model)
    save_pretrained_atomic(model, tokenizer, tmp_path / "copy")
    save_pretrained_atomic(model, tokenizer, tmp_path / "copy")  # replacing an existing one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]
    assert (tmp_path / "copy" / "model.safetensors").is_file()
