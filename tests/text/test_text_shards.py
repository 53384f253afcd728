"""Token rows as shards (`omnimask prepare --out`): a run on them is the run on the corpus, with
the tokenizer that made them (kept in the shard set), and what shards cannot serve is refused in
one line."""

from pathlib import Path

import pytest
from omnimask.cli import main
from omnimask.runs import load_run
from omnimask.testing import logged_losses, train_on_files_and_on_shards
from omnimask_text.vocab import load_tokenizer, vocabulary_digest

FAST = ["train.steps=2", "train.log_every=1", "train.progress=false"]


def test_a_run_on_token_shards_is_the_run_on_the_corpus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = train_on_files_and_on_shards("text/mlm", tmp_path, *FAST)
    assert logged_losses(runs.on_shards) == logged_losses(runs.on_files)
    assert len(logged_losses(runs.on_files)) == 2
    vocab = [
        load_tokenizer(load_run(run).config.vocab.path) for run in (runs.on_files, runs.on_shards)
    ]
    assert vocabulary_digest(vocab[0]) == vocabulary_digest(vocab[1])
    shards = runs.shards

    capsys.readouterr()
    ngram = ["mask.strategy=explicit_ngram", *FAST]
    assert main(["pretrain", "text/mlm", "--data", str(shards), *ngram]) == 2
    assert capsys.readouterr().err.strip() == (
        "omnimask: error: mask.strategy=explicit_ngram builds its n-gram lexicon from the "
        "corpus text, which shards do not hold: give the corpus's lexicon as mask.lexicon=FILE"
    )
    other = tmp_path / "other.json"
    vocab[0].add_tokens(["brandnewtoken"])
    vocab[0].save(str(other))
    assert main(["pretrain", "text/mlm", "--data", str(shards), f"vocab.path={other}",
                 *FAST]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip() == (
        f"omnimask: error: {shards}: its rows were tokenized with another vocabulary than "
        f"vocab.path={other}; leave vocab.path unset to use theirs"
    )
