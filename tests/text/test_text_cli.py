"""The CLI end to end on the embedded stdlib corpus (pretrain -> eval -> visualize -> export),
the Hugging Face export read back by the Auto classes with identical logits, and the clear
error when a run is resumed with another vocabulary."""

from __future__ import annotations

import json

import pytest
import torch
from omnimask.cli import main
from omnimask.runs import load_run
from PIL import Image
from transformers import AutoModelForMaskedLM, AutoModelForPreTraining, AutoTokenizer

#: a tiny model (the demo architecture, narrower) and a three-step run
SHORT = [
    "model.hidden=32",
    "model.layers=1",
    "model.heads=2",
    "model.intermediate=64",
    "train.progress=false",
    "train.steps=3",
    "train.batch_size=4",
    "train.checkpoint_every=3",
    "train.log_every=1",
]


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):  # noqa: ANN201, ANN001
    run_dir = tmp_path_factory.mktemp("mlm") / "run"
    code = main(["pretrain", "text/mlm", "--preset", "demo", "--run-dir", str(run_dir), *SHORT])
    assert code == 0
    return run_dir


def test_pretrain_writes_metrics(mlm_run) -> None:  # noqa: ANN001
    records = [json.loads(line) for line in (mlm_run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["loss"] > 0 for r in records)
    assert all(r["tokens_per_s"] > 0 for r in records)


def test_eval_scores_the_word_order_probe(mlm_run) -> None:  # noqa: ANN001
    assert main(["eval", str(mlm_run)]) == 0
    result = json.loads((mlm_run / "eval.json").read_text())
    assert result["train_samples"] > result["test_samples"] > 100
    for side in ("pretrained", "random_init"):
        assert 0.0 <= result[side]["linear_probe_accuracy"] <= 1.0
        assert result[side]["feature_dim"] == 32  # the tiny test model's width


def test_visualize_writes_a_png_table(mlm_run, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "table.png"
    assert main(["visualize", str(mlm_run), "--out", str(out)]) == 0
    with Image.open(out) as image:
        image.verify()
    with Image.open(out) as image:
        assert image.width >= 1000 and image.height >= 200


def test_hf_export_gives_identical_logits(mlm_run, tmp_path) -> None:  # noqa: ANN001
    out = tmp_path / "hf"
    assert main(["export", str(mlm_run), "--format", "hf", "--out", str(out)]) == 0
    run = load_run(mlm_run)
    hf_model = AutoModelForMaskedLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    too_long = tokenizer(["word " * 2000], truncation=True)["input_ids"][0]
    assert tokenizer.model_max_length == len(too_long) == 512  # the model's positions
    texts = ["Return the value of the named attribute.", "Open a file and return a stream."]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    batch = {"input_ids": encoded["input_ids"], "sequence_ids": encoded["attention_mask"]}
    with torch.no_grad():
        tokens = run.model.tokenizer(batch)
        ours = run.model.decoder.logits(run.model.encoder.forward_features(tokens))
        theirs = hf_model(**encoded).logits
    real = encoded["attention_mask"].bool()
    assert torch.equal(ours[real], theirs[real])
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0, :1])[0] == "[CLS]"


def test_electra_pretrain_and_export(tmp_path) -> None:  # noqa: ANN001
    run_dir = tmp_path / "electra"
    overrides = [
        *SHORT,
        "train.steps=2",
        "electra.generator_hidden=16",
        "electra.generator_heads=1",
    ]
    assert main(["pretrain", "text/electra", "--run-dir", str(run_dir), *overrides]) == 0
    out = tmp_path / "hf"
    assert main(["export", str(run_dir), "--format", "hf", "--out", str(out)]) == 0
    run = load_run(run_dir)
    discriminator = AutoModelForPreTraining.from_pretrained(out).eval()
    generator = AutoModelForMaskedLM.from_pretrained(out / "generator").eval()
    ids = torch.tensor([[2, 50, 60, 70, 3]])
    batch = {"input_ids": ids, "sequence_ids": torch.ones_like(ids)}
    with torch.no_grad():
        tokens = run.model.tokenizer(batch)
        ours = run.model.decoder(run.model.encoder.forward_features(tokens), tokens, None)
        real = torch.ones_like(ids)
        # Same weights and the same ops, but Hugging Face memory-maps the safetensors file, so
        # its weights sit at unaligned addresses and the head's 32->1 product may sum in another
        # SIMD order: equal up to the last bit of float32, not always bit for bit.
        theirs = discriminator(input_ids=ids, attention_mask=real).logits
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        mlm = run.model.decoder.generator(input_ids=ids, attention_mask=real).logits
        theirs = generator(input_ids=ids, attention_mask=real).logits
        torch.testing.assert_close(mlm, theirs, rtol=0, atol=1e-6)


def test_electra_starts_from_an_mlm_run(mlm_run, tmp_path) -> None:  # noqa: ANN001
    """`train.init_from` a BERT MLM run: the discriminator's encoder starts as the BERT's (the
    two share architecture and parameter names), and so do the embeddings the generator shares
    with it. At lr 1e-12 the first checkpoint still computes the BERT's hidden states."""
    run_dir = tmp_path / "warm"
    args = ["pretrain", "text/electra", "--run-dir", str(run_dir), *SHORT, "train.lr=1e-12"]
    assert main([*args, f"train.init_from={mlm_run}"]) == 0
    mlm, electra = load_run(mlm_run).model, load_run(run_dir).model
    ids = torch.tensor([[2, 50, 60, 70, 3, 0], [2, 80, 90, 3, 0, 0]])
    batch = {"input_ids": ids, "sequence_ids": (ids != 0).long()}
    with torch.no_grad():
        tokens = mlm.tokenizer(batch)
        real = ~tokens.padding
        theirs = mlm.encoder.forward_features(tokens)[real]
        ours = electra.encoder.forward_features(tokens)[real]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    word_embeddings = mlm.encoder.backbone.embeddings.word_embeddings.weight
    shared = electra.decoder.generator.electra.embeddings.word_embeddings.weight
    torch.testing.assert_close(shared, word_embeddings, rtol=0, atol=1e-9)


def test_resume_with_another_vocabulary_fails_clearly(tmp_path, capsys) -> None:  # noqa: ANN001
    from omnimask_text.config import VocabConfig
    from omnimask_text.vocab import save_atomically, train_wordpiece

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"doc{i}.txt").write_text(
            f"document number {i} talks about parsing and files. " * 5
        )
    vocab = tmp_path / "vocab.json"
    save_atomically(
        train_wordpiece(["alpha beta gamma parsing files"] * 3, VocabConfig(size=80)), vocab
    )
    run_dir = tmp_path / "run"
    args = ["pretrain", "text/mlm", "--data", str(corpus), "--run-dir", str(run_dir), *SHORT]
    args += [
        f"vocab.path={vocab}",
        "corpus.seq_len=32",
        "train.steps=2",
        "train.checkpoint_every=1",
    ]
    assert main(args) == 0
    # the same file now holds another vocabulary (same size, other tokens)
    other = ["document number talks about files and more words"] * 3
    save_atomically(train_wordpiece(other, VocabConfig(size=80)), vocab)
    assert main([*args[:-2], "train.steps=3", "train.checkpoint_every=1"]) == 2
    message = capsys.readouterr().err
    assert "checkpoint was trained with another vocabulary" in message
    assert str(vocab) in message


def test_skipped_corpus_lines_are_counted_in_the_metrics(tmp_path) -> None:  # noqa: ANN001
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = [json.dumps({"text": f"document {i} talks about parsing files. " * 4}) for i in range(8)]
    (corpus / "docs.jsonl").write_text("\n".join([*good, "{broken", '{"title": "no text"}']))
    run_dir = tmp_path / "run"
    args = ["pretrain", "text/mlm", "--data", str(corpus), "--run-dir", str(run_dir), *SHORT]
    assert main([*args, "data.on_bad_sample=skip", "corpus.seq_len=32", "vocab.size=80"]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_samples"] for r in records if "loss" in r] == [2, 2, 2]
