"""Supervised task data: ART/mART generators and splits, the bAbI-style generator and reader, catbAbI streams, LM."""
from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pytest
import torch

from fwm_rl import CORE_CLASSES, detach_state
from fwm_rl.train.errors import UserError
from fwm_rl.train.seqmodel import build_sequence_model, count_parameters, hidden_size_for_params
from fwm_rl.train.tasks import art, babi, babi_gen, lm
from fwm_rl.train.tasks.base import IGNORE


# ART / mART --------------------------------------------------------------------------------------------------------

def oracle_answer(text: str, modified: bool) -> str:
    """Answer of one ART/mART string, worked out from its text alone."""
    body, query = text[:-3], text[-1]
    assert text[-3:-1] == "??"
    k = len(body) // 2
    keys, values = (body[:k], body[k:]) if modified else (body[0::2], body[1::2])
    assert len(set(keys)) == k and set(keys) <= set(string.ascii_lowercase) and set(values) <= set(string.digits)
    return values[keys.index(query)]


@pytest.mark.parametrize("modified", [False, True])
def test_art_generator_is_deterministic_and_every_label_is_the_queried_value(modified):
    x1, y1 = art.generate(500, 5, modified, np.random.default_rng(7))
    x2, y2 = art.generate(500, 5, modified, np.random.default_rng(7))
    x3, _ = art.generate(500, 5, modified, np.random.default_rng(8))
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2) and not np.array_equal(x1, x3)
    assert x1.shape == (500, 13)
    for row, label in zip(x1, y1):
        assert art.VOCAB[label] == oracle_answer(art.decode(row), modified)


def test_art_splits_do_not_overlap_and_are_saved_and_reused(tmp_path, monkeypatch):
    sizes = {"train": 3000, "val": 300, "test": 600}
    splits = art.load_or_make_splits(tmp_path, 2, False, 3, sizes)
    rows = {s: {r.tobytes() for r in x} for s, (x, _) in splits.items()}
    assert {s: len(r) for s, r in rows.items()} == sizes  # no duplicates inside a split
    assert not (rows["train"] & rows["val"] or rows["train"] & rows["test"] or rows["val"] & rows["test"])
    monkeypatch.setattr(art, "make_splits", lambda *a: pytest.fail("splits were regenerated, not reused"))
    again = art.load_or_make_splits(tmp_path, 2, False, 3, sizes)
    assert all(np.array_equal(splits[s][0], again[s][0]) for s in sizes)
    assert len(list(tmp_path.glob("art-K2-seed3-*.npz"))) == 1


def test_art_refuses_more_sequences_than_exist():
    with pytest.raises(ValueError, match="distinct sequences"):
        art.make_splits(1, False, 0, {"train": 200, "val": 10, "test": 10})  # only 26*10 K=1 sequences exist


def test_a_curriculum_level_takes_as_many_train_sequences_as_half_of_the_distinct_ones_allow():
    distinct = 26 * 25 * 10**2 * 2  # K = 2: ordered key pairs, two digits, which key is queried
    assert art.curriculum_sizes(2, 100_000, 10_000) == {"train": distinct // 2 - 2_000, "val": 2_000, "test": 0}
    assert art.curriculum_sizes(3, 100_000, 10_000) == {"train": 100_000, "val": 2_000, "test": 0}


def test_art_task_ranks_split_one_global_batch():
    splits = art.make_splits(3, True, 0, {"train": 1000, "val": 100, "test": 100})
    whole = art.ARTTask(splits, 8, 50, seed=1).train_batch(5)
    halves = [art.ARTTask(splits, 4, 50, seed=1, rank=r, world_size=2).train_batch(5) for r in (0, 1)]
    assert torch.equal(torch.cat([h.tokens for h in halves], dim=1), whole.tokens)
    val_rows = sum(b.targets.numel() for r in (0, 1) for b in art.ARTTask(splits, 4, 30, 1, r, 2).eval_batches("val"))
    assert val_rows == 100


# bAbI-style generator and reader -----------------------------------------------------------------------------------

SMALL = {"train": 6, "val": 2, "test": 2}


def test_babi_generator_is_deterministic_covers_20_tasks_and_splits_are_disjoint():
    a, b = babi_gen.generate_splits(5, SMALL), babi_gen.generate_splits(5, SMALL)
    assert a == b and a != babi_gen.generate_splits(6, SMALL)
    assert sorted({s.task for s in a["train"]}) == list(range(1, 21))
    texts = {split: {s.lines for s in stories} for split, stories in a.items()}
    assert not (texts["train"] & texts["val"] or texts["train"] & texts["test"] or texts["val"] & texts["test"])
    for story in a["train"]:
        assert any(line.answer for line in story.lines), f"task {story.task} story without a question"
        assert all(line.answer is None or " " not in line.answer for line in story.lines)


def test_babi_generated_answers_follow_from_the_story():
    """Spot-check the simplest world against a re-simulation: task 1 answers are each person's latest room."""
    for story in babi_gen.generate_splits(0, {"train": 30})["train"]:
        if story.task != 1:
            continue
        where = {}
        for line in story.lines:
            words = line.words.split()
            if line.answer is None:
                where[words[0]] = words[-1]
            else:
                assert where[words[-1]] == line.answer


def write_babi_dir(directory: Path, splits: dict[str, list[babi_gen.Story]]) -> None:
    """The bAbI v1.2 file format: 'ID Sentence.' and 'ID Question?<TAB>answer<TAB>support ids'."""
    suffix = {"train": "train", "val": "valid", "test": "test"}
    for split, stories in splits.items():
        for task in range(1, 21):
            out = []
            for story in (s for s in stories if s.task == task):
                for i, line in enumerate(story.lines, start=1):
                    text = line.words[0].upper() + line.words[1:]
                    out.append(f"{i} {text}." if line.answer is None else f"{i} {text}? \t{line.answer}\t1")
            (directory / f"qa{task}_{suffix[split]}.txt").write_text("\n".join(out) + "\n")


def test_babi_reader_round_trips_files_in_the_en_valid_10k_layout(tmp_path):
    splits = babi_gen.generate_splits(1, SMALL)
    write_babi_dir(tmp_path, splits)
    read = babi.read_babi_dir(tmp_path)
    for split in SMALL:
        assert sorted(read[split]) == sorted(splits[split])


def test_babi_reader_names_the_file_and_line_of_a_problem(tmp_path):
    write_babi_dir(tmp_path, babi_gen.generate_splits(1, SMALL))
    bad = tmp_path / "qa3_valid.txt"
    lines = bad.read_text().splitlines()
    lines[2] = "3 Where is the apple?\t\t2"
    bad.write_text("\n".join(lines))
    with pytest.raises(UserError, match=r"qa3_valid.txt, line 3"):
        babi.read_babi_dir(tmp_path)
    (tmp_path / "qa7_test.txt").unlink()
    with pytest.raises(UserError, match=r"missing file .*qa7_test.txt"):
        babi.read_babi_file(tmp_path / "qa7_test.txt", 7)
    with pytest.raises(UserError, match="does not exist"):
        babi.read_babi_dir(tmp_path / "nope")


def test_babi_reader_reports_a_question_without_its_tab_answer_as_such(tmp_path):
    path = tmp_path / "qa1_train.txt"
    path.write_text("1 Mary went to the kitchen.\n2 Where is Mary? kitchen 1\n")
    with pytest.raises(UserError) as info:
        babi.read_babi_file(path, 1)
    message = str(info.value)
    assert "qa1_train.txt, line 2" in message and "needs a TAB between the question and its answer" in message
    assert "must end with '.'" not in message


# catbAbI streams ---------------------------------------------------------------------------------------------------

def make_catbabi(mode="qm", batch=3, seq_len=40, eval_batch=4):
    return babi.CatBAbITask(babi_gen.generate_splits(2, SMALL), mode, batch, seq_len, eval_batch, seed=0)


def test_catbabi_training_windows_are_whole_stories_back_to_back_and_qm_targets_only_answers():
    task = make_catbabi()
    eos, question = task.vocab.index(babi.EOS), task.vocab.index("?")
    rows = [[] for _ in range(3)]
    for step in range(250):
        batch = task.train_batch(step)
        assert batch.tokens.shape == (40, 3)
        answer = batch.tokens == question
        assert torch.equal(batch.targets != IGNORE, answer) and torch.equal(batch.scored, answer)
        for b in range(3):
            rows[b] += batch.tokens[:, b].tolist()
    stories = {tuple(e[0].tolist()) for e in task.encoded["train"]}
    seen = set()
    for row in rows:  # every complete <eos>-delimited segment of a stream is one training story
        starts = [i for i, t in enumerate(row) if t == eos]
        for a, b in zip(starts, starts[1:]):
            assert tuple(row[a:b]) in stories
            seen.add(tuple(row[a:b]))
    assert seen == stories  # 250 windows of 3 x 40 tokens run through more than one epoch


def test_catbabi_lm_mode_targets_are_the_next_tokens():
    task = make_catbabi(mode="lm")
    first, second = task.train_batch(0), task.train_batch(1)
    tokens = torch.cat([first.tokens, second.tokens])
    assert torch.equal(first.targets[:-1], first.tokens[1:])
    assert torch.equal(first.targets[-1], second.tokens[0])
    assert (tokens != IGNORE).all()


def test_catbabi_evaluation_streams_hold_every_story_once():
    task = make_catbabi(eval_batch=4)
    tokens = torch.cat([b.tokens for b in task.eval_batches("test")])  # [L, 4]
    scored = sum(int(b.scored.sum()) for b in task.eval_batches("test"))
    answers = sum(int((e[2] == 1).sum()) for e in task.encoded["test"])
    assert scored == answers
    assert int((tokens == task.vocab.index(babi.EOS)).sum()) == len(task.encoded["test"])


AVAILABLE = [k for k in ("lstm", "lnlstm", "fwlstm", "fwrnn", "fwm") if k in CORE_CLASSES]


@pytest.mark.parametrize("kind", AVAILABLE)
def test_state_carried_across_catbabi_windows_equals_one_long_run(kind):
    torch.manual_seed(0)
    task = make_catbabi(batch=2, seq_len=25)
    model = build_sequence_model(kind, task.vocab_size, 16, 16, task.head).double()
    windows = [task.train_batch(step).tokens for step in range(4)]
    state, pieces = None, []
    for tokens in windows:
        logits, state = model(tokens, state)
        state = detach_state(state)
        pieces.append(logits)
    whole, _ = model(torch.cat(windows))
    torch.testing.assert_close(torch.cat(pieces), whole, rtol=1e-9, atol=1e-9)


# Language modelling ------------------------------------------------------------------------------------------------

def write_corpus(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.txt").write_text(" the cat sat \n on the mat \n" * 30)
    (directory / "valid.txt").write_text(" the dog sat \n")
    (directory / "test.txt").write_text(" a cat \n the mat \n")


def test_lm_corpus_ends_lines_with_eos_and_windows_tile_the_streams(tmp_path):
    write_corpus(tmp_path)
    vocab, ids = lm.read_corpus(tmp_path)
    assert [vocab[i] for i in ids["test"]] == ["a", "cat", lm.EOS, "the", "mat", lm.EOS]
    task = lm.LMTask(vocab, ids, batch_size=3, bptt=7, eval_batch_size=1)
    stream = lm.streams(ids["train"], 3)
    first = task.train_batch(0)
    assert first.reset and not task.train_batch(1).reset
    assert torch.equal(first.tokens, stream[:7]) and torch.equal(first.targets, stream[1:8])
    assert task.train_batch(task.windows_per_epoch).reset  # a new pass starts from a zero state
    val = list(task.eval_batches("val"))
    assert torch.equal(torch.cat([b.targets for b in val])[:, 0], ids["val"][1:])


def test_lm_reader_reports_missing_files_and_bad_bytes_with_line(tmp_path):
    write_corpus(tmp_path)
    (tmp_path / "valid.txt").write_bytes(b"fine line\nbad \xff byte\n")
    with pytest.raises(UserError, match=r"valid.txt, line 2: not UTF-8"):
        lm.read_corpus(tmp_path)
    (tmp_path / "test.txt").unlink()
    with pytest.raises(UserError, match=r"missing file .*test.txt"):
        lm.read_words(tmp_path / "test.txt")


# Sequence model ----------------------------------------------------------------------------------------------------

def test_sequence_model_heads_and_weight_tying():
    tokens = torch.randint(0, 37, (11, 5))
    art_model = build_sequence_model("lstm", 37, 100, 20, "mlp_last")
    assert art_model(tokens)[0].shape == (5, 37)
    tied = build_sequence_model("lstm", 37, 20, 20, "decoder", tie_weights=True)
    assert tied(tokens)[0].shape == (11, 5, 37) and tied.head.weight is tied.embedding.weight
    assert count_parameters(tied) == count_parameters(build_sequence_model("lstm", 37, 20, 20, "decoder")) - 37 * 20
    with pytest.raises(ValueError, match="tie_weights"):
        build_sequence_model("lstm", 37, 16, 20, "decoder", tie_weights=True)


def test_hidden_size_for_params_is_the_largest_size_under_the_budget():
    def build(h):
        return build_sequence_model("lstm", 37, 100, h, "mlp_last")

    h = hidden_size_for_params(40_000, build)
    assert count_parameters(build(h)) <= 40_000 < count_parameters(build(h + 1))
