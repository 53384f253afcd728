"""Corpus readers, splitting, packing and bad input: every error names the file and the problem."""

from __future__ import annotations

import copy
import json
import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omnimask.data import BadSampleError, DataPathError
from omnimask_text.corpus import (
    BACKWARDS,
    CHAIN_SUCCESSORS,
    CHAIN_WORDS,
    COMMUNITIES,
    FORWARDS,
    IN_ORDER,
    PASSAGE_WORDS,
    SHUFFLED,
    chain_successors,
    chain_words,
    community_halves,
    community_successors,
    ensure_embedded_data,
    read_corpus,
    read_file,
    read_labelled,
    word_order_record,
)
from omnimask_text.dataset import build_rows, collate_rows, pack, tokenize_documents
from omnimask_text.tokens import split_into_chunks
from omnimask_text.vocab import CLS, SEP, continuation_flags


def test_empty_file_is_named(tmp_path) -> None:  # noqa: ANN001
    (tmp_path / "good.txt").write_text("some text here")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(BadSampleError, match=r"empty\.txt: empty file"):
        read_corpus(tmp_path, "text")
    documents = read_corpus(tmp_path, "text", on_bad="skip")
    assert [d.text for d in documents] == ["some text here"]


def test_invalid_utf8_names_file_and_byte_offset(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "broken.txt"
    path.write_bytes("héllo wörld ".encode() + b"\xff\xfe" + b" tail")
    offset = len("héllo wörld ".encode())
    with pytest.raises(
        BadSampleError, match=rf"broken\.txt: invalid UTF-8 at byte offset {offset}"
    ):
        read_file(path, "text")


def test_missing_path_and_no_matching_files(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(DataPathError, match="does not exist"):
        read_corpus(tmp_path / "nowhere", "text")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DataPathError, match="holds no files"):
        read_corpus(tmp_path, "text")


def test_jsonl_field_and_parquet_column(tmp_path) -> None:  # noqa: ANN001
    lines = [json.dumps({"body": "first doc"}), "", json.dumps({"body": "second doc"})]
    (tmp_path / "a.jsonl").write_text("\n".join(lines))
    pq.write_table(pa.table({"body": ["third doc", None, "fourth doc"]}), tmp_path / "b.parquet")
    texts = [d.text for d in read_corpus(tmp_path, "body")]
    assert texts == ["first doc", "second doc", "third doc", "fourth doc"]
    with pytest.raises(BadSampleError, match=r"a\.jsonl:1: no string field 'text'"):
        read_corpus(tmp_path, "text")
    (tmp_path / "a.jsonl").unlink()
    with pytest.raises(BadSampleError, match=r"b\.parquet: no column 'text'"):
        read_corpus(tmp_path, "text")
    (tmp_path / "c.jsonl").write_text("{not json\n")
    with pytest.raises(BadSampleError, match=r"c\.jsonl:1: not JSON"):
        read_file(tmp_path / "c.jsonl", "body")


def test_saved_datasets_read_like_the_same_jsonl(tmp_path) -> None:  # noqa: ANN001
    import datasets

    texts = ["The first document.", "", "A second one, with more words.", "Third."]
    rows = [{"body": t, "id": i} for i, t in enumerate(texts)]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    expected = [d.text for d in read_corpus(tmp_path / "docs.jsonl", "body")]

    single = datasets.Dataset.from_list(rows)
    single.save_to_disk(str(tmp_path / "single"))
    assert [d.text for d in read_corpus(tmp_path / "single", "body")] == expected
    splits = datasets.DatasetDict({"train": single, "validation": single.select([0])})
    splits.save_to_disk(str(tmp_path / "dict"))
    assert [d.text for d in read_corpus(tmp_path / "dict", "body")] == expected
    assert [d.text for d in read_corpus(tmp_path / "dict", "body", split="validation")] == [
        texts[0]
    ]

    with pytest.raises(BadSampleError, match=r"no split 'test' \(splits: train, validation\)"):
        read_corpus(tmp_path / "dict", "body", split="test")
    with pytest.raises(BadSampleError, match=r"no column 'text' \(columns: body, id\)"):
        read_corpus(tmp_path / "single", "text")
    with pytest.raises(BadSampleError, match="column 'id' holds int, not text"):
        read_corpus(tmp_path / "single", "id")


def test_long_documents_are_split_not_truncated(embedded_tokenizer) -> None:  # noqa: ANN001
    long_text = " ".join(f"word{i} value" for i in range(400))
    seq_len = 32
    expected = embedded_tokenizer.encode(long_text, add_special_tokens=False).ids
    assert len(expected) > 5 * seq_len
    chunks, split = tokenize_documents(embedded_tokenizer, [long_text, "short"], seq_len)
    assert split == 1
    cls, sep = embedded_tokenizer.token_to_id(CLS), embedded_tokenizer.token_to_id(SEP)
    long_chunks = chunks[:-1]
    assert all(len(c) <= seq_len and c[0] == cls and c[-1] == sep for c in chunks)
    assert [t for c in long_chunks for t in c[1:-1]] == expected  # every token kept, in order


def test_packing_keeps_every_chunk_whole_and_rows_full() -> None:
    generator = torch.Generator().manual_seed(0)
    chunks = [list(range(n)) for n in torch.randint(3, 64, (500,), generator=generator).tolist()]
    rows = pack(chunks, 64)
    pieces = []
    for ids, sequence_ids in rows:
        assert len(ids) == len(sequence_ids) <= 64
        for document in sorted(set(sequence_ids)):
            pieces.append([t for t, s in zip(ids, sequence_ids) if s == document])
    assert sorted(map(tuple, pieces)) == sorted(map(tuple, chunks))
    fill = sum(map(len, chunks)) / (64 * len(rows))
    assert fill > 0.95


def test_packed_rows_attend_within_documents(mlm_recipe, embedded_tokenizer) -> None:  # noqa: ANN001
    """A packed row's encoding equals encoding each of its documents alone (the block mask and
    per-document positions remove the other documents from the computation)."""
    from omnimask.config import apply_overrides

    config = apply_overrides(mlm_recipe.config("demo"), ["model.hidden=32", "model.layers=1"])
    torch.manual_seed(0)
    model = mlm_recipe.build_model(config).eval()
    texts = ["first short document here", "the second one is a little longer than that", "3rd"]
    packed = build_rows(config, embedded_tokenizer, texts)
    assert len(packed) == 1
    alone = copy.deepcopy(config)
    alone.corpus.packing = False
    singles = build_rows(alone, embedded_tokenizer, texts)

    def features(sample):  # noqa: ANN001, ANN202
        return model.encoder.forward_features(model.tokenizer(collate_rows([sample])))[0]

    row = packed[0]
    together = features(row)
    segments = {
        tuple(row["input_ids"][row["sequence_ids"] == s].tolist()): together[
            row["sequence_ids"] == s
        ]
        for s in set(row["sequence_ids"].tolist())
    }
    assert len(segments) == len(texts)
    for index in range(len(singles)):
        single = singles[index]
        torch.testing.assert_close(
            segments[tuple(single["input_ids"].tolist())], features(single), atol=1e-5, rtol=1e-4
        )


def test_data_from_another_vocabulary_is_refused(mlm_recipe, embedded_tokenizer) -> None:  # noqa: ANN001
    from omnimask.config import apply_overrides
    from omnimask_text.models.common import VocabularyMismatchError

    config = apply_overrides(mlm_recipe.config("demo"), ["model.hidden=32", "model.layers=1"])
    model = mlm_recipe.build_model(config)
    batch = collate_rows([build_rows(config, embedded_tokenizer, ["some text"])[0]])
    model.tokenizer(batch)  # the matching vocabulary passes
    batch["vocab_digest"] = batch["vocab_digest"] + 1
    with pytest.raises(VocabularyMismatchError, match="tokenized with a vocabulary"):
        model.tokenizer(batch)


def test_trained_vocabulary_is_cached_and_pinned_in_the_config(mlm_recipe, tmp_path) -> None:  # noqa: ANN001
    """The run's config names the exact tokenizer file, so a run needs no retraining (the
    `tokenizers` trainer breaks ties differently from run to run)."""
    from omnimask.config import apply_overrides, from_yaml, to_yaml
    from omnimask_text.dataset import resolve_tokenizer
    from omnimask_text.vocab import vocabulary_digest

    for i in range(4):
        (tmp_path / f"doc{i}.txt").write_text(f"text number {i} about caching vocabularies. " * 4)
    config = apply_overrides(mlm_recipe.config("demo"), [f"data.path={tmp_path}", "vocab.size=120"])
    assert config.vocab.path is None
    mlm_recipe.build_dataset(config)
    pinned = config.vocab.path
    assert pinned is not None and pinned.endswith(".json")
    again = apply_overrides(mlm_recipe.config("demo"), [f"data.path={tmp_path}", "vocab.size=120"])
    mlm_recipe.build_dataset(again)
    assert again.vocab.path == pinned  # same corpus and settings: the cached file, not a retrain
    reloaded = from_yaml(to_yaml(config), type(config))
    assert vocabulary_digest(resolve_tokenizer(reloaded)) == vocabulary_digest(
        resolve_tokenizer(config)
    )


def test_word_order_passages_keep_their_words_and_only_the_label_changes_order() -> None:
    doc = " ".join(f"w{i}" for i in range(PASSAGE_WORDS * 3))
    rng = random.Random(0)
    records = [word_order_record(doc, index, rng) for index in range(40)]
    assert {r["label"] for r in records} == {IN_ORDER, SHUFFLED}
    assert [r["split"] for r in records[:4]] == ["train", "train", "train", "test"]
    for record in records:
        words = str(record["text"]).split()
        first = int(words[0][1:]) if record["label"] == IN_ORDER else min(int(w[1:]) for w in words)
        window = [f"w{i}" for i in range(first, first + PASSAGE_WORDS)]
        assert sorted(words) == sorted(window)  # the same words: a bag of tokens cannot tell
        assert (words == window) == (record["label"] == IN_ORDER)


def test_embedded_labelled_passages_are_balanced_and_left_out_of_the_corpus() -> None:
    root = ensure_embedded_data()
    train, test = read_labelled(root / "labelled.jsonl", "text")
    assert len(train) > 3 * len(test) - 4 and len(test) > 100
    for split in (train, test):
        share = sum(label for _, label in split) / len(split)
        assert 0.4 < share < 0.6
    # passages are words joined by single spaces: compare with the corpus's words the same way
    corpus = " ".join(" ".join(d.text.split()) for d in read_corpus(root / "corpus", "text"))
    in_order = [text for text, label in train + test if label == IN_ORDER]
    assert not any(text in corpus for text in in_order)


def test_word_order_labels_are_invisible_to_a_bag_of_words() -> None:
    """A probe on word counts stays near chance (both classes hold the same words); one on
    word-pair counts, which knows the order, does not: the label is word usage in context."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    train, test = read_labelled(ensure_embedded_data() / "labelled.jsonl", "text")

    def probe(ngrams: tuple[int, int]) -> float:
        counts = CountVectorizer(ngram_range=ngrams, token_pattern=r"\S+")
        train_x = counts.fit_transform([text for text, _ in train])
        model = LogisticRegression(max_iter=3000).fit(train_x, [label for _, label in train])
        test_x = counts.transform([text for text, _ in test])
        return model.score(test_x, [label for _, label in test])

    assert probe((1, 1)) < 0.6
    assert probe((2, 2)) > 0.8


def test_skip_leaves_out_a_bad_jsonl_line_not_its_whole_file(tmp_path) -> None:  # noqa: ANN001
    lines = ['{"text": "first document"}', "{not json", '{"text": "second document"}']
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(BadSampleError, match=r"docs.jsonl:2: not JSON"):
        read_corpus(tmp_path, "text")
    skipped: list[str] = []
    documents = read_corpus(tmp_path, "text", on_bad="skip", skipped=skipped)
    assert [d.text for d in documents] == ["first document", "second document"]
    assert len(skipped) == 1 and "docs.jsonl:2: not JSON" in skipped[0]


def test_long_documents_are_cut_between_words(embedded_tokenizer) -> None:  # noqa: ANN001
    """No row starts with a lone `##` piece, which whole-word masking would take for a word;
    the pieces still cover the document exactly."""
    flags = continuation_flags(embedded_tokenizer)
    docs = [d.text for d in read_corpus(ensure_embedded_data() / "corpus", "text")[:300]]
    chunks, split = tokenize_documents(embedded_tokenizer, docs, seq_len=16)
    assert split > 100
    assert not any(flags[chunk[1]] for chunk in chunks)  # chunk[0] is [CLS]
    whole = embedded_tokenizer.encode_batch(docs, add_special_tokens=False)
    assert [i for c in chunks for i in c[1:-1]] == [i for e in whole for i in e.ids]
    cut = split_into_chunks([5, 9, 9, 9, 9, 9], 3, [i == 9 for i in range(10)])
    assert cut == [[5, 9, 9], [9, 9, 9]]  # a word longer than a row is cut where it must


def chain_language() -> tuple[dict[str, int], list[list[int]]]:
    """The generator's words (word -> index) and successors, drawn as `write_chain_data` does."""
    rng = random.Random(0)
    words = chain_words(rng)
    return {word: index for index, word in enumerate(words)}, chain_successors(rng)


def test_chain_corpus_follows_its_grammar_and_labelled_passages_run_forwards_or_backwards() -> None:
    index, successors = chain_language()
    allowed = {(w, v) for w, following in enumerate(successors) for v in following}
    assert len(allowed) > 0.8 * CHAIN_WORDS * CHAIN_SUCCESSORS  # a sparse grammar: 1/8 of pairs
    root = ensure_embedded_data("chains")
    for document in read_corpus(root / "corpus", "text")[:500]:
        walk = [index[word] for word in document.text.split()]
        assert all(pair in allowed for pair in zip(walk, walk[1:]))
    train, test = read_labelled(root / "labelled.jsonl", "text")
    assert len(train) == 3 * len(test)
    for text, label in train + test:
        walk = [index[word] for word in text.split()]
        forwards = walk if label == FORWARDS else walk[::-1]
        assert label in (FORWARDS, BACKWARDS)
        assert all(pair in allowed for pair in zip(forwards, forwards[1:]))
    every_word = Counter(w for text, _ in train + test for w in text.split())
    assert len(every_word) == CHAIN_WORDS  # doubly stochastic: every word is visited


def test_chain_direction_is_invisible_to_words_and_unordered_pairs() -> None:
    """Why random init cannot read the chains' label: word counts and unordered neighbour pairs
    score about chance, while ordered pairs, the grammar, read it perfectly."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    train, test = read_labelled(ensure_embedded_data("chains") / "labelled.jsonl", "text")

    def unordered_pairs(text: str) -> str:
        words = text.split()
        return " ".join("_".join(sorted(pair)) for pair in zip(words, words[1:]))

    def probe(ngrams: tuple[int, int], preprocessor=None) -> float:  # noqa: ANN001
        counts = CountVectorizer(
            ngram_range=ngrams, token_pattern=r"\S+", preprocessor=preprocessor
        )
        train_x = counts.fit_transform([text for text, _ in train])
        model = LogisticRegression(max_iter=3000).fit(train_x, [label for _, label in train])
        test_x = counts.transform([text for text, _ in test])
        return model.score(test_x, [label for _, label in test])

    assert probe((1, 1)) < 0.6
    assert probe((1, 1), unordered_pairs) < 0.6
    assert probe((2, 2)) > 0.95


def community_language() -> tuple[dict[str, int], set[tuple[int, int]]]:
    """The communities' words (word -> index) and allowed pairs, drawn as written."""
    rng = random.Random(0)
    words = chain_words(rng)
    own, other = community_successors(rng)
    allowed = {(w, v) for w in range(CHAIN_WORDS) for v in own[w] + other[w]}
    return {word: index for index, word in enumerate(words)}, allowed


def test_community_walks_stay_in_a_community_and_labelled_splits_share_no_word() -> None:
    index, allowed = community_language()
    community = {w: c for c, (a, b) in enumerate(community_halves()) for w in a + b}
    first_half = {w for a, _ in community_halves() for w in a}
    root = ensure_embedded_data("communities")
    crossings = 0
    for document in read_corpus(root / "corpus", "text")[:500]:
        walk = [index[word] for word in document.text.split()]
        assert all(pair in allowed for pair in zip(walk, walk[1:]))
        assert len({community[w] for w in walk}) == 1
        crossings += sum((a in first_half) != (b in first_half) for a, b in zip(walk, walk[1:]))
    assert crossings > 0.4 * 500 * 29  # the halves follow each other: what MLM can learn
    train, test = read_labelled(root / "labelled.jsonl", "text")
    assert (len(train), len(test)) == (600, 200)
    for passages, in_first in ((train, True), (test, False)):
        for text, label in passages:
            walk = [index[word] for word in text.split()]
            assert all(pair in allowed for pair in zip(walk, walk[1:]))
            assert {community[w] for w in walk} == {label}
            assert all((w in first_half) == in_first for w in walk)
    assert Counter(label for _, label in test).keys() == set(range(COMMUNITIES))


def test_community_is_invisible_to_words_and_pairs_of_the_labelled_set() -> None:
    """Why random init cannot read the communities' label: train and test passages share no
    word, so counts of words and of (ordered) neighbour pairs score chance (0.25)."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    train, test = read_labelled(ensure_embedded_data("communities") / "labelled.jsonl", "text")
    for ngrams in ((1, 1), (2, 2)):
        counts = CountVectorizer(ngram_range=ngrams, token_pattern=r"\S+")
        train_x = counts.fit_transform([text for text, _ in train])
        model = LogisticRegression(max_iter=3000).fit(train_x, [label for _, label in train])
        test_x = counts.transform([text for text, _ in test])
        assert model.score(test_x, [label for _, label in test]) < 0.35


def test_unknown_embedded_corpus_is_one_line_naming_the_setting(capsys) -> None:  # noqa: ANN001
    from omnimask.cli import main

    assert main(["prepare", "text/mlm", "--preset", "demo", "corpus.embedded=poems"]) == 2
    error = capsys.readouterr().err.strip()
    expected = "expected one of stdlib_docs, chains, communities"
    assert error == f"omnimask: error: corpus.embedded='poems': {expected}"
