"""Model cards: every model directory a run writes holds a ``README.md`` whose YAML front matter says how the model
was made (base model, method, resolved config, forget-set hash, epoch, metrics), and no PII of the forget people."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import unlearn_config
from obliviate.config import FinetuneConfig
from obliviate.evaluate.results import EpochEval
from obliviate.io import sha256_tree
from obliviate.model_card import CARD, HEADLINE, read_card, update_model_card
from obliviate.train.run import run_finetune, run_unlearn


def forget_values(data_dir) -> list[str]:
    """Every PII value and name of the forget people (what a card must never hold)."""
    people = json.loads((data_dir / "pii.json").read_text())["people"]
    forget = [p for p in people if p["split"] == "forget"]
    assert forget
    return [p["name"] for p in forget] + [v for p in forget for v in p["fields"].values()]


def front_matter(directory) -> dict:
    text = (directory / CARD).read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("\n---\n", 1)[0][4:])  # the plain YAML a hub would read, not our reader
    assert meta == read_card(directory / CARD)[0]
    return meta


def assert_no_pii(directory, data_dir) -> None:
    text = (directory / CARD).read_text().lower()
    leaked = [v for v in forget_values(data_dir) if v.lower() in text]
    assert not leaked, f"{len(leaked)} forget values in {directory / CARD}"


def test_unlearned_model_and_checkpoints_carry_cards(assets, tmp_path):
    out = tmp_path / "out"
    scores = {"forget/rougeL_recall": 0.125, "retain/rougeL_recall": 0.75, "forget/perplexity": 40.0}
    result = run_unlearn(
        unlearn_config(assets, out, method="ga_gd", epochs=2),
        epoch_hook=lambda epoch, path: EpochEval(epoch, str(path), {**scores, "all/task_aggregate": None}),
    )
    assert result.epochs_completed == 2
    meta = front_matter(out)
    assert meta["base_model"] == str(assets.model) and meta["library_name"] == "transformers"
    assert {"obliviate", "machine-unlearning", "unlearning-method:ga_gd"} <= set(meta["tags"])
    block = meta["obliviate"]
    assert block["command"] == "unlearn" and block["method"] == "ga_gd"
    assert block["forget_sha256"] == sha256_tree(assets.forget)
    assert block["retain_sha256"] == sha256_tree(assets.retain)
    assert block["config"] == yaml.safe_load((out / "config.yaml").read_text())  # the resolved config
    assert block["epoch"] == 2 and block["global_step"] == 10 and block["lr"] == 0.01
    assert block["metrics"] == scores  # the final epoch's evaluation (a metric it could not compute is left out)
    body = (out / CARD).read_text()
    assert "## Evaluation (epoch 2)" in body and "| forget/rougeL_recall | 0.125 |" in body
    for epoch in (1, 2):
        checkpoint = out / "checkpoints" / f"epoch-{epoch}"
        meta = front_matter(checkpoint)
        assert meta["obliviate"]["epoch"] == epoch and meta["obliviate"]["global_step"] == 5 * epoch
        assert meta["obliviate"]["metrics"] == scores
        assert_no_pii(checkpoint, assets.data)
    assert_no_pii(out, assets.data)


def test_lora_adapter_card_names_its_base_as_peft_expects_and_merged_model_gets_one(assets, tmp_path):
    out = tmp_path / "lora"
    run_unlearn(unlearn_config(assets, out, method="ga_gd", lora_r=4, merge=True))
    meta = front_matter(out)
    assert meta["library_name"] == "peft" and meta["base_model"] == str(assets.model)
    assert f"base_model:adapter:{assets.model}" in meta["tags"] and "lora" in meta["tags"]
    assert meta["obliviate"]["config"]["lora_r"] == 4
    assert "AutoPeftModelForCausalLM" in (out / CARD).read_text()  # peft's own stub card was replaced
    assert "No evaluation of these weights is recorded" in (out / CARD).read_text()
    merged = front_matter(out / "merged")
    assert merged["library_name"] == "transformers" and merged["obliviate"]["merged"] is True
    assert front_matter(out / "checkpoints" / "epoch-1")["library_name"] == "peft"
    for directory in (out, out / "merged", out / "checkpoints" / "epoch-1"):
        assert_no_pii(directory, assets.data)


def test_finetuned_model_card_hashes_its_training_data(assets, tmp_path):
    out = tmp_path / "ft"
    data = [str(assets.forget), str(assets.retain)]
    config = FinetuneConfig(
        output_dir=str(out), model=str(assets.model), data=data, epochs=1, batch_size=16, micro_batch_size=16
    )
    run_finetune(config)
    meta = front_matter(out)
    assert meta["base_model"] == str(assets.model)
    assert meta["obliviate"]["command"] == "finetune" and meta["obliviate"]["data_sha256"] == [
        sha256_tree(p) for p in data
    ]
    assert "fine-tuned" in meta["tags"] and meta["obliviate"]["config"]["epochs"] == 1
    assert_no_pii(out, assets.data)


def test_update_model_card_records_a_chosen_epoch(assets, tmp_path):
    out = tmp_path / "out"
    run_unlearn(unlearn_config(assets, out, method="ga"))
    before = front_matter(out)
    update_model_card(out, epoch=1, metrics={"forget/leak_rate": 0.0})
    after = front_matter(out)
    assert after["obliviate"]["metrics"] == {"forget/leak_rate": 0.0}
    assert after["obliviate"]["config"] == before["obliviate"]["config"]
    assert after["base_model"] == before["base_model"] and after["tags"] == before["tags"]


def test_headline_metrics_are_the_brief_columns():
    from obliviate.report.columns import metric_columns

    assert list(HEADLINE) == [c.key for c in metric_columns("brief")]


@pytest.mark.parametrize("text", ["no front matter", "---\nunterminated: yes\n"])
def test_a_card_without_front_matter_reads_as_no_metadata(tmp_path, text):
    (tmp_path / CARD).write_text(text)
    assert read_card(tmp_path / CARD) == ({}, text)
